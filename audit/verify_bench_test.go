package audit_test

import (
	"context"
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
)

// BenchmarkVerifyLargeStream writes a tenant's stream of decision records
// (200,000 by default; PASSPORT_BENCH_RECORDS sets another count) with
// the real writer, then verifies it as `passport audit verify` does. It
// reports the verify throughput, the verifier's peak heap per record and
// the Redis memory one record takes (MEMORY USAGE of the stream, all its
// entries counted): what a stream of 10 million records costs. Every
// record is an allow without an outcome, the verifier's worst case.
//
//	go test -run XXX -bench VerifyLargeStream -benchtime 1x ./audit/
func BenchmarkVerifyLargeStream(b *testing.B) {
	n := 200_000
	if v, err := strconv.Atoi(os.Getenv("PASSPORT_BENCH_RECORDS")); err == nil && v > 0 {
		n = v
	}
	srv := redistest.Start(b, redistest.Options{AOF: true, Fsync: "everysec"})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 64})
	b.Cleanup(func() { _ = rdb.Close() })
	ctx := context.Background()
	s := newStream(b, rdb, audit.StreamConfig{})
	start := time.Now()
	var wg sync.WaitGroup
	const writers = 64
	for w := range writers {
		wg.Go(func() {
			for i := w; i < n; i += writers {
				if _, err := s.Append(ctx, decision("acme", i)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := s.Close(); err != nil { // seals the chain with its shutdown checkpoint
		b.Fatal(err)
	}
	written := time.Since(start)
	key := audit.StreamKey("acme")
	entries, err := rdb.XLen(ctx, key).Result()
	if err != nil {
		b.Fatal(err)
	}
	mem, err := rdb.MemoryUsage(ctx, key, 0).Result()
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		runtime.GC()
		var base runtime.MemStats
		runtime.ReadMemStats(&base)
		peak := peakHeap()
		t0 := time.Now()
		rep, err := audit.VerifyStream(ctx, rdb, "acme", audit.VerifyOptions{})
		heap := peak()
		if err != nil {
			b.Fatal(err)
		}
		if !rep.OK() || int64(rep.Records) != entries {
			b.Fatalf("verify: ok=%v, %d records of %d, problems %v", rep.OK(), rep.Records, entries, rep.Problems)
		}
		b.ReportMetric(float64(entries)/time.Since(t0).Seconds(), "verify-records/s")
		b.ReportMetric(float64(heap-min(heap, base.HeapInuse))/float64(entries), "verify-heap-B/record")
	}
	b.ReportMetric(float64(entries), "records")
	b.ReportMetric(float64(mem)/float64(entries), "redis-bytes/record")
	b.ReportMetric(float64(entries)/written.Seconds(), "write-records/s")
}

// peakHeap samples the heap in use every 10 ms until the returned function
// is called, which returns the largest sample.
func peakHeap() func() uint64 {
	stop := make(chan struct{})
	done := make(chan uint64)
	go func() {
		var peak uint64
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			peak = max(peak, m.HeapInuse)
			select {
			case <-stop:
				done <- peak
				return
			case <-tick.C:
			}
		}
	}()
	return func() uint64 { close(stop); return <-done }
}
