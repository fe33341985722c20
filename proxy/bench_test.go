package proxy

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
	"github.com/agentpassport/passport/policies"
	"github.com/agentpassport/passport/proxy/internal/testkeys"
	"github.com/agentpassport/passport/proxy/policy"
)

// libraryProxy is a proxy on the real policy library (policies.FS) with a
// registered healer, for the benchmark and the input-contract test.
func libraryProxy(tb testing.TB) (*Proxy, string) {
	tb.Helper()
	p, _, tok := libraryProxyKeys(tb)
	return p, tok
}

// libraryProxyKeys is libraryProxy with the keys its passports are
// signed with.
func libraryProxyKeys(tb testing.TB) (*Proxy, *testkeys.Keys, string) {
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
	return p, keys, keys.Sign(tb, c)
}

// decideOnce runs the decision path of serve: passport (a seen one comes
// from the cache), revocation and block check, live reputation, input
// document, the passport's stage on the route (kept from its first call),
// Rego.
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
	c := &call{id: "bench-request-0001", path: "/services/checkout/restart", route: rt, vp: vp}
	in, err := p.buildInput(req, c, rt, params, url.Values{}, vp, st.reputation.At(now), now, nil, nil)
	if err != nil {
		return false, nil, err
	}
	stage := p.stage(req, c, in) // the passport's stage on the route, as evaluate does (decide.go)
	d, err := p.enforced.DecideStaged(ctx, policy.WithStage(in.value, stage), stage)
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

// BenchmarkInputJSON is the audit record's copy of the policy input
// (decisionRecord) for calls on the real library with a verified passport,
// the former way (json.Marshal) and the current one (appendJSON): a
// restart (no body) and a scale (a small JSON body). The seal cases are
// the audit encoder's work on each result (audit.Seal, which writes the
// input in canonical order: appendJSON's order already is).
func BenchmarkInputJSON(b *testing.B) {
	p, tok := libraryProxy(b)
	vp, err := p.verifier.verify(context.Background(), tok)
	if err != nil {
		b.Fatal(err)
	}
	now := p.clock()
	req := httptest.NewRequest("POST", "/services/checkout/restart", nil)
	req.Header.Set("User-Agent", "healer/1.0")
	req.Header.Set("Content-Type", "application/json")
	c := &call{id: "bench-request-0001", path: "/services/checkout/restart"}
	rt, params := p.router.match("POST", []string{"services", "checkout", "restart"})
	restart, err := p.buildInput(req, c, rt, params, url.Values{}, vp, 87.5, now, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	body := []byte(`{"replicas": 3, "reason": "p99 latency above the SLO for 10 minutes"}`)
	bv, err := decodeBody(body, anyBody)
	if err != nil {
		b.Fatal(err)
	}
	rt, params = p.router.match("POST", []string{"services", "checkout", "scale"})
	c = &call{id: "bench-request-0002", path: "/services/checkout/scale"}
	scale, err := p.buildInput(req, c, rt, params, url.Values{}, vp, 87.5, now, bv, body)
	if err != nil {
		b.Fatal(err)
	}

	encoders := []struct {
		name string
		enc  func(*inputDoc) ([]byte, error)
	}{
		{"json.Marshal", func(d *inputDoc) ([]byte, error) { return json.Marshal(d) }},
		{"appendJSON", func(d *inputDoc) ([]byte, error) { return d.marshalJSON(true) }},
	}
	for _, doc := range []struct {
		name string
		in   *input
	}{{"restart", restart}, {"scale", scale}} {
		for _, e := range encoders {
			b.Run(doc.name+"/"+e.name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if _, err := e.enc(&doc.in.doc); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
	for _, e := range encoders {
		b.Run("seal/"+e.name, func(b *testing.B) {
			in, err := e.enc(&scale.doc)
			if err != nil {
				b.Fatal(err)
			}
			rec := &audit.Record{V: audit.Version, Kind: audit.KindDecision, Time: now, RequestID: c.id, Tenant: "acme",
				Decision: audit.DecisionAllow, Input: in, Writer: "proxy-1", Seq: 1, Prev: strings.Repeat("0", 64)}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := audit.Seal(rec); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// discardSink acknowledges every record and keeps none: the audit store
// costs nothing in BenchmarkServe, so the figures are the proxy's own.
type discardSink struct{}

func (discardSink) Append(_ context.Context, rec *audit.Record) (audit.Receipt, error) {
	return audit.ReceiptForTest("0-1", rec), nil
}
func (discardSink) Enqueue(*audit.Record) {}

// BenchmarkServe is the whole handler for one call on the real library:
// an allowed call forwarded to a loopback upstream, a call the policy
// denies, and one refused before the policy (no passport).
func BenchmarkServe(b *testing.B) {
	keys := testkeys.New(b)
	srv := redistest.Start(b)
	rdb := srv.Client()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	b.Cleanup(up.Close)
	cfg := testConfig(up.URL, keys.URL())
	cfg.Policy.Dir = ""
	cfg.Policy.Timeout = time.Second
	cfg.Routes = []Route{{Match: "POST /services/{name}/restart", Action: "service.restart", Resource: "{name}"}}
	p, err := New(cfg, Deps{Redis: rdb, Audit: discardSink{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registry: prometheus.NewRegistry(), Policies: policies.FS})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = p.revoked.Run(ctx); close(done) }()
	b.Cleanup(func() { cancel(); <-done })
	waitFor(b, "revocations live", func() bool { return p.revoked.live.Load() })
	now := time.Now()
	if err := rdb.HSet(ctx, passport.AgentKey("acme", "healer-1"), passport.FieldReputation, 90,
		passport.FieldReputationAt, now.UnixMilli()).Err(); err != nil {
		b.Fatal(err)
	}
	tok := keys.Sign(b, testkeys.Claims(now, "acme", "healer-1", "healer", passport.TrustHigh, "service.restart"))
	h := p.Handler()
	for _, tc := range []struct {
		name, path, token string
		status            int
	}{
		{"allow", "/services/checkout/restart", tok, http.StatusOK},
		{"deny", "/services/search/restart", tok, http.StatusForbidden},
		{"no_passport", "/services/checkout/restart", "", http.StatusUnauthorized},
	} {
		b.Run(tc.name, func(b *testing.B) {
			req := httptest.NewRequest("POST", tc.path, nil)
			req.RemoteAddr = "127.0.0.1:4711"
			auth := []string{"Bearer " + tc.token}
			b.ReportAllocs()
			for b.Loop() {
				if tc.token != "" {
					req.Header["Authorization"] = auth // forwarding removes it
				}
				w := httptest.NewRecorder()
				h.ServeHTTP(w, req)
				if w.Code != tc.status {
					b.Fatalf("status %d, want %d: %s", w.Code, tc.status, w.Body)
				}
			}
		})
	}
}
