package proxy

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/agentpassport/passport/audit"
)

// writeSecret writes a secret file and returns its path.
func writeSecret(t *testing.T, dir, name, value string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(value+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// leaks fails the test when secret appears anywhere but the upstream's
// request: the audit records, the proxy's logs, the answers.
func (h *harness) leaks(secret string, answers ...resp) {
	h.t.Helper()
	for _, rec := range h.sink.all() {
		b, _ := json.Marshal(rec)
		if strings.Contains(string(b), secret) {
			h.t.Fatalf("the credential is in an audit record: %s", b)
		}
	}
	if strings.Contains(h.logs.String(), secret) {
		h.t.Fatal("the credential is in the proxy's logs")
	}
	for _, a := range answers {
		if strings.Contains(a.body, secret) || strings.Contains(strings.Join(flatten(a.header), " "), secret) {
			h.t.Fatalf("the credential is in an answer: %d %s", a.status, a.body)
		}
	}
}

func flatten(h http.Header) []string {
	var out []string
	for k, vs := range h {
		out = append(out, k+": "+strings.Join(vs, ","))
	}
	return out
}

// TestCredentialInjected: the upstream gets the proxy's credential and
// never the agent's passport or the agent's own copy of the credential
// header, in any spelling; a rotated file takes effect without a restart;
// the credential is in no record, log line or answer.
func TestCredentialInjected(t *testing.T) {
	dir := t.TempDir()
	file := writeSecret(t, dir, "fleet-key", "s3cret-one")
	h := newHarness(t, func(c *Config) {
		u := c.Upstreams["fleet"]
		u.Credential = &Credential{Type: "header", Header: "X-Api-Key", Template: "ApiKey {secret}", File: file}
		c.Upstreams["fleet"] = u
	})
	_, tok := h.healer()
	r := h.do("POST", "/services/checkout/restart", tok, map[string]string{
		"X-Api-Key": "agent-forged", "X_Api_Key": "agent-forged", "x.api.key": "agent-forged",
	}, "")
	if r.status != 200 || h.up.hits.Load() != 1 {
		t.Fatalf("status %d, hits %d: %s", r.status, h.up.hits.Load(), r.body)
	}
	req, _ := h.up.lastReq()
	if got := req.Header.Values("X-Api-Key"); len(got) != 1 || got[0] != "ApiKey s3cret-one" {
		t.Fatalf("upstream X-Api-Key %q", got)
	}
	for k, v := range req.Header {
		if strings.Contains(strings.Join(v, ""), "agent-forged") || strings.Contains(strings.Join(v, ""), tok) {
			t.Fatalf("the agent's %s reached the upstream", k)
		}
	}
	h.leaks("s3cret-one", r)

	// Rotation: the next calls carry the new secret once the file changed.
	writeSecret(t, dir, "fleet-key", "s3cret-two-longer")
	waitFor(t, "the rotated credential", func() bool {
		if r := h.do("GET", "/services/checkout", tok, nil, ""); r.status != 200 {
			t.Fatalf("status %d", r.status)
		}
		req, _ := h.up.lastReq()
		return req.Header.Get("X-Api-Key") == "ApiKey s3cret-two-longer"
	})
	h.leaks("s3cret-two-longer")
}

// TestCredentialBearerAndBasic: the Authorization header the upstream gets
// is the proxy's, never the passport.
func TestCredentialBearerAndBasic(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		typ, content, want string
	}{
		{"bearer", "up-token-1", "Bearer up-token-1"},
		{"kubernetes", "eyJhbGciOi.sa-token.sig", "Bearer eyJhbGciOi.sa-token.sig"},
		{"basic", "svc:pa ss", "Basic " + base64.StdEncoding.EncodeToString([]byte("svc:pa ss"))},
	} {
		t.Run(tc.typ, func(t *testing.T) {
			file := writeSecret(t, dir, tc.typ, tc.content)
			h := newHarness(t, func(c *Config) {
				u := c.Upstreams["fleet"]
				u.Credential = &Credential{Type: tc.typ, File: file}
				c.Upstreams["fleet"] = u
			})
			_, tok := h.healer()
			r := h.do("GET", "/services/checkout", tok, nil, "")
			req, _ := h.up.lastReq()
			if r.status != 200 || req.Header.Get("Authorization") != tc.want {
				t.Fatalf("status %d, upstream Authorization %q", r.status, req.Header.Get("Authorization"))
			}
			h.leaks(tc.content, r)
		})
	}
}

// TestCredentialUnavailable: a credential that cannot be had refuses the
// allowed call with 502 upstream_credential_unavailable; nothing reaches
// the upstream; the decision and an outcome saying why are recorded.
func TestCredentialUnavailable(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		cred func(t *testing.T) *Credential
	}{
		{"missing file", func(*testing.T) *Credential {
			return &Credential{Type: "bearer", File: filepath.Join(dir, "nope")}
		}},
		{"empty file", func(t *testing.T) *Credential {
			return &Credential{Type: "bearer", File: writeSecret(t, dir, "empty", "")}
		}},
		{"two lines", func(t *testing.T) *Credential {
			return &Credential{Type: "bearer", File: writeSecret(t, dir, "two", "a\nInjected: b")}
		}},
		{"token endpoint down", func(t *testing.T) *Credential {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				http.Error(w, `{"error":"server_error"}`, http.StatusInternalServerError)
			}))
			t.Cleanup(srv.Close)
			return &Credential{Type: "oauth2", TokenURL: srv.URL, ClientID: "proxy", ClientSecretFile: writeSecret(t, dir, "cs", "client-secret-x")}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cred := tc.cred(t)
			h := newHarness(t, func(c *Config) {
				u := c.Upstreams["fleet"]
				u.Credential = cred
				c.Upstreams["fleet"] = u
			})
			_, tok := h.healer()
			r := h.do("POST", "/services/checkout/restart", tok, nil, "")
			if r.status != http.StatusBadGateway || !strings.Contains(r.body, "upstream_credential_unavailable") || h.up.hits.Load() != 0 {
				t.Fatalf("status %d, hits %d: %s", r.status, h.up.hits.Load(), r.body)
			}
			id := r.header.Get("X-Request-Id")
			var recs []*audit.Record
			waitFor(t, "the decision and its outcome", func() bool { recs = h.sink.byRequest(id); return len(recs) == 2 })
			if recs[0].Kind != audit.KindDecision || recs[0].Decision != audit.DecisionAllow ||
				recs[1].Kind != audit.KindOutcome || recs[1].Status != http.StatusBadGateway ||
				len(recs[1].Reasons) != 1 || recs[1].Reasons[0] != "upstream_credential_unavailable" {
				t.Fatalf("records %+v %+v", recs[0], recs[1])
			}
			h.leaks("client-secret-x", r)
		})
	}
}

// TestCredentialOAuth2: the proxy fetches a client-credentials token from
// the upstream's authorization server once, sends it, and reuses it while
// it is valid.
func TestCredentialOAuth2(t *testing.T) {
	dir := t.TempDir()
	var fetches atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, secret, ok := r.BasicAuth()
		if err := r.ParseForm(); err != nil || !ok || id != "proxy" || secret != "client-secret-y" ||
			r.PostForm.Get("grant_type") != "client_credentials" || r.PostForm.Get("audience") != "fleet-api" {
			http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
			return
		}
		fetches.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token":"minted-upstream-token","token_type":"Bearer","expires_in":3600}`))
	}))
	t.Cleanup(srv.Close)
	h := newHarness(t, func(c *Config) {
		u := c.Upstreams["fleet"]
		u.Credential = &Credential{Type: "oauth2", TokenURL: srv.URL, ClientID: "proxy", Audience: "fleet-api",
			ClientSecretFile: writeSecret(t, dir, "cs", "client-secret-y")}
		c.Upstreams["fleet"] = u
	})
	_, tok := h.healer()
	for range 3 {
		if r := h.do("GET", "/services/checkout", tok, nil, ""); r.status != 200 {
			t.Fatalf("status %d: %s", r.status, r.body)
		}
		req, _ := h.up.lastReq()
		if req.Header.Get("Authorization") != "Bearer minted-upstream-token" {
			t.Fatalf("upstream Authorization %q", req.Header.Get("Authorization"))
		}
	}
	if fetches.Load() != 1 {
		t.Fatalf("token fetched %d times, want once", fetches.Load())
	}
	h.leaks("minted-upstream-token")
	h.leaks("client-secret-y")
}

// TestCredentialConfig: what cannot work is refused at load.
func TestCredentialConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(c *Config)
		want string
	}{
		{"unknown type", func(c *Config) {
			u := c.Upstreams["fleet"]
			u.Credential = &Credential{Type: "magic", File: "x"}
			c.Upstreams["fleet"] = u
		}, "want bearer"},
		{"no file", func(c *Config) {
			u := c.Upstreams["fleet"]
			u.Credential = &Credential{Type: "bearer"}
			c.Upstreams["fleet"] = u
		}, "needs file"},
		{"template without secret", func(c *Config) {
			c.Routes[0].Credential = &Credential{Type: "header", Header: "X-Key", File: "x", Template: "none"}
		}, "{secret}"},
		{"forwarded passport and credential in Authorization", func(c *Config) {
			u := c.Upstreams["fleet"]
			u.Credential = &Credential{Type: "bearer", File: "x"}
			c.Upstreams["fleet"] = u
			c.Routes[0].ForwardPassport = true
		}, "exclude each other"},
		{"assertion on a streamed body", func(c *Config) {
			u := c.Upstreams["fleet"]
			u.Assertion = true
			c.Upstreams["fleet"] = u
			c.Routes[0].StreamBody = true
		}, "digest"},
		{"assertion lifetime", func(c *Config) { c.Assertion.Lifetime = 5 * 60e9 }, "at most"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig("http://127.0.0.1:1", "http://127.0.0.1:1/jwks")
			tc.mod(&c)
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate: %v, want %q", err, tc.want)
			}
		})
	}
}
