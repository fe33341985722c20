package scaleout

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/bcrypt"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/authority"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
)

const adminToken = "scaleout-test-admin-token-0123456789"

// listener is one subscriber to the revocation channel.
type listener struct {
	name string
	ch   <-chan *redis.Message
	seen *[]passport.RevocationEvent
}

// listenEverywhere subscribes to channel on every node directly (where a
// proxy's one connection could land) and once through the cluster client
// (where go-redis puts it: the node serving the channel's slot).
func listenEverywhere(t *testing.T, c *redistest.Cluster, cc *redis.ClusterClient, channel string) []listener {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []listener
	add := func(name string, ps *redis.PubSub) {
		if _, err := ps.Receive(ctx); err != nil {
			t.Fatalf("subscribe %s: %v", name, err)
		}
		t.Cleanup(func() { _ = ps.Close() })
		out = append(out, listener{name: name, ch: ps.Channel(), seen: new([]passport.RevocationEvent)})
	}
	for _, n := range c.Nodes {
		add("node "+n.Addr, n.Client().Subscribe(ctx, channel))
	}
	add("cluster client", cc.Subscribe(ctx, channel))
	return out
}

// expect waits until every listener got an event matching want. Events
// are kept, not consumed in order: publishes go out through random nodes
// and may overtake each other on the cluster bus (see docs/scale-out.md).
func expect(t *testing.T, ls []listener, what string, want func(passport.RevocationEvent) bool) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for _, l := range ls {
		for !slices.ContainsFunc(*l.seen, want) {
			select {
			case m := <-l.ch:
				var ev passport.RevocationEvent
				if json.Unmarshal([]byte(m.Payload), &ev) == nil {
					*l.seen = append(*l.seen, ev)
				}
			case <-deadline:
				t.Fatalf("%s: no %s event within 5s", l.name, what)
			}
		}
	}
}

// TestRevocationsReachEveryNode: a publish through any node reaches
// subscribers on every node, primaries and replicas alike (Redis Cluster
// forwards PUBLISH over the cluster bus), so a proxy hears revocations
// whatever node its subscription landed on.
func TestRevocationsReachEveryNode(t *testing.T) {
	c := redistest.StartCluster(t)
	cc := c.Client()
	ls := listenEverywhere(t, c, cc, passport.RevocationChannel)
	ctx := context.Background()
	for i, n := range c.Nodes {
		ev := passport.RevocationEvent{Type: passport.EventRevoke, JTI: "via-" + n.Addr, Exp: int64(i)}
		if err := n.Client().Publish(ctx, passport.RevocationChannel, ev.Marshal()).Err(); err != nil {
			t.Fatalf("publish via %s: %v", n.Addr, err)
		}
		expect(t, ls, "revoke via "+n.Addr, func(e passport.RevocationEvent) bool { return e.JTI == ev.JTI })
	}
	// Sharded pub/sub (SPUBLISH) would reach only the shard's nodes; the
	// cluster client routes both sides there, so it works through go-redis
	// but not for a subscriber placed by hand on another shard.
	ss := cc.SSubscribe(ctx, passport.RevocationChannel)
	defer ss.Close()
	if _, err := ss.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	if err := cc.SPublish(ctx, passport.RevocationChannel, "sharded").Err(); err != nil {
		t.Fatal(err)
	}
	if m, err := ss.ReceiveMessage(ctx); err != nil || m.Payload != "sharded" {
		t.Fatalf("sharded message: %v, %v", m, err)
	}
}

// TestAuthorityOnCluster runs the authority's Redis paths on a Cluster:
// registration (MULTI on the tenant's slot plus the global clients hash),
// passports (issued-jti MULTI), outcomes (WATCH on the agent hash), key
// rotation (SET NX lock, compare-and-delete script, keys channel), block
// (global set + tenant hash + revocation of every live passport),
// unblock, delete; with the authority's audit records on the tenants'
// streams. Two tenants on two primaries; the events reach a subscriber on
// every node.
func TestAuthorityOnCluster(t *testing.T) {
	c := redistest.StartCluster(t)
	cc := c.Client()
	stream := newStream(t, cc, audit.StreamConfig{})
	srv := httptest.NewUnstartedServer(nil)
	cfg := authority.DefaultConfig()
	cfg.AdminToken = adminToken
	cfg.Clients.BcryptCost = bcrypt.MinCost
	cfg.Issuer = "http://" + srv.Listener.Addr().String()
	a, err := authority.New(cfg, authority.Deps{Redis: cc, Logger: testLogger(t), Registry: prometheus.NewRegistry(), Audit: stream})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := a.Init(ctx); err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = a.Handler()
	srv.Start()
	defer srv.Close()
	admin, err := client.NewAdmin(srv.URL, adminToken, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ls := listenEverywhere(t, c, cc, passport.RevocationChannel)

	tenants := tenantsOnDistinctPrimaries(t, c, 2)
	regs := map[string]client.Registration{}
	for _, tenant := range tenants {
		reg, err := admin.RegisterAgent(ctx, tenant, client.AgentSpec{Name: "healer-1", Type: passport.TypeHealer, TrustLevel: passport.TrustHigh})
		if err != nil {
			t.Fatalf("register in %s: %v", tenant, err)
		}
		regs[tenant] = reg
		ac, err := client.New(srv.URL, reg.ClientID, passport.Secret(reg.ClientSecret), client.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ac.Token(ctx, client.TokenRequest{}); err != nil {
			t.Fatalf("passport in %s: %v", tenant, err)
		}
		if _, err := admin.ReportOutcome(ctx, tenant, reg.ID, client.OutcomeSuccess); err != nil {
			t.Fatalf("outcome in %s: %v", tenant, err)
		}
		if got, err := admin.ListAgents(ctx, tenant); err != nil || len(got) != 1 {
			t.Fatalf("list %s: %v, %v", tenant, got, err)
		}
	}
	if _, err := admin.RotateKeys(ctx); err != nil {
		t.Fatalf("rotate keys: %v", err)
	}

	blocked, other := tenants[0], tenants[1]
	reg := regs[blocked]
	if _, err := admin.Block(ctx, blocked, reg.ID, "test"); err != nil {
		t.Fatalf("block: %v", err)
	}
	expect(t, ls, "block", func(e passport.RevocationEvent) bool {
		return e.Type == passport.EventBlock && e.Tenant == blocked && e.AgentID == reg.ID
	})
	if ok, err := cc.SIsMember(ctx, passport.BlockedKey, passport.BlockedMember(blocked, reg.ID)).Result(); err != nil || !ok {
		t.Fatalf("blocked set: %v, %v", ok, err)
	}
	ac, _ := client.New(srv.URL, reg.ClientID, passport.Secret(reg.ClientSecret), client.Options{})
	if _, err := ac.Token(ctx, client.TokenRequest{}); err == nil {
		t.Fatal("a blocked agent got a passport")
	}
	if _, err := admin.Unblock(ctx, blocked, reg.ID); err != nil {
		t.Fatalf("unblock: %v", err)
	}
	// A block refuses the agent's passports without listing them; the
	// unblock revokes those issued before the block.
	expect(t, ls, "revoke of the live passport", func(e passport.RevocationEvent) bool {
		return e.Type == passport.EventRevoke && e.Tenant == blocked && e.AgentID == reg.ID && e.JTI != ""
	})
	expect(t, ls, "unblock", func(e passport.RevocationEvent) bool {
		return e.Type == passport.EventUnblock && e.AgentID == reg.ID
	})
	if err := admin.DeleteAgent(ctx, other, regs[other].ID); err != nil {
		t.Fatalf("delete: %v", err)
	}
	// The authority's own records (block, unblock, revocations) verify.
	for _, tenant := range tenants {
		mustVerify(t, cc, tenant)
	}
}
