package passport

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
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// memReplay is an in-memory replay record for the verifier's unit tests;
// the Redis record is tested against a real Redis in package authority.
type memReplay struct {
	mu   sync.Mutex
	seen map[string]time.Duration
	err  error
}

func (m *memReplay) check(_ context.Context, key string, ttl time.Duration) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return false, m.err
	}
	if m.seen == nil {
		m.seen = map[string]time.Duration{}
	}
	if _, ok := m.seen[key]; ok {
		return false, nil
	}
	m.seen[key] = ttl
	return true, nil
}

// proofMaker signs DPoP proofs with go-jose, a JOSE implementation
// independent of the verifier.
type proofMaker struct {
	t    testing.TB
	key  crypto.Signer
	alg  jose.SignatureAlgorithm
	now  time.Time
	jkt  string
	jose jose.JSONWebKey
}

func newProofMaker(t testing.TB, alg jose.SignatureAlgorithm, now time.Time) *proofMaker {
	t.Helper()
	var key crypto.Signer
	switch alg {
	case jose.EdDSA:
		_, k, _ := ed25519.GenerateKey(rand.Reader)
		key = k
	case jose.ES256:
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		key = k
	}
	pm := &proofMaker{t: t, key: key, alg: alg, now: now, jose: jose.JSONWebKey{Key: key.Public()}}
	tp, err := pm.jose.Thumbprint(crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	pm.jkt = base64.RawURLEncoding.EncodeToString(tp)
	return pm
}

// sign signs claims with extra (or replaced) header members; EmbedJWK
// puts the public key in jwk unless extra names its own.
func (pm *proofMaker) sign(claims map[string]any, hdr map[string]any) string {
	pm.t.Helper()
	opts := (&jose.SignerOptions{EmbedJWK: true}).WithType(DPoPProofType)
	for k, v := range hdr {
		opts = opts.WithHeader(jose.HeaderKey(k), v)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: pm.alg, Key: pm.key}, opts)
	if err != nil {
		pm.t.Fatal(err)
	}
	b, _ := json.Marshal(claims)
	obj, err := s.Sign(b)
	if err != nil {
		pm.t.Fatal(err)
	}
	out, err := obj.CompactSerialize()
	if err != nil {
		pm.t.Fatal(err)
	}
	return out
}

func (pm *proofMaker) claims(method, u string) map[string]any {
	return map[string]any{"jti": randomTestID(), "htm": method, "htu": u, "iat": pm.now.Unix()}
}

func randomTestID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func newDPoPVerifier(t *testing.T, now *time.Time, rp *memReplay) *DPoPVerifier {
	t.Helper()
	v, err := NewDPoPVerifier(DPoPConfig{MaxAge: time.Minute, Leeway: 5 * time.Second, Clock: func() time.Time { return *now }, Replay: rp.check})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

const tokenURL = "https://authority.test/oauth2/token"

// Every rule of RFC 9449 §4.3, with proofs made by go-jose.
func TestDPoPProofRules(t *testing.T) {
	for _, alg := range []jose.SignatureAlgorithm{jose.EdDSA, jose.ES256} {
		t.Run(string(alg), func(t *testing.T) {
			now := time.Unix(1_900_000_000, 0)
			rp := &memReplay{}
			v := newDPoPVerifier(t, &now, rp)
			pm := newProofMaker(t, alg, now)
			ctx := context.Background()
			atReq := DPoPRequest{Method: "POST", URL: tokenURL}

			good := pm.sign(pm.claims("POST", tokenURL), nil)
			p, err := v.Verify(ctx, good, atReq)
			if err != nil {
				t.Fatalf("genuine proof: %v", err)
			}
			if p.JKT != pm.jkt {
				t.Fatalf("thumbprint %s, go-jose says %s", p.JKT, pm.jkt)
			}
			if _, err := v.Verify(ctx, good, atReq); !errors.Is(err, ErrDPoPReplay) {
				t.Fatalf("replayed proof: %v", err)
			}

			_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
			privJWK := jose.JSONWebKey{Key: pm.key}
			otherAlg := map[jose.SignatureAlgorithm]string{jose.EdDSA: AlgES256, jose.ES256: AlgEdDSA}[alg]
			tok := "a-passport"
			with := func(mut func(m map[string]any)) map[string]any {
				c := pm.claims("POST", tokenURL)
				mut(c)
				return c
			}
			cases := []struct {
				name  string
				proof string
				req   DPoPRequest
				want  error
			}{
				{"empty", "", atReq, ErrDPoPMissing},
				{"not a JWT", "abc", atReq, ErrDPoPMalformed},
				{"too large", strings.Repeat("a", MaxDPoPProofBytes+1), atReq, ErrDPoPMalformed},
				{"another method", pm.sign(pm.claims("GET", tokenURL), nil), atReq, ErrDPoPMethod},
				{"method in lower case", pm.sign(pm.claims("post", tokenURL), nil), atReq, ErrDPoPMethod},
				{"another URL", pm.sign(pm.claims("POST", "https://authority.test/oauth2/introspect"), nil), atReq, ErrDPoPURL},
				{"another host", pm.sign(pm.claims("POST", "https://evil.test/oauth2/token"), nil), atReq, ErrDPoPURL},
				{"http instead of https", pm.sign(pm.claims("POST", "http://authority.test/oauth2/token"), nil), atReq, ErrDPoPURL},
				{"encoded slash", pm.sign(pm.claims("POST", "https://authority.test/oauth2%2Ftoken"), nil), atReq, ErrDPoPURL},
				{"user info", pm.sign(pm.claims("POST", "https://x@authority.test/oauth2/token"), nil), atReq, ErrDPoPURL},
				{"no htu", pm.sign(with(func(m map[string]any) { delete(m, "htu") }), nil), atReq, ErrDPoPURL},
				{"no htm", pm.sign(with(func(m map[string]any) { delete(m, "htm") }), nil), atReq, ErrDPoPMethod},
				{"no jti", pm.sign(with(func(m map[string]any) { delete(m, "jti") }), nil), atReq, ErrDPoPMalformed},
				{"jti too long", pm.sign(with(func(m map[string]any) { m["jti"] = strings.Repeat("j", 257) }), nil), atReq, ErrDPoPMalformed},
				{"no iat", pm.sign(with(func(m map[string]any) { delete(m, "iat") }), nil), atReq, ErrDPoPMalformed},
				{"iat as a string", pm.sign(with(func(m map[string]any) { m["iat"] = "1900000000" }), nil), atReq, ErrDPoPMalformed},
				{"old iat", pm.sign(with(func(m map[string]any) { m["iat"] = now.Add(-61 * time.Second).Unix() }), nil), atReq, ErrDPoPTime},
				{"future iat", pm.sign(with(func(m map[string]any) { m["iat"] = now.Add(6 * time.Second).Unix() }), nil), atReq, ErrDPoPTime},
				{"ath at the token endpoint", pm.sign(with(func(m map[string]any) { m["ath"] = AccessTokenHash("x") }), nil), atReq, ErrDPoPATH},
				{"no ath with a token", pm.sign(pm.claims("GET", "https://proxy.test/services"), nil),
					DPoPRequest{Method: "GET", URL: "https://proxy.test/services", AccessToken: tok}, ErrDPoPATH},
				{"wrong ath", pm.sign(with(func(m map[string]any) {
					m["htm"], m["htu"], m["ath"] = "GET", "https://proxy.test/services", AccessTokenHash("another-passport")
				}), nil), DPoPRequest{Method: "GET", URL: "https://proxy.test/services", AccessToken: tok}, ErrDPoPATH},
				{"typ JWT", pm.sign(pm.claims("POST", tokenURL), map[string]any{"typ": "JWT"}), atReq, ErrDPoPType},
				{"typ in upper case", pm.sign(pm.claims("POST", tokenURL), map[string]any{"typ": "DPOP+JWT"}), atReq, ErrDPoPType},
				{"typ at+jwt", pm.sign(pm.claims("POST", tokenURL), map[string]any{"typ": TokenType}), atReq, ErrDPoPType},
				{"private key in jwk", pm.sign(pm.claims("POST", tokenURL), map[string]any{"jwk": privJWK}), atReq, ErrDPoPKey},
				{"another key in jwk", pm.sign(pm.claims("POST", tokenURL), map[string]any{"jwk": jose.JSONWebKey{Key: otherKey.Public()}}),
					atReq, map[jose.SignatureAlgorithm]error{jose.EdDSA: ErrDPoPSignature, jose.ES256: ErrDPoPAlgorithm}[alg]},
				{"jwk alg disagrees", pm.sign(pm.claims("POST", tokenURL), map[string]any{"jwk": jose.JSONWebKey{Key: pm.key.Public(), Algorithm: otherAlg}}), atReq, ErrDPoPAlgorithm},
				{"jwk for encryption", pm.sign(pm.claims("POST", tokenURL), map[string]any{"jwk": jose.JSONWebKey{Key: pm.key.Public(), Use: "enc"}}), atReq, ErrDPoPKey},
				{"no jwk", pm.sign(pm.claims("POST", tokenURL), map[string]any{"jwk": nil}), atReq, ErrDPoPKey},
				{"jku", pm.sign(pm.claims("POST", tokenURL), map[string]any{"jku": "https://evil.test/jwks"}), atReq, ErrDPoPKey},
				{"x5c", pm.sign(pm.claims("POST", tokenURL), map[string]any{"x5c": []string{"MIIB"}}), atReq, ErrDPoPKey},
				{"crit", pm.sign(pm.claims("POST", tokenURL), map[string]any{"crit": []string{"x"}, "x": 1}), atReq, ErrDPoPMalformed},
				{"tampered signature", tamper(pm.sign(pm.claims("POST", tokenURL), nil)), atReq, ErrDPoPSignature},
				{"bound to another key", pm.sign(pm.claims("GET", "https://proxy.test/services"), nil),
					DPoPRequest{Method: "GET", URL: "https://proxy.test/services", JKT: strings.Repeat("A", 43)}, ErrDPoPBinding},
				{"nonce required, none sent", pm.sign(pm.claims("POST", tokenURL), nil),
					DPoPRequest{Method: "POST", URL: tokenURL, Nonce: func(string) bool { return true }}, ErrDPoPNonce},
				{"nonce refused", pm.sign(with(func(m map[string]any) { m["nonce"] = "stale" }), nil),
					DPoPRequest{Method: "POST", URL: tokenURL, Nonce: func(n string) bool { return n == "fresh" }}, ErrDPoPNonce},
			}
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					before := len(rp.seen)
					_, err := v.Verify(ctx, tc.proof, tc.req)
					if !errors.Is(err, tc.want) {
						t.Fatalf("got %v, want %v", err, tc.want)
					}
					var ae *AuthError
					if !errors.As(err, &ae) || ae.Code == "" || ae.Reason == "" {
						t.Fatalf("refusal %v is not a complete *AuthError", err)
					}
					if len(rp.seen) != before {
						t.Fatal("a refused proof was recorded as used")
					}
					// v remembers the genuine proof's header; a verifier
					// that has seen none reads it afresh, to the same end.
					if _, err := newDPoPVerifier(t, &now, &memReplay{}).Verify(ctx, tc.proof, tc.req); !errors.Is(err, tc.want) {
						t.Fatalf("with no header remembered: got %v, want %v", err, tc.want)
					}
				})
			}

			// Accepted: a proof for a proxied call with ath and the bound
			// key, a nonce, an equivalent spelling of the URL, the edges
			// of the iat window.
			for _, tc := range []struct {
				name  string
				proof string
				req   DPoPRequest
			}{
				{"ath and cnf", pm.sign(with(func(m map[string]any) {
					m["htm"], m["htu"], m["ath"] = "GET", "https://proxy.test/services", AccessTokenHash(tok)
				}), nil), DPoPRequest{Method: "GET", URL: "https://proxy.test/services", AccessToken: tok, JKT: pm.jkt}},
				{"nonce", pm.sign(with(func(m map[string]any) { m["nonce"] = "fresh" }), nil),
					DPoPRequest{Method: "POST", URL: tokenURL, Nonce: func(n string) bool { return n == "fresh" }}},
				{"URL spelt otherwise", pm.sign(pm.claims("POST", "HTTPS://Authority.TEST:443/oauth2/%74oken?x=1#f"), nil), atReq},
				{"oldest iat", pm.sign(with(func(m map[string]any) { m["iat"] = now.Add(-time.Minute).Unix() }), nil), atReq},
				{"iat within leeway", pm.sign(with(func(m map[string]any) { m["iat"] = now.Add(5 * time.Second).Unix() }), nil), atReq},
				{"unknown claim ignored", pm.sign(with(func(m map[string]any) { m["x_note"] = 1 }), nil), atReq},
			} {
				t.Run("accepts "+tc.name, func(t *testing.T) {
					if _, err := v.Verify(ctx, tc.proof, tc.req); err != nil {
						t.Fatalf("refused: %v", err)
					}
				})
			}
		})
	}
}

// The replay record lives as long as the proof would be accepted, on any
// replica whose clock is within the leeway; a failing record fails closed.
func TestDPoPReplayRecord(t *testing.T) {
	now := time.Unix(1_900_000_000, 0)
	rp := &memReplay{}
	v := newDPoPVerifier(t, &now, rp)
	pm := newProofMaker(t, jose.EdDSA, now)
	c := pm.claims("POST", tokenURL)
	c["iat"] = now.Add(-20 * time.Second).Unix()
	if _, err := v.Verify(context.Background(), pm.sign(c, nil), DPoPRequest{Method: "POST", URL: tokenURL}); err != nil {
		t.Fatal(err)
	}
	key := DPoPReplayKey(pm.jkt, c["jti"].(string))
	if ttl := rp.seen[key]; ttl != 45*time.Second {
		t.Fatalf("record ttl %v, want 45s (iat + max age + leeway - now)", ttl)
	}
	// The same jti under another key is another proof.
	other := newProofMaker(t, jose.EdDSA, now)
	if DPoPReplayKey(other.jkt, c["jti"].(string)) == key {
		t.Fatal("replay key not scoped by the proof key")
	}
	rp.err = errors.New("redis down")
	_, err := v.Verify(context.Background(), pm.sign(pm.claims("POST", tokenURL), nil), DPoPRequest{Method: "POST", URL: tokenURL})
	var ae *AuthError
	if err == nil || errors.As(err, &ae) {
		t.Fatalf("replay store down: %v, want a plain error (the caller answers 503)", err)
	}
}

func tamper(tok string) string {
	i := strings.LastIndexByte(tok, '.')
	sig, _ := base64.RawURLEncoding.DecodeString(tok[i+1:])
	sig[len(sig)-1] ^= 1
	return tok[:i+1] + base64.RawURLEncoding.EncodeToString(sig)
}

// The thumbprint equals go-jose's RFC 7638 thumbprint, and RFC 8037's
// worked example (Appendix A.3).
func TestJWKThumbprint(t *testing.T) {
	x, _ := base64.RawURLEncoding.DecodeString("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
	got, err := JWKThumbprint(ed25519.PublicKey(x))
	if err != nil || got != "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k" {
		t.Fatalf("RFC 8037 A.3 thumbprint: %q %v", got, err)
	}
	for range 20 {
		ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader) // some with short coordinates
		want, _ := (&jose.JSONWebKey{Key: &ec.PublicKey}).Thumbprint(crypto.SHA256)
		got, err := JWKThumbprint(&ec.PublicKey)
		if err != nil || got != base64.RawURLEncoding.EncodeToString(want) {
			t.Fatalf("P-256 thumbprint %q, go-jose %x: %v", got, want, err)
		}
	}
	ec384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if _, err := JWKThumbprint(&ec384.PublicKey); err == nil {
		t.Fatal("P-384 key accepted")
	}
	if !ValidThumbprint(got) || ValidThumbprint(got+"A") || ValidThumbprint(strings.Repeat("+", 43)) {
		t.Fatal("ValidThumbprint")
	}
}

func TestNormalizeHTU(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"https://a.test/x", "https://a.test/x"},
		{"HTTPS://A.Test:443/x?q#f", "https://a.test/x"},
		{"http://a.test:80", "http://a.test/"},
		{"http://a.test:8080/%7euser/%2f", "http://a.test:8080/~user/%2F"},
		{"http://[::1]:9/p", "http://[::1]:9/p"},
		{"ftp://a.test/x", ""},
		{"/relative", ""},
		{"https://u:p@a.test/", ""},
		{"https://a.test/%zz", ""},
	} {
		got, ok := NormalizeHTU(tc.in)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("NormalizeHTU(%q) = %q, %v; want %q", tc.in, got, ok, tc.want)
		}
	}
}

func TestDPoPNonces(t *testing.T) {
	now := time.Unix(1_900_000_000, 0)
	secret := []byte(strings.Repeat("s", 32))
	n, err := NewDPoPNonces(secret, time.Minute, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	other, _ := NewDPoPNonces([]byte(strings.Repeat("o", 32)), time.Minute, func() time.Time { return now })
	cur := n.Current()
	if !n.Valid(cur) || other.Valid(cur) || n.Valid("") || n.Valid(cur[1:]) {
		t.Fatal("nonce validity")
	}
	now = now.Add(time.Minute)
	if !n.Valid(cur) {
		t.Fatal("the previous period's nonce is refused")
	}
	now = now.Add(time.Minute)
	if n.Valid(cur) {
		t.Fatal("a nonce two periods old is accepted")
	}
	if _, err := NewDPoPNonces([]byte("short"), time.Minute, nil); err == nil {
		t.Fatal("short secret accepted")
	}
}

func TestDPoPVerifierConfig(t *testing.T) {
	rp := (&memReplay{}).check
	for _, cfg := range []DPoPConfig{
		{},
		{Replay: rp, MaxAge: time.Hour},
		{Replay: rp, Leeway: time.Hour},
	} {
		if _, err := NewDPoPVerifier(cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
}

// FuzzDPoPVerify: the proof verifier never panics, refuses with an
// *AuthError, and accepts only a proof its key signed for this request.
func FuzzDPoPVerify(f *testing.F) {
	now := time.Unix(1_900_000_000, 0)
	pm := newProofMaker(f, jose.ES256, now)
	good := pm.sign(pm.claims("POST", tokenURL), nil)
	f.Add(good)
	f.Add(good + "x")
	f.Add(strings.Replace(good, ".", "..", 1))
	f.Add("e30.e30.e30")
	f.Add("")
	f.Fuzz(func(t *testing.T, proof string) {
		rp := &memReplay{}
		v := newDPoPVerifier(t, &now, rp)
		p, err := v.Verify(context.Background(), proof, DPoPRequest{Method: "POST", URL: tokenURL})
		if err != nil {
			var ae *AuthError
			if !errors.As(err, &ae) || ae.Reason == "" || ae.Code == "" {
				t.Fatalf("refusal %v is not an *AuthError", err)
			}
			return
		}
		if p.JKT == "" || p.JTI == "" || !ValidThumbprint(p.JKT) {
			t.Fatalf("accepted an incomplete proof %+v", p)
		}
	})
}

// BenchmarkDPoPVerify: one proof verification (the replay record is in
// memory here; at a proxy it is one SET NX round trip to Redis).
func BenchmarkDPoPVerify(b *testing.B) {
	for _, alg := range []jose.SignatureAlgorithm{jose.ES256, jose.EdDSA} {
		b.Run(string(alg), func(b *testing.B) {
			now := time.Unix(1_900_000_000, 0)
			pm := newProofMaker(b, alg, now)
			v, err := NewDPoPVerifier(DPoPConfig{Clock: func() time.Time { return now },
				Replay: func(context.Context, string, time.Duration) (bool, error) { return true, nil }})
			if err != nil {
				b.Fatal(err)
			}
			c := pm.claims("GET", "https://proxy.test/services")
			c["ath"] = AccessTokenHash("a-passport")
			proof := pm.sign(c, nil)
			req := DPoPRequest{Method: "GET", URL: "https://proxy.test/services", AccessToken: "a-passport", JKT: pm.jkt}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Verify(context.Background(), proof, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// The remembered proof headers stay bounded however many keys show up.
func TestDPoPHeadersBounded(t *testing.T) {
	now := time.Unix(1_900_000_000, 0)
	v := newDPoPVerifier(t, &now, &memReplay{})
	for i := range maxProofHeaders + 10 {
		v.remember(strconv.Itoa(i), &proofHeader{})
	}
	n := 0
	v.headers.Range(func(any, any) bool { n++; return true })
	if n > maxProofHeaders || v.nHeaders.Load() != int64(n) {
		t.Fatalf("%d headers remembered (count %d), want at most %d", n, v.nHeaders.Load(), maxProofHeaders)
	}
}
