package audit_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
)

func outcomeRec(i int) *audit.Record {
	return &audit.Record{Kind: audit.KindOutcome, RequestID: fmt.Sprintf("out-%06d", i), Tenant: "acme",
		AgentID: "agent-1", Method: "POST", Path: "/services/checkout/restart", Action: "service.restart",
		Decision: audit.DecisionAllow, Status: 200, LatencyMS: 2}
}

// streamRecords reads a tenant's whole stream.
func streamRecords(t testing.TB, rdb redis.UniversalClient, tenant string) []*audit.Record {
	t.Helper()
	msgs, err := rdb.XRange(context.Background(), audit.StreamKey(tenant), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	var out []*audit.Record
	for _, m := range msgs {
		rec, _, err := audit.ParseMessage(m)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, rec)
	}
	return out
}

func runStream(t *testing.T, s *audit.Stream) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var stopped bool
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("run: %v", err)
			}
		}
	}
	t.Cleanup(stop)
	return stop
}

func gauge(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestOutcomesSpooledWhileRedisDown: with Redis killed, outcome records
// wait in the spool (visible in the metrics), none is dropped, and once
// Redis is back they reach the stream in the order they were enqueued,
// each exactly once, and the chain verifies.
func TestOutcomesSpooledWhileRedisDown(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	rdb := srv.Client()
	reg := prometheus.NewRegistry()
	dir := t.TempDir()
	s, err := audit.NewStream(rdb, audit.StreamConfig{SpoolDir: dir, RetryMax: 100 * time.Millisecond,
		WriteTimeout: 300 * time.Millisecond}, testLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	runStream(t, s)
	if _, err := s.Append(context.Background(), decision("acme", 0)); err != nil {
		t.Fatal(err)
	}

	srv.Kill()
	const n = 3000
	for i := range n {
		s.Enqueue(outcomeRec(i))
	}
	eventually(t, 5*time.Second, "degraded", s.Degraded)
	eventually(t, 10*time.Second, "records in the spool", func() bool { return gauge(t, reg, "passport_audit_spool_records") > 0 })
	if err := s.OutcomeRoom(); err != nil {
		t.Fatalf("outcome room with a small spool: %v", err)
	}
	if d := s.Stats().Dropped; d != 0 {
		t.Fatalf("%d records dropped while Redis was down", d)
	}

	srv.Restart()
	eventually(t, 20*time.Second, "every outcome in the stream", func() bool {
		return len(streamRecords(t, rdb, "acme")) >= n+1
	})
	eventually(t, 5*time.Second, "an empty spool", func() bool { return gauge(t, reg, "passport_audit_spool_records") == 0 })
	recs := streamRecords(t, rdb, "acme")
	next := 0
	for _, r := range recs {
		if r.Kind != audit.KindOutcome {
			continue
		}
		if want := fmt.Sprintf("out-%06d", next); r.RequestID != want {
			t.Fatalf("outcome %d is %s, want %s (order or duplicates)", next, r.RequestID, want)
		}
		next++
	}
	if next != n {
		t.Fatalf("%d outcomes in the stream, want %d", next, n)
	}
	if d := s.Stats().Dropped; d != 0 {
		t.Fatalf("%d dropped", d)
	}
	if got := gauge(t, reg, "passport_audit_spool_replayed_total"); got == 0 {
		t.Fatal("nothing counted as replayed from the spool")
	}
	mustOK(t, verify(t, rdb, "acme", audit.VerifyOptions{}))
	eventually(t, 5*time.Second, "not degraded", func() bool { return !s.Degraded() })
}

// TestOutcomeOverflowNeverDropped: records enqueued faster than the
// flusher takes them (a buffer of 10) go to the spool from Enqueue
// itself: with Redis down, nothing is dropped, and after it returns every
// record is in the stream exactly once (the order may differ where the
// buffer overflowed).
func TestOutcomeOverflowNeverDropped(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	rdb := srv.Client()
	s := newStream(t, rdb, audit.StreamConfig{OutcomeBuffer: 10, RetryMax: 100 * time.Millisecond, WriteTimeout: 300 * time.Millisecond})
	runStream(t, s)
	srv.Kill()
	const n = 2000
	for i := range n {
		s.Enqueue(outcomeRec(i))
	}
	if d := s.Stats().Dropped; d != 0 {
		t.Fatalf("%d dropped", d)
	}
	srv.Restart()
	eventually(t, 20*time.Second, "every outcome in the stream", func() bool { return len(streamRecords(t, rdb, "acme")) >= n })
	seen := map[string]int{}
	for _, r := range streamRecords(t, rdb, "acme") {
		if r.Kind == audit.KindOutcome {
			seen[r.RequestID]++
		}
	}
	for i := range n {
		if id := fmt.Sprintf("out-%06d", i); seen[id] != 1 {
			t.Fatalf("%s recorded %d times", id, seen[id])
		}
	}
	mustOK(t, verify(t, rdb, "acme", audit.VerifyOptions{}))
}

// TestSpoolReplayedAfterRestart: records that Redis did not take before
// the writer stopped stay in the configured spool and are written by the
// next writer that opens it.
func TestSpoolReplayedAfterRestart(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	rdb := srv.Client()
	dir := t.TempDir()
	cfg := audit.StreamConfig{SpoolDir: dir, WriteTimeout: 200 * time.Millisecond, ShutdownTimeout: 500 * time.Millisecond}
	s := newStream(t, rdb, cfg)
	stop := runStream(t, s)
	srv.Kill()
	for i := range 50 {
		s.Enqueue(outcomeRec(i))
	}
	stop()
	_ = s.Close()
	if s.Stats().Dropped != 0 {
		t.Fatalf("dropped %d at shutdown with a spool", s.Stats().Dropped)
	}

	srv.Restart()
	s2 := newStream(t, rdb, cfg)
	runStream(t, s2)
	eventually(t, 10*time.Second, "the earlier run's outcomes", func() bool { return len(streamRecords(t, rdb, "acme")) >= 50 })
	n := 0
	for _, r := range streamRecords(t, rdb, "acme") {
		if r.Kind == audit.KindOutcome {
			n++
		}
	}
	if n != 50 {
		t.Fatalf("%d outcomes, want 50", n)
	}
}

// TestSpoolFullFailsClosed: at SpoolMaxBytes OutcomeRoom refuses (the
// proxy then forwards nothing new), but records still go in: nothing of
// a call already forwarded is dropped.
func TestSpoolFullFailsClosed(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	s := newStream(t, rdb, audit.StreamConfig{OutcomeBuffer: 10, SpoolDir: t.TempDir(), SpoolMaxBytes: 8 << 10,
		WriteTimeout: 200 * time.Millisecond})
	runStream(t, s)
	srv.Kill()
	for i := range 200 {
		s.Enqueue(outcomeRec(i))
	}
	eventually(t, 10*time.Second, "a full spool", func() bool { return errors.Is(s.OutcomeRoom(), audit.ErrSpoolFull) })
	for i := 200; i < 300; i++ {
		s.Enqueue(outcomeRec(i))
	}
	if d := s.Stats().Dropped; d != 0 {
		t.Fatalf("%d dropped with the spool over its bound", d)
	}
}

// TestSpoolDirLocked: two writers cannot share a spool directory.
func TestSpoolDirLocked(t *testing.T) {
	srv := redistest.Start(t)
	dir := t.TempDir()
	newStream(t, srv.Client(), audit.StreamConfig{SpoolDir: dir})
	if _, err := audit.NewStream(srv.Client(), audit.StreamConfig{SpoolDir: dir}, testLogger(t), nil); err == nil {
		t.Fatal("a second writer opened a spool in use")
	}
	if _, err := os.Stat(dir + "/lock"); err != nil {
		t.Fatal(err)
	}
}
