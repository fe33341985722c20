package audit_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
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
		Kind:           audit.KindDecision,
		RequestID:      fmt.Sprintf("req-%s-%d", tenant, n),
		Tenant:         tenant,
		AgentID:        "agent-1",
		AgentName:      "healer-1",
		AgentType:      "healer",
		TrustLevel:     "HIGH",
		Reputation:     72.5,
		JTI:            fmt.Sprintf("jti-%d", n),
		Method:         "POST",
		Path:           "/services/checkout/restart",
		Action:         "service.restart",
		Resource:       "checkout",
		Decision:       audit.DecisionAllow,
		Reasons:        []string{"capability_granted"},
		PolicyRevision: "rev-1",
	}
}

func verify(t testing.TB, rdb redis.UniversalClient, tenant string, opts audit.VerifyOptions) *audit.Report {
	t.Helper()
	rep, err := audit.VerifyStream(context.Background(), rdb, tenant, opts)
	if err != nil {
		t.Fatalf("VerifyStream: %v", err)
	}
	return rep
}

func mustOK(t testing.TB, rep *audit.Report) {
	t.Helper()
	if !rep.OK() {
		for i, p := range rep.Problems {
			if i > 5 {
				break
			}
			t.Errorf("problem: %s", p)
		}
		t.FailNow()
	}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func edKey() (ed25519.PublicKey, ed25519.PrivateKey, error) {
	return ed25519.GenerateKey(rand.Reader)
}
