package authority

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/bcrypt"
)

const (
	testAdminToken = "test-global-admin-token-0123456789"
	acmeAdminToken = "acme-tenant-admin-token-0123456789"
)

// fakeClock is an injectable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// fakeSink records audit records; it implements audit.Sink.
type fakeSink struct {
	mu   sync.Mutex
	recs []*audit.Record
	err  error // when set, Append fails (the audit store is down)
}

func (s *fakeSink) Append(_ context.Context, r *audit.Record) (audit.Receipt, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return audit.Receipt{}, s.err
	}
	s.recs = append(s.recs, r)
	return audit.ReceiptForTest("1-0", r), nil
}

func (s *fakeSink) Enqueue(r *audit.Record) { _, _ = s.Append(context.Background(), r) }

func (s *fakeSink) kinds(kind audit.Kind) []*audit.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*audit.Record
	for _, r := range s.recs {
		if r.Kind == kind {
			out = append(out, r)
		}
	}
	return out
}

var _ audit.Sink = (*fakeSink)(nil)

// env is one authority under test, served over HTTP on 127.0.0.1.
type env struct {
	t     *testing.T
	a     *Authority
	srv   *httptest.Server
	rs    *redistest.Server
	rdb   redis.UniversalClient
	clock *fakeClock
	reg   *prometheus.Registry
	sink  *fakeSink
	admin *client.Admin
}

func testConfig() Config {
	cfg := DefaultConfig()
	cfg.AdminToken = testAdminToken
	cfg.TenantAdminTokens = map[string][]string{"acme": {acmeAdminToken}}
	cfg.Clients.BcryptCost = bcrypt.MinCost
	return cfg
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// newEnv starts a private Redis and an authority. Pass rs to share a Redis
// between two authorities (replicas), clock to share a clock.
func newEnv(t *testing.T, mutate func(*Config), rs *redistest.Server, clock *fakeClock) *env {
	t.Helper()
	if rs == nil {
		rs = redistest.Start(t)
	}
	if clock == nil {
		clock = newClock()
	}
	e := &env{t: t, rs: rs, rdb: rs.Client(), clock: clock, reg: prometheus.NewRegistry(), sink: &fakeSink{}}
	e.srv = httptest.NewUnstartedServer(nil)
	cfg := testConfig()
	cfg.Issuer = "http://" + e.srv.Listener.Addr().String()
	if mutate != nil {
		mutate(&cfg)
	}
	a, err := New(cfg, Deps{Redis: e.rdb, Logger: testLogger(t), Registry: e.reg, Audit: e.sink, Clock: clock.Now})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := a.Init(context.Background()); err != nil {
		t.Fatalf("Init: %v", err)
	}
	e.a = a
	e.srv.Config.Handler = a.Handler()
	e.srv.Start()
	t.Cleanup(e.srv.Close)
	e.admin, err = client.NewAdmin(e.srv.URL, testAdminToken, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) register(tenant, name, typ string, trust passport.TrustLevel, mod ...func(*client.AgentSpec)) client.Registration {
	e.t.Helper()
	spec := client.AgentSpec{Name: name, Type: typ, TrustLevel: trust}
	for _, m := range mod {
		m(&spec)
	}
	reg, err := e.admin.RegisterAgent(context.Background(), tenant, spec)
	if err != nil {
		e.t.Fatalf("register %s: %v", name, err)
	}
	return reg
}

// postForm posts a form to path with optional Basic credentials.
func (e *env) postForm(path string, form url.Values, user, pass string) (*http.Response, []byte) {
	e.t.Helper()
	return e.post(path, "application/x-www-form-urlencoded", form.Encode(), func(r *http.Request) {
		if user != "" {
			r.SetBasicAuth(url.QueryEscape(user), url.QueryEscape(pass))
		}
	})
}

func (e *env) post(path, ctype, body string, mod func(*http.Request)) (*http.Response, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.srv.URL+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", ctype)
	if mod != nil {
		mod(req)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func (e *env) get(path, token string) (*http.Response, []byte) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// token gets a passport with client_secret_basic and fails the test on error.
func (e *env) token(reg client.Registration, extra url.Values) string {
	e.t.Helper()
	form := url.Values{"grant_type": {"client_credentials"}}
	for k, v := range extra {
		form[k] = v
	}
	resp, body := e.postForm("/oauth2/token", form, reg.ClientID, reg.ClientSecret)
	if resp.StatusCode != http.StatusOK {
		e.t.Fatalf("token: %d %s", resp.StatusCode, body)
	}
	var tr client.TokenResponse
	if err := json.Unmarshal(body, &tr); err != nil {
		e.t.Fatal(err)
	}
	return tr.AccessToken
}

// fetchJWKS gets the JWKS over HTTP and parses it with go-jose: a JOSE
// implementation different from the one (golang-jwt) that signs.
func (e *env) fetchJWKS() jose.JSONWebKeySet {
	e.t.Helper()
	resp, body := e.get("/.well-known/jwks.json", "")
	if resp.StatusCode != http.StatusOK {
		e.t.Fatalf("jwks: %d %s", resp.StatusCode, body)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(body, &set); err != nil {
		e.t.Fatalf("jwks decode with go-jose: %v\n%s", err, body)
	}
	return set
}

// verifyGoJose verifies raw against the JWKS with go-jose and returns the
// claims. It checks the header the way a strict verifier would.
func verifyGoJose(t *testing.T, raw string, set jose.JSONWebKeySet) (passport.Claims, error) {
	t.Helper()
	var c passport.Claims
	jws, err := jose.ParseSigned(raw, []jose.SignatureAlgorithm{jose.EdDSA, jose.ES256})
	if err != nil {
		return c, err
	}
	if len(jws.Signatures) != 1 {
		t.Fatalf("want one signature, got %d", len(jws.Signatures))
	}
	h := jws.Signatures[0].Header
	if typ, _ := h.ExtraHeaders[jose.HeaderType].(string); typ != passport.TokenType {
		t.Fatalf("typ = %q, want %q", typ, passport.TokenType)
	}
	keys := set.Key(h.KeyID)
	if h.KeyID == "" || len(keys) != 1 {
		return c, errKeyNotInJWKS
	}
	if keys[0].Algorithm != h.Algorithm {
		t.Fatalf("alg %s does not match JWK alg %s", h.Algorithm, keys[0].Algorithm)
	}
	payload, err := jws.Verify(keys[0])
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		t.Fatalf("claims: %v", err)
	}
	return c, nil
}

type testErr string

func (e testErr) Error() string { return string(e) }

const errKeyNotInJWKS = testErr("kid not in JWKS")

// counter reads a counter from the registry.
func counter(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			total += m.GetCounter().GetValue()
		}
	}
	return total
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
