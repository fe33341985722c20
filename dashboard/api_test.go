package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/agentcall"
)

func call(t *testing.T, method, url, token, body string) (int, map[string]any, http.Header) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out, resp.Header
}

func TestAPI(t *testing.T) {
	st := startStack(t, Config{})
	u := st.url
	tests := []struct {
		name, method, path, token, body string
		want                            int
	}{
		{"page is public", "GET", "/", "", "", 200},
		{"script is public", "GET", "/app.js", "", "", 200},
		{"health", "GET", "/healthz", "", "", 200},
		{"session needs a token", "GET", "/api/session", "", "", 401},
		{"session bad token", "GET", "/api/session", "nope", "", 401},
		{"session", "GET", "/api/session", acmeToken, "", 200},
		{"agents", "GET", "/api/tenants/acme/agents", acmeToken, "", 200},
		{"agents of another tenant", "GET", "/api/tenants/globex/agents", acmeToken, "", 403},
		{"agents of an unconfigured tenant", "GET", "/api/tenants/initech/agents", adminToken, "", 404},
		{"admin sees globex", "GET", "/api/tenants/globex/agents", adminToken, "", 200},
		{"targets", "GET", "/api/tenants/acme/targets", acmeToken, "", 200},
		{"chaos bad type", "POST", "/api/tenants/acme/chaos", acmeToken, `{"type":"rm_rf","target":"checkout"}`, 400},
		{"chaos at another tenant's service", "POST", "/api/tenants/acme/chaos", acmeToken, `{"type":"service_down","target":"search"}`, 400},
		{"chaos unknown field", "POST", "/api/tenants/acme/chaos", acmeToken, `{"type":"service_down","target":"checkout","x":1}`, 400},
		{"chaos", "POST", "/api/tenants/acme/chaos", acmeToken, `{"type":"memory_leak","target":"checkout"}`, 202},
		{"chaos out of scope", "POST", "/api/tenants/globex/chaos", acmeToken, `{"type":"memory_leak","target":"search"}`, 403},
		{"block unknown agent", "POST", "/api/tenants/acme/agents/nobody/block", acmeToken, `{"reason":"x"}`, 404},
		{"block", "POST", "/api/tenants/acme/agents/ag-rogue/block", acmeToken, `{"reason":"too many denies"}`, 200},
		{"unblock", "POST", "/api/tenants/acme/agents/ag-rogue/unblock", acmeToken, "", 200},
		{"block is not a GET", "GET", "/api/tenants/acme/agents/ag-rogue/block", acmeToken, "", 404},
		{"ticket", "POST", "/v1/feed/ticket", acmeToken, `{"tenant":"acme"}`, 201},
		{"ticket out of scope", "POST", "/v1/feed/ticket", acmeToken, `{"tenant":"globex"}`, 403},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, body, h := call(t, tc.method, u+tc.path, tc.token, tc.body)
			if code != tc.want {
				t.Fatalf("%s %s: %d %v, want %d", tc.method, tc.path, code, body, tc.want)
			}
			if csp := h.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") {
				t.Fatalf("CSP %q", csp)
			}
		})
	}
	_, sess, _ := call(t, "GET", u+"/api/session", acmeToken, "")
	if ts, _ := json.Marshal(sess["tenants"]); string(ts) != `["acme"]` {
		t.Fatalf("acme token session tenants %s", ts)
	}
	_, sess, _ = call(t, "GET", u+"/api/session", adminToken, "")
	if ts, _ := json.Marshal(sess["tenants"]); string(ts) != `["acme","globex"]` || sess["all_tenants"] != true {
		t.Fatalf("admin session %v", sess)
	}
	st.actions.mu.Lock()
	fired := st.actions.fired
	st.actions.mu.Unlock()
	if len(fired) != 1 || fired[0] != "acme/memory_leak/checkout" {
		t.Fatalf("fired %v: only the valid chaos request may reach Actions", fired)
	}
}

func TestConfig(t *testing.T) {
	d := DefaultConfig()
	if d.Listen != "127.0.0.1:8090" || d.AuthorityURL != "http://127.0.0.1:8081" || d.ShutdownTimeout != 10*time.Second {
		t.Fatalf("defaults %+v", d)
	}
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"zero", Config{}, true},
		{"bad listen", Config{Listen: "8090"}, false},
		{"bad tenant", Config{Tenants: []string{"a/b"}}, false},
		{"bad origin", Config{AllowedOrigins: []string{"*"}}, false},
		{"good origin", Config{AllowedOrigins: []string{"https://wall.example.com"}}, true},
		{"public authority", Config{PublicAuthorityURL: "https://auth.example.com"}, true},
		{"bad public authority", Config{PublicAuthorityURL: "javascript:alert(1)"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.cfg.Validate(); (err == nil) != tc.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestSignInURL(t *testing.T) {
	got := SignInURL("http://127.0.0.1:8090/", "t+k/=", "acme")
	if got != "http://127.0.0.1:8090/#tenant=acme&token=t%2Bk%2F%3D" {
		t.Fatalf("SignInURL = %s", got)
	}
}

// The page links to the public authority URL when one is set, and to the
// one the dashboard calls otherwise.
func TestSessionAuthorityLink(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{AuthorityURL: "http://authority:8081"}, "http://authority:8081"},
		{Config{AuthorityURL: "http://authority:8081", PublicAuthorityURL: "http://127.0.0.1:8081"}, "http://127.0.0.1:8081"},
	} {
		st := startStack(t, tc.cfg)
		_, sess, _ := call(t, "GET", st.url+"/api/session", acmeToken, "")
		if sess["authority_url"] != tc.want {
			t.Errorf("%+v: authority_url %v, want %s", tc.cfg, sess["authority_url"], tc.want)
		}
	}
}

// proxyAnswer returns the error the chaos agent's call gets when the proxy
// answers status with body (a real agentcall round trip).
func proxyAnswer(t *testing.T, status int, body string) error {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}))
	defer srv.Close()
	_, err := (&agentcall.Client{BaseURL: srv.URL}).Do(context.Background(), "tok", http.MethodPost, "/faults/checkout", nil)
	if err == nil {
		t.Fatal("no error")
	}
	return err
}

// A refused chaos button answers the refusal's code and reasons, not a
// bare 502, so the page can say why.
func TestChaosRefusalPassesReasons(t *testing.T) {
	st := startStack(t, Config{})
	tests := []struct {
		name    string
		err     error
		status  int
		code    string
		reasons string
	}{
		{"policy deny", proxyAnswer(t, 403, `{"code":"policy_denied","reasons":["reputation_too_low","action_not_in_capabilities"]}`),
			403, "policy_denied", "reputation_too_low,action_not_in_capabilities"},
		{"passport refused by the proxy", proxyAnswer(t, 401, `{"code":"agent_blocked","reasons":["agent_blocked"]}`),
			403, "agent_blocked", "agent_blocked"},
		{"busy target", proxyAnswer(t, 409, `{"error":"service already has an active fault"}`), 409, "target_busy", ""},
		{"hostile reasons are dropped", proxyAnswer(t, 403, `{"code":"<b>x</b>","reasons":["ok_reason","<script>alert(1)</script>","Has Spaces"]}`),
			403, "policy_denied", "ok_reason"},
		{"blocked at the authority", fmt.Errorf("get chaos passport: %w", &client.Error{Status: 400, Code: "unauthorized_client", Description: "agent is blocked"}),
			403, "agent_blocked", "agent_blocked"},
		{"authority down", fmt.Errorf("get chaos passport: %w", &client.Error{Status: 503, Code: "temporarily_unavailable"}), 502, "action_failed", ""},
		{"anything else", errors.New("boom"), 502, "action_failed", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st.actions.mu.Lock()
			st.actions.refuse = tc.err
			st.actions.mu.Unlock()
			code, body, h := call(t, "POST", st.url+"/api/tenants/acme/chaos", acmeToken, `{"type":"service_down","target":"checkout"}`)
			if code != tc.status || h.Get("Content-Type") != "application/problem+json" {
				t.Fatalf("answer %d %s %v, want %d", code, h.Get("Content-Type"), body, tc.status)
			}
			var reasons []string
			if rs, ok := body["reasons"].([]any); ok {
				for _, r := range rs {
					reasons = append(reasons, r.(string))
				}
			}
			if got, _ := body["code"].(string); got != tc.code || strings.Join(reasons, ",") != tc.reasons {
				t.Fatalf("code %q reasons %v, want %q %q (body %v)", got, reasons, tc.code, tc.reasons, body)
			}
			if tc.status == 502 && body["detail"] != "chaos failed" {
				t.Fatalf("detail %v: an unknown failure must not leak its error", body["detail"])
			}
		})
	}
}

// The session tells the page the server's time and whether approvals are
// offered; the agents answer says as of when its values are; approvals
// are listed only when the host offers them.
func TestSessionClockAgentsAsOfAndApprovals(t *testing.T) {
	st := startStack(t, Config{})
	before := time.Now().Add(-time.Second)
	_, sess, _ := call(t, "GET", st.url+"/api/session", acmeToken, "")
	now, err := time.Parse(time.RFC3339Nano, fmt.Sprint(sess["now"]))
	if err != nil || now.Before(before) || sess["approvals"] != false {
		t.Fatalf("session now %v approvals %v (%v)", sess["now"], sess["approvals"], err)
	}
	_, agents, _ := call(t, "GET", st.url+"/api/tenants/acme/agents", acmeToken, "")
	if asOf, err := time.Parse(time.RFC3339Nano, fmt.Sprint(agents["as_of"])); err != nil || asOf.Before(before) {
		t.Fatalf("agents as_of %v (%v)", agents["as_of"], err)
	}
	if code, _, _ := call(t, "GET", st.url+"/api/tenants/acme/approvals", acmeToken, ""); code != http.StatusNotFound {
		t.Fatalf("approvals without a host that offers them: %d, want 404", code)
	}

	exp := time.Now().Add(time.Minute).UTC().Truncate(time.Second)
	st2 := startStackWith(t, Config{}, func(f *fakeActions) Actions {
		return withApprovals{fakeActions: f, list: []Approval{{ID: "apr-1", Agent: "deployer", Method: "POST", Path: "/deployments/payments", Reasons: []string{"approval_required"}, ExpiresAt: exp}}}
	})
	_, sess, _ = call(t, "GET", st2.url+"/api/session", acmeToken, "")
	if sess["approvals"] != true {
		t.Fatalf("session approvals %v, want true", sess["approvals"])
	}
	code, body, _ := call(t, "GET", st2.url+"/api/tenants/acme/approvals", acmeToken, "")
	list, _ := json.Marshal(body["approvals"])
	want := `[{"agent":"deployer","expires_at":"` + exp.Format(time.RFC3339) + `","id":"apr-1","method":"POST","path":"/deployments/payments","reasons":["approval_required"]}]`
	if code != 200 || string(list) != want {
		t.Fatalf("approvals %d %s, want %s", code, list, want)
	}
	if code, _, _ := call(t, "GET", st2.url+"/api/tenants/globex/approvals", acmeToken, ""); code != http.StatusForbidden {
		t.Fatalf("approvals of another tenant: %d, want 403", code)
	}
}
