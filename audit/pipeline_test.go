package audit_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/netfault"
	"github.com/agentpassport/passport/internal/redistest"
)

// receipt is what an acknowledged Append told its caller.
type receipt struct {
	id  string
	seq uint64
}

// ledger collects the receipts a storm of Appends was given.
type ledger struct {
	mu     sync.Mutex
	acked  map[string]receipt
	failed atomic.Int64
	next   atomic.Int64
}

func newLedger() *ledger { return &ledger{acked: map[string]receipt{}} }

func (l *ledger) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acked)
}

// storm runs workers that Append decisions (and, with outcomes, Enqueue
// each acknowledged call's outcome) until stop closes.
func (l *ledger) storm(t *testing.T, s *audit.Stream, prefix string, workers int, outcomes bool, stop <-chan struct{}) *sync.WaitGroup {
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				rec := decision("acme", int(l.next.Add(1)))
				rec.RequestID = prefix + rec.RequestID
				rc, err := s.Append(context.Background(), rec)
				if err != nil {
					if rc.ID() != "" {
						t.Errorf("Append returned id %q with error %v", rc.ID(), err)
					}
					l.failed.Add(1)
					continue
				}
				l.mu.Lock()
				if _, dup := l.acked[rec.RequestID]; dup {
					t.Errorf("request %s acknowledged twice", rec.RequestID)
				}
				l.acked[rec.RequestID] = receipt{id: rc.ID(), seq: rec.Seq}
				l.mu.Unlock()
				if outcomes {
					s.Enqueue(outcome(rec))
				}
			}
		})
	}
	return &wg
}

// joinReceipts checks every acknowledged receipt against the stream: each
// acknowledged record is stored exactly once, under the id and sequence
// number its caller was given, and each writer's records are in chain
// order (consecutive sequence numbers, each linked to the one before).
func joinReceipts(t *testing.T, rdb redis.UniversalClient, ledgers ...*ledger) {
	t.Helper()
	seen := map[string]int{}
	at := map[string]receipt{}
	last := map[string]*audit.Record{}
	for _, rec := range streamRecordsWithIDs(t, rdb, "acme", at) {
		if rec.Kind == audit.KindDecision {
			seen[rec.RequestID]++
		}
		if p := last[rec.Writer]; p != nil && (rec.Seq != p.Seq+1 || rec.Prev != p.Hash) {
			t.Errorf("writer %s: seq %d (prev %.8s) follows seq %d (hash %.8s)", rec.Writer, rec.Seq, rec.Prev, p.Seq, p.Hash)
		}
		last[rec.Writer] = rec
	}
	total := 0
	for _, l := range ledgers {
		l.mu.Lock()
		for req, rc := range l.acked {
			total++
			if seen[req] != 1 {
				t.Errorf("acknowledged %s stored %d times", req, seen[req])
				continue
			}
			if got := at[req]; got != rc {
				t.Errorf("acknowledged %s as %v, stored as %v", req, rc, got)
			}
		}
		l.mu.Unlock()
	}
	for req, n := range seen {
		if n > 1 {
			t.Errorf("%s stored %d times", req, n)
		}
	}
	if total == 0 {
		t.Fatal("nothing acknowledged")
	}
}

// streamRecordsWithIDs reads the stream and notes each decision's id and seq.
func streamRecordsWithIDs(t *testing.T, rdb redis.UniversalClient, tenant string, at map[string]receipt) []*audit.Record {
	t.Helper()
	var out []*audit.Record
	err := audit.ScanStream(context.Background(), rdb, audit.StreamKey(tenant), "-", 1000, func(m redis.XMessage) error {
		rec, _, err := audit.ParseMessage(m)
		if err != nil {
			return err
		}
		if rec.Kind == audit.KindDecision {
			at[rec.RequestID] = receipt{id: m.ID, seq: rec.Seq}
		}
		out = append(out, rec)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// waitMore waits until the ledger holds n more receipts than now.
func (l *ledger) waitMore(t *testing.T, n int, what string) {
	t.Helper()
	target := l.count() + n
	eventually(t, 20*time.Second, what, func() bool { return l.count() >= target })
}

func (l *ledger) waitFailure(t *testing.T, what string) {
	t.Helper()
	target := l.failed.Load() + 1
	eventually(t, 20*time.Second, what, func() bool { return l.failed.Load() >= target })
}

// TestPipelineStormThroughPauseFreezeKill: a storm of Appends, each
// allowed call's outcome riding along, while Redis pauses writes, freezes
// (SIGSTOP) and is killed (SIGKILL, AOF fsync always) and restarted with
// batches in flight. Every acknowledged receipt is stored exactly once in
// chain order, the stream verifies, and the storm did pipeline.
func TestPipelineStormThroughPauseFreezeKill(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true, Fsync: "always"})
	rdb := srv.Client()
	admin := srv.Client()
	s := newStream(t, rdb, audit.StreamConfig{WriteTimeout: 300 * time.Millisecond, CheckpointEvery: 100,
		CheckpointInterval: 50 * time.Millisecond, RetryMin: 10 * time.Millisecond, RetryMax: 100 * time.Millisecond})
	stopRun := runStream(t, s)
	l := newLedger()
	stop := make(chan struct{})
	wg := l.storm(t, s, "", 6, true, stop) // fewer than pipelineBelow: the writer pipelines

	l.waitMore(t, 300, "appends before the faults")
	if err := admin.Do(context.Background(), "CLIENT", "PAUSE", "150", "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	l.waitMore(t, 300, "appends after the pause")
	srv.Freeze()
	l.waitFailure(t, "an Append to fail while Redis is frozen")
	srv.Thaw()
	l.waitMore(t, 300, "appends after the freeze")
	srv.Kill()
	l.waitFailure(t, "an Append to fail while Redis is down")
	srv.Restart()
	l.waitMore(t, 300, "appends after the restart")
	close(stop)
	wg.Wait()
	stopRun()

	joinReceipts(t, rdb, l)
	mustOK(t, verify(t, rdb, "acme", audit.VerifyOptions{}))
	st := s.Stats()
	if st.Pipelined == 0 {
		t.Errorf("no batch was pipelined (stats %+v)", st)
	}
	t.Logf("acked=%d failed=%d stats=%+v", l.count(), l.failed.Load(), st)
}

// TestPipelineHeadMovedByAnotherWriter: two processes with one writer id
// (and key) append to one chain at once, so each moves the head under the
// other's pipelined batches. The refusals resolve by re-reading the head:
// the chain never forks, and every acknowledged record is stored once.
func TestPipelineHeadMovedByAnotherWriter(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	_, key, err := edKey()
	if err != nil {
		t.Fatal(err)
	}
	cfg := audit.StreamConfig{WriterID: "twin", SigningKey: key, CheckpointEvery: 50}
	a := newStream(t, rdb, cfg)
	b := newStream(t, srv.Client(), cfg)
	la, lb := newLedger(), newLedger()
	lb.next.Store(1 << 20)
	stop := make(chan struct{})
	wa := la.storm(t, a, "a-", 6, false, stop)
	wb := lb.storm(t, b, "b-", 6, false, stop)
	eventually(t, 30*time.Second, "both writers acknowledged records and resent refused ones", func() bool {
		return la.count() >= 300 && lb.count() >= 300 && a.Stats().Resent+b.Stats().Resent > 0
	})
	close(stop)
	wa.Wait()
	wb.Wait()
	joinReceipts(t, rdb, la, lb)
	mustOK(t, verify(t, rdb, "acme", audit.VerifyOptions{}))
	t.Logf("a: acked=%d failed=%d %+v; b: acked=%d failed=%d %+v", la.count(), la.failed.Load(), a.Stats(),
		lb.count(), lb.failed.Load(), b.Stats())
}

// relayClient is a client that reaches srv through a relay the test
// controls, with no client-side retries.
func relayClient(t *testing.T, srv *redistest.Server) (*redis.Client, *netfault.Relay) {
	relay := netfault.Start(t, srv.Addr)
	rdb := redis.NewClient(&redis.Options{Addr: relay.Addr(), MaxRetries: -1, ContextTimeoutEnabled: true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb, relay
}

// appendAsync appends a decision on its own goroutine.
func appendAsync(s *audit.Stream, rec *audit.Record) <-chan error {
	done := make(chan error, 1)
	go func() {
		_, err := s.Append(context.Background(), rec)
		done <- err
	}()
	return done
}

// TestPipelineReorderedBatches: batch N is held up on its connection, so
// batch N+1 (pipelined, on another connection of the pool) reaches Redis
// first. The script refuses N+1, whose caller is not told "stored"; N+1 is
// sent again once N is in, and the chain has both in order. When N then
// fails instead (its connection reset before it reached Redis), N+1 is
// stored right after the last stored record: no gap, no fork.
func TestPipelineReorderedBatches(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reset bool // N's connection is reset: N never reaches Redis
	}{{"late", false}, {"lost", true}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := redistest.Start(t)
			rdb, relay := relayClient(t, srv)
			s := newStream(t, rdb, audit.StreamConfig{WriteTimeout: 3 * time.Second})
			if _, err := s.Append(context.Background(), decision("acme", 0)); err != nil {
				t.Fatal(err)
			}
			// The pool's connections so far are slow; a new one is not.
			held := relay.Open()
			for _, c := range held {
				c.Delay(400 * time.Millisecond)
			}
			recN, recN1 := decision("acme", 1), decision("acme", 2)
			errN := appendAsync(s, recN)
			eventually(t, 5*time.Second, "batch N in flight", func() bool { return s.Flying() == 1 })
			errN1 := appendAsync(s, recN1)
			eventually(t, 5*time.Second, "batch N+1 in flight", func() bool { return s.Flying() == 2 })
			if tc.reset {
				for _, c := range held {
					c.Reset()
				}
			}
			gotN, gotN1 := <-errN, <-errN1
			if tc.reset != (gotN != nil) {
				t.Fatalf("batch N: err = %v", gotN)
			}
			if gotN1 != nil {
				t.Fatalf("batch N+1: err = %v, want it sent again and stored", gotN1)
			}
			st := s.Stats()
			if st.Pipelined == 0 || st.Resent != 1 {
				t.Errorf("stats %+v: want a pipelined batch and one record sent again", st)
			}
			direct := srv.Client() // the relay's slow connections are the pool's
			at := map[string]receipt{}
			recs := streamRecordsWithIDs(t, direct, "acme", at)
			var reqs []string
			for _, r := range recs {
				reqs = append(reqs, r.RequestID)
			}
			want := []string{"req-acme-0", "req-acme-1", "req-acme-2"}
			if tc.reset {
				want = []string{"req-acme-0", "req-acme-2"}
			}
			if fmt.Sprint(reqs) != fmt.Sprint(want) {
				t.Errorf("stream holds %v, want %v", reqs, want)
			}
			if got := at[recN1.RequestID].seq; got != recN1.Seq || got != uint64(len(want)) {
				t.Errorf("N+1 acknowledged at seq %d, stored at seq %d, want %d", recN1.Seq, got, len(want))
			}
			mustOK(t, verify(t, direct, "acme", audit.VerifyOptions{}))
		})
	}
}

// TestStalledRedisCallerDeadline: with Redis frozen, an Append returns
// with an error by its caller's deadline (well before WriteTimeout), alone
// or behind a batch already stalled in flight; once Redis is back the
// chain goes on, and the stalled record, if it landed late, was never
// acknowledged.
func TestStalledRedisCallerDeadline(t *testing.T) {
	for _, tc := range []struct {
		name   string
		behind bool // another Append's batch is stalled in flight first
	}{{"alone", false}, {"behind a stalled batch", true}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := redistest.Start(t)
			rdb := srv.Client()
			s := newStream(t, rdb, audit.StreamConfig{WriteTimeout: 10 * time.Second})
			if _, err := s.Append(context.Background(), decision("acme", 0)); err != nil {
				t.Fatal(err)
			}
			srv.Freeze()
			thawed := false
			defer func() {
				if !thawed {
					srv.Thaw()
				}
			}()
			if tc.behind {
				first := appendAsync(s, decision("acme", 100))
				eventually(t, 5*time.Second, "a batch in flight", func() bool { return s.Flying() == 1 })
				defer func() { <-first }()
			}
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			start := time.Now()
			rec := decision("acme", 1)
			rc, err := s.Append(ctx, rec)
			took := time.Since(start)
			if err == nil || rc.ID() != "" {
				t.Fatalf("Append to a frozen Redis: receipt %q, err %v", rc.ID(), err)
			}
			if !errors.Is(err, audit.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("err = %v, want a timeout", err)
			}
			if took > 2*time.Second {
				t.Errorf("Append took %v with a 200ms deadline", took)
			}
			srv.Thaw()
			thawed = true
			next := 2
			eventually(t, 15*time.Second, "appends after the thaw", func() bool {
				_, err := s.Append(context.Background(), decision("acme", next))
				next++
				return err == nil
			})
			if rec.Seq != 0 || rec.Hash != "" {
				t.Errorf("the failed Append filled in seq %d, hash %q", rec.Seq, rec.Hash)
			}
			mustOK(t, verify(t, rdb, "acme", audit.VerifyOptions{}))
		})
	}
}
