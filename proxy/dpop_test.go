package proxy

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
	"github.com/agentpassport/passport/proxy/internal/testkeys"
)

// Proofs in these tests are made with go-jose, independent of the shared
// verifier the proxy runs.

// proofKey is an agent's DPoP key.
type proofKey struct {
	key crypto.Signer
	alg jose.SignatureAlgorithm
	jkt string
}

func newProofKey(t testing.TB, alg jose.SignatureAlgorithm) *proofKey {
	t.Helper()
	k := &proofKey{alg: alg}
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

var proofSeq atomic.Int64

// proof makes a proof for method and htu at iat for the passport tok; mut
// may change the claims and add or replace header members.
func (k *proofKey) proof(t testing.TB, method, htu, tok string, iat time.Time, mut func(claims, hdr map[string]any)) string {
	t.Helper()
	sum := sha256.Sum256([]byte(tok))
	claims := map[string]any{"jti": fmt.Sprintf("p-%d-%d", time.Now().UnixNano(), proofSeq.Add(1)), "htm": method, "htu": htu,
		"iat": iat.Unix(), "ath": base64.RawURLEncoding.EncodeToString(sum[:])}
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
		t.Fatal(err)
	}
	obj, err := s.Sign(mustJSON(claims))
	if err != nil {
		t.Fatal(err)
	}
	out, _ := obj.CompactSerialize()
	return out
}

// unsignedProof is a proof with the given alg written by hand: "none"
// with no signature, or HS256 keyed by the embedded public key's bytes.
func unsignedProof(k *proofKey, alg, method, htu, tok string, iat time.Time) string {
	jwk, _ := passport.PublicJWK(k.key.Public())
	hdr := mustJSON(map[string]any{"typ": passport.DPoPProofType, "alg": alg, "jwk": jwk})
	sum := sha256.Sum256([]byte(tok))
	pay := mustJSON(map[string]any{"jti": fmt.Sprintf("u-%d", proofSeq.Add(1)), "htm": method, "htu": htu, "iat": iat.Unix(),
		"ath": base64.RawURLEncoding.EncodeToString(sum[:])})
	in := base64.RawURLEncoding.EncodeToString(hdr) + "." + base64.RawURLEncoding.EncodeToString(pay)
	if alg == "none" {
		return in + "."
	}
	m := hmac.New(sha256.New, []byte(jwk["x"]))
	m.Write([]byte(in))
	return in + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// boundPassport is a passport of the harness's healer bound to k.
func (h *harness) boundPassport(k *proofKey) (*passport.Claims, string) {
	h.agent("acme", "healer-1", 90)
	c := testkeys.Claims(h.now(), "acme", "healer-1", "healer", passport.TrustHigh, "service.get", "service.restart")
	c.Cnf = &passport.Confirmation{JKT: k.jkt}
	return c, joseSign(h.t, h.keys, mustJSON(c))
}

// dpopDo sends tok with the DPoP scheme and the proofs given.
func (h *harness) dpopDo(method, path, tok string, proofs ...string) resp {
	h.t.Helper()
	hdr := map[string]string{"Authorization": "DPoP " + tok}
	if len(proofs) == 1 {
		hdr["DPoP"] = proofs[0]
	} else if len(proofs) > 1 {
		hdr["DPoP"] = proofs[0]
		hdr["Dpop"] = proofs[1] // a second header line
	}
	return h.do(method, path, "", hdr, "")
}

func challenge(r resp) string { return r.header.Get("WWW-Authenticate") }

// TestDPoPBoundPassport: a bound passport with a proof by its key is
// forwarded (ES256 and EdDSA keys); the proof does not reach the upstream.
func TestDPoPBoundPassport(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ResourceURL = "https://proxy.example" })
	for _, alg := range []jose.SignatureAlgorithm{jose.ES256, jose.EdDSA} {
		t.Run(string(alg), func(t *testing.T) {
			k := newProofKey(t, alg)
			_, tok := h.boundPassport(k)
			p := k.proof(t, "POST", "https://proxy.example/services/checkout/restart", tok, h.now(), nil)
			r := h.dpopDo("POST", "/services/checkout/restart", tok, p)
			if r.status != 200 {
				t.Fatalf("bound passport with its proof: %d %s", r.status, r.body)
			}
			up, _ := h.up.lastReq()
			if up.Header.Get("DPoP") != "" || up.Header.Get("Authorization") != "" {
				t.Fatalf("upstream got DPoP %q / Authorization %q", up.Header.Get("DPoP"), up.Header.Get("Authorization"))
			}
			// htu compared after normalisation: case, default port.
			p = k.proof(t, "POST", "HTTPS://Proxy.Example:443/services/checkout/restart", tok, h.now(), nil)
			if r := h.dpopDo("POST", "/services/checkout/restart", tok, p); r.status != 200 {
				t.Fatalf("normalised htu: %d %s", r.status, r.body)
			}
			// The scheme is case-insensitive (RFC 9110 §11.1); htu leaves
			// the query out (RFC 9449 §4.3).
			p = k.proof(t, "GET", "https://proxy.example/services/checkout", tok, h.now(), nil)
			if r := h.do("GET", "/services/checkout?verbose=1", "", map[string]string{"Authorization": "dpop " + tok, "DPoP": p}, ""); r.status != 200 {
				t.Fatalf("lower-case scheme, query: %d %s", r.status, r.body)
			}
		})
	}
	meta := h.do("GET", metadataPath, "", nil, "")
	var m map[string]any
	_ = json.Unmarshal([]byte(meta.body), &m)
	if fmt.Sprint(m["dpop_signing_alg_values_supported"]) != "[ES256 EdDSA]" {
		t.Fatalf("metadata: %s", meta.body)
	}
}

// TestDPoPStolenPassport is the README's demo: the passport without the
// key is worth nothing, whichever way it is sent.
func TestDPoPStolenPassport(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ResourceURL = "https://proxy.example" })
	owner, thief := newProofKey(t, jose.EdDSA), newProofKey(t, jose.EdDSA)
	_, tok := h.boundPassport(owner)
	url := "https://proxy.example/services/checkout/restart"
	cases := []struct {
		name      string
		send      func() resp
		reason    string
		challenge string
	}{
		{"as Bearer", func() resp { return h.do("POST", "/services/checkout/restart", tok, nil, "") },
			"dpop_bound_as_bearer", `DPoP realm="passport", error="invalid_token"`},
		{"as DPoP without a proof", func() resp { return h.dpopDo("POST", "/services/checkout/restart", tok) },
			"dpop_missing", `DPoP realm="passport", error="invalid_dpop_proof"`},
		{"with the thief's own proof", func() resp {
			return h.dpopDo("POST", "/services/checkout/restart", tok, thief.proof(t, "POST", url, tok, h.now(), nil))
		}, "dpop_key_mismatch", `DPoP realm="passport", error="invalid_dpop_proof"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := h.up.hits.Load()
			r := tc.send()
			if r.status != 401 || reasonOf(r) != tc.reason || !strings.HasPrefix(challenge(r), tc.challenge) ||
				!strings.Contains(challenge(r), `algs="ES256 EdDSA"`) {
				t.Fatalf("got %d %q %q", r.status, reasonOf(r), challenge(r))
			}
			if h.up.hits.Load() != before {
				t.Fatal("forwarded")
			}
		})
	}
	// An unbound passport sent as DPoP proves nothing: refused, with a
	// Bearer challenge.
	_, bearer := h.healer()
	r := h.dpopDo("GET", "/services/checkout", bearer, owner.proof(t, "GET", "https://proxy.example/services/checkout", bearer, h.now(), nil))
	if r.status != 401 || reasonOf(r) != "dpop_not_bound" || !strings.HasPrefix(challenge(r), "Bearer ") {
		t.Fatalf("unbound as DPoP: %d %q %q", r.status, reasonOf(r), challenge(r))
	}
	// And an expired bound passport sent as DPoP gets a DPoP challenge.
	h.offset.Store(int64(10 * time.Minute))
	r = h.dpopDo("POST", "/services/checkout/restart", tok, owner.proof(t, "POST", url, tok, h.now(), nil))
	if r.status != 401 || reasonOf(r) != "expired" || !strings.HasPrefix(challenge(r), `DPoP realm="passport", error="invalid_token"`) {
		t.Fatalf("expired bound passport: %d %q %q", r.status, reasonOf(r), challenge(r))
	}
}

// TestDPoPProofRules: every rule of RFC 9449 §4.3, one proof breaking one
// rule each. Nothing is forwarded.
func TestDPoPProofRules(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ResourceURL = "https://proxy.example" })
	k := newProofKey(t, jose.ES256)
	_, tok := h.boundPassport(k)
	_, other := h.boundPassport(k) // another passport bound to the same key
	const url = "https://proxy.example/services/checkout/restart"
	used := k.proof(t, "POST", url, tok, h.now(), nil)
	if r := h.dpopDo("POST", "/services/checkout/restart", tok, used); r.status != 200 {
		t.Fatalf("first use: %d %s", r.status, r.body)
	}
	now := h.now()
	cases := []struct {
		name   string
		proofs []string
		reason string
	}{
		{"replayed jti", []string{used}, "dpop_replay"},
		{"another method", []string{k.proof(t, "GET", url, tok, now, nil)}, "dpop_wrong_method"},
		{"method in lower case", []string{k.proof(t, "post", url, tok, now, nil)}, "dpop_wrong_method"},
		{"another path", []string{k.proof(t, "POST", "https://proxy.example/services/payments/restart", tok, now, nil)}, "dpop_wrong_url"},
		{"another host", []string{k.proof(t, "POST", "https://evil.example/services/checkout/restart", tok, now, nil)}, "dpop_wrong_url"},
		{"another scheme", []string{k.proof(t, "POST", "http://proxy.example/services/checkout/restart", tok, now, nil)}, "dpop_wrong_url"},
		{"another passport's ath", []string{k.proof(t, "POST", url, other, now, nil)}, "dpop_bad_ath"},
		{"no ath", []string{k.proof(t, "POST", url, tok, now, func(c, _ map[string]any) { delete(c, "ath") })}, "dpop_bad_ath"},
		{"iat too old", []string{k.proof(t, "POST", url, tok, now.Add(-2*time.Minute), nil)}, "dpop_stale"},
		{"iat in the future", []string{k.proof(t, "POST", url, tok, now.Add(time.Minute), nil)}, "dpop_stale"},
		{"iat as a string", []string{k.proof(t, "POST", url, tok, now, func(c, _ map[string]any) { c["iat"] = fmt.Sprint(now.Unix()) })}, "dpop_malformed"},
		{"no jti", []string{k.proof(t, "POST", url, tok, now, func(c, _ map[string]any) { delete(c, "jti") })}, "dpop_malformed"},
		{"alg none", []string{unsignedProof(k, "none", "POST", url, tok, now)}, "dpop_malformed"},
		{"alg HS256 keyed by the public key", []string{unsignedProof(k, "HS256", "POST", url, tok, now)}, "dpop_bad_alg"},
		{"typ JWT", []string{k.proof(t, "POST", url, tok, now, func(_, h map[string]any) { h["typ"] = "JWT" })}, "dpop_bad_typ"},
		{"private key in jwk", []string{k.proof(t, "POST", url, tok, now, func(_, h map[string]any) {
			h["jwk"] = jose.JSONWebKey{Key: k.key}
		})}, "dpop_bad_jwk"},
		{"jku", []string{k.proof(t, "POST", url, tok, now, func(_, h map[string]any) { h["jku"] = "https://evil.example/jwks" })}, "dpop_bad_jwk"},
		{"two proofs", []string{k.proof(t, "POST", url, tok, now, nil), k.proof(t, "POST", url, tok, now, nil)}, "dpop_malformed"},
		{"a passport as the proof", []string{tok}, "dpop_bad_typ"},
		{"garbage", []string{"not.a.proof"}, "dpop_malformed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := h.up.hits.Load()
			r := h.dpopDo("POST", "/services/checkout/restart", tok, tc.proofs...)
			if r.status != 401 || reasonOf(r) != tc.reason {
				t.Fatalf("got %d %q, want 401 %s (%s)", r.status, reasonOf(r), tc.reason, r.body)
			}
			if !strings.HasPrefix(challenge(r), `DPoP realm="passport", error="invalid_dpop_proof"`) {
				t.Fatalf("challenge %q", challenge(r))
			}
			if h.up.hits.Load() != before {
				t.Fatal("forwarded")
			}
		})
	}
	// The clock skew allowed is the proxy's leeway (5s here): a proof a
	// little ahead passes, one a little old too.
	for _, skew := range []time.Duration{4 * time.Second, -50 * time.Second} {
		p := k.proof(t, "POST", url, tok, h.now().Add(skew), nil)
		if r := h.dpopDo("POST", "/services/checkout/restart", tok, p); r.status != 200 {
			t.Fatalf("iat %v: %d %s", skew, r.status, r.body)
		}
	}
}

// TestDPoPReplayAcrossProxies: two proxies behind one name share a Redis;
// a proof used at one is refused at the other, and fifty concurrent
// presentations of one proof across both are forwarded once.
func TestDPoPReplayAcrossProxies(t *testing.T) {
	srv := redistest.Start(t)
	shared := func(c *Config) { c.ResourceURL = "https://proxies.example" }
	a := newHarnessWith(t, srv, shared)
	b := newHarnessWith(t, srv, shared, func(c *Config) { c.JWKSURL = a.keys.URL() })
	k := newProofKey(t, jose.EdDSA)
	_, tok := a.boundPassport(k)
	const url = "https://proxies.example/services/checkout"
	p := k.proof(t, "GET", url, tok, a.now(), nil)
	if r := a.dpopDo("GET", "/services/checkout", tok, p); r.status != 200 {
		t.Fatalf("proxy A: %d %s", r.status, r.body)
	}
	if r := b.dpopDo("GET", "/services/checkout", tok, p); r.status != 401 || reasonOf(r) != "dpop_replay" {
		t.Fatalf("proxy B, same proof: %d %q", r.status, reasonOf(r))
	}
	if r := b.dpopDo("GET", "/services/checkout", tok, k.proof(t, "GET", url, tok, a.now(), nil)); r.status != 200 {
		t.Fatalf("proxy B, fresh proof: %d %s", r.status, r.body)
	}

	// The record expires with the proof's window, no later.
	keys, err := srv.Client().Keys(t.Context(), "passport:dpop:jti:*").Result()
	if err != nil || len(keys) != 2 {
		t.Fatalf("replay keys: %v %v", keys, err)
	}
	if ttl := srv.Client().PTTL(t.Context(), keys[0]).Val(); ttl <= 0 || ttl > passport.DefaultDPoPMaxAge+DefaultLeeway {
		t.Fatalf("replay key TTL %v", ttl)
	}

	p = k.proof(t, "GET", url, tok, a.now(), nil)
	before := a.up.hits.Load() + b.up.hits.Load()
	results := make(chan int, 50)
	for i := range 50 {
		h := a
		if i%2 == 1 {
			h = b
		}
		go func() { results <- h.dpopDo("GET", "/services/checkout", tok, p).status }()
	}
	ok := 0
	for range 50 {
		if <-results == 200 {
			ok++
		}
	}
	if ok != 1 || a.up.hits.Load()+b.up.hits.Load() != before+1 {
		t.Fatalf("one proof, 50 presentations: %d allowed, %d forwarded", ok, a.up.hits.Load()+b.up.hits.Load()-before)
	}
}

// TestDPoPNonceRoute: on a route with dpop_nonce a proof needs a current
// server nonce: without one the agent gets 401 use_dpop_nonce and the
// nonce in DPoP-Nonce; every proxy sharing the Redis accepts it.
func TestDPoPNonceRoute(t *testing.T) {
	srv := redistest.Start(t)
	cfg := func(c *Config) {
		c.ResourceURL = "https://proxies.example"
		for i := range c.Routes {
			c.Routes[i].DPoPNonce = c.Routes[i].Action == "service.restart"
		}
	}
	a := newHarnessWith(t, srv, cfg)
	b := newHarnessWith(t, srv, cfg, func(c *Config) { c.JWKSURL = a.keys.URL() })
	k := newProofKey(t, jose.ES256)
	_, tok := a.boundPassport(k)
	const url = "https://proxies.example/services/checkout/restart"
	r := a.dpopDo("POST", "/services/checkout/restart", tok, k.proof(t, "POST", url, tok, a.now(), nil))
	nonce := r.header.Get("DPoP-Nonce")
	if r.status != 401 || reasonOf(r) != "dpop_nonce" || nonce == "" ||
		!strings.HasPrefix(challenge(r), `DPoP realm="passport", error="use_dpop_nonce"`) {
		t.Fatalf("no nonce: %d %q nonce %q %q", r.status, reasonOf(r), nonce, challenge(r))
	}
	withNonce := func(n string) func(c, _ map[string]any) { return func(c, _ map[string]any) { c["nonce"] = n } }
	if r := a.dpopDo("POST", "/services/checkout/restart", tok, k.proof(t, "POST", url, tok, a.now(), withNonce("made-up"))); r.status != 401 || reasonOf(r) != "dpop_nonce" {
		t.Fatalf("made-up nonce: %d %q", r.status, reasonOf(r))
	}
	r = b.dpopDo("POST", "/services/checkout/restart", tok, k.proof(t, "POST", url, tok, a.now(), withNonce(nonce)))
	if r.status != 200 || r.header.Get("DPoP-Nonce") == "" {
		t.Fatalf("A's nonce at B: %d %s (next nonce %q)", r.status, r.body, r.header.Get("DPoP-Nonce"))
	}
	// Other routes need none.
	if r := a.dpopDo("GET", "/services/checkout", tok, k.proof(t, "GET", "https://proxies.example/services/checkout", tok, a.now(), nil)); r.status != 200 {
		t.Fatalf("route without dpop_nonce: %d %s", r.status, r.body)
	}
}

// TestDPoPDelegatedAndBound: a delegated passport bound to the actor's key
// needs the actor's proof, and its records name the chain.
func TestDPoPDelegatedAndBound(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ResourceURL = "https://proxy.example" })
	h.agent("acme", "commander-1", 90)
	h.agent("acme", "healer-1", 90)
	actor, root := newProofKey(t, jose.EdDSA), newProofKey(t, jose.ES256)
	m, _ := delegated(h.now(), "acme", []chainLink{{"commander-1", passport.TrustHigh}, {"healer-1", passport.TrustHigh}}, "service.get")
	m["cnf"] = map[string]any{"jkt": actor.jkt}
	tok := joseSign(t, h.keys, mustJSON(m))
	const url = "https://proxy.example/services/checkout"
	if r := h.dpopDo("GET", "/services/checkout", tok, root.proof(t, "GET", url, tok, h.now(), nil)); r.status != 401 || reasonOf(r) != "dpop_key_mismatch" {
		t.Fatalf("the root's key: %d %q", r.status, reasonOf(r))
	}
	r := h.dpopDo("GET", "/services/checkout", tok, actor.proof(t, "GET", url, tok, h.now(), nil))
	if r.status != 200 {
		t.Fatalf("the actor's key: %d %s", r.status, r.body)
	}
	id := r.header.Get(HeaderXRequest)
	waitFor(t, "records", func() bool { return len(h.sink.byRequest(id)) == 2 })
	if rec := h.sink.byRequest(id)[0]; len(rec.Chain) != 2 || rec.Subject != "commander-1" {
		t.Fatalf("record: %+v", rec)
	}
}

// TestDPoPReplayStoreDown: with Redis unable to record a proof, the call
// is refused with 503, never allowed unrecorded.
func TestDPoPReplayStoreDown(t *testing.T) {
	srv := redistest.Start(t)
	h := newHarnessWith(t, srv, func(c *Config) { c.ResourceURL = "https://proxy.example" })
	k := newProofKey(t, jose.EdDSA)
	_, tok := h.boundPassport(k)
	if r := h.dpopDo("GET", "/services/checkout", tok, k.proof(t, "GET", "https://proxy.example/services/checkout", tok, h.now(), nil)); r.status != 200 {
		t.Fatalf("before: %d", r.status)
	}
	// The revocation sets stay fresh for a moment after the kill; the
	// replay write fails at once.
	srv.Kill()
	before := h.up.hits.Load()
	r := h.dpopDo("GET", "/services/checkout", tok, k.proof(t, "GET", "https://proxy.example/services/checkout", tok, h.now(), nil))
	if r.status != 503 || h.up.hits.Load() != before {
		t.Fatalf("redis down: %d, forwarded %d", r.status, h.up.hits.Load()-before)
	}
}

// TestDPoPStolenPassportFloodIsSummarised: a bound passport without its
// proof is no credential. A thief's calls (as Bearer, without a proof, on
// a path with no route) are counted in refusal summaries, not written one
// record per call into the owner's audit stream; the owner's own proven
// calls are recorded as always.
func TestDPoPStolenPassportFloodIsSummarised(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ResourceURL = "https://proxy.example" })
	k := newProofKey(t, jose.EdDSA)
	_, tok := h.boundPassport(k)
	var ids []string
	for range 10 {
		for _, r := range []resp{
			h.do("POST", "/services/checkout/restart", tok, nil, ""),
			h.dpopDo("POST", "/services/checkout/restart", tok),
			h.do("GET", "/no/such/route", tok, nil, ""),
		} {
			if r.status != 401 && r.status != 404 {
				t.Fatalf("stolen passport: %d %s", r.status, r.body)
			}
			ids = append(ids, r.header.Get(HeaderXRequest))
		}
	}
	h.p.refusals.Flush()
	for _, id := range ids {
		if recs := h.sink.byRequest(id); len(recs) > 0 {
			t.Fatalf("a refused call of a stolen passport got its own record: %+v", recs[0])
		}
	}
	counted := map[string]int{}
	for _, rec := range h.sink.all() {
		if rec.Kind == audit.KindRefusals {
			var sum audit.RefusalSummary
			if err := json.Unmarshal(rec.Details, &sum); err != nil {
				t.Fatal(err)
			}
			counted[sum.Reason] += sum.Count
		}
	}
	if counted["dpop_bound_as_bearer"] != 10 || counted["dpop_missing"] != 10 || counted["no_route"] != 10 {
		t.Fatalf("refusal summaries count %v, want 10 of each", counted)
	}
	// The owner, with its key: a policy denial is its own decision record.
	r := h.dpopDo("POST", "/services/payments/restart", tok, k.proof(t, "POST", "https://proxy.example/services/payments/restart", tok, h.now(), nil))
	if r.status != 403 {
		t.Fatalf("owner's denied call: %d %s", r.status, r.body)
	}
	waitFor(t, "the owner's decision record", func() bool { return len(h.sink.byRequest(r.header.Get(HeaderXRequest))) == 1 })
}
