package proxy

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentpassport/passport/authority/passport"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/policies"
	"github.com/agentpassport/passport/proxy/internal/testkeys"
)

// libraryProxy is a proxy on the real policy library (policies.FS) with a
// registered healer, for the benchmark and the input-contract test.
func libraryProxy(tb testing.TB) (*Proxy, string) {
	tb.Helper()
	keys := testkeys.New(tb)
	srv := redistest.Start(tb)
	rdb := srv.Client()
	cfg := testConfig("http://127.0.0.1:1", keys.URL())
	cfg.Policy.Dir = ""
	cfg.Policy.Timeout = time.Second // a busy machine must not turn a benchmark into a timeout test
	p, err := New(cfg, Deps{Redis: rdb, Audit: &fakeSink{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registry: prometheus.NewRegistry(), Policies: policies.FS})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = p.revoked.Run(ctx); close(done) }()
	tb.Cleanup(func() { cancel(); <-done })
	waitFor(tb, "revocations live", func() bool { return p.revoked.live.Load() })
	now := time.Now()
	if err := rdb.HSet(ctx, passport.AgentKey("acme", "healer-1"), passport.FieldReputation, 90,
		passport.FieldReputationAt, now.UnixMilli()).Err(); err != nil {
		tb.Fatal(err)
	}
	c := testkeys.Claims(now, "acme", "healer-1", "healer", passport.TrustHigh,
		"service.list", "service.get", "service.restart", "deployment.rollback", "cache.warm")
	return p, keys.Sign(tb, c)
}

// decideOnce runs the decision path of serve: passport (a seen one comes
// from the cache), revocation and block check, live reputation, input
// document, Rego.
func decideOnce(ctx context.Context, p *Proxy, tok string, params map[string]string) (bool, []string, error) {
	r := httptest.NewRequest("POST", "/services/checkout/restart", nil)
	return decideReq(ctx, p, r, tok, params)
}

func decideReq(ctx context.Context, p *Proxy, req *http.Request, tok string, params map[string]string) (bool, []string, error) {
	vp, err := p.verifier.verify(ctx, tok)
	if err != nil {
		return false, nil, err
	}
	cl := vp.Claims
	if err := p.revoked.check(ctx, cl.ID, cl.Tenant, cl.Agent.ID); err != nil {
		return false, nil, err
	}
	st, err := p.reps.get(ctx, cl.Tenant, cl.Agent.ID)
	if err != nil {
		return false, nil, err
	}
	now := p.clock()
	rt, _ := p.router.match("POST", []string{"services", "checkout", "restart"})
	c := &call{id: "bench-request-0001", path: "/services/checkout/restart"}
	in := p.buildInput(req, c, rt, params, url.Values{}, vp, st.reputation.At(now), now, nil, nil)
	d, err := p.enforced.Decide(ctx, in.value)
	return d.Allow, d.Reasons, err
}

func TestLibraryAllowsHealerRestart(t *testing.T) {
	p, tok := libraryProxy(t)
	allow, reasons, err := decideOnce(context.Background(), p, tok, map[string]string{"name": "checkout"})
	if err != nil || !allow {
		t.Fatalf("the library must allow a HIGH healer to restart its tenant's service: %v %v", reasons, err)
	}
	allow, reasons, _ = decideOnce(context.Background(), p, tok, map[string]string{"name": "search"})
	if allow {
		t.Fatalf("another tenant's service allowed: %v", reasons)
	}
}

// BenchmarkDecide is the in-process decision path for a passport already
// seen: cache hit, revocation check, reputation (cached), input document,
// Rego on the real library. Target ≤ 20 µs at p50.
func BenchmarkDecide(b *testing.B) {
	p, tok := libraryProxy(b)
	ctx := context.Background()
	params := map[string]string{"name": "checkout"}
	if ok, reasons, err := decideOnce(ctx, p, tok, params); !ok || err != nil {
		b.Fatalf("not allowed: %v %v", reasons, err)
	}
	// The request exists before the decision (net/http parsed it); only
	// the decision's own work is timed.
	req := httptest.NewRequest("POST", "/services/checkout/restart", nil)
	samples := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	for b.Loop() {
		t0 := time.Now()
		_, _, err := decideReq(ctx, p, req, tok, params)
		samples = append(samples, time.Since(t0))
		if err != nil {
			b.Fatal(err)
		}
	}
	slices.Sort(samples)
	if n := len(samples); n > 0 {
		b.ReportMetric(float64(samples[n/2].Nanoseconds()), "p50-ns")
		b.ReportMetric(float64(samples[n*99/100].Nanoseconds()), "p99-ns")
	}
}

// BenchmarkVerifyCached is the verification of a seen passport alone.
func BenchmarkVerifyCached(b *testing.B) {
	p, tok := libraryProxy(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.verifier.verify(ctx, tok); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyFirst is a full verification (signature included).
func BenchmarkVerifyFirst(b *testing.B) {
	p, tok := libraryProxy(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		p.verifier.cache = newTokenCache(0)
		if _, err := p.verifier.verify(ctx, tok); err != nil {
			b.Fatal(err)
		}
	}
}
