package policies_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/agentpassport/passport/policies"
	"github.com/agentpassport/passport/proxy/policy"
)

// BenchmarkEngineDecide measures the library through the proxy's own
// engine (proxy/policy: prepared once, strict builtin errors, deadline,
// decision checks), the exact per-request cost of the policy step: for an
// allowed call and for denied ones (the deny path must cost about what the
// allow path does: a flood of denials must not cost more than allowed
// calls), each without and with the per-passport stage (policy.Stage,
// computed once before the loop as the proxy does once per passport and
// route). It reports the median (p50-ns), the p99 and the process CPU time
// per evaluation (cpu-ns/op), which waiting for a core on a shared
// machine does not inflate.
func BenchmarkEngineDecide(b *testing.B) {
	// A long deadline: this measures cost, and a shared machine can stall
	// one evaluation past the proxy's 100ms default.
	e, err := policy.New(context.Background(), policy.Options{FS: policies.FS, Timeout: time.Minute,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	type benchCase struct {
		name  string
		input string
		allow bool
	}
	cases := []benchCase{
		{"allow", typical, true},
		// The observer restarts checkout: not granted, not permitted, too
		// low a trust level.
		{"deny", strings.NewReplacer(`"type": "healer", "trust_level": "HIGH"`, `"type": "observer", "trust_level": "LOW"`,
			`"service.list", "service.get", "service.restart", "deployment.rollback", "cache.warm"`, `"service.list", "service.get"`).
			Replace(typical), false},
		// The healer restarts another tenant's service.
		{"deny_resource", strings.Replace(typical, `"resource": "checkout"`, `"resource": "search"`, 1), false},
	}
	for _, staged := range []bool{false, true} {
		for _, c := range cases {
			name := c.name
			if staged {
				name += "/staged"
			}
			b.Run(name, func(b *testing.B) { benchEngineDecide(b, e, c.input, c.allow, staged) })
		}
	}
}

// benchEngineDecide measures one case of BenchmarkEngineDecide.
func benchEngineDecide(b *testing.B, e *policy.Engine, input string, allow, staged bool) {
	var in map[string]any
	if err := json.Unmarshal([]byte(input), &in); err != nil {
		b.Fatal(err)
	}
	v, err := ast.InterfaceToValue(in)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	var st *policy.Stage
	if staged {
		if st, err = e.Stage(ctx, v); err != nil {
			b.Fatal(err)
		}
		v = policy.WithStage(v, st)
	}
	if d, err := e.DecideStaged(ctx, v, st); err != nil || d.Allow != allow {
		b.Fatalf("%+v %v", d, err)
	}
	samples := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	cpu0, cpuOK := policies.ProcessCPU()
	for b.Loop() {
		start := time.Now()
		d, err := e.DecideStaged(ctx, v, st)
		samples = append(samples, time.Since(start))
		if err != nil || d.Allow != allow {
			b.Fatalf("decide: %+v %v", d, err)
		}
	}
	if cpu1, ok := policies.ProcessCPU(); ok && cpuOK && len(samples) > 0 {
		b.ReportMetric(float64((cpu1-cpu0).Nanoseconds())/float64(len(samples)), "cpu-ns/op")
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
