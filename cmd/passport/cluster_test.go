package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/healer"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/internal/stack"
)

// TestCLIReachesACluster: the commands that read Redis take Cluster seeds
// (--redis-addrs, PASSPORT_REDIS_ADDRS), one being enough. With tenants on
// two primaries, `audit verify` checks both streams and `incidents` lists
// both tenants' incidents; before, they read one node of a URL.
func TestCLIReachesACluster(t *testing.T) {
	c := redistest.StartCluster(t)
	cc := c.Client()
	ctx := context.Background()
	var tenants []string
	primaries := map[string]bool{}
	for i := 0; len(tenants) < 2 && i < 1000; i++ {
		tn := fmt.Sprintf("tenant%d", i)
		if p := c.PrimaryOf(audit.StreamKey(tn)).Addr; !primaries[p] {
			primaries[p] = true
			tenants = append(tenants, tn)
		}
	}
	st, err := audit.NewStream(cc, audit.StreamConfig{}, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	store := healer.NewStore(cc, 0)
	at := time.Date(2026, 12, 5, 4, 0, 0, 0, time.UTC)
	for _, tn := range tenants {
		if _, err := st.Append(ctx, &audit.Record{Kind: audit.KindDecision, RequestID: "req-" + tn, Tenant: tn, AgentID: "agt-1",
			Method: "GET", Path: "/services", Action: "service.list", Resource: "*", Decision: audit.DecisionAllow}); err != nil {
			t.Fatal(err)
		}
		if err := store.Save(ctx, &healer.Incident{ID: "inc-" + tn, Tenant: tn, Type: "cache_miss", Target: "checkout",
			State: healer.StateDetected, DetectedAt: at}); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	seed := c.Addrs()[0]

	out, errOut, code := cli(t, nil, "audit", "verify", "--redis-addrs", seed)
	if code != 0 {
		t.Fatalf("audit verify --redis-addrs: exit %d\n%s\n%s", code, out, errOut)
	}
	for _, tn := range tenants {
		if !strings.Contains(out, audit.StreamKey(tn)) {
			t.Fatalf("audit verify did not check %s:\n%s", tn, out)
		}
	}

	out, errOut, code = cli(t, map[string]string{"PASSPORT_REDIS_ADDRS": seed}, "incidents", "--json")
	var list []healer.Incident
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil {
		t.Fatalf("incidents with PASSPORT_REDIS_ADDRS: exit %d %q %q", code, out, errOut)
	}
	got := map[string]bool{}
	for _, in := range list {
		got[in.Tenant] = true
	}
	for _, tn := range tenants {
		if !got[tn] {
			t.Fatalf("incidents lists tenants %v, want %v", got, tenants)
		}
	}

	// --data DIR of a `passport up` on the Cluster: demo.json's
	// redis_addrs, with no redis_url, reach it.
	dir := t.TempDir()
	b, _ := json.Marshal(stack.Demo{RedisAddrs: []string{seed}})
	if err := os.WriteFile(stack.DemoFile(dir), b, 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = cli(t, nil, "audit", "verify", "--data", dir)
	if code != 0 {
		t.Fatalf("audit verify --data (redis_addrs): exit %d\n%s\n%s", code, out, errOut)
	}
	for _, tn := range tenants {
		if !strings.Contains(out, audit.StreamKey(tn)) {
			t.Fatalf("audit verify --data did not check %s:\n%s", tn, out)
		}
	}
	out, errOut, code = cli(t, nil, "incidents", "--json", "--data", dir)
	list = nil
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list) != len(tenants) {
		t.Fatalf("incidents --data (redis_addrs): exit %d %q %q", code, out, errOut)
	}
}

// TestCLIReachesASentinelPrimary: with --redis-master the seeds are
// sentinels; the command reaches the primary they name.
func TestCLIReachesASentinelPrimary(t *testing.T) {
	s := redistest.StartSentinel(t)
	ctx := context.Background()
	store := healer.NewStore(s.Client(), 0)
	if err := store.Save(ctx, &healer.Incident{ID: "inc-1", Tenant: "acme", Type: "cache_miss", Target: "checkout",
		State: healer.StateDetected, DetectedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := cli(t, nil, "incidents", "--json", "--redis-addrs", strings.Join(s.SentinelAddrs(), ","), "--redis-master", s.MasterName)
	var list []healer.Incident
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list) != 1 || list[0].ID != "inc-1" {
		t.Fatalf("incidents through the sentinels: exit %d %q %q", code, out, errOut)
	}
}
