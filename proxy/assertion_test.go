package proxy

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/passport"
)

// upstreamAssertion is what an upstream verifies: the assertion's
// signature against the proxy's published JWKS (go-jose, independent of
// the signer), and its claims.
type upstreamAssertion struct {
	josejwt.Claims
	Txn  string `json:"txn"`
	Purp string `json:"purp"`
	Tctx struct {
		Tenant   string `json:"tenant"`
		Action   string `json:"action"`
		Resource string `json:"resource"`
		Method   string `json:"method"`
		Path     string `json:"path"`
		Body     string `json:"body_sha256"`
		Decision string `json:"decision_id"`
		Revision string `json:"policy_revision"`
	} `json:"tctx"`
	Rctx struct {
		Authn    string `json:"authn"`
		Passport string `json:"passport_jti"`
		ReqIP    string `json:"req_ip"`
	} `json:"rctx"`
}

func (h *harness) assertionKeys() jose.JSONWebKeySet {
	h.t.Helper()
	res, err := http.Get(h.admin + AssertionJWKSPath)
	if err != nil {
		h.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	var set jose.JSONWebKeySet
	if res.StatusCode != 200 || json.Unmarshal(b, &set) != nil || len(set.Keys) != 1 {
		h.t.Fatalf("assertion JWKS: %d %s", res.StatusCode, b)
	}
	return set
}

func verifyAssertion(t *testing.T, raw string, keys jose.JSONWebKeySet) upstreamAssertion {
	t.Helper()
	tok, err := josejwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		t.Fatalf("parse assertion: %v", err)
	}
	var cl upstreamAssertion
	if err := tok.Claims(keys, &cl); err != nil {
		t.Fatalf("assertion signature: %v", err)
	}
	return cl
}

// TestAssertionSigned: on a route that asks for it the upstream gets an
// assertion it can verify with the proxy's published key, naming the
// agent, tenant, action, resource, method, path, body digest, request id
// and decision record id, living at most 60 s; an agent's own assertion
// header never reaches the upstream, on any route.
func TestAssertionSigned(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		u := c.Upstreams["fleet"]
		u.Assertion, u.AssertionAudience = true, "fleet-control"
		c.Upstreams["fleet"] = u
		for i := range c.Routes {
			if c.Routes[i].Match == "GET /services" {
				f := false
				c.Routes[i].Assertion = &f
			}
		}
	})
	keys := h.assertionKeys()
	_, tok := h.healer()
	body := `{"replicas":3}`
	r := h.do("POST", "/services/checkout/scale", tok, map[string]string{
		"Passport-Assertion": "forged", "passport_assertion": "forged",
	}, body)
	if r.status != 200 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	req, _ := h.up.lastReq()
	if v := req.Header.Values("Passport-Assertion"); len(v) != 1 || v[0] == "forged" || req.Header.Get("Passport_Assertion") != "" {
		t.Fatalf("upstream assertion headers %q", req.Header)
	}
	cl := verifyAssertion(t, req.Header.Get("Passport-Assertion"), keys)
	id := r.header.Get("X-Request-Id")
	recs := h.sink.byRequest(id)
	sum := sha256.Sum256([]byte(body))
	if err := cl.ValidateWithLeeway(josejwt.Expected{AnyAudience: []string{"fleet-control"}, Time: time.Now()}, 0); err != nil {
		t.Fatalf("claims: %v", err)
	}
	life := cl.Expiry.Time().Sub(cl.IssuedAt.Time())
	if cl.Subject != "healer-1" || cl.Txn != id || cl.ID != id || cl.Tctx.Tenant != "acme" || cl.Tctx.Action != "service.scale" ||
		cl.Tctx.Resource != "checkout" || cl.Tctx.Method != "POST" || cl.Tctx.Path != "/services/checkout/scale" ||
		cl.Tctx.Body != base64.RawURLEncoding.EncodeToString(sum[:]) || cl.Tctx.Decision == "" || cl.Tctx.Revision == "" ||
		cl.Rctx.Authn != "passport" || cl.Rctx.Passport == "" || life <= 0 || life > time.Minute || len(recs) == 0 {
		t.Fatalf("assertion claims %+v (lifetime %v)", cl, life)
	}
	// The decision id is the stream id of the call's decision record: the
	// fake sink's receipts are "N-0" for the N-th append.
	if !strings.HasSuffix(cl.Tctx.Decision, "-0") {
		t.Fatalf("decision id %q", cl.Tctx.Decision)
	}

	// A route that does not ask: no assertion, and the agent's is gone.
	if r := h.do("GET", "/services", tok, map[string]string{"Passport-Assertion": "forged"}, ""); r.status != 200 {
		t.Fatalf("status %d", r.status)
	}
	req, _ = h.up.lastReq()
	if req.Header.Get("Passport-Assertion") != "" {
		t.Fatalf("an assertion on a route that does not ask: %q", req.Header.Get("Passport-Assertion"))
	}
}

// TestAssertionKeyFile: a configured key signs (replicas and restarts keep
// one key), and a forged assertion (another key, alg none, changed claims)
// fails verification against the published key set.
func TestAssertionKeyFile(t *testing.T) {
	file := t.TempDir() + "/assert.pem"
	if err := writeEd25519PEM(file); err != nil {
		t.Fatal(err)
	}
	mk := func() *harness {
		return newHarness(t, func(c *Config) {
			u := c.Upstreams["fleet"]
			u.Assertion = true
			c.Upstreams["fleet"] = u
			c.Assertion.KeyFile = file
		})
	}
	a, b := mk(), mk()
	ka, kb := a.assertionKeys(), b.assertionKeys()
	if ka.Keys[0].KeyID != kb.Keys[0].KeyID {
		t.Fatal("two proxies with one key file publish different keys")
	}
	_, tok := a.healer()
	if r := a.do("GET", "/services/checkout", tok, nil, ""); r.status != 200 {
		t.Fatalf("status %d", r.status)
	}
	req, _ := a.up.lastReq()
	raw := req.Header.Get("Passport-Assertion")
	verifyAssertion(t, raw, kb) // the other replica's published key verifies it

	parts := strings.Split(raw, ".")
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	changed := strings.Replace(string(payload), `"service.get"`, `"service.restart"`, 1)
	none := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none"}`))
	for name, forged := range map[string]string{
		"changed claims": parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(changed)) + "." + parts[2],
		"alg none":       none + "." + parts[1] + ".",
		"no signature":   parts[0] + "." + parts[1] + ".",
	} {
		tok, err := josejwt.ParseSigned(forged, []jose.SignatureAlgorithm{jose.EdDSA})
		if err == nil {
			var cl upstreamAssertion
			err = tok.Claims(ka, &cl)
		}
		if err == nil {
			t.Errorf("%s: a forged assertion verified", name)
		}
	}
}

func writeEd25519PEM(path string) error {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

// BenchmarkAssertion is the CPU an assertion adds to a call on a route
// that asks for one: building the claims and signing with the cached key
// (target <= 15 µs).
func BenchmarkAssertion(b *testing.B) {
	s, err := newAssertionSigner(AssertionConfig{}, "https://proxy.example")
	if err != nil {
		b.Fatal(err)
	}
	r, _ := http.NewRequest("POST", "http://proxy/services/checkout/scale", nil)
	r.RemoteAddr = "10.0.0.7:51234"
	c := &call{id: "a8ee4ce30a958890a46af200fba8e8f5", path: "/services/checkout/scale", tenant: "acme", agentID: "healer-1",
		route: &route{Route: Route{Action: "service.scale"}, upstream: &upstream{url: &url.URL{Path: "/"}}}, rawBody: []byte(`{"replicas":3}`)}
	c.rec = &audit.Record{Resource: "checkout", PolicyRevision: "44cc72de51bc1ad6"}
	c.vp = &Verified{}
	c.vp.Claims = &passport.Claims{}
	c.vp.Claims.ID = "jti-healer-1-1796432213657272153"
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.assertionFor(c, r, "fleet-control", "1796432213657-0", now); err != nil {
			b.Fatal(err)
		}
	}
}

// TestAssertionClaimsJSON: the hand-written claims are json.Marshal's.
func TestAssertionClaimsJSON(t *testing.T) {
	for _, cl := range []assertionClaims{
		{Iss: "https://p", Aud: "a", Iat: 1, Exp: 31, JTI: "j", Txn: "j", Sub: "s<>&\u2028", Purp: "x.y",
			Tctx: assertionTctx{Tenant: "t", Action: "x.y", Resource: "r\"q", Method: "GET", Path: "/a b", Query: "q=1&b=\xff",
				BodySHA256: "d", DecisionID: "1-0", Revision: "rev"},
			Rctx: assertionRctx{Authn: "passport", Passport: "p", ReqIP: "::1"}},
		{},
	} {
		want, _ := json.Marshal(&cl)
		if got := cl.appendJSON(nil); string(got) != string(want) {
			t.Errorf("appendJSON\n got %s\nwant %s", got, want)
		}
	}
}
