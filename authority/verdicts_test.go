package authority

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/passport"
	"github.com/agentpassport/passport/policies"
	"github.com/agentpassport/passport/proxy"
)

// TestOneVerdictForEveryPassport forges hostile passports with the
// authority's own signing key and asks the three places that judge a
// passport: the authority's check right after signing, /oauth2/introspect,
// and a real proxy in front of an upstream (over HTTP, counting what the
// upstream receives). All three must give the same verdict on every one:
// introspection once called passports active that every proxy refused.
func TestOneVerdictForEveryPassport(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	healer := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	other := e.register("acme", "observer-1", "observer", passport.TrustLow)
	genuine := e.token(healer, nil)
	px := startProxy(t, e)

	k, err := e.a.keys.signer()
	if err != nil {
		t.Fatal(err)
	}
	if k.stored.Alg != passport.AlgEdDSA {
		t.Fatalf("test signs EdDSA by hand; key is %s", k.stored.Alg)
	}
	now := e.clock.Now().Unix()
	kid := k.stored.KID
	hdr := `{"alg":"EdDSA","kid":"` + kid + `","typ":"at+jwt"}`
	var base map[string]any
	if err := json.Unmarshal(decodePart(t, genuine, 1), &base); err != nil {
		t.Fatal(err)
	}
	n := 0
	// payload is the genuine payload with a fresh jti, changed by mut.
	payload := func(mut func(m map[string]any)) string {
		var m map[string]any
		b, _ := json.Marshal(base)
		_ = json.Unmarshal(b, &m)
		n++
		m["jti"] = "forged-" + string(rune('a'+n%26)) + time.Now().Format("150405.000000000")
		if mut != nil {
			mut(m)
		}
		out, _ := json.Marshal(m)
		return string(out)
	}
	sign := func(h, p string) string { return signRaw(t, k.priv, h, p) }
	agent := func(m map[string]any) map[string]any { return m["agent"].(map[string]any) }

	cases := []struct {
		name  string
		token string
		ok    bool
	}{
		{"genuine", genuine, true},
		{"re-signed unchanged", sign(hdr, payload(nil)), true},
		{"header in another order", sign(`{"typ":"at+jwt","kid":"`+kid+`","alg":"EdDSA"}`, payload(nil)), true},
		{"unknown crit", sign(`{"alg":"EdDSA","kid":"`+kid+`","typ":"at+jwt","crit":["x-passport"],"x-passport":1}`, payload(nil)), false},
		{"typ in upper case", sign(`{"alg":"EdDSA","kid":"`+kid+`","typ":"AT+JWT"}`, payload(nil)), false},
		{"typ JWT", sign(`{"alg":"EdDSA","kid":"`+kid+`","typ":"JWT"}`, payload(nil)), false},
		{"no typ", sign(`{"alg":"EdDSA","kid":"`+kid+`"}`, payload(nil)), false},
		{"duplicate header member", sign(`{"alg":"EdDSA","kid":"nope","kid":"`+kid+`","typ":"at+jwt"}`, payload(nil)), false},
		{"jku header", sign(`{"alg":"EdDSA","kid":"`+kid+`","typ":"at+jwt","jku":"http://evil.test/jwks"}`, payload(nil)), false},
		{"unknown kid", sign(`{"alg":"EdDSA","kid":"no-such-kid","typ":"at+jwt"}`, payload(nil)), false},
		{"ES256 header on an Ed25519 key", sign(`{"alg":"ES256","kid":"`+kid+`","typ":"at+jwt"}`, payload(nil)), false},
		{"exp as a string", sign(hdr, payload(func(m map[string]any) { m["exp"] = itoa(now + 300) })), false},
		{"exp in year 10000", sign(hdr, payload(func(m map[string]any) { m["exp"] = 253402300800 })), false},
		{"30-day lifetime", sign(hdr, payload(func(m map[string]any) { m["exp"] = now + 30*86400 })), false},
		{"ISS instead of iss", sign(hdr, payload(func(m map[string]any) { m["ISS"] = m["iss"]; delete(m, "iss") })), false},
		{"iss spelt with a long s", sign(hdr, payload(func(m map[string]any) { m["i\u017fs"] = m["iss"]; delete(m, "iss") })), false},
		{"duplicate sub", sign(hdr, strings.Replace(payload(nil), `"sub":`, `"sub":"`+other.ID+`","sub":`, 1)), false},
		{"duplicate tenant", sign(hdr, strings.Replace(payload(nil), `"tenant":`, `"tenant":"globex","tenant":`, 1)), false},
		{"agent id in upper case", sign(hdr, payload(func(m map[string]any) { a := agent(m); a["ID"] = a["id"]; delete(a, "id") })), false},
		{"unknown claim (ignored, RFC 7519 §4)", sign(hdr, payload(func(m map[string]any) { m["x_note"] = "hello" })), true},
		{"no nbf", sign(hdr, payload(func(m map[string]any) { delete(m, "nbf") })), true},
		{"no iat", sign(hdr, payload(func(m map[string]any) { delete(m, "iat") })), false},
		{"no jti", sign(hdr, payload(func(m map[string]any) { delete(m, "jti") })), false},
		{"invalid tenant", sign(hdr, payload(func(m map[string]any) { m["tenant"] = "ACME" })), false},
		{"client_id is not sub", sign(hdr, payload(func(m map[string]any) { m["client_id"] = other.ID })), false},
		{"trust level ROOT", sign(hdr, payload(func(m map[string]any) { agent(m)["trust_level"] = "ROOT" })), false},
		{"another audience", sign(hdr, payload(func(m map[string]any) { m["aud"] = []string{"someone-else"} })), false},
		{"another issuer", sign(hdr, payload(func(m map[string]any) { m["iss"] = "http://evil.test" })), false},
		{"expired", sign(hdr, payload(func(m map[string]any) { m["iat"], m["nbf"], m["exp"] = now-900, now-900, now-600 })), false},
		{"not yet valid", sign(hdr, payload(func(m map[string]any) { m["nbf"] = now + 600 })), false},
		{"issued in the future", sign(hdr, payload(func(m map[string]any) { m["iat"], m["nbf"], m["exp"] = now+600, now+600, now+900 })), false},
		{"invalid utf-8", sign(hdr, strings.Replace(payload(nil), `"acme"`, "\"acm\xff\"", 1)), false},
		{"trailing data", sign(hdr, payload(nil)+` {}`), false},
		{"padded base64", strings.Replace(sign(hdr, payload(nil)), ".", "=.", 1), false},
		{"standard base64 alphabet", plusInSig(sign(hdr, payload(nil))), false},
		{"tampered signature", tamperSig(sign(hdr, payload(nil))), false},
		{"HS256 with the public key", signHS256(t, k.pub, `{"alg":"HS256","kid":"`+kid+`","typ":"at+jwt"}`, payload(nil)), false},
		{"alg none", b64url(`{"alg":"none","kid":"`+kid+`","typ":"at+jwt"}`) + "." + b64url(payload(nil)) + ".", false},
		// The delegation and confirmation claims, as strictly as the rest.
		{"act without delegation", sign(hdr, payload(func(m map[string]any) { m["act"] = map[string]any{"sub": other.ID} })), false},
		{"delegation null", sign(hdr, payload(func(m map[string]any) { m["delegation"] = nil })), false},
		{"act null", sign(hdr, payload(func(m map[string]any) { m["act"] = nil })), false},
		{"cnf null", sign(hdr, payload(func(m map[string]any) { m["cnf"] = nil })), false},
		{"cnf with a jwk", sign(hdr, payload(func(m map[string]any) { m["cnf"] = map[string]any{"jwk": map[string]any{"kty": "OKP"}} })), false},
		{"cnf jkt not a thumbprint", sign(hdr, payload(func(m map[string]any) { m["cnf"] = map[string]any{"jkt": "abc"} })), false},
		{"chain not ending with sub", sign(hdr, payload(func(m map[string]any) {
			m["act"] = map[string]any{"sub": other.ID}
			m["delegation"] = map[string]any{"depth": 1, "root": other.ID, "chain": []string{other.ID, other.ID},
				"links": []map[string]any{{"sub": other.ID, "name": "o", "type": "observer", "trust_level": "HIGH", "jti": "j"}}}
		})), false},
	}
	ctx := context.Background()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.a.verify(ctx, tc.token)
			signed := err == nil
			active := e.introspect(tc.token, adminAuth(testAdminToken))["active"] == true
			forwarded := px.call(t, tc.token)
			if signed != tc.ok || active != tc.ok || forwarded != tc.ok {
				t.Fatalf("want accepted=%v from all three; after signing %v (%v), introspection active %v, proxy forwarded %v",
					tc.ok, signed, err, active, forwarded)
			}
		})
	}
}

// testProxy is a real proxy in front of a counting upstream, trusting e's
// authority and sharing its Redis and clock.
type testProxy struct {
	url  string
	hits *atomic.Int64
}

func startProxy(t *testing.T, e *env, mods ...func(*proxy.Config)) *testProxy {
	t.Helper()
	tp := &testProxy{hits: &atomic.Int64{}}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		tp.hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`[]`))
	}))
	t.Cleanup(up.Close)
	cfg := proxy.FleetConfig(up.URL)
	cfg.Issuer = e.a.cfg.Issuer
	cfg.JWKSURL = e.srv.URL + "/.well-known/jwks.json"
	cfg.Audience = e.a.cfg.Audiences[0]
	cfg.Leeway = e.a.cfg.Passport.Leeway
	cfg.Redis.URL = e.rs.URL()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.ResourceURL = "http://" + ln.Addr().String() // what DPoP proofs name (htu)
	for _, m := range mods {
		m(&cfg)
	}
	p, err := proxy.New(cfg, proxy.Deps{
		Redis: e.rdb, Audit: &fakeSink{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registry: prometheus.NewRegistry(), Clock: e.clock.Now, Policies: policies.FS,
	})
	if err != nil {
		t.Fatal(err)
	}
	aln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx, ln, aln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("proxy: %v", err)
		}
	})
	tp.url = "http://" + ln.Addr().String()
	waitFor(t, 10*time.Second, "the proxy to be ready", func() bool {
		resp, err := http.Get("http://" + aln.Addr().String() + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return tp
}

// call sends tok to the proxy and reports whether the call was forwarded
// (200 and one more upstream hit). Anything but 200 or 401 fails the test.
func (tp *testProxy) call(t *testing.T, tok string) bool {
	t.Helper()
	before := tp.hits.Load()
	req, _ := http.NewRequest(http.MethodGet, tp.url+"/services", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	hits := tp.hits.Load() - before
	switch {
	case resp.StatusCode == http.StatusOK && hits == 1:
		return true
	case resp.StatusCode == http.StatusUnauthorized && hits == 0:
		return false
	}
	t.Fatalf("proxy answered %d with %d upstream hits: %s", resp.StatusCode, hits, body)
	return false
}

func b64url(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func decodePart(t *testing.T, tok string, i int) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[i])
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// signRaw signs header and payload, taken as written, with an Ed25519 key.
func signRaw(t *testing.T, key crypto.Signer, header, payload string) string {
	t.Helper()
	ed, ok := key.(ed25519.PrivateKey)
	if !ok {
		t.Fatalf("signing key is %T", key)
	}
	in := b64url(header) + "." + b64url(payload)
	return in + "." + base64.RawURLEncoding.EncodeToString(ed25519.Sign(ed, []byte(in)))
}

func signHS256(t *testing.T, pub crypto.PublicKey, header, payload string) string {
	t.Helper()
	in := b64url(header) + "." + b64url(payload)
	sig, err := jwt.SigningMethodHS256.Sign(in, []byte(pub.(ed25519.PublicKey)))
	if err != nil {
		t.Fatal(err)
	}
	return in + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func tamperSig(tok string) string {
	i := strings.LastIndexByte(tok, '.')
	sig, _ := base64.RawURLEncoding.DecodeString(tok[i+1:])
	sig[0] ^= 1
	return tok[:i+1] + base64.RawURLEncoding.EncodeToString(sig)
}

// plusInSig puts a '+' (standard base64, not base64url) in the signature.
func plusInSig(tok string) string {
	i := strings.LastIndexByte(tok, '.')
	return tok[:i+1] + "+" + tok[i+2:]
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }

// TestProxyVerdictsOnDelegatedAndBound: genuine delegated and DPoP-bound
// passports, issued by the authority, at a real proxy. A delegated
// passport is forwarded, and refused within a second once the passport it
// was exchanged from is revoked at the authority (RFC 7009). A bound one
// is refused as a bearer token, and forwarded with a proof by its key
// (made with go-jose) for the proxy's URL.
func TestProxyVerdictsOnDelegatedAndBound(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	f := newDelegationFleet(e)
	px := startProxy(t, e)
	root := e.token(f.commander, nil)
	if !px.call(t, root) {
		t.Fatal("the proxy refused a plain passport")
	}
	delegated, _ := e.mustExchange(f.healer, root, nil, nil)
	if !px.call(t, delegated) {
		t.Fatal("the proxy refused a delegated passport")
	}
	resp, _ := e.post("/oauth2/revoke", "application/x-www-form-urlencoded", url.Values{"token": {root}}.Encode(), basicAuthOf(f.commander))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("revoke: %d", resp.StatusCode)
	}
	start := time.Now()
	waitFor(t, time.Second, "the descendant of a revoked passport to be refused", func() bool { return !px.call(t, delegated) })
	t.Logf("delegated passport refused %s after its root was revoked", time.Since(start))

	k := newDPoPKey(t, jose.EdDSA)
	_, tr, _, _ := e.tokenDPoP(f.commander, k.proof("POST", e.a.tokenURL(), e.clock.Now(), nil))
	if e.introspect(tr.AccessToken, adminAuth(testAdminToken))["active"] != true {
		t.Fatal("bound passport inactive at the authority")
	}
	if px.call(t, tr.AccessToken) {
		t.Fatal("the proxy forwarded a bound passport sent as Bearer")
	}
	for i, want := range []bool{true, false} { // the second use of the same proof is a replay
		proof := k.proof("GET", px.url+"/services", e.clock.Now(), func(c, _ map[string]any) {
			c["ath"] = passport.AccessTokenHash(tr.AccessToken)
			c["jti"] = "proof-1"
		})
		if got := px.callDPoP(t, tr.AccessToken, proof); got != want {
			t.Fatalf("DPoP call %d: forwarded %v, want %v", i, got, want)
		}
	}
}

// TestGoClientDPoPThroughTheProxy: the Go client with a DPoP key gets a
// bound passport and calls through a proxy whose route wants server
// nonces: its first proof has none, the proxy answers use_dpop_nonce
// with one, and the client's one retry is forwarded.
func TestGoClientDPoPThroughTheProxy(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	reg := e.register("acme", "healer-dpop", "healer", passport.TrustHigh)
	px := startProxy(t, e, func(c *proxy.Config) {
		for i := range c.Routes {
			c.Routes[i].DPoPNonce = c.Routes[i].Action == "service.list"
		}
	})
	_, key, _ := ed25519.GenerateKey(nil)
	c, err := client.New(e.srv.URL, reg.ClientID, passport.Secret(reg.ClientSecret), client.Options{DPoPKey: key, Clock: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	var statuses []int
	hc := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		resp, err := http.DefaultTransport.RoundTrip(r)
		if err == nil {
			statuses = append(statuses, resp.StatusCode)
		}
		return resp, err
	})}
	hc.Transport = c.Transport(hc.Transport, client.TokenRequest{})
	for range 2 {
		before := px.hits.Load()
		resp, err := hc.Get(px.url + "/services")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || px.hits.Load() != before+1 {
			t.Fatalf("through the proxy: %d, forwarded %d", resp.StatusCode, px.hits.Load()-before)
		}
	}
	// The first call learns the nonce (401, then 200); the second has it.
	if fmt.Sprint(statuses) != "[401 200 200]" {
		t.Fatalf("statuses seen by the client's transport: %v", statuses)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// callDPoP is call with "Authorization: DPoP" and a proof.
func (tp *testProxy) callDPoP(t *testing.T, tok, proof string) bool {
	t.Helper()
	before := tp.hits.Load()
	req, _ := http.NewRequest(http.MethodGet, tp.url+"/services", nil)
	req.Header.Set("Authorization", "DPoP "+tok)
	req.Header.Set("DPoP", proof)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	hits := tp.hits.Load() - before
	switch {
	case resp.StatusCode == http.StatusOK && hits == 1:
		return true
	case resp.StatusCode == http.StatusUnauthorized && hits == 0:
		return false
	}
	t.Fatalf("proxy answered %d with %d upstream hits: %s", resp.StatusCode, hits, body)
	return false
}
