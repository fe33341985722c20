package redistest

import (
	"context"
	"testing"
	"time"
)

func TestSentinelFailoverPromotesReplicaAndClientFollows(t *testing.T) {
	start := time.Now()
	s := StartSentinel(t)
	t.Logf("sentinel set healthy after %v", time.Since(start).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := s.Client()
	if err := c.Set(ctx, "k", "before", 0).Err(); err != nil {
		t.Fatal(err)
	}
	old := s.Primary()
	if old != s.Data[0] {
		t.Fatalf("primary %s, want the first data node %s", old.Addr, s.Data[0].Addr)
	}
	if n, err := old.Client().Wait(ctx, 2, 5000).Result(); err != nil || n != 2 {
		t.Fatalf("WAIT = %d, %v", n, err)
	}
	start = time.Now()
	s.KillPrimary()
	promoted := s.WaitFailover(old)
	t.Logf("failover done %v after the kill", time.Since(start).Round(time.Millisecond))
	if promoted == old {
		t.Fatal("old primary still named")
	}
	if err := retry(ctx, func() error { return c.Set(ctx, "k", "after", 0).Err() }); err != nil {
		t.Fatalf("set through the failover client after failover: %v", err)
	}
	if got := promoted.Client().Get(ctx, "k").Val(); got != "after" {
		t.Fatalf("new primary %s has %q", promoted.Addr, got)
	}
	start = time.Now()
	s.Restart(old)
	t.Logf("old primary rejoined as a replica %v after restart", time.Since(start).Round(time.Millisecond))
	if got := old.Client().Get(ctx, "k").Val(); got != "after" {
		t.Fatalf("restarted old primary has %q, want the new primary's value", got)
	}
}
