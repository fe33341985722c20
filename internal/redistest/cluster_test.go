package redistest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestSlotMatchesServer(t *testing.T) {
	srv := Start(t, Options{Args: []string{"--cluster-enabled", "yes"}})
	ctx := context.Background()
	for _, key := range []string{
		"", "a", "foo", "passport:revoked", "passport:{t:acme}:audit", "passport:{t:acme}:audit:heads",
		"{}x", "x{}y{z}", "{a}{b}", "a{b", "a}b{", "{user1000}.following", "\xff\xfe",
	} {
		want, err := srv.do(ctx, "cluster", "keyslot", key).Int()
		if err != nil {
			t.Fatal(err)
		}
		if got := Slot(key); got != want {
			t.Errorf("Slot(%q) = %d, server says %d", key, got, want)
		}
	}
}

func TestClusterComesUpAndSpreadsTenants(t *testing.T) {
	start := time.Now()
	c := StartCluster(t)
	t.Logf("cluster of %d nodes healthy after %v", len(c.Nodes), time.Since(start).Round(time.Millisecond))
	if got := len(c.Primaries()); got != 3 {
		t.Fatalf("primaries = %d, want 3", got)
	}
	for _, p := range c.Primaries() {
		if r := c.ReplicasOf(p); len(r) != 1 {
			t.Fatalf("primary %s has %d replicas, want 1", p.Addr, len(r))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cc := c.Client()
	// Hash tags chosen to fall on different primaries; each write must land
	// on (and only on) the primary PrimaryOf names.
	seen := map[*ClusterNode]string{}
	for i := 0; len(seen) < 3 && i < 100; i++ {
		key := fmt.Sprintf("passport:{t:tenant%d}:audit", i)
		if err := cc.Set(ctx, key, "v", 0).Err(); err != nil {
			t.Fatalf("set %s: %v", key, err)
		}
		p := c.PrimaryOf(key)
		if got, err := p.Client().Get(ctx, key).Result(); err != nil || got != "v" {
			t.Fatalf("%s on its primary %s: %q, %v", key, p.Addr, got, err)
		}
		if _, ok := seen[p]; !ok {
			seen[p] = key
		}
	}
	if len(seen) != 3 {
		t.Fatalf("keys of 100 tenants landed on %d primaries, want 3", len(seen))
	}
}

func TestClusterPrimaryKillPromotesReplica(t *testing.T) {
	c := StartCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cc := c.Client()
	const key = "passport:{t:acme}:audit"
	if err := cc.Set(ctx, key, "before", 0).Err(); err != nil {
		t.Fatal(err)
	}
	old := c.PrimaryOf(key)
	replicas := c.ReplicasOf(old)
	if len(replicas) != 1 {
		t.Fatalf("replicas of %s = %d", old.Addr, len(replicas))
	}
	// WAIT makes the write survive the kill: the replica has it.
	if n, err := old.Client().Wait(ctx, 1, 5000).Result(); err != nil || n != 1 {
		t.Fatalf("WAIT = %d, %v", n, err)
	}
	start := time.Now()
	c.KillPrimaryOf(key)
	promoted := c.WaitFailover(old)
	t.Logf("failover done %v after the kill", time.Since(start).Round(time.Millisecond))
	if promoted != replicas[0] {
		t.Fatalf("promoted %s, want the replica %s", promoted.Addr, replicas[0].Addr)
	}
	// The client follows the new slot map (its first command may still go
	// to the dead node and trigger the reload).
	if err := retry(ctx, func() error { return cc.Set(ctx, key, "after", 0).Err() }); err != nil {
		t.Fatalf("set after failover: %v", err)
	}
	if got := promoted.Client().Get(ctx, key).Val(); got != "after" {
		t.Fatalf("new primary has %q", got)
	}
	c.Restart(old)
	if r := c.ReplicasOf(promoted); len(r) != 1 || r[0] != old {
		t.Fatalf("after restart the old primary is not the new primary's replica: %v", r)
	}
	// It resynced from the new primary: a replica read sees the new value.
	// READONLY holds per connection, so both go in one pipeline.
	var get *redis.StringCmd
	if _, err := old.Client().Pipelined(ctx, func(p redis.Pipeliner) error {
		p.ReadOnly(ctx)
		get = p.Get(ctx, key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got := get.Val(); got != "after" {
		t.Fatalf("restarted old primary has %q, want the new primary's value", got)
	}
}

// retry runs f until it succeeds or ctx ends, returning f's last error.
func retry(ctx context.Context, f func() error) error {
	for {
		err := f()
		if err == nil || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(20 * time.Millisecond):
		}
	}
}
