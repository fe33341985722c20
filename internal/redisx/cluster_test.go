package redisx_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/internal/redisx"
)

// TestClusterClientFollowsFailover: after a primary is killed and its
// replica promoted, a client built by redisx.New must write the dead
// primary's slots to the new primary without waiting for go-redis's
// one-minute periodic slot-map reload (which is all it does by default:
// it reloads on MOVED, and a dead node sends none).
func TestClusterClientFollowsFailover(t *testing.T) {
	c := redistest.StartCluster(t)
	u, err := redisx.New(c.Config())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	cc, ok := u.(*redis.ClusterClient)
	if !ok {
		t.Fatalf("redisx.New gave %T for a cluster config", u)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const key = "passport:{t:acme}:audit"
	if err := cc.Set(ctx, key, "before", 0).Err(); err != nil {
		t.Fatal(err)
	}
	old := c.KillPrimaryOf(key)
	promoted := c.WaitFailover(old)
	// Well under the one-minute reload, well over a retry and a reload.
	deadline := time.Now().Add(10 * time.Second)
	var tries int
	for {
		tries++
		err := cc.Set(ctx, key, "after", 0).Err()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("write still failing 10s after the failover (%d tries): %v", tries, err)
		}
	}
	if got := promoted.Client().Get(ctx, key).Val(); got != "after" {
		t.Fatalf("new primary %s has %q", promoted.Addr, got)
	}
	// Pipelines and transactions follow the same way (the hook covers both).
	if _, err := cc.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Incr(ctx, "passport:{t:acme}:n")
		p.Expire(ctx, "passport:{t:acme}:n", time.Minute)
		return nil
	}); err != nil {
		t.Fatalf("transaction after failover: %v", err)
	}
}

// TestClusterSubscriptionFollowsFailover: a subscription that go-redis
// keeps open (PubSub.Channel, as the feed, the alerter and the authority's
// key watch use it) and one made afresh after the failover (as the proxy's
// revocation follower does) both reach the node that took over the
// channel's slot. Pub/sub connections are dialled outside the command
// path, so only a dial failure says the slot map is stale.
func TestClusterSubscriptionFollowsFailover(t *testing.T) {
	c := redistest.StartCluster(t)
	u, err := redisx.New(c.Config())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const channel = "passport:revocations"
	kept := u.Subscribe(ctx, channel)
	defer kept.Close()
	if _, err := kept.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	msgs := kept.Channel()
	old := c.KillPrimaryOf(channel) // the node the subscription is on
	c.WaitFailover(old)

	// Publish until the kept subscription hears one (it reconnects on its
	// own health check), within well under go-redis' one-minute reload.
	deadline := time.After(15 * time.Second)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for heard := false; !heard; {
		select {
		case m := <-msgs:
			heard = m.Payload == "after"
		case <-tick.C:
			_ = u.Publish(ctx, channel, "after").Err()
		case <-deadline:
			t.Fatal("kept subscription heard nothing 15s after the failover")
		}
	}

	fresh := u.Subscribe(ctx, channel)
	defer fresh.Close()
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	for {
		_, err := fresh.Receive(rctx)
		if err == nil {
			break
		}
		if rctx.Err() != nil {
			t.Fatalf("fresh subscription not confirmed 10s after the failover: %v", err)
		}
	}
}

// TestClusterFromOneSeed: one seed address (a service name in front of the
// nodes) is taken for a single node unless Cluster is set; with it, keys
// on every primary are reached.
func TestClusterFromOneSeed(t *testing.T) {
	c := redistest.StartCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	seed := c.Primaries()[0]
	// A key that seed does not serve.
	var key string
	for i := 0; key == ""; i++ {
		if k := fmt.Sprintf("passport:{t:t%d}:audit", i); c.PrimaryOf(k) != seed {
			key = k
		}
	}
	single, err := redisx.New(redisx.Config{Addrs: []string{seed.Addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer single.Close()
	if err := single.Set(ctx, key, "v", 0).Err(); err == nil || !strings.Contains(err.Error(), "MOVED") {
		t.Fatalf("one seed without Cluster: %v, want MOVED (a single-node client)", err)
	}
	cl, err := redisx.New(redisx.Config{Addrs: []string{seed.Addr}, Cluster: true})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, ok := cl.(*redis.ClusterClient); !ok {
		t.Fatalf("Cluster: true gave %T", cl)
	}
	if err := cl.Set(ctx, key, "v", 0).Err(); err != nil {
		t.Fatalf("one seed with Cluster: %v", err)
	}
	if err := (redisx.Config{Addrs: []string{seed.Addr}, Cluster: true, MasterName: "m"}).Validate(); err == nil {
		t.Fatal("Validate accepted cluster with master_name")
	}
}
