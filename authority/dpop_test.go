package authority

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/passport"
)

// dpopKey is an agent's DPoP key; proofs are made with go-jose, a JOSE
// implementation independent of the authority's verifier.
type dpopKey struct {
	t   *testing.T
	key crypto.Signer
	alg jose.SignatureAlgorithm
	jkt string
}

func newDPoPKey(t *testing.T, alg jose.SignatureAlgorithm) *dpopKey {
	t.Helper()
	k := &dpopKey{t: t, alg: alg}
	if alg == jose.ES256 {
		k.key, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	} else {
		_, k.key, _ = ed25519.GenerateKey(rand.Reader)
	}
	tp, err := (&jose.JSONWebKey{Key: k.key.Public()}).Thumbprint(crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	k.jkt = base64.RawURLEncoding.EncodeToString(tp)
	return k
}

// proof makes a DPoP proof for method and htu at iat; mut may change the
// claims and add (or replace) header members.
func (k *dpopKey) proof(method, htu string, iat time.Time, mut func(claims, hdr map[string]any)) string {
	k.t.Helper()
	claims := map[string]any{"jti": randomID(12), "htm": method, "htu": htu, "iat": iat.Unix()}
	hdr := map[string]any{}
	if mut != nil {
		mut(claims, hdr)
	}
	opts := (&jose.SignerOptions{EmbedJWK: true}).WithType(passport.DPoPProofType)
	for h, v := range hdr {
		opts = opts.WithHeader(jose.HeaderKey(h), v)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: k.alg, Key: k.key}, opts)
	if err != nil {
		k.t.Fatal(err)
	}
	b, _ := json.Marshal(claims)
	obj, err := s.Sign(b)
	if err != nil {
		k.t.Fatal(err)
	}
	out, _ := obj.CompactSerialize()
	return out
}

func withDPoP(proofs ...string) func(*http.Request) {
	return func(r *http.Request) {
		for _, p := range proofs {
			r.Header.Add("DPoP", p)
		}
	}
}

// tokenDPoP asks for a passport with client_secret_basic and the given
// DPoP headers.
func (e *env) tokenDPoP(reg client.Registration, proofs ...string) (int, client.TokenResponse, oauthErr, http.Header) {
	e.t.Helper()
	resp, body := e.post("/oauth2/token", "application/x-www-form-urlencoded", "grant_type=client_credentials", func(r *http.Request) {
		r.SetBasicAuth(reg.ClientID, reg.ClientSecret)
		withDPoP(proofs...)(r)
	})
	var tr client.TokenResponse
	var oe oauthErr
	if resp.StatusCode == 200 {
		_ = json.Unmarshal(body, &tr)
	} else {
		_ = json.Unmarshal(body, &oe)
	}
	return resp.StatusCode, tr, oe, resp.Header
}

// A DPoP proof at the token endpoint gets a passport bound to its key:
// token_type DPoP and cnf.jkt equal to go-jose's RFC 7638 thumbprint.
func TestTokenEndpointBindsToDPoPKey(t *testing.T) {
	for _, alg := range []jose.SignatureAlgorithm{jose.ES256, jose.EdDSA} {
		t.Run(string(alg), func(t *testing.T) {
			e := newEnv(t, nil, nil, nil)
			ag := e.register("acme", "healer-1", "healer", passport.TrustHigh)
			k := newDPoPKey(t, alg)
			status, tr, oe, _ := e.tokenDPoP(ag, k.proof("POST", e.a.tokenURL(), e.clock.Now(), nil))
			if status != 200 || tr.TokenType != "DPoP" {
				t.Fatalf("%d %+v %+v", status, tr, oe)
			}
			c := e.claims(tr.AccessToken)
			if c.Cnf == nil || c.Cnf.JKT != k.jkt {
				t.Fatalf("cnf %+v, want jkt %s", c.Cnf, k.jkt)
			}
			m := e.introspect(tr.AccessToken, basicAuthOf(ag))
			if m["active"] != true || m["token_type"] != "DPoP" || m["cnf"].(map[string]any)["jkt"] != k.jkt {
				t.Fatalf("introspection: %v", m)
			}
			// Without a proof: a plain bearer passport, as before.
			if status, tr, _, _ := e.tokenDPoP(ag); status != 200 || tr.TokenType != "Bearer" || e.claims(tr.AccessToken).Cnf != nil {
				t.Fatalf("no proof: %d %+v", status, tr)
			}
			if got := counter(t, e.reg, "passport_authority_dpop_proofs_total", "result", "accepted"); got != 1 {
				t.Fatalf("accepted proofs metric = %v", got)
			}
		})
	}
}

// Every rule of RFC 9449 §4.3 at the token endpoint: each bad proof is a
// 400 invalid_dpop_proof and nothing is issued.
func TestTokenEndpointDPoPRules(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	ag := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	k := newDPoPKey(t, jose.ES256)
	now := e.clock.Now()
	tokenURL := e.a.tokenURL()
	good := k.proof("POST", tokenURL, now, nil)
	if status, _, oe, _ := e.tokenDPoP(ag, good); status != 200 {
		t.Fatalf("good proof: %d %+v", status, oe)
	}
	cases := []struct {
		name   string
		proofs []string
		reason string
	}{
		{"replayed", []string{good}, "dpop_replay"},
		{"another URL", []string{k.proof("POST", strings.TrimSuffix(tokenURL, "token")+"introspect", now, nil)}, "dpop_wrong_url"},
		{"the Host the client chose", []string{k.proof("POST", "http://evil.test/oauth2/token", now, nil)}, "dpop_wrong_url"},
		{"another method", []string{k.proof("GET", tokenURL, now, nil)}, "dpop_wrong_method"},
		{"typ JWT", []string{k.proof("POST", tokenURL, now, func(_, h map[string]any) { h["typ"] = "JWT" })}, "dpop_bad_typ"},
		{"private key in jwk", []string{k.proof("POST", tokenURL, now, func(_, h map[string]any) { h["jwk"] = jose.JSONWebKey{Key: k.key} })}, "dpop_bad_jwk"},
		{"old iat", []string{k.proof("POST", tokenURL, now.Add(-2*time.Minute), nil)}, "dpop_stale"},
		{"iat in the future", []string{k.proof("POST", tokenURL, now.Add(time.Minute), nil)}, "dpop_stale"},
		{"ath at the token endpoint", []string{k.proof("POST", tokenURL, now, func(c, _ map[string]any) { c["ath"] = passport.AccessTokenHash("x") })}, "dpop_bad_ath"},
		{"two proofs", []string{k.proof("POST", tokenURL, now, nil), k.proof("POST", tokenURL, now, nil)}, "dpop_malformed"},
		{"empty header", []string{""}, "dpop_missing"},
		{"not a JWT", []string{"hello"}, "dpop_malformed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := counter(t, e.reg, "passport_authority_passports_issued_total")
			status, _, oe, _ := e.tokenDPoP(ag, tc.proofs...)
			if status != 400 || oe.Error != "invalid_dpop_proof" {
				t.Fatalf("got %d %+v, want 400 invalid_dpop_proof", status, oe)
			}
			if got := counter(t, e.reg, "passport_authority_dpop_proofs_total", "result", tc.reason); got < 1 {
				t.Fatalf("refusal not counted as %s", tc.reason)
			}
			if counter(t, e.reg, "passport_authority_passports_issued_total") != before {
				t.Fatal("issued")
			}
		})
	}
}

// A proof is single-use across authority replicas that share one Redis,
// also when sent to both at once: of many concurrent requests carrying
// the same proof, exactly one gets a passport.
func TestDPoPReplayAcrossReplicas(t *testing.T) {
	a := newEnv(t, nil, nil, nil)
	b := newEnv(t, func(c *Config) { c.Issuer = a.a.cfg.Issuer }, a.rs, a.clock)
	ag := a.register("acme", "healer-1", "healer", passport.TrustHigh)
	k := newDPoPKey(t, jose.EdDSA)
	p := k.proof("POST", a.a.tokenURL(), a.clock.Now(), nil)
	if status, _, oe, _ := a.tokenDPoP(ag, p); status != 200 {
		t.Fatalf("replica a: %d %+v", status, oe)
	}
	if status, _, oe, _ := b.tokenDPoP(ag, p); status != 400 || oe.Error != "invalid_dpop_proof" {
		t.Fatalf("replica b accepted a proof replica a had used: %d %+v", status, oe)
	}

	p = k.proof("POST", a.a.tokenURL(), a.clock.Now(), nil)
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e := a
			if i%2 == 1 {
				e = b
			}
			resp, _ := e.post("/oauth2/token", "application/x-www-form-urlencoded", "grant_type=client_credentials", func(r *http.Request) {
				r.SetBasicAuth(ag.ClientID, ag.ClientSecret)
				r.Header.Set("DPoP", p)
			})
			if resp.StatusCode == 200 {
				mu.Lock()
				ok++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if ok != 1 {
		t.Fatalf("%d of 20 concurrent requests with one proof got a passport, want exactly 1", ok)
	}
	// One key per proof, living as long as the proof is acceptable
	// (iat + proof_max_age + leeway), so the record also works on Cluster.
	var claims struct{ JTI string }
	_ = json.Unmarshal(decodePart(t, p, 1), &claims)
	ttl, err := a.rdb.TTL(context.Background(), passport.DPoPReplayKey(k.jkt, claims.JTI)).Result()
	if err != nil || ttl <= 0 || ttl > a.a.cfg.DPoP.ProofMaxAge+a.a.cfg.Passport.Leeway {
		t.Fatalf("replay record TTL %v (%v)", ttl, err)
	}
}

// may_delegate_to takes agent ids and type:<known type>, at most 32.
func TestMayDelegateToRegistration(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	other := e.register("acme", "obs", "observer", passport.TrustLow)
	ag := e.register("acme", "cmd", "healer", passport.TrustHigh, mayDelegate("type:observer", other.ID, "type:observer"))
	got, err := e.admin.GetAgent(context.Background(), "acme", ag.ID)
	if err != nil || strings.Join(got.MayDelegateTo, ",") != other.ID+",type:observer" {
		t.Fatalf("may_delegate_to %v (%v)", got.MayDelegateTo, err)
	}
	if other.MayDelegateTo == nil || len(other.MayDelegateTo) != 0 {
		t.Fatalf("default may_delegate_to %#v, want []", other.MayDelegateTo)
	}
	many := make([]string, 33)
	for i := range many {
		many[i] = "type:observer"
	}
	for _, list := range [][]string{{"type:nope"}, {"agt_{x}"}, {"observer"}, {"*"}, many} {
		_, err := e.admin.RegisterAgent(context.Background(), "acme", client.AgentSpec{Name: "x", Type: "healer", TrustLevel: "HIGH", MayDelegateTo: list})
		if err == nil || !strings.Contains(err.Error(), "may_delegate_to") {
			t.Errorf("may_delegate_to %.40q: %v", list, err)
		}
	}
}

// An agent registered with require_dpop gets only bound passports.
func TestRequireDPoP(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	ag := e.register("acme", "healer-1", "healer", passport.TrustHigh, func(s *client.AgentSpec) { s.RequireDPoP = true })
	if !ag.RequireDPoP {
		t.Fatalf("registration: %+v", ag.Agent)
	}
	if got, err := e.admin.GetAgent(context.Background(), "acme", ag.ID); err != nil || !got.RequireDPoP {
		t.Fatalf("agent: %+v %v", got, err)
	}
	status, _, oe, _ := e.tokenDPoP(ag)
	if status != 400 || oe.Error != "invalid_dpop_proof" || !strings.Contains(oe.Desc, "require_dpop") {
		t.Fatalf("no proof: %d %+v", status, oe)
	}
	k := newDPoPKey(t, jose.EdDSA)
	status, tr, oe, _ := e.tokenDPoP(ag, k.proof("POST", e.a.tokenURL(), e.clock.Now(), nil))
	if status != 200 || tr.TokenType != "DPoP" || e.claims(tr.AccessToken).Cnf.JKT != k.jkt {
		t.Fatalf("with a proof: %d %+v %+v", status, tr, oe)
	}
}

// Server nonces (RFC 9449 §8): without one the answer is use_dpop_nonce
// with DPoP-Nonce; the nonce works on every replica; an old one does not.
func TestDPoPNonces(t *testing.T) {
	mut := func(c *Config) { c.DPoP.RequireNonce, c.DPoP.NonceLifetime = true, time.Minute }
	a := newEnv(t, mut, nil, nil)
	b := newEnv(t, func(c *Config) { mut(c); c.Issuer = a.a.cfg.Issuer }, a.rs, a.clock)
	ag := a.register("acme", "healer-1", "healer", passport.TrustHigh)
	k := newDPoPKey(t, jose.ES256)
	status, _, oe, hdr := a.tokenDPoP(ag, k.proof("POST", a.a.tokenURL(), a.clock.Now(), nil))
	nonce := hdr.Get("DPoP-Nonce")
	if status != 400 || oe.Error != "use_dpop_nonce" || nonce == "" {
		t.Fatalf("without a nonce: %d %+v nonce %q", status, oe, nonce)
	}
	withNonce := func(n string) func(c, _ map[string]any) { return func(c, _ map[string]any) { c["nonce"] = n } }
	status, tr, oe, hdr := b.tokenDPoP(ag, k.proof("POST", a.a.tokenURL(), a.clock.Now(), withNonce(nonce)))
	if status != 200 || tr.TokenType != "DPoP" || hdr.Get("DPoP-Nonce") == "" {
		t.Fatalf("replica a's nonce at replica b: %d %+v %+v", status, tr, oe)
	}
	if status, _, oe, _ := a.tokenDPoP(ag, k.proof("POST", a.a.tokenURL(), a.clock.Now(), withNonce("made-up"))); status != 400 || oe.Error != "use_dpop_nonce" {
		t.Fatalf("made-up nonce: %d %+v", status, oe)
	}
	a.clock.Advance(2 * time.Minute)
	if status, _, oe, _ := a.tokenDPoP(ag, k.proof("POST", a.a.tokenURL(), a.clock.Now(), withNonce(nonce))); status != 400 || oe.Error != "use_dpop_nonce" {
		t.Fatalf("nonce two lifetimes old: %d %+v", status, oe)
	}
	// Without nonces configured, no DPoP-Nonce is sent.
	c := newEnv(t, nil, a.rs, nil)
	if _, _, _, hdr := c.tokenDPoP(ag); hdr.Get("DPoP-Nonce") != "" {
		t.Fatal("DPoP-Nonce sent while nonces are off")
	}
}

// Token exchange and DPoP: a bound subject needs a bound result (bound
// to the actor's own key, never the subject's); a bound actor_token needs
// a proof by its key.
func TestTokenExchangeWithDPoP(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	f := newDelegationFleet(e)
	rootKey, actorKey, otherKey := newDPoPKey(t, jose.EdDSA), newDPoPKey(t, jose.ES256), newDPoPKey(t, jose.ES256)
	tokenURL := e.a.tokenURL()
	_, rootTR, _, _ := e.tokenDPoP(f.commander, rootKey.proof("POST", tokenURL, e.clock.Now(), nil))
	bound := rootTR.AccessToken

	if res := e.exchange(f.healer, bound, nil, nil); res.status != 400 || res.err.Error != "invalid_dpop_proof" {
		t.Fatalf("bound subject without a proof: %d %s", res.status, res.body)
	}
	res := e.exchange(f.healer, bound, nil, withDPoP(actorKey.proof("POST", tokenURL, e.clock.Now(), nil)))
	if res.status != 200 || res.tr.TokenType != "DPoP" {
		t.Fatalf("bound subject with the actor's proof: %d %s", res.status, res.body)
	}
	if c := e.claims(res.tr.AccessToken); c.Cnf.JKT != actorKey.jkt || c.Act.Sub != f.commander.ID {
		t.Fatalf("delegated passport bound to %+v, want the actor's key %s", c.Cnf, actorKey.jkt)
	}

	// A bound actor_token: the proof must be by its key.
	_, ownTR, _, _ := e.tokenDPoP(f.healer, actorKey.proof("POST", tokenURL, e.clock.Now(), nil))
	actorOnly := func(p string) func(*http.Request) {
		return func(r *http.Request) { r.Header.Del("Authorization"); r.Header.Set("DPoP", p) }
	}
	extra := url.Values{"actor_token": {ownTR.AccessToken}, "actor_token_type": {passport.TokenTypeAccessToken}}
	plain := e.token(f.commander, nil)
	if res := e.exchange(f.healer, plain, extra, func(r *http.Request) { r.Header.Del("Authorization") }); res.status != 400 || res.err.Error != "invalid_dpop_proof" {
		t.Fatalf("bound actor_token without a proof: %d %s", res.status, res.body)
	}
	if res := e.exchange(f.healer, plain, extra, actorOnly(otherKey.proof("POST", tokenURL, e.clock.Now(), nil))); res.status != 400 ||
		res.err.Error != "invalid_dpop_proof" || !strings.Contains(res.err.Desc, "another key") {
		t.Fatalf("bound actor_token with another key's proof: %d %s", res.status, res.body)
	}
	if res := e.exchange(f.healer, plain, extra, actorOnly(actorKey.proof("POST", tokenURL, e.clock.Now(), nil))); res.status != 200 || res.tr.TokenType != "DPoP" {
		t.Fatalf("bound actor_token with its key's proof: %d %s", res.status, res.body)
	}
	// An actor registered with require_dpop needs a proof for an exchange.
	strict := e.register("acme", "strict-healer", "healer", passport.TrustHigh, func(s *client.AgentSpec) { s.RequireDPoP = true })
	if res := e.exchange(strict, plain, nil, nil); res.status != 400 || res.err.Error != "invalid_dpop_proof" {
		t.Fatalf("require_dpop actor without a proof: %d %s", res.status, res.body)
	}
}
