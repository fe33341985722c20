package proxy

import (
	"context"
	"crypto/ed25519"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"

	"github.com/agentpassport/passport/passport"
	"github.com/agentpassport/passport/proxy/internal/testkeys"
)

// staticKeys is a keySource over fixed keys (no network in fuzzing).
type staticKeys map[string]jwkset.JWK

func (s staticKeys) key(_ context.Context, kid string) (jwkset.JWK, error) {
	if k, ok := s[kid]; ok {
		return k, nil
	}
	return jwkset.JWK{}, jwkset.ErrKeyNotFound
}

func (s staticKeys) ready(context.Context) bool { return len(s) > 0 }

func fuzzVerifier(f *testing.F) (*verifier, *testkeys.Keys, time.Time) {
	// No JWKS server here: the fuzz workers only need the key itself.
	keys := &testkeys.Keys{Ed: mustEd(f), EdKID: "ed-1"}
	jwk, err := jwkset.NewJWKFromKey(keys.Ed.Public(), jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: keys.EdKID, ALG: jwkset.AlgEdDSA, USE: jwkset.UseSig}})
	if err != nil {
		f.Fatal(err)
	}
	now := time.Unix(1_900_000_000, 0)
	cfg := testConfig("http://127.0.0.1:1", "http://127.0.0.1:1/jwks")
	cfg.fill()
	cfg.VerifyCacheSize = 0 // every input takes the strict path
	v, err := newVerifier(&cfg, staticKeys{keys.EdKID: jwk}, func() time.Time { return now })
	if err != nil {
		f.Fatal(err)
	}
	return v, keys, now
}

// FuzzVerify: the verifier never panics, refuses with an *AuthError, and
// accepts only tokens whose signature really verifies under the served key
// with the exact header the authority writes.
func FuzzVerify(f *testing.F) {
	v, keys, now := fuzzVerifier(f)
	good := keys.Sign(f, testkeys.Claims(now, "acme", "a1", "healer", passport.TrustHigh, "service.get"))
	f.Add(good)
	f.Add(good + "x")
	f.Add(strings.Replace(good, ".", "..", 1))
	f.Add("e30.e30.e30")
	f.Add("")
	f.Add(keys.SignRaw(f, `{"alg":"EdDSA","typ":"at+jwt","kid":"ed-1"}`, `{"iss":"x","iss":"y"}`, nil))
	f.Add(keys.SignRaw(f, `{"alg":"EdDSA","typ":"at+jwt","kid":"ed-1","crit":["b64"]}`, `{}`, nil))
	f.Fuzz(func(t *testing.T, tok string) {
		vp, err := v.verify(context.Background(), tok)
		if err != nil {
			var ae *AuthError
			if !errors.As(err, &ae) {
				t.Fatalf("refusal %v is not an *AuthError", err)
			}
			return
		}
		parts := strings.Split(tok, ".")
		if len(parts) != 3 {
			t.Fatalf("accepted a token with %d parts", len(parts))
		}
		sig, err := decodeSeg(parts[2])
		if err != nil || !ed25519.Verify(keys.Ed.Public().(ed25519.PublicKey), []byte(parts[0]+"."+parts[1]), sig) {
			t.Fatalf("accepted a token whose signature does not verify: %q", tok)
		}
		if vp.Claims.Tenant == "" || vp.Claims.ID == "" || vp.Exp.Sub(now) <= -v.cfg.Leeway {
			t.Fatalf("accepted incomplete claims %+v", vp.Claims)
		}
	})
}

func decodeSeg(s string) ([]byte, error) { return b64Strict.DecodeString(s) }

// FuzzRoute: normalisation never panics; what it accepts is canonical
// (idempotent, no empty or dot segments, no encoded separators) and, when
// a route matches, the template filled with the params is that same path.
func FuzzRoute(f *testing.F) {
	cfg := testConfig("http://127.0.0.1:1", "http://127.0.0.1:1/jwks")
	cfg.fill()
	var routes []*route
	for _, rc := range cfg.Routes {
		tpl, err := parseTemplate(rc.Match)
		if err != nil {
			f.Fatal(err)
		}
		routes = append(routes, &route{Route: rc, tpl: tpl})
	}
	rt := newRouter(routes)
	for _, s := range []string{"/services/checkout/restart", "/services/a%2fb/restart", "/services/../x", "//x", "/services/checkout/restart/",
		"/a;b", "/%2e", "/services/%zz", "/services/é/restart", "/"} {
		f.Add("POST", s)
	}
	f.Fuzz(func(t *testing.T, method, target string) {
		u, err := url.ParseRequestURI(target)
		if err != nil {
			return
		}
		p, segs, err := normalisePath(u)
		if err != nil {
			return
		}
		if strings.Contains(p, "//") || strings.Contains(p+"/", "/./") || strings.Contains(p+"/", "/../") || strings.ContainsAny(p, "\\;\x00") ||
			(len(p) > 1 && strings.HasSuffix(p, "/")) {
			t.Fatalf("accepted non-canonical path %q from %q", p, target)
		}
		u2 := &url.URL{Path: p}
		p2, _, err := normalisePath(u2)
		if err != nil || p2 != p {
			t.Fatalf("not idempotent: %q -> %q (%v)", p, p2, err)
		}
		r, params := rt.match(method, segs)
		if r == nil {
			return
		}
		var b strings.Builder
		for _, s := range r.tpl.segs {
			b.WriteByte('/')
			if s.param != "" {
				b.WriteString(params[s.param])
			} else {
				b.WriteString(s.lit)
			}
		}
		if b.String() != p {
			t.Fatalf("route %s rebuilt %q, path was %q", r.Match, b.String(), p)
		}
	})
}
