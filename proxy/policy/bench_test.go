package policy_test

import (
	"context"
	"log/slog"
	"slices"
	"testing"
	"testing/fstest"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/agentpassport/passport/policies"
	"github.com/agentpassport/passport/proxy/policy"
)

// BenchmarkLibraryDecide measures one decision of the shipped library
// through the engine, with what makes the fast evaluator fast taken away
// one at a time, so that each claim of fast.go's comments is a benchmark
// (the figures are in docs/performance.md):
//
//	fast/*             the engine as the proxy runs it
//	rego/*             the rego package (policy.engine: rego)
//	fast_nocache/*     the fast evaluator without the shared data cache
//	*/new_goroutine    each decision on a new goroutine (a fresh, small
//	                   stack, as after the garbage collector has shrunk an
//	                   idle connection's), with and without growStack
//
// It reports the median (p50-ns) beside Go's mean.
func BenchmarkLibraryDecide(b *testing.B) {
	allow := libraryInput(b, "healer", "HIGH")
	deny := libraryInput(b, "observer", "LOW") // not granted, not permitted, too low a trust level
	cases := []struct {
		name      string
		evaluator policy.Evaluator
		nocache   bool
		pregrow   bool
		goroutine bool
		in        ast.Value
		allow     bool
	}{
		{"fast/allow", policy.Fast, false, true, false, allow, true},
		{"fast/deny", policy.Fast, false, true, false, deny, false},
		{"rego/allow", policy.Rego, false, true, false, allow, true},
		{"rego/deny", policy.Rego, false, true, false, deny, false},
		{"fast_nocache/allow", policy.Fast, true, true, false, allow, true},
		{"fast/allow/new_goroutine", policy.Fast, false, true, true, allow, true},
		{"fast_no_stack_growth/allow/new_goroutine", policy.Fast, false, false, true, allow, true},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			// A long deadline: this measures cost, and a shared machine can
			// stall one evaluation past the default.
			e, err := policy.New(context.Background(), policy.Options{FS: policies.FS, Evaluator: c.evaluator,
				Timeout: time.Minute, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			if c.nocache {
				policy.DropCache(e)
			}
			defer policy.SetStackGrowth(c.pregrow)()
			ctx := context.Background()
			decide := func() {
				if d, err := e.Decide(ctx, c.in); err != nil || d.Allow != c.allow {
					b.Fatalf("%+v %v", d, err)
				}
			}
			if c.goroutine {
				inner := decide
				done := make(chan struct{})
				decide = func() {
					go func() { inner(); done <- struct{}{} }()
					<-done
				}
			}
			decide()
			samples := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			for b.Loop() {
				start := time.Now()
				decide()
				samples = append(samples, time.Since(start))
			}
			slices.Sort(samples)
			if n := len(samples); n > 0 {
				b.ReportMetric(float64(samples[n/2].Nanoseconds()), "p50-ns")
			}
		})
	}
}

// libraryInput is the input of a call to restart acme's checkout by an
// agent of the type and trust level given, whose passport grants what the
// type may do.
func libraryInput(b *testing.B, typ, level string) ast.Value {
	b.Helper()
	grants := map[string][]any{
		"healer":   {"service.list", "service.get", "service.restart", "deployment.rollback", "cache.warm"},
		"observer": {"service.list", "service.get"},
	}[typ]
	v, err := ast.InterfaceToValue(map[string]any{
		"version": 1, "time": "2026-11-25T20:00:00.123456789Z", "tenant": "acme",
		"action": "service.restart", "resource": "checkout",
		"route":   map[string]any{"name": "service-restart", "template": "POST /services/{name}/restart", "tenant": "", "production": true},
		"request": map[string]any{"id": "req-1", "method": "POST", "path": "/services/checkout/restart", "params": map[string]any{"name": "checkout"}},
		"passport": map[string]any{"tenant": "acme", "authorization_details": []any{
			map[string]any{"type": "agent_action", "actions": grants},
		}},
		"agent": map[string]any{"id": "ag-1", "type": typ, "trust_level": level, "reputation": 90, "blocked": false},
	})
	if err != nil {
		b.Fatal(err)
	}
	return v
}

// BenchmarkEngineFloor is the engine's cost per decision for a policy
// whose decision is a constant: what any policy pays per evaluation
// (query, evaluator, deadline, reading the decision), whatever its rules.
// The library's staged path costs this plus its few expressions
// (policies BenchmarkEngineDecide/allow/staged).
func BenchmarkEngineFloor(b *testing.B) {
	fsys := fstest.MapFS{"authz.rego": {Data: []byte("package passport.authz\n\n" +
		`decision := {"allow": true, "reasons": []}` + "\n")}}
	e, err := policy.New(context.Background(), policy.Options{FS: fsys, Timeout: time.Minute,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	in := libraryInput(b, "healer", "HIGH")
	ctx := context.Background()
	samples := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	for b.Loop() {
		start := time.Now()
		d, err := e.Decide(ctx, in)
		samples = append(samples, time.Since(start))
		if err != nil || !d.Allow {
			b.Fatalf("%+v %v", d, err)
		}
	}
	slices.Sort(samples)
	if n := len(samples); n > 0 {
		b.ReportMetric(float64(samples[n/2].Nanoseconds()), "p50-ns")
	}
}
