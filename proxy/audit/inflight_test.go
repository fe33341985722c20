package audit_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/proxy/audit"
)

// With several batches in flight on the writer's connection and Redis
// killed (SIGKILL, appendfsync always) in the middle: no caller got an id
// for a record missing from the stream, no record is stored twice, and
// after the restart the chains continue and verify.
func TestInFlightBatchesKillNoFalseAck(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true, Fsync: "always"})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = rdb.Close() })
	s := newStream(t, rdb, audit.StreamConfig{
		WriteTimeout: 500 * time.Millisecond, MaxInFlight: 4, MaxBatch: 8, MaxWait: -1, CheckpointEvery: 40,
	})
	ctx := context.Background()
	tenants := []string{"acme", "globex"}

	var (
		mu     sync.Mutex
		acked  = map[string]string{} // request id -> stream id
		failed atomic.Int64
		n      atomic.Int64
		stop   = make(chan struct{})
		wg     sync.WaitGroup
	)
	for g := range 32 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				rec := decision(tenants[g%2], int(n.Add(1)))
				id, err := s.Append(ctx, rec)
				if err != nil {
					if id != "" {
						t.Errorf("Append returned id %q with error %v", id, err)
					}
					failed.Add(1)
					continue
				}
				mu.Lock()
				acked[rec.RequestID] = id
				mu.Unlock()
			}
		})
	}
	eventually(t, 10*time.Second, "several batches in flight and acknowledged records", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return audit.PeakInFlight(s) >= 2 && len(acked) >= 300
	})
	srv.Kill()
	eventually(t, 10*time.Second, "appends to fail while Redis is down", func() bool { return failed.Load() > 0 })
	srv.Restart()
	mu.Lock()
	before := len(acked)
	mu.Unlock()
	eventually(t, 10*time.Second, "appends to succeed again after restart", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) >= before+300
	})
	close(stop)
	wg.Wait()
	t.Logf("peak in flight %d, acked %d, failed %d", audit.PeakInFlight(s), len(acked), failed.Load())

	mu.Lock()
	defer mu.Unlock()
	for _, tenant := range tenants {
		present := map[string]string{}
		err := audit.ScanStream(ctx, rdb, audit.StreamKey(tenant), "-", 1000, func(m redis.XMessage) error {
			rec, _, err := audit.ParseMessage(m)
			if err != nil {
				return err
			}
			if rec.Kind != audit.KindDecision {
				return nil
			}
			if prev, dup := present[rec.RequestID]; dup {
				t.Errorf("%s: request %s stored twice (%s and %s)", tenant, rec.RequestID, prev, m.ID)
			}
			present[rec.RequestID] = m.ID
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for req, id := range acked {
			if (req[4:4+len(tenant)] == tenant) && present[req] != id {
				t.Errorf("%s: acknowledged record %s (%s) missing from the stream", tenant, req, id)
			}
		}
		mustOK(t, verify(t, rdb, tenant, audit.VerifyOptions{}))
	}
}

// After SCRIPT FLUSH (a Redis that lost its script cache) the writer fails
// at most one batch closed, reloads the script, and the chain continues.
func TestScriptFlushReloads(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	rdb := srv.Client()
	s := newStream(t, rdb, audit.StreamConfig{})
	ctx := context.Background()
	for i := range 3 {
		if _, err := s.Append(ctx, decision("acme", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	ok := false
	for i := range 2 {
		if _, err := s.Append(ctx, decision("acme", 10+i)); err == nil {
			ok = true
			break
		}
	}
	if !ok {
		t.Fatal("no append succeeded after SCRIPT FLUSH")
	}
	if _, err := s.Append(ctx, decision("acme", 20)); err != nil {
		t.Fatal(err)
	}
	mustOK(t, verify(t, rdb, "acme", audit.VerifyOptions{}))
}

// A Redis restart while the writer is idle costs no failed Append: the
// closed connection is noticed before the next batch, and the new one
// loads the script again (EVAL) before its EVALSHAs.
func TestIdleRestartNoFailedAppend(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	rdb := srv.Client()
	s := newStream(t, rdb, audit.StreamConfig{})
	ctx := context.Background()
	if _, err := s.Append(ctx, decision("acme", 1)); err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	srv.Restart()
	eventually(t, 10*time.Second, "redis back", func() bool { return rdb.Ping(ctx).Err() == nil })
	for i := range 3 {
		if _, err := s.Append(ctx, decision("acme", 2+i)); err != nil {
			t.Fatalf("append %d after an idle restart: %v", i, err)
		}
	}
	mustOK(t, verify(t, rdb, "acme", audit.VerifyOptions{}))
}
