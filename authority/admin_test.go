package authority

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
	"github.com/prometheus/client_golang/prometheus"
)

func TestRegisterAgentInProcess(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	reg, err := e.a.RegisterAgent(context.Background(), "globex", client.AgentSpec{Name: "chaos-1", Type: "chaos", TrustLevel: "HIGH"})
	if err != nil || reg.ClientSecret == "" || reg.Tenant != "globex" {
		t.Fatalf("%+v %v", reg, err)
	}
	c, err := verifyGoJose(t, e.token(reg, url.Values{"scope": {"chaos.inject"}}), e.fetchJWKS())
	if err != nil || c.Agent.Type != "chaos" || !c.Grants("chaos.inject") || c.Grants("chaos.clear") {
		t.Fatalf("claims %+v %v", c, err)
	}
	if _, err := e.a.RegisterAgent(context.Background(), "globex", client.AgentSpec{Name: "x", Type: "nope", TrustLevel: "HIGH"}); !errors.Is(err, ErrInvalidAgent) {
		t.Fatalf("invalid spec: %v", err)
	}
}

func TestAdminAPIWithoutTokensRefusesAll(t *testing.T) {
	rs := redistest.Start(t)
	cfg := testConfig()
	cfg.AdminToken = ""
	cfg.TenantAdminTokens = nil
	a, err := New(cfg, Deps{Audit: audit.Discard, Redis: rs.Client(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{"", "anything-anything-anything"} {
		req, _ := http.NewRequest(http.MethodGet, "/v1/tenants/acme/agents", nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		rec := newRecorder()
		a.Handler().ServeHTTP(rec, req)
		if rec.Code != http.StatusUnauthorized || rec.Header().Get("Content-Type") != "application/problem+json" {
			t.Fatalf("token %q: %d", tok, rec.Code)
		}
	}
}

// BenchmarkToken measures the token endpoint end to end (HTTP, Redis,
// signing, self-verification) with the default bcrypt cost, so the secret
// cache is what keeps it fast.
func BenchmarkToken(b *testing.B) {
	rs := redistest.Start(b)
	cfg := DefaultConfig()
	cfg.AdminToken = testAdminToken
	a, err := New(cfg, Deps{Audit: audit.Discard, Redis: rs.Client(), Logger: testLogger(b), Registry: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if err := a.Init(ctx); err != nil {
		b.Fatal(err)
	}
	reg, err := a.RegisterAgent(ctx, "acme", client.AgentSpec{Name: "h", Type: "healer", TrustLevel: passport.TrustHigh})
	if err != nil {
		b.Fatal(err)
	}
	body := url.Values{"grant_type": {"client_credentials"}, "scope": {"service.restart"}}.Encode()
	b.ResetTimer()
	for b.Loop() {
		req, _ := http.NewRequest(http.MethodPost, "/oauth2/token", stringsReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth(reg.ClientID, reg.ClientSecret)
		rec := newRecorder()
		a.Handler().ServeHTTP(rec, req)
		if rec.Code != 200 {
			b.Fatalf("%d %s", rec.Code, rec.Body)
		}
	}
}

func newRecorder() *httptest.ResponseRecorder { return httptest.NewRecorder() }

func stringsReader(s string) *strings.Reader { return strings.NewReader(s) }

// A request that fails because its caller went away (or the server is
// shutting down) is expected, not an error of the authority.
func TestLogFailureLevel(t *testing.T) {
	var buf bytes.Buffer
	a := &Authority{log: slog.New(slog.NewJSONHandler(&buf, nil))}
	a.logFailure(context.Background(), "token request failed", "err", errors.New("redis: connection refused"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	a.logFailure(ctx, "token request failed", "err", context.Canceled)

	var lines []map[string]any
	for _, l := range bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n")) {
		var m map[string]any
		if err := json.Unmarshal(l, &m); err != nil {
			t.Fatal(err)
		}
		lines = append(lines, m)
	}
	if len(lines) != 2 || lines[0]["level"] != "ERROR" || lines[1]["level"] != "INFO" || lines[1]["cause"] != "context canceled" {
		t.Fatalf("log lines %v", lines)
	}
}

// A reporter token may report outcomes for any tenant, and nothing else:
// every other admin route refuses it with 403, and introspection and
// revocation do not take it as an admin.
func TestReporterTokenReportsOutcomesOnly(t *testing.T) {
	const reporterToken = "reporter-token-0123456789"
	e := newEnv(t, func(c *Config) { c.ReporterTokens = []string{reporterToken} }, nil, nil)
	acme := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	globex := e.register("globex", "healer-2", "healer", passport.TrustHigh)
	rep, err := client.NewAdmin(e.srv.URL, reporterToken, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, r := range []client.Registration{acme, globex} {
		res, err := rep.ReportOutcome(ctx, r.Tenant, r.ID, client.OutcomeDenied)
		if err != nil || res.Reputation >= res.Previous {
			t.Fatalf("%s: report as reporter: %+v %v", r.Tenant, res, err)
		}
	}

	refused := []struct{ method, path, body string }{
		{"GET", "/v1/tenants/acme/agents", ""},
		{"GET", "/v1/tenants/acme/agents/" + acme.ID, ""},
		{"POST", "/v1/tenants/acme/agents", `{"name":"x","type":"healer","trust_level":"LOW"}`},
		{"POST", "/v1/tenants/acme/agents/" + acme.ID + "/block", `{"reason":"x"}`},
		{"POST", "/v1/tenants/acme/agents/" + acme.ID + "/unblock", ""},
		{"DELETE", "/v1/tenants/acme/agents/" + acme.ID, ""},
		{"POST", "/v1/keys/rotate", ""},
	}
	for _, c := range refused {
		req, _ := http.NewRequest(c.method, e.srv.URL+c.path, strings.NewReader(c.body))
		req.Header.Set("Authorization", "Bearer "+reporterToken)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s %s as reporter: %d, want 403", c.method, c.path, resp.StatusCode)
		}
	}
	if ag, err := e.admin.GetAgent(ctx, "acme", acme.ID); err != nil || ag.Blocked {
		t.Fatalf("agent after the refused calls: %+v %v", ag, err)
	}

	tok := e.token(acme, nil)
	for _, path := range []string{"/oauth2/introspect", "/oauth2/revoke"} {
		resp, _ := e.post(path, "application/x-www-form-urlencoded", url.Values{"token": {tok}}.Encode(), func(r *http.Request) {
			r.Header.Set("Authorization", "Bearer "+reporterToken)
		})
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s as reporter: %d, want 401", path, resp.StatusCode)
		}
	}
}

// An agent's owner is stored, shown by the admin API and carried by its
// passports as oversight.owner; an agent without one gets no oversight.
func TestAgentOwnerInPassport(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	owned := e.register("acme", "healer-1", "healer", passport.TrustHigh, func(s *client.AgentSpec) { s.Owner = "sre-oncall (team payments)" })
	plain := e.register("acme", "healer-2", "healer", passport.TrustHigh)
	ag, err := e.admin.GetAgent(context.Background(), "acme", owned.ID)
	if err != nil || ag.Owner != "sre-oncall (team payments)" {
		t.Fatalf("admin API: %+v %v", ag, err)
	}
	c, err := verifyGoJose(t, e.token(owned, url.Values{"scope": {"service.get"}}), e.fetchJWKS())
	if err != nil || c.Oversight == nil || c.Oversight.Owner != "sre-oncall (team payments)" {
		t.Fatalf("passport oversight %+v %v", c.Oversight, err)
	}
	c, err = verifyGoJose(t, e.token(plain, url.Values{"scope": {"service.get"}}), e.fetchJWKS())
	if err != nil || c.Oversight != nil {
		t.Fatalf("passport of an agent without owner: oversight %+v %v", c.Oversight, err)
	}
	for _, bad := range []string{"sre\noncall", "sre\x1b[31m", strings.Repeat("x", 129), "sre\u202eoncall"} {
		_, err := e.admin.RegisterAgent(context.Background(), "acme", client.AgentSpec{Name: "h", Type: "healer", TrustLevel: passport.TrustHigh, Owner: bad})
		if err == nil || !strings.Contains(err.Error(), "owner") {
			t.Errorf("owner %q: %v, want refused naming owner", bad, err)
		}
	}
}
