package feed

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/agentpassport/passport/internal/redistest"
)

// TestHubFollowsManyTenantsOnFewConnections: 100 tenants, each with a
// client, through a Redis pool of 4 connections. Every tenant's event
// reaches its client, and one blocking read follows them all. The hub
// held a blocking XREAD per tenant before: the pool could not hold them,
// and events arrived seconds late or not at all.
func TestHubFollowsManyTenantsOnFewConnections(t *testing.T) {
	rs := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr, PoolSize: 4, ContextTimeoutEnabled: true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}})
	t.Cleanup(func() { _ = rdb.Close() })
	e := newEnvOn(t, rdb, Config{})
	followTenants(t, e, 100)
	info, err := rs.Client().Info(context.Background(), "clients").Result()
	if err != nil {
		t.Fatal(err)
	}
	if n := infoInt(info, "blocked_clients"); n != 1 {
		t.Fatalf("%d blocking reads for 100 tenants, want 1", n)
	}
}

// TestHubOnCluster: on a Cluster the hub follows tenants whose streams
// are in different slots of one primary and on every primary (one XREAD
// over them was refused with CROSSSLOT).
func TestHubOnCluster(t *testing.T) {
	c := redistest.StartCluster(t)
	e := newEnvOn(t, c.Client(), Config{})
	followTenants(t, e, 12)
}

// followTenants opens a client on each of n tenants, then writes one
// decision to each tenant's stream and reads it from that tenant's client.
func followTenants(t *testing.T, e *env, n int) {
	t.Helper()
	tenant := func(i int) string { return fmt.Sprintf("tenant%03d", i) }
	conns := make([]*websocket.Conn, n)
	for i := range n {
		conns[i] = e.dial(adminToken, tenant(i), nil)
		untilLive(t, conns[i])
	}
	want := make([]string, n)
	for i := range n {
		want[i] = add(t, e.rdb, decision(tenant(i), "a", "allow"))
	}
	for i, c := range conns {
		if ev := next(t, c); ev.ID != want[i] || ev.Tenant != tenant(i) {
			t.Fatalf("client of %s read %s of %s, want %s", tenant(i), ev.ID, ev.Tenant, want[i])
		}
	}
}

func infoInt(info, field string) int {
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return -1
}
