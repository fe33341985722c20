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

	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/authority/passport"
	"github.com/agentpassport/passport/internal/redistest"
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
	a, err := New(cfg, Deps{Redis: rs.Client(), Logger: testLogger(t)})
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
	a, err := New(cfg, Deps{Redis: rs.Client(), Logger: testLogger(b), Registry: prometheus.NewRegistry()})
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
