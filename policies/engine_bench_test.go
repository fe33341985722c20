package policies_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/agentpassport/passport/policies"
	"github.com/agentpassport/passport/proxy/policy"
)

// BenchmarkEngineDecide measures the library through the proxy's own
// engine (proxy/policy: prepared once, strict builtin errors, deadline,
// decision checks), the exact per-request cost of the policy step.
func BenchmarkEngineDecide(b *testing.B) {
	// A long deadline: this measures cost, and a shared machine can stall
	// one evaluation past the proxy's 100ms default.
	e, err := policy.New(context.Background(), policy.Options{FS: policies.FS, Timeout: time.Minute,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	var in map[string]any
	if err := json.Unmarshal([]byte(typical), &in); err != nil {
		b.Fatal(err)
	}
	v, err := ast.InterfaceToValue(in)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if d, err := e.Decide(ctx, v); err != nil || !d.Allow {
		b.Fatalf("typical call: %+v %v", d, err)
	}
	samples := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	for b.Loop() {
		start := time.Now()
		d, err := e.Decide(ctx, v)
		samples = append(samples, time.Since(start))
		if err != nil || !d.Allow {
			b.Fatalf("decide: %+v %v", d, err)
		}
	}
	slices.Sort(samples)
	if n := len(samples); n > 0 {
		b.ReportMetric(float64(samples[n/2].Nanoseconds()), "p50-ns")
		b.ReportMetric(float64(samples[n*99/100].Nanoseconds()), "p99-ns")
	}
}

// typical is the input document of a typical call (the same as
// typicalInput in policies_test.go): the acme healer restarts checkout.
const typical = `{
  "version": 1, "time": "2026-11-25T20:00:00.123456789Z", "tenant": "acme",
  "action": "service.restart", "resource": "checkout",
  "route": {"name": "service-restart", "template": "POST /services/{name}/restart", "tenant": "", "production": true},
  "request": {"id": "req-1", "method": "POST", "path": "/services/checkout/restart",
    "params": {"name": "checkout"}, "query": {}, "headers": {"user-agent": "healer/1.0"}, "body": null},
  "passport": {"iss": "http://127.0.0.1:8081", "sub": "cl-healer", "aud": ["passport-proxy"],
    "exp": 1795636800, "iat": 1795636500, "nbf": 1795636500, "jti": "jti-1", "client_id": "cl-healer",
    "tenant": "acme", "scope": "service.list service.get service.restart deployment.rollback cache.warm",
    "agent": {"id": "ag-healer", "name": "healer-1", "type": "healer", "trust_level": "HIGH", "reputation": 90},
    "authorization_details": [{"type": "agent_action",
      "actions": ["service.list", "service.get", "service.restart", "deployment.rollback", "cache.warm"],
      "locations": ["passport-proxy"]}]},
  "agent": {"id": "ag-healer", "name": "healer-1", "type": "healer", "trust_level": "HIGH", "reputation": 90, "blocked": false}
}`
