package dashboard

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
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
