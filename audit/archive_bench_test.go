package audit_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
)

// BenchmarkArchiveWindow writes calls (a decision and an outcome record
// each) as fast as the writer takes them, 60,000 by default
// (PASSPORT_BENCH_CALLS sets another count: 3,600,000 is an hour at 1,000
// calls/s), with the archiver on a short window (PASSPORT_BENCH_WINDOW,
// default 5s, looked at every second), and samples the stream's MEMORY
// USAGE and Redis's used_memory every second: once the window is full the
// stream's bytes stay flat. It then verifies archive + Redis as one
// history and reports the archive's bytes per record on disk and the
// archive and verify throughputs.
//
//	PASSPORT_BENCH_CALLS=3600000 go test -run XXX -bench ArchiveWindow -benchtime 1x -timeout 2h ./audit/
func BenchmarkArchiveWindow(b *testing.B) {
	calls := 60_000
	if v, err := strconv.Atoi(os.Getenv("PASSPORT_BENCH_CALLS")); err == nil && v > 0 {
		calls = v
	}
	window := 5 * time.Second
	if v, err := time.ParseDuration(os.Getenv("PASSPORT_BENCH_WINDOW")); err == nil && v > 0 {
		window = v
	}
	rate := 0 // calls/s; 0: as fast as the writer takes them
	if v, err := strconv.Atoi(os.Getenv("PASSPORT_BENCH_RATE")); err == nil && v > 0 {
		rate = v
	}
	for b.Loop() {
		benchArchiveWindow(b, calls, rate, window)
	}
}

type memSample struct {
	at      time.Duration
	stream  int64
	used    int64
	entries int64
}

func benchArchiveWindow(b *testing.B, calls, rate int, window time.Duration) {
	srv := redistest.Start(b, redistest.Options{AOF: true, Fsync: "everysec"})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 64})
	b.Cleanup(func() { _ = rdb.Close() })
	ctx := context.Background()
	key := audit.StreamKey("acme")
	s := newStream(b, rdb, audit.StreamConfig{WriterID: "proxy-a"})
	arch := newStream(b, rdb, audit.StreamConfig{WriterID: "archiver"})
	dir := b.TempDir()
	reg := prometheus.NewRegistry()
	ar, err := audit.NewArchiver(rdb, arch, audit.ArchiveConfig{Dir: dir, Window: window, Interval: time.Second}, testLogger(b), reg)
	if err != nil {
		b.Fatal(err)
	}

	// The archiver's passes, timed: its throughput is records archived
	// per second of passes.
	var busy atomic.Int64
	actx, stopArch := context.WithCancel(ctx)
	archDone := make(chan struct{})
	go func() {
		defer close(archDone)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			t0 := time.Now()
			if err := ar.Archive(actx); err != nil && actx.Err() == nil {
				b.Errorf("archive: %v", err)
			}
			busy.Add(int64(time.Since(t0)))
			select {
			case <-actx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	// Memory, every second.
	var (
		samples []memSample
		smu     sync.Mutex
	)
	start := time.Now()
	sctx, stopSample := context.WithCancel(ctx)
	sampleDone := make(chan struct{})
	go func() {
		defer close(sampleDone)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-tick.C:
			}
			m, _ := rdb.MemoryUsage(ctx, key, 0).Result()
			n, _ := rdb.XLen(ctx, key).Result()
			info, _ := rdb.InfoMap(ctx, "memory").Result()
			used, _ := strconv.ParseInt(info["Memory"]["used_memory"], 10, 64)
			smu.Lock()
			samples = append(samples, memSample{time.Since(start), m, used, n})
			smu.Unlock()
		}
	}()

	var wg sync.WaitGroup
	const writers = 64
	for w := range writers {
		wg.Go(func() {
			for i := w; i < calls; i += writers {
				if rate > 0 {
					time.Sleep(time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))))
				}
				d := decision("acme", i)
				if _, err := s.Append(ctx, d); err != nil {
					b.Error(err)
					return
				}
				o := &audit.Record{Kind: audit.KindOutcome, Tenant: "acme", RequestID: d.RequestID, Status: 200, LatencyMS: 1.5}
				if _, err := s.Append(ctx, o); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	written := time.Since(start)
	// Let the window pass once more so the archiver takes the tail.
	if err := s.Checkpoint(ctx, audit.CheckpointPeriodic); err != nil {
		b.Fatal(err)
	}
	time.Sleep(window + 2*time.Second)
	stopArch()
	<-archDone
	stopSample()
	<-sampleDone

	var disk int64
	_ = filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			disk += fi.Size()
		}
		return nil
	})
	archived := archCounter(b, reg, "passport_audit_archive_records_total")
	segments := archCounter(b, reg, "passport_audit_archive_segments_total")

	t0 := time.Now()
	rep, err := audit.VerifyStream(ctx, rdb, "acme", audit.VerifyOptions{Archive: dir})
	if err != nil {
		b.Fatal(err)
	}
	vt := time.Since(t0)
	mustOK(b, rep)
	if rep.Records < 2*calls {
		b.Fatalf("verified %d records, wrote %d", rep.Records, 2*calls)
	}

	// Redis bytes over time: the series, thinned to about 30 lines.
	var sb strings.Builder
	step := max(1, len(samples)/30)
	// Flat means the second half of the writes peaks no higher than the
	// first half (after two windows): the archiver keeps up.
	var peakAfterWindow, lowAfterWindow, peakFirst, peakSecond int64
	half := 2*window + (written-2*window)/2
	for i, sm := range samples {
		if sm.at > 2*window && sm.at < written {
			peakAfterWindow = max(peakAfterWindow, sm.stream)
			if lowAfterWindow == 0 || sm.stream < lowAfterWindow {
				lowAfterWindow = sm.stream
			}
			if sm.at < half {
				peakFirst = max(peakFirst, sm.stream)
			} else {
				peakSecond = max(peakSecond, sm.stream)
			}
		}
		if i%step == 0 || i == len(samples)-1 {
			fmt.Fprintf(&sb, "  t=%5.0fs stream=%8.1f KiB entries=%7d used_memory=%8.1f MiB\n", sm.at.Seconds(), float64(sm.stream)/1024, sm.entries, float64(sm.used)/(1<<20))
		}
	}
	// The series goes to stderr: a benchmark's log keeps 10 lines.
	fmt.Fprintf(os.Stderr, "BenchmarkArchiveWindow: Redis over time\n%s", sb.String())
	b.Logf("calls %d (records %d) in %v (rate %d/s, 0: unpaced), window %v, %d segments, %.0f records archived, %d bytes on disk; stream between %d and %d bytes from 2 windows in to the end of writes\n%s",
		calls, 2*calls, written.Round(time.Second), rate, window, int(segments), archived, disk, lowAfterWindow, peakAfterWindow, sb.String())
	b.ReportMetric(float64(2*calls)/written.Seconds(), "write-records/s")
	b.ReportMetric(float64(peakAfterWindow), "peak-stream-bytes-after-window")
	b.ReportMetric(float64(peakFirst), "peak-stream-bytes-1st-half")
	b.ReportMetric(float64(peakSecond), "peak-stream-bytes-2nd-half")
	b.ReportMetric(float64(disk)/archived, "disk-bytes/record")
	b.ReportMetric(archived/time.Duration(busy.Load()).Seconds(), "archive-records/s")
	b.ReportMetric(float64(rep.Records)/vt.Seconds(), "verify-records/s")
}

func archCounter(b *testing.B, reg *prometheus.Registry, name string) float64 {
	b.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}
