package audit_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
)

// With appendfsync always, every Append that returned an id is on disk:
// killing Redis with SIGKILL loses none of them, writes while it is down
// fail (never a silent success), and the same Stream works again after
// the restart.
func TestKillRestartNoAckedRecordLostAndRecovers(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true, Fsync: "always"})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = rdb.Close() })
	s := newStream(t, rdb, audit.StreamConfig{WriteTimeout: 500 * time.Millisecond, CheckpointEvery: 50})
	ctx := context.Background()

	var (
		mu      sync.Mutex
		acked   = map[string]string{}
		failed  atomic.Int64
		n       atomic.Int64
		stop    = make(chan struct{})
		wg      sync.WaitGroup
		sawFail = make(chan struct{})
		once    sync.Once
	)
	for range 8 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				rec := decision("acme", int(n.Add(1)))
				rc, err := s.Append(ctx, rec)
				id := rc.ID()
				if err != nil {
					if id != "" {
						t.Errorf("Append returned id %q with error %v", id, err)
					}
					failed.Add(1)
					once.Do(func() { close(sawFail) })
					continue
				}
				mu.Lock()
				acked[rec.RequestID] = id
				mu.Unlock()
			}
		})
	}
	eventually(t, 10*time.Second, "some acknowledged records", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) >= 200
	})
	srv.Kill()
	select {
	case <-sawFail:
	case <-time.After(10 * time.Second):
		t.Fatal("no Append failed while Redis was down")
	}
	// While down, nothing succeeds.
	mu.Lock()
	before := len(acked)
	mu.Unlock()
	if _, err := s.Append(ctx, decision("acme", -1)); err == nil {
		t.Fatal("Append succeeded while Redis was killed")
	}
	mu.Lock()
	if len(acked) != before {
		t.Errorf("%d appends acknowledged while Redis was down", len(acked)-before)
	}
	mu.Unlock()

	srv.Restart()
	eventually(t, 10*time.Second, "appends to succeed after restart", func() bool {
		_, err := s.Append(ctx, decision("acme", -2))
		return err == nil
	})
	close(stop)
	wg.Wait()
	if failed.Load() == 0 {
		t.Fatal("no failures recorded")
	}

	// Every acknowledged record survived the SIGKILL.
	present := map[string]string{}
	err := audit.ScanStream(ctx, rdb, audit.StreamKey("acme"), "-", 1000, func(m redis.XMessage) error {
		rec, _, err := audit.ParseMessage(m)
		if err != nil {
			return err
		}
		present[rec.RequestID] = m.ID
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	lost := 0
	for req, id := range acked {
		if present[req] != id {
			lost++
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d acknowledged records lost across kill+restart", lost, len(acked))
	}
	t.Logf("acked=%d failed=%d stored=%d", len(acked), failed.Load(), len(present))
	// And the chains still verify: the writer re-read its head after the
	// failures instead of forking or leaving a gap.
	mustOK(t, verify(t, rdb, "acme", audit.VerifyOptions{}))
}

// Outcome records written while Redis is down wait (in the buffer, then
// the spool), are retried, and reach the stream once Redis is back: with a
// buffer of 50 and 190 records enqueued during the outage, none is
// dropped (the buffer used to drop and count them).
func TestEnqueueRetriesAcrossOutageAndCountsDrops(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = rdb.Close() })
	s := newStream(t, rdb, audit.StreamConfig{
		OutcomeBuffer: 50, WriteTimeout: 300 * time.Millisecond,
		RetryMin: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond,
	})
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-runDone
	})

	outcome := func(i int) *audit.Record {
		r := decision("acme", i)
		r.Kind, r.Status, r.LatencyMS = audit.KindOutcome, 200, 3.5
		return r
	}
	for i := range 10 {
		s.Enqueue(outcome(i))
	}
	eventually(t, 5*time.Second, "10 outcomes written", func() bool { return s.Stats().Written >= 10 })

	srv.Kill()
	for i := 10; i < 30; i++ {
		s.Enqueue(outcome(i))
	}
	// Overfill: the buffer holds 50; the rest goes to the spool.
	for i := 30; i < 200; i++ {
		s.Enqueue(outcome(i))
	}
	if d := s.Stats().Dropped; d != 0 {
		t.Fatalf("%d outcome records dropped during the outage", d)
	}
	srv.Restart()
	dropped := s.Stats().Dropped
	eventually(t, 10*time.Second, "buffer flushed after restart", func() bool {
		n, err := rdb.XLen(context.Background(), audit.StreamKey("acme")).Result()
		return err == nil && uint64(n)+dropped >= 200
	})
	cancel()
	if err := <-runDone; err != nil {
		t.Fatalf("Run: %v", err)
	}
	runDone <- nil // for the cleanup
	rep := verify(t, rdb, "acme", audit.VerifyOptions{})
	mustOK(t, rep) // no duplicate outcome for one request id, chain intact
	outcomes := 0
	_ = audit.ScanStream(context.Background(), rdb, audit.StreamKey("acme"), "-", 1000, func(m redis.XMessage) error {
		if rec, _, err := audit.ParseMessage(m); err == nil && rec.Kind == audit.KindOutcome {
			outcomes++
		}
		return nil
	})
	if outcomes != 200 || s.Stats().Dropped != 0 {
		t.Errorf("outcomes stored %d, dropped %d; want 200 and 0", outcomes, s.Stats().Dropped)
	}
	// The shutdown checkpoint sealed the chain.
	if w := rep.Writers[s.WriterID()]; w == nil || w.Unsealed != 0 {
		t.Errorf("after Run returned, chain not sealed: %+v", w)
	}
	if errors.Is(ctx.Err(), context.Canceled) == false {
		t.Fatal("unreachable")
	}
}

// A write Redis does not acknowledge within WriteTimeout is an error, and
// when the stalled write lands later anyway the chain stays consistent:
// the writer re-reads its head instead of forking.
func TestWriteTimeoutIsAnErrorAndChainSurvivesLateWrite(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	admin := srv.Client()
	s := newStream(t, rdb, audit.StreamConfig{WriteTimeout: 200 * time.Millisecond})
	ctx := context.Background()
	if _, err := s.Append(ctx, decision("acme", 1)); err != nil {
		t.Fatal(err)
	}
	// Redis stops serving writes for a second: the append cannot be acked.
	if err := admin.Do(ctx, "CLIENT", "PAUSE", "1000", "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := s.Append(ctx, decision("acme", 2))
	if !errors.Is(err, audit.ErrTimeout) {
		t.Fatalf("Append during pause: err = %v, want ErrTimeout", err)
	}
	if d := time.Since(start); d > 900*time.Millisecond {
		t.Errorf("Append took %v with a 200ms write timeout", d)
	}
	// Each attempt is a new request, as in the proxy (a timed-out call was
	// answered 503 and is never retried under its request id): an attempt
	// that timed out may still land once the pause ends, and reusing its
	// request id would rightly be reported as a duplicate.
	next := 3
	eventually(t, 5*time.Second, "appends to succeed after the pause", func() bool {
		_, err := s.Append(ctx, decision("acme", next))
		next++
		return err == nil
	})
	mustOK(t, verify(t, rdb, "acme", audit.VerifyOptions{}))
}

// With WaitReplicas, an append is acknowledged only once a replica has it;
// when the replica is gone, appends fail instead of claiming a durability
// they do not have.
func TestWaitReplicas(t *testing.T) {
	primary := redistest.Start(t, redistest.Options{AOF: true})
	replica := redistest.Start(t, redistest.Options{Args: []string{"--replicaof", "127.0.0.1", fmt.Sprint(primary.Port)}})
	rdb := primary.Client()
	ctx := context.Background()
	eventually(t, 10*time.Second, "replica in sync", func() bool {
		info, err := rdb.Info(ctx, "replication").Result()
		return err == nil && strings.Contains(info, "connected_slaves:1") && strings.Contains(info, "state=online")
	})
	s := newStream(t, rdb, audit.StreamConfig{WaitReplicas: 1, WaitTimeout: 300 * time.Millisecond, WriteTimeout: time.Second})
	for i := range 5 {
		if _, err := s.Append(ctx, decision("acme", i)); err != nil {
			t.Fatalf("Append with an online replica: %v", err)
		}
	}
	if n, _ := replica.Client().XLen(ctx, audit.StreamKey("acme")).Result(); n != 5 {
		t.Errorf("replica has %d records after 5 acknowledged appends", n)
	}
	replica.Kill()
	if _, err := s.Append(ctx, decision("acme", 99)); !errors.Is(err, audit.ErrNotReplicated) {
		t.Fatalf("Append without replica: err = %v, want ErrNotReplicated", err)
	}
	mustOK(t, verify(t, rdb, "acme", audit.VerifyOptions{}))
}
