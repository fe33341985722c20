// Package proxy is the enforcement point of Agent Passport: a sidecar
// reverse proxy that stands in front of an infrastructure control API.
//
// Every call goes through the same chain: normalise the path and match a
// route; verify the passport strictly (signature against the authority's
// JWKS, pinned algorithms, typ, iss, aud, times, tenant); refuse revoked
// passports and blocked agents; read the agent's live reputation; evaluate
// the Rego decision; write the decision to the audit stream and wait for
// Redis to acknowledge it; only then forward through
// httputil.ReverseProxy{Rewrite}; and record the outcome. Any error on the
// way refuses the call: nothing reaches the upstream without a passport, a
// policy allow and an acknowledged audit record.
package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/alert"
	"github.com/agentpassport/passport/internal/run"
	"github.com/agentpassport/passport/internal/strictjson"
	"github.com/agentpassport/passport/internal/tlsx"
	"github.com/agentpassport/passport/passport"
	"github.com/agentpassport/passport/proxy/policy"
)

// Deps are the proxy's collaborators, built by the caller.
type Deps struct {
	// Redis holds revocations, blocks and agent state. Required.
	Redis redis.UniversalClient
	// Audit receives decision records (write-ahead) and outcomes. Required.
	Audit audit.Sink
	// Logger is required.
	Logger *slog.Logger
	// Registry receives the metrics. Required.
	Registry *prometheus.Registry
	// Clock defaults to time.Now. It decides passport validity.
	Clock func() time.Time
	// Policies is the embedded library (policies.FS), used when the config
	// names no policy directory.
	Policies fs.FS
	// HTTPClient fetches keys and reports denials. Default: a client with
	// a 10s timeout that verifies the authority with Config.AuthorityTLS.
	HTTPClient *http.Client
	// Alerts receives approval requests for the chat webhooks. Default
	// none.
	Alerts alert.Notifier
}

// Proxy is a configured enforcement point.
type Proxy struct {
	cfg      Config
	log      *slog.Logger
	clock    func() time.Time
	audit    audit.Sink
	rdb      redis.UniversalClient
	reg      *prometheus.Registry
	m        *metrics
	router   *router
	verifier *verifier
	dpop     *dpopGate // dpop.go
	keys     *jwksKeys
	revoked  *revocations
	reps     *reputations
	enforced *policy.Engine
	shadow   *policy.Engine
	denials  *denialReporter
	esc      *escalations      // approvals and budgets (approval.go, budget.go)
	refusals *audit.Aggregator // refusal summaries (KindRefusals)
	backlog  audit.Backlog     // the audit sink's backlog, when it has one
	handler  http.Handler
	metaJSON []byte
	assert   *assertionSigner // nil when no route asks for assertions
	metaURL  string
	// tls serves both listeners when Config.TLS is set (nil: plain).
	tls *tls.Config

	bgCtx    context.Context
	bgCancel context.CancelFunc
	draining atomic.Bool
	flight   *inflight
}

// New validates cfg, loads the policy and prepares the key source. It does
// not listen; Run does.
func New(cfg Config, d Deps) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("proxy config: %w", err)
	}
	switch {
	case d.Redis == nil:
		return nil, errors.New("proxy: Deps.Redis is required")
	case d.Audit == nil:
		return nil, errors.New("proxy: Deps.Audit is required")
	case d.Logger == nil:
		return nil, errors.New("proxy: Deps.Logger is required")
	case d.Registry == nil:
		return nil, errors.New("proxy: Deps.Registry is required")
	}
	if d.Clock == nil {
		d.Clock = time.Now
	}
	p := &Proxy{cfg: cfg, log: d.Logger, clock: d.Clock, audit: d.Audit, rdb: d.Redis, reg: d.Registry}
	p.m = newMetrics(d.Registry)
	p.flight = newInflight()
	tm := tlsx.NewMetrics(d.Registry)
	var err error
	if p.tls, err = cfg.TLS.Config(tlsx.Options{Name: "proxy", Logger: d.Logger, Metrics: tm}); err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	if d.HTTPClient == nil {
		d.HTTPClient = &http.Client{Timeout: 10 * time.Second}
		if !cfg.AuthorityTLS.IsZero() {
			tr, err := cfg.AuthorityTLS.Transport(tlsx.Options{Name: "proxy authority client", Logger: d.Logger, Metrics: tm})
			if err != nil {
				return nil, fmt.Errorf("proxy authority_tls: %w", err)
			}
			tr.Proxy = nil // never via an environment proxy
			d.HTTPClient.Transport = tr
		}
	}
	p.bgCtx, p.bgCancel = context.WithCancel(context.Background())

	ok := false
	defer func() {
		if !ok {
			p.bgCancel()
		}
	}()

	// Policies: the enforced one must load; the shadow one too, when named.
	popts := policy.Options{Name: "enforced", Dir: cfg.Policy.Dir, Layout: policy.ParseDirLayout(cfg.Policy.KubernetesConfigMap),
		Evaluator: policy.Evaluator(cfg.Policy.Engine), Timeout: cfg.Policy.Timeout,
		PollInterval: cfg.Policy.PollInterval, Logger: d.Logger, Metrics: p.m.policy}
	if cfg.Policy.Dir == "" {
		if d.Policies == nil {
			return nil, errors.New("proxy: no policy: set policy.dir or pass the embedded library")
		}
		popts.FS = d.Policies
	}
	if p.enforced, err = policy.New(p.bgCtx, popts); err != nil {
		return nil, err
	}
	if cfg.Policy.ShadowDir != "" {
		popts.Name, popts.Dir, popts.FS = "shadow", cfg.Policy.ShadowDir, nil
		if p.shadow, err = policy.New(p.bgCtx, popts); err != nil {
			return nil, err
		}
	}

	// Keys: fetched now if the authority answers, else retried until it
	// does (the proxy is not ready meanwhile).
	kc := *d.HTTPClient
	kc.Transport = &countingTransport{next: transportOf(d.HTTPClient), m: p.m, limit: 1 << 20}
	p.keys, err = newJWKSKeys(p.bgCtx, cfg.JWKSURL, &kc, cfg.JWKSRefresh, cfg.JWKSUnknownKIDInterval,
		func(ctx context.Context, err error) {
			p.log.WarnContext(ctx, "jwks refresh failed", "url", cfg.JWKSURL, "error", err)
		})
	if err != nil {
		return nil, err
	}
	if p.verifier, err = newVerifier(&p.cfg, p.keys, d.Clock); err != nil {
		return nil, fmt.Errorf("proxy verifier: %w", err)
	}
	hit, miss := p.m.verifyCache.WithLabelValues("hit"), p.m.verifyCache.WithLabelValues("miss")
	p.verifier.hits = func(h bool) {
		if h {
			hit.Inc()
		} else {
			miss.Inc()
		}
	}
	if p.dpop, err = newDPoPGate(&p.cfg, d.Redis, d.Clock); err != nil {
		return nil, fmt.Errorf("proxy dpop: %w", err)
	}
	p.revoked = newRevocations(d.Redis, d.Logger, d.Clock, p.m)
	p.reps = newReputations(d.Redis, cfg.ReputationCache, d.Clock)
	p.denials = newDenialReporter(&p.cfg, d.HTTPClient, p.m, d.Logger)
	p.esc = newEscalations(d.Redis, d.Clock, d.Alerts, d.Registry)
	p.refusals = audit.NewAggregator(d.Audit, audit.AggregatorConfig{Clock: d.Clock}, d.Registry)
	p.backlog, _ = d.Audit.(audit.Backlog)

	// Routes and their upstreams.
	ups := map[string]*upstream{}
	for name, u := range p.cfg.Upstreams {
		up, err := newUpstream(name, u, p, tm)
		if err != nil {
			return nil, err
		}
		ups[name] = up
	}
	creds := map[string]*credentialSource{}
	for name, u := range p.cfg.Upstreams {
		if u.Credential != nil {
			cs, err := newCredentialSource(*u.Credential)
			if err != nil {
				return nil, fmt.Errorf("upstream %s: %w", name, err)
			}
			creds[name] = cs
		}
	}
	var routes []*route
	for _, rc := range p.cfg.Routes {
		tpl, _ := parseTemplate(rc.Match) // validated above
		r := &route{Route: rc, tpl: tpl, production: *rc.Production, upstream: ups[rc.Upstream]}
		r.m = &routeMetrics{upstream: p.m.upstreamSeconds.WithLabelValues(rc.Name)}
		r.inputTerm, r.actionTerm = routeTerm(r), ast.StringTerm(rc.Action)
		r.bodyOpts = strictjson.Options{MaxDepth: p.cfg.Limits.MaxBodyDepth, Object: true}
		if rc.BodyNames == BodyNamesFolded {
			r.bodyOpts.Names = strictjson.NamesFolded
		}
		r.credential = creds[rc.Upstream]
		if rc.Credential != nil {
			if r.credential, err = newCredentialSource(*rc.Credential); err != nil {
				return nil, fmt.Errorf("route %s: %w", rc.Name, err)
			}
		}
		u := p.cfg.Upstreams[rc.Upstream]
		r.assertion = u.Assertion
		if rc.Assertion != nil {
			r.assertion = *rc.Assertion
		}
		r.assertAud = u.AssertionAudience
		if r.assertAud == "" {
			r.assertAud = u.URL
		}
		if r.assertion && p.assert == nil {
			if p.assert, err = newAssertionSigner(p.cfg.Assertion, p.cfg.ResourceURL); err != nil {
				return nil, err
			}
		}
		r.mcp = p.compileMCP(r)
		routes = append(routes, r)
	}
	routes = append(routes, mcpCompanions(routes)...)
	if p.assert != nil {
		for _, r := range routes {
			r.assertHeader = p.assert.header // stripped from what agents send, on every route
		}
	}
	p.router = newRouter(routes)

	p.metaURL = strings.TrimRight(p.cfg.ResourceURL, "/") + "/.well-known/oauth-protected-resource"
	p.metaJSON = protectedResourceMetadata(&p.cfg, withMCPTools(routes))
	p.handler = http.HandlerFunc(p.serve)
	ok = true
	return p, nil
}

// Handler is the agent-facing handler (for tests and embedding).
func (p *Proxy) Handler() http.Handler { return p.handler }

// AdminHandler serves /metrics, /healthz and /readyz.
func (p *Proxy) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(p.reg, promhttp.HandlerOpts{Registry: p.reg}))
	if p.assert != nil {
		mux.HandleFunc("GET "+AssertionJWKSPath, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/jwk-set+json")
			w.Header().Set("Cache-Control", "max-age=300")
			_, _ = w.Write(p.assert.jwks)
		})
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		problems := p.notReady(r.Context())
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if len(problems) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(strings.Join(problems, "\n") + "\n"))
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}

// notReady lists what keeps the proxy from serving: it is ready only with
// a policy loaded, keys fetched and Redis reachable, and not draining.
func (p *Proxy) notReady(ctx context.Context) []string {
	var out []string
	if p.draining.Load() {
		out = append(out, "draining")
	}
	if p.enforced.Revision() == "" {
		out = append(out, "policy not loaded")
	}
	if !p.keys.ready(ctx) {
		out = append(out, "signing keys not fetched")
	}
	// Half the probe budget: a hung Redis must not make /readyz itself
	// hang past the orchestrator's 1s probe timeout.
	ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if err := p.rdb.Ping(ctx).Err(); err != nil {
		out = append(out, "redis unreachable")
	}
	return out
}

// Ready reports whether /readyz would answer 200.
func (p *Proxy) Ready(ctx context.Context) bool { return len(p.notReady(ctx)) == 0 }

// Run serves the agent and admin listeners and runs the background work
// (policy reload, revocation subscription, key retries, denial reports)
// until ctx ends. On ctx end it drains: new calls are answered 503
// draining (the port stays open), calls in flight may finish for up to
// timeouts.drain, and those still running then are cut, each with an
// aborted outcome record; then it closes the listeners and returns nil.
func (p *Proxy) Run(ctx context.Context) error {
	defer p.bgCancel()
	ln, err := net.Listen("tcp", p.cfg.Listen)
	if err != nil {
		return fmt.Errorf("proxy listen %s: %w", p.cfg.Listen, err)
	}
	aln, err := net.Listen("tcp", p.cfg.AdminListen)
	if err != nil {
		ln.Close()
		return fmt.Errorf("proxy admin listen %s: %w", p.cfg.AdminListen, err)
	}
	return p.Serve(ctx, ln, aln)
}

// Serve is Run on listeners the caller opened (tests use port 0).
func (p *Proxy) Serve(ctx context.Context, ln, adminLn net.Listener) error {
	defer p.bgCancel()
	srv := p.Server()
	admin := &http.Server{Handler: p.AdminHandler(), ReadHeaderTimeout: 5 * time.Second, ErrorLog: slogErrorLog(p.log)}
	g, gctx := errgroup.WithContext(ctx)
	bg, bgCancel := context.WithCancel(gctx)
	defer bgCancel()
	g.Go(run.Guarded(ctx, "proxy.policy", func() error { return p.enforced.Run(bg) }))
	if p.shadow != nil {
		g.Go(run.Guarded(ctx, "proxy.shadow_policy", func() error { return p.shadow.Run(bg) }))
	}
	g.Go(run.Guarded(ctx, "proxy.revocations", func() error { return p.revoked.Run(bg) }))
	g.Go(run.Guarded(ctx, "proxy.denial_reports", func() error { return p.denials.Run(bg) }))
	g.Go(run.Guarded(ctx, "proxy.refusal_summaries", func() error { return p.refusals.Run(bg) })) // its last summaries go out after the drain
	g.Go(run.Guarded(ctx, "proxy.key_retry", func() error { p.keyRetry(bg); return nil }))
	g.Go(func() error {
		p.log.InfoContext(ctx, "proxy listening", "addr", ln.Addr().String(), "tls", p.tls != nil, "policy_revision", p.enforced.Revision())
		if err := tlsx.Serve(srv, ln, p.tls); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("proxy serve: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := tlsx.Serve(admin, adminLn, p.tls); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("proxy admin serve: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		p.draining.Store(true)
		p.log.Info("proxy draining", "timeout", p.cfg.Timeouts.Drain)
		srv.SetKeepAlivesEnabled(false)
		idle := p.flight.drain()
		deadline := time.NewTimer(p.cfg.Timeouts.Drain)
		defer deadline.Stop()
		select {
		case <-idle:
		case <-deadline.C:
			n := p.cut()
			p.log.Warn("drain deadline reached; calls still running were cut and recorded as aborted", "calls", n)
			// Cancelled calls answer at once; give them a moment to.
			grace := time.NewTimer(time.Second)
			select {
			case <-idle:
			case <-grace.C:
			}
			grace.Stop()
		}
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			_ = srv.Close()
		}
		_ = admin.Shutdown(sctx)
		bgCancel() // background work stops after the last call is answered
		return nil
	})
	return g.Wait()
}

// Server is the agent-facing http.Server with its timeouts and limits.
func (p *Proxy) Server() *http.Server {
	return &http.Server{
		Handler:           p.handler,
		ReadHeaderTimeout: p.cfg.Timeouts.ReadHeader,
		ReadTimeout:       p.cfg.Timeouts.Read,
		IdleTimeout:       p.cfg.Timeouts.Idle,
		// The handler answers 431 itself (with a request id) up to twice
		// the limit; beyond that net/http refuses without reading more.
		MaxHeaderBytes: 2 * p.cfg.Limits.MaxHeaderBytes,
		ErrorLog:       slogErrorLog(p.log),
	}
}

// keyRetry fetches the keys every two seconds while none are loaded (the
// authority may start after the proxy).
func (p *Proxy) keyRetry(ctx context.Context) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		if p.keys.ready(ctx) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			p.keys.poke(ctx)
		}
	}
}

// Revision is the enforced policy revision.
func (p *Proxy) Revision() string { return p.enforced.Revision() }

// newRequestID is the proxy's own id for a call: 128 random bits, the key
// of its audit records. A client's X-Request-Id is never used for it: two
// calls with the same client id would share records, and a verifier that
// (rightly) requires one decision per request would call the trail
// tampered for good.
func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// maxClientRequestID bounds the client's X-Request-Id as kept.
const maxClientRequestID = 128

// clientRequestID is the client's X-Request-Id, kept beside the proxy's
// own id so that a caller can still find its call: the first value only,
// at most maxClientRequestID bytes, every byte outside a conservative set
// (letters, digits and -_.:/+=@) replaced by "_", so that it is safe in
// logs and records. It is a label, never a key.
func clientRequestID(r *http.Request) string {
	vs := r.Header.Values(HeaderXRequest)
	if len(vs) == 0 || vs[0] == "" {
		return ""
	}
	v := vs[0]
	if len(v) > maxClientRequestID {
		v = v[:maxClientRequestID]
	}
	b := []byte(v)
	for i, c := range b {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-_.:/+=@", c) >= 0) {
			b[i] = '_'
		}
	}
	return string(b)
}

func protectedResourceMetadata(cfg *Config, routes []*route) []byte {
	var scopes []string
	seen := map[string]bool{}
	for _, r := range routes {
		if !seen[r.Action] {
			seen[r.Action] = true
			scopes = append(scopes, fmt.Sprintf("%q", r.Action))
		}
	}
	return fmt.Appendf(nil, `{"resource":%q,"authorization_servers":[%q],"bearer_methods_supported":["header"],"scopes_supported":[%s],"dpop_signing_alg_values_supported":[%q,%q],"resource_name":"Agent Passport proxy","audience":%q}`+"\n",
		cfg.ResourceURL, cfg.Issuer, strings.Join(scopes, ","), passport.DPoPAlgorithms[0], passport.DPoPAlgorithms[1], cfg.Audience)
}

// countingTransport counts JWKS fetches and bounds their size.
type countingTransport struct {
	next  http.RoundTripper
	m     *metrics
	limit int64
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.next.RoundTrip(r)
	if err != nil || resp.StatusCode != http.StatusOK {
		c.m.keyRefreshes.WithLabelValues("failure").Inc()
		return resp, err
	}
	c.m.keyRefreshes.WithLabelValues("success").Inc()
	resp.Body = http.MaxBytesReader(nil, resp.Body, c.limit)
	return resp, nil
}

func transportOf(c *http.Client) http.RoundTripper {
	if c.Transport != nil {
		return c.Transport
	}
	return http.DefaultTransport
}

// upstream is one backend with its own connection pool.
type upstream struct {
	name    string
	url     *url.URL
	timeout time.Duration
	rp      *httputil.ReverseProxy
}

// newUpstream builds the ReverseProxy. It uses Rewrite, never Director:
// with Director, headers set by the proxy can be removed by a client that
// names them in Connection, because hop-by-hop removal runs after it.
func newUpstream(name string, u Upstream, p *Proxy, tm *tlsx.Metrics) (*upstream, error) {
	target, err := url.Parse(u.URL)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", name, err)
	}
	var tc *tls.Config
	if target.Scheme == "https" {
		if tc, err = u.TLS.Config(tlsx.Options{Name: "upstream " + name, Logger: p.log, Metrics: tm}); err != nil {
			return nil, fmt.Errorf("upstream %s: %w", name, err)
		}
	}
	tr := &http.Transport{
		Proxy:                 nil, // never via an environment proxy
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          u.MaxIdleConns,
		MaxIdleConnsPerHost:   u.MaxIdleConns,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: u.Timeout,
		ExpectContinueTimeout: time.Second,
		TLSHandshakeTimeout:   5 * time.Second,
		TLSClientConfig:       tc,
		DisableCompression:    true, // pass encodings through untouched
		ForceAttemptHTTP2:     false,
	}
	up := &upstream{name: name, url: target, timeout: u.Timeout}
	strip := newHeaderStrip(p.cfg.StripHeaders)
	up.rp = &httputil.ReverseProxy{
		Rewrite:        func(pr *httputil.ProxyRequest) { rewrite(pr, target, strip) },
		Transport:      tr,
		BufferPool:     newBufferPool(),
		ModifyResponse: modifyResponse,
		ErrorHandler:   p.upstreamError,
		ErrorLog:       slogErrorLog(p.log),
	}
	return up, nil
}
