package audit_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
)

func TestStreamKeyMatchesPassport(t *testing.T) {
	for _, tenant := range []string{"acme", "globex", "a-b_c.d"} {
		if got, want := audit.StreamKey(tenant), passport.AuditStreamKey(tenant); got != want {
			t.Errorf("StreamKey(%q) = %q, passport.AuditStreamKey = %q", tenant, got, want)
		}
		if got, ok := audit.TenantFromStreamKey(audit.StreamKey(tenant)); !ok || got != tenant {
			t.Errorf("TenantFromStreamKey round trip %q -> %q %v", tenant, got, ok)
		}
	}
}

func TestConcurrentAppendAllPresentAndChainsVerify(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true, Fsync: "everysec"})
	rdb := srv.Client()
	s := newStream(t, rdb, audit.StreamConfig{CheckpointEvery: 100})
	ctx := context.Background()

	const goroutines, per = 40, 25
	tenants := []string{"acme", "globex"}
	var mu sync.Mutex
	ids := map[string]string{} // request id -> stream id
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range per {
				n := g*per + i
				rec := decision(tenants[n%2], n)
				rc, err := s.Append(ctx, rec)
				id := rc.ID()
				if err != nil {
					t.Errorf("Append: %v", err)
					return
				}
				if rec.Hash == "" || rec.Seq == 0 || rec.Writer != s.WriterID() {
					t.Errorf("chain fields not filled: %+v", rec)
				}
				mu.Lock()
				ids[rec.RequestID] = id
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(ids) != goroutines*per {
		t.Fatalf("acknowledged %d records, want %d", len(ids), goroutines*per)
	}
	// Every acknowledged record is in its stream, at the id Append gave.
	found := map[string]string{}
	for _, tenant := range tenants {
		err := audit.ScanStream(ctx, rdb, audit.StreamKey(tenant), "-", 500, func(m redis.XMessage) error {
			rec, _, err := audit.ParseMessage(m)
			if err != nil {
				return err
			}
			if rec.Kind == audit.KindDecision {
				found[rec.RequestID] = m.ID
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		rep := verify(t, rdb, tenant, audit.VerifyOptions{})
		mustOK(t, rep)
		if w := rep.Writers[s.WriterID()]; w == nil || w.Checkpoints == 0 {
			t.Errorf("%s: want checkpoints every 100 records, got %+v", tenant, w)
		}
	}
	for req, id := range ids {
		if found[req] != id {
			t.Errorf("request %s acknowledged as %s, stream has %q", req, id, found[req])
		}
	}
	// Group commit: far fewer round trips than records.
	st := s.Stats()
	t.Logf("records=%d batches=%d", st.Written, st.Batches)
	if st.Batches >= uint64(goroutines*per) {
		t.Errorf("batches = %d for %d records: no group commit", st.Batches, goroutines*per)
	}
}

func TestGroupCommitOneRoundTripForConcurrentAppends(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	// A long linger makes the batching deterministic: all 64 callers are
	// queued well within it.
	s := newStream(t, rdb, audit.StreamConfig{MaxWait: 200 * time.Millisecond, MaxBatch: 64})
	ctx := context.Background()
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Go(func() {
			<-start
			if _, err := s.Append(ctx, decision("acme", i)); err != nil {
				t.Errorf("Append: %v", err)
			}
		})
	}
	close(start)
	wg.Wait()
	st := s.Stats()
	if st.Written != 64 {
		t.Fatalf("written %d, want 64", st.Written)
	}
	// The first caller may go alone (a lone record never waits); the other
	// 63 ride together in one or two batches.
	if st.Batches > 3 {
		t.Errorf("64 concurrent appends took %d round trips, want <= 3", st.Batches)
	}
	mustOK(t, verify(t, rdb, "acme", audit.VerifyOptions{}))
}

func TestMultipleWritersOneTenantBothVerify(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	a := newStream(t, rdb, audit.StreamConfig{WriterID: "proxy-a", CheckpointEvery: 7})
	b := newStream(t, rdb, audit.StreamConfig{WriterID: "proxy-b", CheckpointEvery: 7})
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			if _, err := a.Append(ctx, decision("acme", i)); err != nil {
				t.Error(err)
			}
		})
		wg.Go(func() {
			if _, err := b.Append(ctx, decision("acme", 1000+i)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	rep := verify(t, rdb, "acme", audit.VerifyOptions{})
	mustOK(t, rep)
	for _, w := range []string{"proxy-a", "proxy-b"} {
		wr := rep.Writers[w]
		if wr == nil || wr.LastSeq < 50 || wr.Checkpoints == 0 {
			t.Errorf("writer %s: %+v", w, wr)
		}
	}
}

func TestWriterResumesChainAcrossRestart(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	cfg := audit.StreamConfig{WriterID: "proxy-fixed"}
	_, key, _ := edKey()
	cfg.SigningKey = key
	s1, err := audit.NewStream(rdb, cfg, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := s1.Append(context.Background(), decision("acme", i)); err != nil {
			t.Fatal(err)
		}
	}
	_ = s1.Close()
	s2 := newStream(t, rdb, cfg)
	rec := decision("acme", 99)
	if _, err := s2.Append(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	if rec.Seq != 6 {
		t.Errorf("resumed chain at seq %d, want 6", rec.Seq)
	}
	mustOK(t, verify(t, rdb, "acme", audit.VerifyOptions{}))

	// Another key for the same writer id is refused: ids are not shared.
	_, other, _ := edKey()
	cfg.SigningKey = other
	if _, err := audit.NewStream(rdb, cfg, testLogger(t), nil); !errors.Is(err, audit.ErrWriterKeyMismatch) {
		t.Errorf("NewStream with another key for the same id: err = %v, want ErrWriterKeyMismatch", err)
	}
}

func TestAppendAfterCloseFails(t *testing.T) {
	srv := redistest.Start(t)
	s, err := audit.NewStream(srv.Client(), audit.StreamConfig{}, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	if _, err := s.Append(context.Background(), decision("acme", 1)); !errors.Is(err, audit.ErrClosed) {
		t.Errorf("Append after Close: %v, want ErrClosed", err)
	}
}

func TestValuesAreLengthCapped(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	s := newStream(t, rdb, audit.StreamConfig{MaxField: 64, MaxJSON: 128})
	rec := decision("acme", 1)
	rec.Path = "/services/" + string(make([]byte, 500)) + "\r\nX-Forged: 1"
	rec.Input = []byte(fmt.Sprintf(`{"pad":%q}`, string(make([]byte, 400))))
	if _, err := s.Append(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	msgs, err := rdb.XRange(context.Background(), audit.StreamKey("acme"), "-", "+").Result()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("xrange: %v %d", err, len(msgs))
	}
	got, _, err := audit.ParseMessage(msgs[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Path) > 64 {
		t.Errorf("path stored with %d bytes, cap 64", len(got.Path))
	}
	if !strings.Contains(string(got.Input), `"truncated":true`) {
		t.Errorf("input = %s", got.Input)
	}
	mustOK(t, verify(t, rdb, "acme", audit.VerifyOptions{}))
}

func TestAppendRejectsTenantsThatEscapeTheirKey(t *testing.T) {
	srv := redistest.Start(t)
	s := newStream(t, srv.Client(), audit.StreamConfig{})
	for _, tenant := range []string{"", "a}b", "a{b", "acme\r\nx", "a:b", "a*", strings.Repeat("x", 129)} {
		r := decision("acme", 1)
		r.Tenant = tenant
		if _, err := s.Append(context.Background(), r); err == nil {
			t.Errorf("Append accepted tenant %q", tenant)
		}
	}
	s.Enqueue(&audit.Record{Tenant: "a}b"})
	if s.Stats().Dropped != 1 {
		t.Errorf("bad-tenant Enqueue not counted as dropped: %+v", s.Stats())
	}
}

// verify on a live system: writers appending and new writers starting
// while it reads must never be reported as problems.
func TestVerifyWhileWritersAppendAndStart(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	ctx := context.Background()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range 40 { // bounded: the test ends by itself
			select {
			case <-stop:
				return
			default:
			}
			s, err := audit.NewStream(rdb, audit.StreamConfig{CheckpointEvery: 3}, testLogger(t), nil)
			if err != nil {
				t.Error(err)
				return
			}
			for j := range 10 {
				if _, err := s.Append(ctx, decision("acme", i*100+j)); err != nil {
					t.Error(err)
				}
			}
			_ = s.Close()
		}
	})
	for range 8 {
		rep := verify(t, rdb, "acme", audit.VerifyOptions{PageSize: 50})
		if !rep.OK() {
			close(stop)
			wg.Wait()
			t.Fatalf("live verify reported %v", rep.Problems)
		}
	}
	close(stop)
	wg.Wait()
	mustOK(t, verify(t, rdb, "acme", audit.VerifyOptions{}))
}

// TestOutcomesRideWithTheNextAppend: outcome records wait in the committer
// for a write-ahead record and go in its batch, never in one of their own
// while the delay lasts; alone, they are written once it has passed.
func TestOutcomesRideWithTheNextAppend(t *testing.T) {
	outcome := func(i int) *audit.Record {
		r := decision("acme", 1000+i)
		r.Kind, r.Status = audit.KindOutcome, 200
		return r
	}
	run := func(t *testing.T, s *audit.Stream) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
	}

	t.Run("with a decision", func(t *testing.T) {
		srv := redistest.Start(t)
		// A delay no test outlives: outcomes can only go with a decision.
		reg := prometheus.NewRegistry()
		s, err := audit.NewStream(srv.Client(), audit.StreamConfig{OutcomeDelay: time.Hour, MaxWait: -1}, testLogger(t), reg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		run(t, s)
		for i := range 3 {
			s.Enqueue(outcome(i))
		}
		// Run has taken the three out of the buffer and hands them to the
		// committer: without the delay they would be written now, alone.
		eventually(t, 5*time.Second, "outcomes taken by Run", func() bool {
			mfs, _ := reg.Gather()
			for _, mf := range mfs {
				if mf.GetName() == "passport_audit_outcome_buffer_records" {
					return mf.GetMetric()[0].GetGauge().GetValue() == 3
				}
			}
			return false
		})
		appends := 0
		for s.Stats().Written < uint64(appends)+3 {
			if appends == 100 {
				t.Fatalf("outcomes not written after %d appends: %+v", appends, s.Stats())
			}
			if _, err := s.Append(context.Background(), decision("acme", appends)); err != nil {
				t.Fatal(err)
			}
			appends++
		}
		if st := s.Stats(); st.Batches != uint64(appends) {
			t.Fatalf("%d appends took %d batches: outcomes went on their own", appends, st.Batches)
		}
		mustOK(t, verify(t, srv.Client(), "acme", audit.VerifyOptions{}))
	})

	t.Run("alone", func(t *testing.T) {
		srv := redistest.Start(t)
		s := newStream(t, srv.Client(), audit.StreamConfig{OutcomeDelay: 20 * time.Millisecond})
		run(t, s)
		for i := range 3 {
			s.Enqueue(outcome(i))
		}
		eventually(t, 5*time.Second, "outcomes written without a decision", func() bool { return s.Stats().Written == 3 })
	})
}
