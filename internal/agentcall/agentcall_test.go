package agentcall

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/agentpassport/passport/passport"
)

func TestDoMapsProxyAnswers(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("X-Request-Id", "req-1")
		switch r.URL.Path {
		case "/ok":
			var body map[string]string
			_ = json.NewDecoder(r.Body).Decode(&body)
			if r.Header.Get("Content-Type") != "application/json" || body["type"] != "cache_miss" {
				w.WriteHeader(http.StatusBadRequest)
				return
			}
			_, _ = w.Write([]byte(`{}`))
		case "/deny":
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(`{"code":"policy_denied","reasons":["task_target_mismatch"]}`))
		case "/busy":
			w.WriteHeader(http.StatusConflict)
		default:
			w.WriteHeader(http.StatusBadGateway)
		}
	}))
	defer srv.Close()
	c := &Client{BaseURL: srv.URL}
	tests := []struct {
		name, tok, path string
		want            error
	}{
		{"allowed", "tok", "/ok", nil},
		{"unauthorized", "bad", "/ok", ErrUnauthorized},
		{"denied", "tok", "/deny", ErrDenied},
		{"conflict", "tok", "/busy", ErrConflict},
		{"upstream", "tok", "/boom", ErrUpstream},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := c.Do(context.Background(), tc.tok, http.MethodPost, tc.path, map[string]string{"type": "cache_miss"})
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if tc.name == "denied" {
				var ae *Error
				if !errors.As(err, &ae) || len(ae.Resp.Reasons) != 1 || ae.Resp.Reasons[0] != "task_target_mismatch" || ae.Resp.RequestID != "req-1" ||
					ae.Resp.Code != "policy_denied" {
					t.Errorf("deny answer = %+v", ae)
				}
			}
			if tc.want == nil && resp.Status != 200 {
				t.Errorf("status = %d", resp.Status)
			}
		})
	}
}

func TestPeekIdentity(t *testing.T) {
	c := passport.Claims{Tenant: "acme", Agent: passport.Agent{ID: "a1", Name: "healer-acme", Type: "healer", TrustLevel: passport.TrustHigh}}
	c.ID = "jti-1"
	b, _ := json.Marshal(c)
	id, ok := PeekIdentity("e30." + base64.RawURLEncoding.EncodeToString(b) + ".sig")
	if !ok || id.AgentID != "a1" || id.JTI != "jti-1" || id.Tenant != "acme" || id.Trust != "HIGH" {
		t.Errorf("identity = %+v %v", id, ok)
	}
	for _, bad := range []string{"", "a.b", "a.!!!.c", "a." + base64.RawURLEncoding.EncodeToString([]byte("[1]")) + ".c"} {
		if _, ok := PeekIdentity(bad); ok {
			t.Errorf("PeekIdentity(%q) ok", bad)
		}
	}
}

func FuzzPeekIdentity(f *testing.F) {
	f.Add("e30.eyJ0ZW5hbnQiOiJhY21lIn0.sig")
	f.Add("a.b.c")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = PeekIdentity(s) // must never panic
	})
}

type proverFunc func(method, target, token string) (string, error)

func (f proverFunc) Proof(method, target, token string) (string, error) {
	return f(method, target, token)
}

// TestDoWithProofs: with a prover, a call carries its passport as DPoP and
// the proof of exactly this method and URL; an empty proof leaves the
// passport a Bearer one.
func TestDoWithProofs(t *testing.T) {
	var gotAuth, gotProof string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth, gotProof = r.Header.Get("Authorization"), r.Header.Get("DPoP")
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)
	bound := true
	c := &Client{BaseURL: srv.URL, Proofs: proverFunc(func(method, target, token string) (string, error) {
		if !bound {
			return "", nil
		}
		return "proof:" + method + " " + target + " " + token, nil
	})}
	if _, err := c.Do(context.Background(), "tok", http.MethodPost, "/services/checkout/restart", nil); err != nil {
		t.Fatal(err)
	}
	if gotAuth != "DPoP tok" || gotProof != "proof:POST "+srv.URL+"/services/checkout/restart tok" {
		t.Fatalf("Authorization %q, DPoP %q", gotAuth, gotProof)
	}
	bound = false
	if _, err := c.Do(context.Background(), "tok", http.MethodGet, "/services", nil); err != nil {
		t.Fatal(err)
	}
	if gotAuth != "Bearer tok" || gotProof != "" {
		t.Fatalf("unbound: Authorization %q, DPoP %q", gotAuth, gotProof)
	}
}
