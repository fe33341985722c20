package audit_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
)

// BenchmarkAppendParallel measures the write-ahead path under concurrency:
//
//	group-commit   the Stream as the proxy uses it (batches in one round trip)
//	no-batching    the same chained, checked append, one record per round trip
//	plain-xadd     one bare XADD per record from every goroutine: no chain,
//	               no ordering, the floor any audited design pays
//
// Run: go test -run XXX -bench AppendParallel -cpu 1,4 ./audit/
func BenchmarkAppendParallel(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{AOF: true, Fsync: "everysec"})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 64})
	b.Cleanup(func() { _ = rdb.Close() })
	rec := decision("acme", 1)

	par := 16 // many in-flight requests per CPU, as in a proxy
	run := func(b *testing.B, appendOne func(ctx context.Context) error) {
		b.SetParallelism(par)
		ctx := context.Background()
		start := time.Now()
		cpu0 := cpuTime()
		var n, lat atomic.Int64
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				t0 := time.Now()
				if err := appendOne(ctx); err != nil {
					b.Error(err)
					return
				}
				lat.Add(int64(time.Since(t0)))
				n.Add(1)
			}
		})
		b.StopTimer()
		b.ReportMetric(float64(n.Load())/time.Since(start).Seconds(), "records/s")
		if n.Load() > 0 {
			// What one caller waits (ns/op is the inverse of throughput).
			b.ReportMetric(float64(lat.Load())/float64(n.Load())/1e3, "µs/append")
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(n.Load())/1e3, "cpu-µs/append")
		}
	}
	b.Run("group-commit", func(b *testing.B) {
		s := newStream(b, rdb, audit.StreamConfig{CheckpointEvery: 10000})
		run(b, appender(s, rec))
		st := s.Stats()
		if st.Batches > 0 {
			b.ReportMetric(float64(st.Written)/float64(st.Batches), "records/batch")
			// How often the next batch went while one was in flight, and
			// how often Redis ran it first (its records were sent again).
			b.ReportMetric(float64(st.Pipelined)/float64(st.Batches), "pipelined/batch")
			b.ReportMetric(float64(st.Resent)/float64(st.Written), "resent/record")
		}
	})
	// One batch in flight at a time, as before pipelining.
	b.Run("group-commit-serial", func(b *testing.B) {
		defer audit.SetMaxInFlight(1)()
		s := newStream(b, rdb, audit.StreamConfig{CheckpointEvery: 10000})
		run(b, appender(s, rec))
		if st := s.Stats(); st.Batches > 0 {
			b.ReportMetric(float64(st.Written)/float64(st.Batches), "records/batch")
		}
	})
	// Two callers per CPU: a light load, where a batch rarely waits for
	// company and the next one goes while it is in flight.
	b.Run("group-commit-light", func(b *testing.B) {
		par = 2
		defer func() { par = 16 }()
		s := newStream(b, rdb, audit.StreamConfig{CheckpointEvery: 10000})
		run(b, appender(s, rec))
	})
	b.Run("group-commit-no-linger", func(b *testing.B) {
		s := newStream(b, rdb, audit.StreamConfig{MaxWait: -1, CheckpointEvery: 10000})
		run(b, appender(s, rec))
	})
	b.Run("no-batching", func(b *testing.B) {
		s := newStream(b, rdb, audit.StreamConfig{MaxBatch: 1, CheckpointEvery: 10000})
		run(b, appender(s, rec))
	})
	b.Run("plain-xadd", func(b *testing.B) {
		run(b, plainXAdd(rdb))
	})
}

// BenchmarkAppendAtRate measures what one caller waits at a steady 1,000
// appends a second (one every millisecond, each from its own goroutine, as
// calls arrive at a proxy), against a bare XADD at the same rate: the p99
// is what the proxy's fixed-rate latency target feels. The batch linger
// once slept on a timer, which an idle runtime rounds up to a millisecond:
// p99 1.2 ms against 0.4 ms with the yielding linger.
//
// Run: go test -run XXX -bench AppendAtRate -benchtime 3s ./audit/
func BenchmarkAppendAtRate(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{AOF: true, Fsync: "everysec"})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 64})
	b.Cleanup(func() { _ = rdb.Close() })
	rec := decision("acme", 1)
	run := func(b *testing.B, appendOne func(ctx context.Context) error) {
		ctx := context.Background()
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		var (
			mu   sync.Mutex
			lats []time.Duration
			wg   sync.WaitGroup
		)
		cpu0 := cpuTime()
		for b.Loop() {
			<-tick.C
			wg.Go(func() {
				t0 := time.Now()
				if err := appendOne(ctx); err != nil {
					b.Error(err)
					return
				}
				d := time.Since(t0)
				mu.Lock()
				lats = append(lats, d)
				mu.Unlock()
			})
		}
		wg.Wait()
		slices.Sort(lats)
		if n := len(lats); n > 0 {
			b.ReportMetric(float64(lats[n/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lats[n*99/100].Microseconds()), "p99-µs")
			// The test process's CPU (client and writer, not redis-server)
			// per append: hand-overs between goroutines cost CPU as well
			// as time, and CPU is what a loaded machine shows reliably.
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(n)/1e3, "cpu-µs/append")
		}
	}
	b.Run("stream", func(b *testing.B) {
		s := newStream(b, rdb, audit.StreamConfig{CheckpointEvery: 10000})
		run(b, appender(s, rec))
	})
	// As the proxy writes: each allowed call's outcome follows its
	// decision and rides in the batch of the next call's.
	b.Run("stream-outcomes", func(b *testing.B) {
		s := newStream(b, rdb, audit.StreamConfig{CheckpointEvery: 10000})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		run(b, func(ctx context.Context) error {
			r := *rec
			_, err := s.Append(ctx, &r)
			if err == nil {
				o := r
				o.Kind, o.Status = audit.KindOutcome, 200
				s.Enqueue(&o)
			}
			return err
		})
		cancel()
		<-done
	})
	b.Run("plain-xadd", func(b *testing.B) {
		run(b, plainXAdd(rdb))
	})
}

// appender appends a copy of rec to s.
func appender(s *audit.Stream, rec *audit.Record) func(context.Context) error {
	return func(ctx context.Context) error {
		r := *rec
		_, err := s.Append(ctx, &r)
		return err
	}
}

// plainXAdd writes one bare XADD of a sealed record: no chain, no
// ordering, the floor any audited design pays.
func plainXAdd(rdb *redis.Client) func(context.Context) error {
	raw, _ := audit.Seal(&audit.Record{Kind: audit.KindDecision, Tenant: "bench", Writer: "w", Seq: 1})
	return func(ctx context.Context) error {
		return rdb.XAdd(ctx, &redis.XAddArgs{Stream: "passport:{t:bench}:audit", Values: []any{audit.FieldRecord, raw}}).Err()
	}
}

// BenchmarkAppendWitness measures what the witness costs a write-ahead
// Append: the same parallel appends as BenchmarkAppendParallel's
// group-commit case, with Run going (checkpoints every second, the default)
// and no witness, a directory witness (one fsynced line per second), or a
// directory witness and a `passport witness`-style HTTP one. Statements go
// out once per checkpoint interval from their own goroutines, never per
// record, so the figures should not differ beyond noise.
//
// Run: go test -run XXX -bench AppendWitness -benchtime 5s ./audit/
func BenchmarkAppendWitness(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{AOF: true, Fsync: "everysec"})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 64})
	b.Cleanup(func() { _ = rdb.Close() })
	rec := decision("acme", 1)
	dirW := func(b *testing.B) audit.Witness {
		w, err := audit.NewDirWitness(b.TempDir(), audit.DirWitnessOptions{})
		if err != nil {
			b.Fatal(err)
		}
		return w
	}
	httpW := func(b *testing.B) audit.Witness {
		store := dirW(b).(*audit.DirWitness)
		hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			if err := store.Witness(r.Context(), body); err != nil {
				http.Error(w, err.Error(), http.StatusConflict)
			}
		}))
		b.Cleanup(hs.Close)
		w, err := audit.OpenWitness(hs.URL, "")
		if err != nil {
			b.Fatal(err)
		}
		return w
	}
	cases := []struct {
		name      string
		witnesses func(b *testing.B) []audit.Witness
	}{
		{"no-witness", func(*testing.B) []audit.Witness { return nil }},
		{"dir-witness", func(b *testing.B) []audit.Witness { return []audit.Witness{dirW(b)} }},
		{"dir-and-http-witness", func(b *testing.B) []audit.Witness { return []audit.Witness{dirW(b), httpW(b)} }},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			reg := prometheus.NewRegistry()
			s, err := audit.NewStream(rdb, audit.StreamConfig{Witnesses: tc.witnesses(b)}, testLogger(b), reg)
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- s.Run(ctx) }()
			b.SetParallelism(16)
			start := time.Now()
			var n, lat atomic.Int64
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				r := *rec
				for pb.Next() {
					t0 := time.Now()
					c := r
					if _, err := s.Append(context.Background(), &c); err != nil {
						b.Error(err)
						return
					}
					lat.Add(int64(time.Since(t0)))
					n.Add(1)
				}
			})
			b.StopTimer()
			elapsed := time.Since(start)
			cancel()
			<-done
			_ = s.Close()
			b.ReportMetric(float64(n.Load())/elapsed.Seconds(), "records/s")
			if n.Load() > 0 {
				b.ReportMetric(float64(lat.Load())/float64(n.Load())/1e3, "µs/append")
			}
			b.ReportMetric(witnessStatements(reg)/elapsed.Seconds(), "statements/s")
		})
	}
}

// witnessStatements sums the statements stored at every witness.
func witnessStatements(reg *prometheus.Registry) float64 {
	mfs, _ := reg.Gather()
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != "passport_audit_witness_statements_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == "stored" {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

// cpuTime is the process's user and system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
