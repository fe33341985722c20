package scaleout

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
)

// TestTailFollowsFailover: the feed hub's and `audit tail --follow`'s
// reader (audit.Tail) keeps following a stream through the loss of the
// primary that holds it, on a Sentinel set (its own blocking connection
// then reaches the promoted replica) and on a Cluster (its poll follows
// the new slot map), and hands over every entry once, in order.
func TestTailFollowsFailover(t *testing.T) {
	t.Run("sentinel", func(t *testing.T) {
		ss := redistest.StartSentinel(t)
		tailThroughFailover(t, ss.Client(), func() { ss.WaitFailover(ss.KillPrimary()) })
	})
	t.Run("cluster", func(t *testing.T) {
		// Two replicas a primary: the promoted one still has one to WAIT for.
		c := redistest.StartCluster(t, redistest.ClusterOptions{Replicas: 2})
		key := audit.StreamKey("acme")
		tailThroughFailover(t, c.Client(), func() { c.WaitFailover(c.KillPrimaryOf(key)) })
	})
}

func tailThroughFailover(t *testing.T, rdb redis.UniversalClient, failover func()) {
	t.Helper()
	key := audit.StreamKey("acme")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var mu sync.Mutex
	var got []string
	var failed int
	tail := audit.NewTail(rdb, audit.TailConfig{Block: time.Second, Poll: 50 * time.Millisecond, OnError: func(error) error {
		mu.Lock()
		failed++
		mu.Unlock()
		return nil
	}})
	tail.Add(key, "0-0")
	done := make(chan error, 1)
	go func() {
		done <- tail.Run(ctx, func(_ string, msgs []redis.XMessage) {
			mu.Lock()
			defer mu.Unlock()
			for _, m := range msgs {
				got = append(got, m.Values["n"].(string))
			}
		})
	}()
	var want []string
	// write appends n entries, each acknowledged by the primary and a
	// replica (XADD then WAIT on one connection, so none is lost in the
	// failover), retrying an XADD refused while the primary is replaced.
	write := func(from, n int) {
		for i := from; i < from+n; i++ {
			var conn *redis.Conn
			if err := retry(30*time.Second, func() error {
				node, ok := rdb.(*redis.Client)
				if c, isCluster := rdb.(*redis.ClusterClient); isCluster {
					var err error
					node, err = c.MasterForKey(ctx, key)
					ok = err == nil
				}
				if !ok {
					return fmt.Errorf("no primary for %s", key)
				}
				conn = node.Conn()
				err := conn.XAdd(ctx, &redis.XAddArgs{Stream: key, Values: []any{"n", fmt.Sprint(i)}}).Err()
				if err != nil {
					_ = conn.Close()
				}
				return err // refused while the primary is replaced: not added
			}); err != nil {
				t.Fatal(err)
			}
			err := retry(10*time.Second, func() error {
				n, err := conn.Do(ctx, "WAIT", 1, 1000).Int64() // within the client's 2 s read timeout
				if err == nil && n < 1 {
					err = fmt.Errorf("no replica has entry %d", i)
				}
				return err
			})
			_ = conn.Close()
			if err != nil {
				t.Fatal(err)
			}
			want = append(want, fmt.Sprint(i))
		}
	}
	await := func() {
		if err := retry(30*time.Second, func() error {
			mu.Lock()
			defer mu.Unlock()
			if fmt.Sprint(got) != fmt.Sprint(want) {
				return fmt.Errorf("handed over %v, want %v", got, want)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	write(0, 5)
	await()
	failover()
	write(5, 5)
	await()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	mu.Lock()
	t.Logf("%d entries handed over, %d failed reads told to OnError", len(got), failed)
	mu.Unlock()
}
