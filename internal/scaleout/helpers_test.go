package scaleout

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
)

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func newStream(t testing.TB, rdb redis.UniversalClient, cfg audit.StreamConfig) *audit.Stream {
	t.Helper()
	s, err := audit.NewStream(rdb, cfg, testLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatalf("NewStream: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func decision(tenant string, n int) *audit.Record {
	return &audit.Record{
		Kind:      audit.KindDecision,
		RequestID: fmt.Sprintf("req-%s-%d", tenant, n),
		Tenant:    tenant,
		AgentID:   "agent-1",
		Method:    "POST",
		Path:      "/services/checkout/restart",
		Action:    "service.restart",
		Resource:  "checkout",
		Decision:  audit.DecisionAllow,
		Reasons:   []string{"capability_granted"},
	}
}

// tenantsOnDistinctPrimaries returns n tenant names whose keys live on n
// different primaries of c.
func tenantsOnDistinctPrimaries(t testing.TB, c *redistest.Cluster, n int) []string {
	t.Helper()
	seen := map[*redistest.ClusterNode]bool{}
	var out []string
	for i := 0; len(out) < n && i < 1000; i++ {
		tenant := fmt.Sprintf("tenant%d", i)
		p := c.PrimaryOf(audit.StreamKey(tenant))
		if !seen[p] {
			seen[p] = true
			out = append(out, tenant)
		}
	}
	if len(out) < n {
		t.Fatalf("found tenants on %d primaries, want %d", len(out), n)
	}
	return out
}

// requestIDs reads the request ids of the decision records in a tenant's
// stream.
func requestIDs(t testing.TB, rdb redis.UniversalClient, tenant string) map[string]bool {
	t.Helper()
	ids := map[string]bool{}
	err := audit.ScanStream(context.Background(), rdb, audit.StreamKey(tenant), "-", 1000, func(m redis.XMessage) error {
		rec, _, err := audit.ParseMessage(m)
		if err == nil && rec.Kind == audit.KindDecision {
			ids[rec.RequestID] = true
		}
		return nil
	})
	if err != nil {
		t.Fatalf("read %s: %v", tenant, err)
	}
	return ids
}

func mustVerify(t testing.TB, rdb redis.UniversalClient, tenant string) *audit.Report {
	t.Helper()
	rep, err := audit.VerifyStream(context.Background(), rdb, tenant, audit.VerifyOptions{})
	if err != nil {
		t.Fatalf("verify %s: %v", tenant, err)
	}
	if !rep.OK() {
		for i, p := range rep.Problems {
			if i > 5 {
				break
			}
			t.Errorf("verify %s: %s", tenant, p)
		}
		t.FailNow()
	}
	return rep
}

// retry runs f until it succeeds or d passes, returning the last error.
func retry(d time.Duration, f func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond) // the failing side has no event to wait on
	}
}
