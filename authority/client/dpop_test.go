package client_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/agentpassport/passport/authority"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/passport"
)

func thumbprint(t *testing.T, pub crypto.PublicKey) string {
	t.Helper()
	tp, err := (&jose.JSONWebKey{Key: pub}).Thumbprint(crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(tp)
}

// claimsOf reads a passport's claims, unverified (the authority's own
// tests verify them).
func claimsOf(t *testing.T, raw string) passport.Claims {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(strings.Split(raw, ".")[1])
	if err != nil {
		t.Fatal(err)
	}
	var c passport.Claims
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// The client binds passports to its DPoP key and follows the authority's
// nonces: the first request learns the nonce from use_dpop_nonce and is
// retried once; later ones carry the nonce from the start.
func TestClientDPoPAtTheTokenEndpoint(t *testing.T) {
	f := startWith(t, func(c *authority.Config) { c.DPoP.RequireNonce = true })
	ctx := context.Background()
	reg, err := f.admin.RegisterAgent(ctx, "acme", client.AgentSpec{Name: "h", Type: "healer", TrustLevel: "HIGH", RequireDPoP: true})
	if err != nil {
		t.Fatal(err)
	}
	plain, _ := client.New(f.url, reg.ClientID, passport.Secret(reg.ClientSecret), client.Options{Clock: f.clock.Now})
	if _, err := plain.Token(ctx, client.TokenRequest{}); err == nil || !strings.Contains(err.Error(), "invalid_dpop_proof") {
		t.Fatalf("require_dpop agent without a DPoP key: %v", err)
	}
	for _, key := range []crypto.Signer{mustEC(t), mustEd(t)} {
		c, err := client.New(f.url, reg.ClientID, passport.Secret(reg.ClientSecret), client.Options{Clock: f.clock.Now, DPoPKey: key})
		if err != nil {
			t.Fatal(err)
		}
		before := f.tokenCalls.Load()
		tok, err := c.Token(ctx, client.TokenRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if !tok.Bound() || tok.Type != "DPoP" || claimsOf(t, tok.Raw).Cnf.JKT != thumbprint(t, key.Public()) {
			t.Fatalf("token %+v cnf %+v", tok, claimsOf(t, tok.Raw).Cnf)
		}
		if calls := f.tokenCalls.Load() - before; calls != 2 {
			t.Fatalf("%d token calls, want 2 (use_dpop_nonce, then the retry)", calls)
		}
		c.Invalidate()
		before = f.tokenCalls.Load()
		if _, err := c.Token(ctx, client.TokenRequest{}); err != nil || f.tokenCalls.Load()-before != 1 {
			t.Fatalf("with the nonce learnt: %v, %d calls", err, f.tokenCalls.Load()-before)
		}
	}
}

// A resource server that checks proofs with the shared verifier and asks
// for a nonce: the transport sends Authorization: DPoP with a proof bound
// to the passport (ath, cnf.jkt), retries once with the nonce, and sends
// the body again.
func TestClientDPoPTransport(t *testing.T) {
	f := start(t)
	ctx := context.Background()
	reg, _ := f.admin.RegisterAgent(ctx, "acme", client.AgentSpec{Name: "h", Type: "healer", TrustLevel: "HIGH"})
	key := mustEC(t)
	c, _ := client.New(f.url, reg.ClientID, passport.Secret(reg.ClientSecret), client.Options{Clock: f.clock.Now, DPoPKey: key})

	var mu sync.Mutex
	var bodies []string
	var refusals []string
	verifier, err := passport.NewDPoPVerifier(passport.DPoPConfig{Clock: f.clock.Now, Replay: (&replay{}).check})
	if err != nil {
		t.Fatal(err)
	}
	rs := httptest.NewServer(nil)
	defer rs.Close()
	rs.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		bodies = append(bodies, string(b))
		scheme, tok, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		if scheme != "DPoP" {
			refusals = append(refusals, "scheme "+scheme)
			w.WriteHeader(401)
			return
		}
		_, err := verifier.Verify(r.Context(), r.Header.Get("DPoP"), passport.DPoPRequest{
			Method: r.Method, URL: rs.URL + r.URL.Path, AccessToken: tok, JKT: claimsOf(t, tok).Cnf.JKT,
			Nonce: func(n string) bool { return n == "n-1" },
		})
		var ae *passport.AuthError
		if errors.As(err, &ae) && ae.Code == "use_dpop_nonce" {
			w.Header().Set("DPoP-Nonce", "n-1")
			w.Header().Set("WWW-Authenticate", `DPoP error="use_dpop_nonce", error_description="nonce required"`)
			w.WriteHeader(401)
			return
		}
		if err != nil {
			refusals = append(refusals, err.Error())
			w.WriteHeader(401)
			return
		}
		w.WriteHeader(200)
	})
	hc := &http.Client{Transport: c.Transport(nil, client.TokenRequest{})}
	resp, err := hc.Post(rs.URL+"/services/checkout/restart?force=1", "application/json", strings.NewReader(`{"why":"test"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || len(refusals) != 0 || len(bodies) != 2 || bodies[0] != bodies[1] || bodies[1] != `{"why":"test"}` {
		t.Fatalf("status %d, refusals %v, bodies %q", resp.StatusCode, refusals, bodies)
	}
	// Next call: the nonce is known, one request.
	resp, _ = hc.Get(rs.URL + "/services")
	resp.Body.Close()
	if resp.StatusCode != 200 || len(bodies) != 3 {
		t.Fatalf("second call: %d after %d requests (%v)", resp.StatusCode, len(bodies), refusals)
	}
	// A proof made for one call is refused for another.
	tok, _ := c.Token(ctx, client.TokenRequest{})
	p, err := c.DPoPProof("GET", rs.URL+"/services", tok)
	if err != nil {
		t.Fatal(err)
	}
	_, err = verifier.Verify(ctx, p, passport.DPoPRequest{Method: "POST", URL: rs.URL + "/services", AccessToken: tok.Raw})
	if !errors.Is(err, passport.ErrDPoPMethod) {
		t.Fatalf("proof for GET checked as POST: %v", err)
	}
}

// Exchange trades another agent's passport for a delegated one.
func TestClientExchange(t *testing.T) {
	f := start(t)
	ctx := context.Background()
	cmdReg, _ := f.admin.RegisterAgent(ctx, "acme", client.AgentSpec{Name: "cmd", Type: "healer", TrustLevel: "HIGH", MayDelegateTo: []string{"type:healer"}})
	hReg, _ := f.admin.RegisterAgent(ctx, "acme", client.AgentSpec{Name: "h", Type: "healer", TrustLevel: "MEDIUM"})
	cmd, _ := client.New(f.url, cmdReg.ClientID, passport.Secret(cmdReg.ClientSecret), client.Options{Clock: f.clock.Now})
	h, _ := client.New(f.url, hReg.ClientID, passport.Secret(hReg.ClientSecret), client.Options{Clock: f.clock.Now, DPoPKey: mustEd(t)})
	root, err := cmd.Token(ctx, client.TokenRequest{Task: &passport.Task{ID: "inc-1", Target: "checkout"}})
	if err != nil {
		t.Fatal(err)
	}
	d, err := h.Exchange(ctx, client.ExchangeRequest{SubjectToken: root.Raw, TokenRequest: client.TokenRequest{Scope: []string{"service.restart"}}})
	if err != nil {
		t.Fatal(err)
	}
	c := claimsOf(t, d.Raw)
	if !d.Bound() || c.Subject != hReg.ID || c.Act == nil || c.Act.Sub != cmdReg.ID || c.Delegation.Depth != 1 || d.Scope != "service.restart" {
		t.Fatalf("delegated %+v: %+v", d, c)
	}
	if _, err := cmd.Exchange(ctx, client.ExchangeRequest{SubjectToken: d.Raw}); err == nil || !strings.Contains(err.Error(), "invalid_request") {
		t.Fatalf("exchange back to the root: %v", err)
	}
	if _, err := h.Exchange(ctx, client.ExchangeRequest{}); err == nil {
		t.Fatal("exchange without a subject token")
	}
}

// A client that asked for a bound passport does not take a bearer one.
func TestClientRefusesUnboundAnswer(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token":"a.b.c","token_type":"Bearer","expires_in":300}`))
	}))
	defer srv.Close()
	c, _ := client.New(srv.URL, "agt_x", "s", client.Options{DPoPKey: mustEd(t)})
	if _, err := c.Token(context.Background(), client.TokenRequest{}); err == nil || !strings.Contains(err.Error(), "want DPoP") {
		t.Fatalf("bearer answer to a DPoP request: %v", err)
	}
	if _, err := client.NewDPoPProof(mustEd(t), "GET", "/relative", "", "", time.Now()); err == nil {
		t.Fatal("proof for a relative URL")
	}
	rsa := struct{ crypto.Signer }{}
	if _, err := client.New(srv.URL, "agt_x", "s", client.Options{DPoPKey: rsa}); err == nil {
		t.Fatal("unsupported DPoP key type accepted")
	}
}

type replay struct {
	mu   sync.Mutex
	seen map[string]bool
}

func (r *replay) check(_ context.Context, key string, _ time.Duration) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seen == nil {
		r.seen = map[string]bool{}
	}
	if r.seen[key] {
		return false, nil
	}
	r.seen[key] = true
	return true, nil
}

func mustEC(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustEd(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
