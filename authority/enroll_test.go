package authority

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/config"
	"github.com/agentpassport/passport/passport"
)

// The tests below forge and sign external tokens with go-jose, a JOSE
// implementation independent of the golang-jwt code that verifies them.

const testEnrollAud = "https://passport.test"

var (
	rsaOnce sync.Once
	rsaKey  *rsa.PrivateKey
)

// testRSAKey is generated once per test binary (RSA generation is slow).
func testRSAKey() *rsa.PrivateKey {
	rsaOnce.Do(func() {
		var err error
		if rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
	})
	return rsaKey
}

// testIdP is an external issuer: an RSA key (RS256, kid "rsa-1") and a
// P-256 key (ES256, kid "ec-1"), published in a JWKS file.
type testIdP struct {
	t      testing.TB
	issuer string
	rsa    *rsa.PrivateKey
	ec     *ecdsa.PrivateKey
	jwks   string // path of the JWKS file
}

func newIdP(t testing.TB, issuer string) *testIdP {
	t.Helper()
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p := &testIdP{t: t, issuer: issuer, rsa: testRSAKey(), ec: ec, jwks: filepath.Join(t.TempDir(), "jwks.json")}
	p.publish(p.jwksDoc())
	return p
}

func (p *testIdP) jwksDoc() []byte {
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: &p.rsa.PublicKey, KeyID: "rsa-1", Algorithm: "RS256", Use: "sig"},
		{Key: &p.ec.PublicKey, KeyID: "ec-1", Algorithm: "ES256", Use: "sig"},
	}}
	b, err := json.Marshal(set)
	if err != nil {
		p.t.Fatal(err)
	}
	return b
}

func (p *testIdP) publish(doc []byte) {
	if err := os.WriteFile(p.jwks, doc, 0o600); err != nil {
		p.t.Fatal(err)
	}
}

// claims are valid claims for sub at now: ten minutes, a jti.
func (p *testIdP) claims(now time.Time, sub string) map[string]any {
	return map[string]any{
		"iss": p.issuer, "sub": sub, "aud": []string{testEnrollAud},
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(),
		"jti": randomID(8),
	}
}

// sign signs payload with go-jose.
func (p *testIdP) sign(alg jose.SignatureAlgorithm, key any, hdr map[jose.HeaderKey]any, payload []byte) string {
	p.t.Helper()
	opts := &jose.SignerOptions{}
	for k, v := range hdr {
		opts = opts.WithHeader(k, v)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		p.t.Fatal(err)
	}
	jws, err := s.Sign(payload)
	if err != nil {
		p.t.Fatal(err)
	}
	out, err := jws.CompactSerialize()
	if err != nil {
		p.t.Fatal(err)
	}
	return out
}

// token signs claims with the RSA key (RS256, kid rsa-1, typ JWT).
func (p *testIdP) token(claims map[string]any) string {
	p.t.Helper()
	b, err := json.Marshal(claims)
	if err != nil {
		p.t.Fatal(err)
	}
	return p.sign(jose.RS256, p.rsa, map[jose.HeaderKey]any{"kid": "rsa-1", "typ": "JWT"}, b)
}

// ecToken signs claims with the P-256 key (ES256, kid ec-1).
func (p *testIdP) ecToken(claims map[string]any) string {
	b, _ := json.Marshal(claims)
	return p.sign(jose.ES256, p.ec, map[jose.HeaderKey]any{"kid": "ec-1"}, b)
}

func k8sIssuer(p *testIdP, rules ...EnrollRule) TrustedIssuer {
	return TrustedIssuer{Name: "k8s", Issuer: p.issuer, Kind: IssuerKindKubernetes, JWKSFile: p.jwks, Audiences: []string{testEnrollAud}, Rules: rules}
}

func registerRule(subject, tenant string, trust passport.TrustLevel) EnrollRule {
	return EnrollRule{Subject: subject, Tenant: tenant, Register: &EnrollRegister{Type: passport.TypeObserver, TrustCeiling: trust}}
}

type enrollAnswer struct {
	status int
	err    client.OAuthError
	tok    client.TokenResponse
	claims passport.Claims
}

// enroll presents assertion with the JWT-bearer grant and verifies any
// passport it gets with go-jose against the published JWKS.
func (e *env) enroll(assertion string, extra url.Values) enrollAnswer {
	e.t.Helper()
	form := url.Values{"grant_type": {GrantTypeJWTBearer}, "assertion": {assertion}}
	for k, v := range extra {
		form[k] = v
	}
	resp, body := e.postForm("/oauth2/token", form, "", "")
	ans := enrollAnswer{status: resp.StatusCode}
	if resp.StatusCode != http.StatusOK {
		if err := json.Unmarshal(body, &ans.err); err != nil {
			e.t.Fatalf("error body %s: %v", body, err)
		}
		return ans
	}
	if err := json.Unmarshal(body, &ans.tok); err != nil {
		e.t.Fatal(err)
	}
	c, err := verifyGoJose(e.t, ans.tok.AccessToken, e.fetchJWKS())
	if err != nil {
		e.t.Fatalf("passport does not verify with go-jose: %v", err)
	}
	ans.claims = c
	return ans
}

func (e *env) enrolledAgents(tenant string) []client.Agent {
	e.t.Helper()
	all, err := e.admin.ListAgents(context.Background(), tenant)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []client.Agent
	for _, a := range all {
		if a.Enrollment != nil {
			out = append(out, a)
		}
	}
	return out
}

// A Kubernetes service account that matches a register rule gets an agent
// on first use, the same agent afterwards, and passports capped by the
// rule's ceiling and by its token's expiry.
func TestEnrollKubernetesRegistersOnFirstUse(t *testing.T) {
	p := newIdP(t, "https://kubernetes.test")
	e := newEnv(t, func(c *Config) {
		c.TrustedIssuers = []TrustedIssuer{k8sIssuer(p, registerRule("system:serviceaccount:acme:*", "acme", passport.TrustMedium))}
	}, nil, nil)
	now := e.clock.Now()
	claims := p.claims(now, "system:serviceaccount:acme:inventory")
	claims["exp"] = now.Add(2 * time.Minute).Unix() // shorter than a passport
	claims["kubernetes.io"] = map[string]any{"namespace": "acme", "serviceaccount": map[string]any{"name": "inventory", "uid": "u-1"}}
	tok := p.token(claims)

	first := e.enroll(tok, nil)
	if first.status != http.StatusOK {
		t.Fatalf("enroll: %d %+v", first.status, first.err)
	}
	c := first.claims
	if c.Tenant != "acme" || c.Agent.Type != passport.TypeObserver || c.Agent.TrustLevel != passport.TrustMedium || c.Issuer != e.a.cfg.Issuer {
		t.Fatalf("passport claims: %+v", c)
	}
	if c.ExpiresAt.Unix() > now.Add(2*time.Minute).Unix() {
		t.Fatalf("passport exp %v outlives the token's %v", c.ExpiresAt.Time, now.Add(2*time.Minute))
	}
	agents := e.enrolledAgents("acme")
	if len(agents) != 1 || agents[0].ID != c.Subject || agents[0].Enrollment.Subject != "system:serviceaccount:acme:inventory" ||
		agents[0].Enrollment.Issuer != "k8s" || agents[0].TrustLevel != passport.TrustMedium {
		t.Fatalf("enrolled agents: %+v", agents)
	}
	if !strings.HasPrefix(agents[0].Name, "acme.inventory-") {
		t.Fatalf("name %q", agents[0].Name)
	}

	// Kubernetes tokens are reused until the kubelet refreshes them.
	again := e.enroll(tok, nil)
	if again.status != http.StatusOK || again.claims.Subject != c.Subject {
		t.Fatalf("second use: %d %+v sub %s", again.status, again.err, again.claims.Subject)
	}
	if n := len(e.enrolledAgents("acme")); n != 1 {
		t.Fatalf("%d enrolled agents, want 1", n)
	}
	recs := e.sink.kinds(audit.KindAgentEnrolled)
	if len(recs) != 1 || recs[0].AgentID != c.Subject || !strings.Contains(string(recs[0].Details), "system:serviceaccount:acme:inventory") {
		t.Fatalf("audit records: %+v", recs)
	}
	if got := counter(t, e.reg, "passport_authority_enrollments_total", "issuer", "k8s", "result", "registered"); got != 1 {
		t.Fatalf("registered = %v", got)
	}
	if got := counter(t, e.reg, "passport_authority_enrollments_total", "issuer", "k8s", "result", "enrolled"); got != 1 {
		t.Fatalf("enrolled = %v", got)
	}
	// An enrolled agent has no client secret to fall back on.
	resp, _ := e.postForm("/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, c.Subject, "")
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("client credentials for an enrolled agent: %d", resp.StatusCode)
	}
}

// Every way of bending the token is refused with invalid_grant, registers
// nothing, and is counted with a bounded reason.
func TestEnrollRefusesForgedTokens(t *testing.T) {
	p := newIdP(t, "https://kubernetes.test")
	e := newEnv(t, func(c *Config) {
		c.TrustedIssuers = []TrustedIssuer{k8sIssuer(p, registerRule("system:serviceaccount:acme:*", "acme", passport.TrustLow))}
	}, nil, nil)
	now := e.clock.Now()
	sub := "system:serviceaccount:acme:inventory"
	with := func(mod func(map[string]any)) string {
		c := p.claims(now, sub)
		mod(c)
		return p.token(c)
	}
	enc := base64.RawURLEncoding.EncodeToString
	valid := p.claims(now, sub)
	validJSON, _ := json.Marshal(valid)
	pubDER, _ := x509.MarshalPKIXPublicKey(&p.rsa.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	other := newIdP(t, "https://kubernetes.test") // same issuer name, other keys

	cases := []struct {
		name, token, reason string
	}{
		{"wrong issuer", with(func(c map[string]any) { c["iss"] = "https://kubernetes.test/" }), "unknown_issuer"},
		{"wrong audience", with(func(c map[string]any) { c["aud"] = []string{"https://other.test"} }), "bad_audience"},
		{"no audience", with(func(c map[string]any) { delete(c, "aud") }), "bad_audience"},
		{"expired", with(func(c map[string]any) {
			c["iat"], c["nbf"], c["exp"] = now.Add(-20*time.Minute).Unix(), now.Add(-20*time.Minute).Unix(), now.Add(-time.Second).Unix()
		}), "expired"},
		{"no exp", with(func(c map[string]any) { delete(c, "exp") }), "bad_claims"},
		{"no iat", with(func(c map[string]any) { delete(c, "iat") }), "bad_claims"},
		{"exp as a string", with(func(c map[string]any) { c["exp"] = "9999999999" }), "bad_claims"},
		{"too long-lived", with(func(c map[string]any) { c["exp"] = now.Add(2 * time.Hour).Unix() }), "lifetime_too_long"},
		{"issued in the future", with(func(c map[string]any) { c["iat"] = now.Add(time.Minute).Unix() }), "not_yet_valid"},
		{"not yet valid", with(func(c map[string]any) { c["nbf"] = now.Add(time.Minute).Unix() }), "not_yet_valid"},
		{"subject of another shape", with(func(c map[string]any) { c["sub"] = "system:serviceaccount:acme" }), "bad_subject"},
		{"kubernetes.io disagrees with sub", with(func(c map[string]any) {
			c["kubernetes.io"] = map[string]any{"namespace": "other"}
		}), "bad_subject"},
		{"alg none", enc([]byte(`{"alg":"none","kid":"rsa-1"}`)) + "." + enc(validJSON) + ".", "malformed"},
		{"alg none with a signature", enc([]byte(`{"alg":"none","kid":"rsa-1"}`)) + "." + enc(validJSON) + "." + enc([]byte("x")), "bad_algorithm"},
		{"HS256 with the public key as secret", p.sign(jose.HS256, pubPEM, map[jose.HeaderKey]any{"kid": "rsa-1"}, validJSON), "bad_algorithm"},
		{"HS256 with the JWK modulus as secret", p.sign(jose.HS256, p.rsa.N.Bytes(), map[jose.HeaderKey]any{"kid": "rsa-1"}, validJSON), "bad_algorithm"},
		{"unknown kid", p.sign(jose.RS256, p.rsa, map[jose.HeaderKey]any{"kid": "rsa-2"}, validJSON), "unknown_key"},
		{"no kid", p.sign(jose.RS256, p.rsa, nil, validJSON), "bad_header"},
		{"jku header", p.sign(jose.RS256, p.rsa, map[jose.HeaderKey]any{"kid": "rsa-1", "jku": "https://evil.test/jwks"}, validJSON), "bad_header"},
		{"x5u header", p.sign(jose.RS256, p.rsa, map[jose.HeaderKey]any{"kid": "rsa-1", "x5u": "https://evil.test/cert"}, validJSON), "bad_header"},
		{"embedded jwk", p.sign(jose.RS256, other.rsa, map[jose.HeaderKey]any{"kid": "rsa-1", "jwk": map[string]any{"kty": "RSA"}}, validJSON), "bad_header"},
		{"crit header", p.sign(jose.RS256, p.rsa, map[jose.HeaderKey]any{"kid": "rsa-1", "crit": []string{"exp"}, "exp": 1}, validJSON), "bad_header"},
		{"typ of an access token", p.sign(jose.RS256, p.rsa, map[jose.HeaderKey]any{"kid": "rsa-1", "typ": "at+jwt"}, validJSON), "bad_header"},
		{"signed by another key", other.sign(jose.ES256, other.ec, map[jose.HeaderKey]any{"kid": "ec-1"}, validJSON), "bad_signature"},
		{"RS256 on the EC key's kid", p.sign(jose.RS256, p.rsa, map[jose.HeaderKey]any{"kid": "ec-1"}, validJSON), "bad_algorithm"},
		{"PS256 on a key pinned to RS256", p.sign(jose.PS256, p.rsa, map[jose.HeaderKey]any{"kid": "rsa-1"}, validJSON), "bad_algorithm"},
		{"duplicate sub", p.sign(jose.RS256, p.rsa, map[jose.HeaderKey]any{"kid": "rsa-1"},
			[]byte(strings.Replace(string(validJSON), `"sub":`, `"sub":"system:serviceaccount:acme:x","sub":`, 1))), "bad_claims"},
		{"case-folded twin of sub", p.sign(jose.RS256, p.rsa, map[jose.HeaderKey]any{"kid": "rsa-1"},
			[]byte(strings.Replace(string(validJSON), `"sub":`, `"SUB":"system:serviceaccount:acme:x","sub":`, 1))), "bad_claims"},
		{"duplicate header member", enc([]byte(`{"alg":"RS256","kid":"rsa-1","kid":"ec-1"}`)) + "." + enc(validJSON) + ".c2ln", "bad_header"},
		{"tampered payload", func() string {
			tok := p.token(valid)
			parts := strings.Split(tok, ".")
			c := p.claims(now, "system:serviceaccount:acme:admin")
			b, _ := json.Marshal(c)
			return parts[0] + "." + enc(b) + "." + parts[2]
		}(), "bad_signature"},
		{"padding in the payload", func() string {
			parts := strings.Split(p.token(valid), ".")
			return parts[0] + "." + parts[1] + "=." + parts[2]
		}(), "malformed"},
		{"not a JWT", "not.a.jwt!", "malformed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := counter(t, e.reg, "passport_authority_enrollments_total", "result", tc.reason)
			ans := e.enroll(tc.token, nil)
			if ans.status != http.StatusBadRequest || ans.err.Code != "invalid_grant" {
				t.Fatalf("got %d %+v, want 400 invalid_grant", ans.status, ans.err)
			}
			if got := counter(t, e.reg, "passport_authority_enrollments_total", "result", tc.reason); got != before+1 {
				t.Fatalf("enrollments{result=%s} went from %v to %v", tc.reason, before, got)
			}
		})
	}
	if n := len(e.enrolledAgents("acme")); n != 0 {
		t.Fatalf("%d agents registered by refused tokens", n)
	}
	// The issuer label comes from the configuration, never from a token.
	mfs, _ := e.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "passport_authority_enrollments_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "issuer" && l.GetValue() != "k8s" && l.GetValue() != "unknown" {
					t.Fatalf("issuer label %q", l.GetValue())
				}
			}
		}
	}
	// The valid token still works after all that.
	if ans := e.enroll(p.token(valid), nil); ans.status != http.StatusOK {
		t.Fatalf("valid token: %d %+v", ans.status, ans.err)
	}
}

func TestEnrollRequestShape(t *testing.T) {
	p := newIdP(t, "https://kubernetes.test")
	e := newEnv(t, func(c *Config) {
		c.TrustedIssuers = []TrustedIssuer{k8sIssuer(p, registerRule("system:serviceaccount:acme:*", "acme", passport.TrustLow))}
	}, nil, nil)
	reg := e.register("acme", "plain", passport.TypeObserver, passport.TrustLow)
	tok := p.token(p.claims(e.clock.Now(), "system:serviceaccount:acme:inventory"))

	// No assertion.
	resp, body := e.postForm("/oauth2/token", url.Values{"grant_type": {GrantTypeJWTBearer}}, "", "")
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "invalid_request") {
		t.Fatalf("no assertion: %d %s", resp.StatusCode, body)
	}
	// The assertion plus another credential.
	resp, body = e.postForm("/oauth2/token", url.Values{"grant_type": {GrantTypeJWTBearer}, "assertion": {tok}}, reg.ClientID, reg.ClientSecret)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "invalid_request") {
		t.Fatalf("assertion and client secret: %d %s", resp.StatusCode, body)
	}
	// A client_id naming another agent.
	if ans := e.enroll(tok, url.Values{"client_id": {reg.ClientID}}); ans.status != http.StatusBadRequest || ans.err.Code != "invalid_grant" {
		t.Fatalf("client_id of another agent: %d %+v", ans.status, ans.err)
	}
	// Another tenant.
	if ans := e.enroll(tok, url.Values{"tenant": {"globex"}}); ans.status != http.StatusBadRequest || ans.err.Code != "invalid_target" {
		t.Fatalf("another tenant: %d %+v", ans.status, ans.err)
	}
	// Scope narrows as with client credentials.
	ans := e.enroll(tok, url.Values{"scope": {"service.list"}})
	if ans.status != http.StatusOK || ans.claims.Scope != "service.list" {
		t.Fatalf("scope: %d %+v %q", ans.status, ans.err, ans.claims.Scope)
	}
	if ans := e.enroll(tok, url.Values{"scope": {"service.restart"}}); ans.status != http.StatusBadRequest || ans.err.Code != "invalid_scope" {
		t.Fatalf("scope beyond the type: %d %+v", ans.status, ans.err)
	}
	// The grant is announced in the metadata.
	var md Metadata
	_, body = e.get("/.well-known/oauth-authorization-server", "")
	if err := json.Unmarshal(body, &md); err != nil || !strings.Contains(strings.Join(md.GrantTypesSupported, " "), GrantTypeJWTBearer) {
		t.Fatalf("metadata grants: %v %v", md.GrantTypesSupported, err)
	}
}

// An authority with no trusted issuer does not support the grant.
func TestEnrollWithoutTrustedIssuers(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	p := newIdP(t, "https://kubernetes.test")
	ans := e.enroll(p.token(p.claims(e.clock.Now(), "system:serviceaccount:acme:x")), nil)
	if ans.status != http.StatusBadRequest || ans.err.Code != "unsupported_grant_type" {
		t.Fatalf("%d %+v", ans.status, ans.err)
	}
}

// A subject that almost matches a rule is not the rule's.
func TestEnrollSubjectThatAlmostMatches(t *testing.T) {
	p := newIdP(t, "https://kubernetes.test")
	e := newEnv(t, func(c *Config) {
		c.TrustedIssuers = []TrustedIssuer{k8sIssuer(p,
			registerRule("system:serviceaccount:prod:*", "acme", passport.TrustHigh),
			registerRule("system:serviceaccount:staging:reporter", "acme", passport.TrustLow),
		)}
	}, nil, nil)
	now := e.clock.Now()
	for _, sub := range []string{
		"system:serviceaccount:prod-evil:x",
		"system:serviceaccount:production:x",
		"system:serviceaccount:staging:reporter-2",
		"system:serviceaccount:staging:reporte",
	} {
		ans := e.enroll(p.token(p.claims(now, sub)), nil)
		if ans.status != http.StatusBadRequest || ans.err.Code != "invalid_grant" || !strings.Contains(ans.err.Description, "no enrollment rule") {
			t.Fatalf("%s: %d %+v", sub, ans.status, ans.err)
		}
	}
	if ans := e.enroll(p.token(p.claims(now, "system:serviceaccount:prod:x")), nil); ans.status != http.StatusOK || ans.claims.Agent.TrustLevel != passport.TrustHigh {
		t.Fatalf("prod: %d %+v", ans.status, ans.err)
	}
	if ans := e.enroll(p.token(p.claims(now, "system:serviceaccount:staging:reporter")), nil); ans.status != http.StatusOK || ans.claims.Agent.TrustLevel != passport.TrustLow {
		t.Fatalf("staging: %d %+v", ans.status, ans.err)
	}
}

func TestSubjectPatterns(t *testing.T) {
	cases := []struct {
		pattern string
		yes     []string
		no      []string
	}{
		{"system:serviceaccount:prod:*",
			[]string{"system:serviceaccount:prod:a", "system:serviceaccount:prod:a.b-c"},
			[]string{"system:serviceaccount:prod-evil:a", "system:serviceaccount:prod:", "system:serviceaccount:prod:a:b",
				"system:serviceaccount:prod", "system:serviceaccount:prod/a", "System:serviceaccount:prod:a", "system:serviceaccount:PROD:a"}},
		{"repo:acme/api:**",
			[]string{"repo:acme/api:ref:refs/heads/main", "repo:acme/api:environment:prod", "repo:acme/api:pull_request"},
			[]string{"repo:acme/api", "repo:acme/api:", "repo:acme/api-evil:ref:x", "repo:acme/api/x:ref", "repo:acme/api:ref::x", "repo:acme/apix:ref"}},
		{"repo:acme/*:ref:refs/heads/main",
			[]string{"repo:acme/api:ref:refs/heads/main"},
			[]string{"repo:acme/api:ref:refs/heads/main2", "repo:acme/a/b:ref:refs/heads/main", "repo:acme/:ref:refs/heads/main"}},
		{"spiffe://example.org/ns/prod/sa/*",
			[]string{"spiffe://example.org/ns/prod/sa/agent"},
			[]string{"spiffe://example.org/ns/prod/sa/agent/x", "spiffe://example.org/ns/prod-x/sa/agent", "spiffe://example.org.evil/ns/prod/sa/a"}},
		{"exact:subject",
			[]string{"exact:subject"},
			[]string{"exact:subjec", "exact:subject2", "Exact:subject"}},
	}
	for _, tc := range cases {
		p, err := parsePattern(tc.pattern)
		if err != nil {
			t.Fatalf("%s: %v", tc.pattern, err)
		}
		for _, s := range tc.yes {
			if !p.match(s) {
				t.Errorf("%s should match %s", tc.pattern, s)
			}
		}
		for _, s := range tc.no {
			if p.match(s) {
				t.Errorf("%s must not match %s", tc.pattern, s)
			}
		}
	}
	for _, bad := range []string{"system:serviceaccount:prod*", "system:serviceaccount:*prod:x", "repo:**:ref", "a:b*c", "", "a\nb"} {
		if _, err := parsePattern(bad); err == nil {
			t.Errorf("pattern %q accepted", bad)
		}
	}
}

func FuzzSubjectPattern(f *testing.F) {
	f.Add("system:serviceaccount:prod:*", "system:serviceaccount:prod-evil:x")
	f.Add("repo:acme/api:**", "repo:acme/api:ref:refs/heads/main")
	f.Fuzz(func(t *testing.T, pat, sub string) {
		p, err := parsePattern(pat)
		if err != nil {
			return
		}
		if p.match(sub) {
			// A match never crosses a literal segment: every literal of
			// the pattern is a whole segment of the subject, in place.
			ps, ss := splitSegments(pat), splitSegments(sub)
			for i, seg := range ps {
				if seg == "**" {
					break
				}
				if seg != "*" && (i >= len(ss) || ss[i] != seg) {
					t.Fatalf("%q matched %q at segment %d", pat, sub, i)
				}
			}
		}
	})
}

// A token accepted once (the default outside Kubernetes and SPIFFE) is
// refused the second time, also when its ECDSA signature is rewritten
// into the other valid one; a Kubernetes token may be reused.
func TestEnrollReplay(t *testing.T) {
	p := newIdP(t, "https://idp.test")
	e := newEnv(t, func(c *Config) {
		c.TrustedIssuers = []TrustedIssuer{{Issuer: p.issuer, JWKSFile: p.jwks, Audiences: []string{testEnrollAud},
			Rules: []EnrollRule{registerRule("ci:*", "acme", passport.TrustLow)}}}
	}, nil, nil)
	now := e.clock.Now()
	tok := p.token(p.claims(now, "ci:job"))
	if ans := e.enroll(tok, nil); ans.status != http.StatusOK {
		t.Fatalf("first: %d %+v", ans.status, ans.err)
	}
	total := func() float64 { return counter(t, e.reg, "passport_authority_enrollments_total") }
	before := total()
	if ans := e.enroll(tok, nil); ans.status != http.StatusBadRequest || ans.err.Code != "invalid_grant" || !strings.Contains(ans.err.Description, "used before") {
		t.Fatalf("replay: %d %+v", ans.status, ans.err)
	}
	if total() != before+1 || counter(t, e.reg, "passport_authority_enrollments_total", "result", "replayed") != 1 {
		t.Fatalf("a replay is counted %v times", total()-before)
	}

	// Without a jti, the signed part is what is remembered.
	c := p.claims(now, "ci:job")
	delete(c, "jti")
	tok = p.ecToken(c)
	if ans := e.enroll(tok, nil); ans.status != http.StatusOK {
		t.Fatalf("first without jti: %d %+v", ans.status, ans.err)
	}
	parts := strings.Split(tok, ".")
	sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
	s := new(big.Int).SetBytes(sig[32:])
	s.Sub(elliptic.P256().Params().N, s)
	malleated := append(append([]byte{}, sig[:32]...), s.FillBytes(make([]byte, 32))...)
	tok2 := parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(malleated)
	if tok2 == tok {
		t.Fatal("malleation changed nothing")
	}
	if ans := e.enroll(tok2, nil); ans.status != http.StatusBadRequest || !strings.Contains(ans.err.Description, "used before") {
		t.Fatalf("malleated replay: %d %+v", ans.status, ans.err)
	}

	// A refused request does not use the token up.
	fresh := p.token(p.claims(now, "ci:job"))
	if ans := e.enroll(fresh, url.Values{"scope": {"chaos.inject"}}); ans.status != http.StatusBadRequest || ans.err.Code != "invalid_scope" {
		t.Fatalf("bad scope: %d %+v", ans.status, ans.err)
	}
	if ans := e.enroll(fresh, nil); ans.status != http.StatusOK {
		t.Fatalf("after a refused request: %d %+v", ans.status, ans.err)
	}
}

// Two authorities (replicas sharing Redis) see many first uses of one
// subject at once: exactly one agent is registered and every passport is
// for it.
func TestEnrollConcurrentFirstUseAcrossReplicas(t *testing.T) {
	p := newIdP(t, "https://kubernetes.test")
	mut := func(c *Config) {
		c.TrustedIssuers = []TrustedIssuer{k8sIssuer(p, registerRule("system:serviceaccount:acme:*", "acme", passport.TrustMedium))}
		c.Passport.IssueBurst = 100
	}
	a := newEnv(t, mut, nil, nil)
	b := newEnv(t, func(c *Config) { mut(c); c.Issuer = a.a.cfg.Issuer }, a.rs, a.clock)
	now := a.clock.Now()
	const n = 24
	subs := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		e := a
		if i%2 == 1 {
			e = b
		}
		tok := p.token(p.claims(now, "system:serviceaccount:acme:worker"))
		wg.Go(func() {
			form := url.Values{"grant_type": {GrantTypeJWTBearer}, "assertion": {tok}}
			resp, body := e.postForm("/oauth2/token", form, "", "")
			if resp.StatusCode != http.StatusOK {
				t.Errorf("enroll %d: %d %s", i, resp.StatusCode, body)
				return
			}
			var tr client.TokenResponse
			_ = json.Unmarshal(body, &tr)
			c, err := verifyGoJose(t, tr.AccessToken, a.fetchJWKS())
			if err != nil {
				t.Errorf("verify %d: %v", i, err)
				return
			}
			subs[i] = c.Subject
		})
	}
	wg.Wait()
	agents := a.enrolledAgents("acme")
	if len(agents) != 1 {
		t.Fatalf("%d agents registered for one subject: %+v", len(agents), agents)
	}
	for i, s := range subs {
		if s != agents[0].ID {
			t.Fatalf("passport %d is for %q, want %q", i, s, agents[0].ID)
		}
	}
	if got := len(a.sink.kinds(audit.KindAgentEnrolled)) + len(b.sink.kinds(audit.KindAgentEnrolled)); got != 1 {
		t.Fatalf("%d agent_enrolled records, want 1", got)
	}
	// Nothing else was left in the client index by the losers.
	ids, err := a.rdb.HKeys(context.Background(), clientsKey).Result()
	if err != nil || len(ids) != 1 {
		t.Fatalf("client index: %v %v", ids, err)
	}
}

// An agent rule maps to a registered agent; blocking it stops enrollment;
// deleting a first-use agent lets the next use register a new one.
func TestEnrollAgentRuleBlockAndDelete(t *testing.T) {
	p := newIdP(t, "https://kubernetes.test")
	// Register the agent first, then start an authority whose rule names
	// it (sharing the first one's Redis), as an operator would.
	first := newEnv(t, nil, nil, nil)
	reg := first.register("acme", "healer-k8s", passport.TypeHealer, passport.TrustHigh)
	e := newEnv(t, func(c *Config) {
		c.TrustedIssuers = []TrustedIssuer{k8sIssuer(p,
			EnrollRule{Subject: "system:serviceaccount:ops:healer", Tenant: "acme", Agent: reg.ID},
			registerRule("system:serviceaccount:acme:*", "acme", passport.TrustLow))}
	}, first.rs, first.clock)
	now := e.clock.Now()
	ans := e.enroll(p.token(p.claims(now, "system:serviceaccount:ops:healer")), nil)
	if ans.status != http.StatusOK || ans.claims.Subject != reg.ID || ans.claims.Agent.TrustLevel != passport.TrustHigh {
		t.Fatalf("agent rule: %d %+v %+v", ans.status, ans.err, ans.claims.Agent)
	}
	if _, err := e.admin.Block(context.Background(), "acme", reg.ID, "test"); err != nil {
		t.Fatal(err)
	}
	if ans := e.enroll(p.token(p.claims(now, "system:serviceaccount:ops:healer")), nil); ans.status != http.StatusBadRequest || ans.err.Code != "unauthorized_client" {
		t.Fatalf("blocked: %d %+v", ans.status, ans.err)
	}

	one := e.enroll(p.token(p.claims(now, "system:serviceaccount:acme:job")), nil)
	if one.status != http.StatusOK {
		t.Fatalf("register: %d %+v", one.status, one.err)
	}
	if err := e.admin.DeleteAgent(context.Background(), "acme", one.claims.Subject); err != nil {
		t.Fatal(err)
	}
	two := e.enroll(p.token(p.claims(now, "system:serviceaccount:acme:job")), nil)
	if two.status != http.StatusOK || two.claims.Subject == one.claims.Subject {
		t.Fatalf("after delete: %d %+v sub %s", two.status, two.err, two.claims.Subject)
	}
	if n := len(e.enrolledAgents("acme")); n != 1 {
		t.Fatalf("%d enrolled agents", n)
	}
}

// A trusted issuer's token also authenticates a client (RFC 7523 §2.2)
// for client credentials, with the same caps; a bad one is invalid_client.
func TestEnrollAsClientAssertion(t *testing.T) {
	p := newIdP(t, "https://kubernetes.test")
	e := newEnv(t, func(c *Config) {
		c.TrustedIssuers = []TrustedIssuer{k8sIssuer(p, registerRule("system:serviceaccount:acme:*", "acme", passport.TrustLow))}
	}, nil, nil)
	now := e.clock.Now()
	c := p.claims(now, "system:serviceaccount:acme:inventory")
	c["exp"] = now.Add(90 * time.Second).Unix()
	form := url.Values{"grant_type": {"client_credentials"}, "client_assertion_type": {assertionTypeJWT}, "client_assertion": {p.token(c)}}
	resp, body := e.postForm("/oauth2/token", form, "", "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("client assertion: %d %s", resp.StatusCode, body)
	}
	var tr client.TokenResponse
	_ = json.Unmarshal(body, &tr)
	claims, err := verifyGoJose(t, tr.AccessToken, e.fetchJWKS())
	if err != nil {
		t.Fatal(err)
	}
	if claims.Agent.TrustLevel != passport.TrustLow || claims.ExpiresAt.Unix() > c["exp"].(int64) {
		t.Fatalf("caps not applied: %+v exp %v", claims.Agent, claims.ExpiresAt)
	}
	c = p.claims(now, "system:serviceaccount:acme:inventory")
	c["aud"] = "https://other.test"
	form.Set("client_assertion", p.token(c))
	resp, body = e.postForm("/oauth2/token", form, "", "")
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(body), "invalid_client") {
		t.Fatalf("bad client assertion: %d %s", resp.StatusCode, body)
	}
	if got := counter(t, e.reg, "passport_authority_client_auth_failures_total", "method", authWorkloadJWT, "reason", "bad_audience"); got != 1 {
		t.Fatalf("auth failures = %v", got)
	}
}

// GitHub Actions: the subject and the claims rules name must both match,
// and sub must agree with the repository claim.
func TestEnrollGitHubActions(t *testing.T) {
	p := newIdP(t, "https://token.actions.githubusercontent.com")
	wf := "acme/api/.github/workflows/deploy.yml@refs/heads/main"
	e := newEnv(t, func(c *Config) {
		c.TrustedIssuers = []TrustedIssuer{{Issuer: p.issuer, Kind: IssuerKindGitHub, JWKSFile: p.jwks, Audiences: []string{testEnrollAud},
			Rules: []EnrollRule{{Subject: "repo:acme/api:**", Claims: map[string]string{"repository": "acme/api", "workflow_ref": wf},
				Tenant: "acme", Register: &EnrollRegister{Type: passport.TypeDeployer, TrustCeiling: passport.TrustMedium}}}}}
	}, nil, nil)
	now := e.clock.Now()
	gh := func(sub, repo, workflow string) string {
		c := p.claims(now, sub)
		c["repository"], c["workflow_ref"], c["ref"] = repo, workflow, "refs/heads/main"
		return p.token(c)
	}
	if ans := e.enroll(gh("repo:acme/api:ref:refs/heads/main", "acme/api", wf), nil); ans.status != http.StatusOK || ans.claims.Agent.Type != passport.TypeDeployer {
		t.Fatalf("workflow: %d %+v", ans.status, ans.err)
	}
	for name, tok := range map[string]string{
		"other workflow":           gh("repo:acme/api:ref:refs/heads/main", "acme/api", "acme/api/.github/workflows/evil.yml@refs/heads/main"),
		"sub disagrees with claim": gh("repo:acme/api:ref:refs/heads/main", "acme/api-evil", wf),
		"other repository":         gh("repo:acme/api-evil:ref:refs/heads/main", "acme/api-evil", wf),
	} {
		if ans := e.enroll(tok, nil); ans.status != http.StatusBadRequest || ans.err.Code != "invalid_grant" {
			t.Fatalf("%s: %d %+v", name, ans.status, ans.err)
		}
	}
}

func TestEnrollSPIFFE(t *testing.T) {
	p := newIdP(t, "https://spire.example.org")
	e := newEnv(t, func(c *Config) {
		c.TrustedIssuers = []TrustedIssuer{{Issuer: p.issuer, Kind: IssuerKindSPIFFE, JWKSFile: p.jwks, Audiences: []string{testEnrollAud},
			Rules: []EnrollRule{registerRule("spiffe://example.org/ns/prod/sa/*", "acme", passport.TrustMedium)}}}
	}, nil, nil)
	now := e.clock.Now()
	c := p.claims(now, "spiffe://example.org/ns/prod/sa/agent")
	delete(c, "jti") // JWT-SVIDs need not carry one
	tok := p.ecToken(c)
	for range 2 { // SPIRE hands out the same cached SVID until it refreshes it
		if ans := e.enroll(tok, nil); ans.status != http.StatusOK {
			t.Fatalf("svid: %d %+v", ans.status, ans.err)
		}
	}
	for _, sub := range []string{"spiffe://example.org/ns/prod/sa/../admin", "spiffe://example.org/ns/prod/sa/a/", "spiffe://Example.org/ns/prod/sa/a", "spiffe://example.org/ns/prod/sa/%61"} {
		if ans := e.enroll(p.ecToken(p.claims(now, sub)), nil); ans.status != http.StatusBadRequest || ans.err.Code != "invalid_grant" {
			t.Fatalf("%s: %d %+v", sub, ans.status, ans.err)
		}
	}
}

func TestTrustedIssuersValidate(t *testing.T) {
	base := func() TrustedIssuer {
		return TrustedIssuer{Issuer: "https://kubernetes.test", Kind: IssuerKindKubernetes, JWKSFile: "jwks.json", Audiences: []string{testEnrollAud},
			Rules: []EnrollRule{registerRule("system:serviceaccount:acme:*", "acme", passport.TrustLow)}}
	}
	cases := []struct {
		name string
		mod  func(*TrustedIssuer)
		want string
	}{
		{"glob inside a segment", func(ti *TrustedIssuer) { ti.Rules[0].Subject = "system:serviceaccount:prod*" }, "whole segment"},
		{"HMAC allowed", func(ti *TrustedIssuer) { ti.Algorithms = []string{"HS256"} }, "never none or HMAC"},
		{"none allowed", func(ti *TrustedIssuer) { ti.Algorithms = []string{"none"} }, "never none or HMAC"},
		{"no key source", func(ti *TrustedIssuer) { ti.JWKSFile = "" }, "exactly one of jwks_file"},
		{"two key sources", func(ti *TrustedIssuer) { ti.JWKSURL = "https://kubernetes.test/jwks" }, "exactly one of jwks_file"},
		{"plain http jwks", func(ti *TrustedIssuer) { ti.JWKSFile, ti.JWKSURL = "", "http://kubernetes.test/jwks" }, "https"},
		{"no audience", func(ti *TrustedIssuer) { ti.Audiences = nil }, "audiences"},
		{"no rule", func(ti *TrustedIssuer) { ti.Rules = nil }, "rules"},
		{"agent and register", func(ti *TrustedIssuer) { ti.Rules[0].Agent = "agt_x" }, "exactly one of agent and register"},
		{"unknown type", func(ti *TrustedIssuer) { ti.Rules[0].Register.Type = "wizard" }, "register.type"},
		{"no ceiling", func(ti *TrustedIssuer) { ti.Rules[0].Register.TrustCeiling = "" }, "trust_ceiling"},
		{"capability beyond the type", func(ti *TrustedIssuer) { ti.Rules[0].Register.Capabilities = []string{"chaos.inject"} }, "not a capability"},
		{"kubernetes subject of another shape", func(ti *TrustedIssuer) { ti.Rules[0].Subject = "repo:acme/api:**" }, "system:serviceaccount:"},
		{"claim on sub", func(ti *TrustedIssuer) { ti.Rules[0].Claims = map[string]string{"sub": "x"} }, "cannot be matched"},
		{"lifetime too long", func(ti *TrustedIssuer) { ti.MaxLifetime = 48 * time.Hour }, "max_lifetime"},
		{"own issuer", func(ti *TrustedIssuer) { ti.Issuer = DefaultIssuer }, "own issuer"},
		{"bad replay", func(ti *TrustedIssuer) { ti.Replay = "sometimes" }, "replay"},
		{"discovery on a non-https issuer", func(ti *TrustedIssuer) { ti.JWKSFile, ti.Discovery, ti.Issuer = "", true, "kubernetes/serviceaccount" }, "https"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ti := base()
			tc.mod(&ti)
			cfg := DefaultConfig()
			cfg.TrustedIssuers = []TrustedIssuer{ti}
			err := cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
	cfg := DefaultConfig()
	cfg.TrustedIssuers = []TrustedIssuer{base(), base()}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "appears twice") {
		t.Fatalf("duplicate issuer: %v", err)
	}
	cfg.TrustedIssuers = []TrustedIssuer{base()}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("valid: %v", err)
	}
}

// jwksServer serves an IdP's keys over HTTPS (with discovery) and counts
// the fetches.
type jwksServer struct {
	srv    *httptest.Server
	caFile string
	mu     sync.Mutex
	doc    []byte
	issuer string // what discovery says the issuer is ("" = the server's URL)
	hits   map[string]int
}

func newJWKSServer(t *testing.T, doc []byte) *jwksServer {
	j := &jwksServer{doc: doc, hits: map[string]int{}}
	j.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		j.mu.Lock()
		defer j.mu.Unlock()
		j.hits[r.URL.Path]++
		switch r.URL.Path {
		case "/.well-known/openid-configuration":
			iss := j.issuer
			if iss == "" {
				iss = j.srv.URL
			}
			_ = json.NewEncoder(w).Encode(map[string]any{"issuer": iss, "jwks_uri": j.srv.URL + "/openid/v1/jwks"})
		case "/openid/v1/jwks":
			_, _ = w.Write(j.doc)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(j.srv.Close)
	j.caFile = filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(j.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: j.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return j
}

func (j *jwksServer) set(doc []byte) { j.mu.Lock(); j.doc = doc; j.mu.Unlock() }

func (j *jwksServer) count(path string) int { j.mu.Lock(); defer j.mu.Unlock(); return j.hits[path] }

// Keys come by discovery over HTTPS, are cached, are fetched again for an
// unknown kid at most once per interval, and when they cannot be
// refreshed serve for a bounded time only.
func TestEnrollDiscoveryAndKeyRefresh(t *testing.T) {
	j := newJWKSServer(t, nil)
	p := newIdP(t, "")
	p.issuer = j.srv.URL
	j.set(p.jwksDoc())
	const jwksPath = "/openid/v1/jwks"
	e := newEnv(t, func(c *Config) {
		c.TrustedIssuers = []TrustedIssuer{{Name: "cluster", Issuer: p.issuer, Kind: IssuerKindKubernetes, Discovery: true, CAFile: j.caFile,
			Audiences: []string{testEnrollAud}, Rules: []EnrollRule{registerRule("system:serviceaccount:acme:*", "acme", passport.TrustLow)}}}
	}, nil, nil)
	sub := "system:serviceaccount:acme:inventory"
	tok := func(kid string) string {
		b, _ := json.Marshal(p.claims(e.clock.Now(), sub))
		return p.sign(jose.RS256, p.rsa, map[jose.HeaderKey]any{"kid": kid}, b)
	}
	if ans := e.enroll(tok("rsa-1"), nil); ans.status != http.StatusOK {
		t.Fatalf("first: %d %+v", ans.status, ans.err)
	}
	if ans := e.enroll(tok("rsa-1"), nil); ans.status != http.StatusOK || j.count(jwksPath) != 1 {
		t.Fatalf("cached: %d, %d fetches", ans.status, j.count(jwksPath))
	}
	// Made-up kids: one refetch per interval (the first fetch counts),
	// then none until the interval is over.
	if ans := e.enroll(tok("made-up"), nil); ans.status != http.StatusBadRequest || j.count(jwksPath) != 1 {
		t.Fatalf("unknown kid right after a fetch: %d, %d fetches", ans.status, j.count(jwksPath))
	}
	e.clock.Advance(DefaultJWKSMinRefresh)
	for i := range 5 {
		if ans := e.enroll(tok(fmt.Sprintf("made-up-%d", i)), nil); ans.status != http.StatusBadRequest || ans.err.Code != "invalid_grant" {
			t.Fatalf("unknown kid: %d %+v", ans.status, ans.err)
		}
	}
	if n := j.count(jwksPath); n != 2 {
		t.Fatalf("%d fetches after unknown kids, want 2", n)
	}
	// The issuer rotates in a new key; after the interval its kid is found.
	rotated := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &p.rsa.PublicKey, KeyID: "rsa-2", Algorithm: "RS256", Use: "sig"}}}
	doc, _ := json.Marshal(rotated)
	j.set(doc)
	e.clock.Advance(DefaultJWKSMinRefresh)
	if ans := e.enroll(tok("rsa-2"), nil); ans.status != http.StatusOK || j.count(jwksPath) != 3 {
		t.Fatalf("rotated key: %d %+v, %d fetches", ans.status, ans.err, j.count(jwksPath))
	}
	// The old key is gone from the set, so it is refused.
	if ans := e.enroll(tok("rsa-1"), nil); ans.status != http.StatusBadRequest {
		t.Fatalf("removed key still accepted: %d", ans.status)
	}

	// The issuer's endpoint breaks (an oversized answer): the keys serve
	// until twice the refresh interval, then the endpoint fails closed
	// with 503 rather than accept keys it can no longer confirm.
	j.set([]byte(`{"keys":[` + strings.Repeat(" ", maxJWKSBytes) + `]}`))
	e.clock.Advance(DefaultJWKSRefresh)
	if ans := e.enroll(tok("rsa-2"), nil); ans.status != http.StatusOK {
		t.Fatalf("stale keys within bounds: %d %+v", ans.status, ans.err)
	}
	e.clock.Advance(DefaultJWKSRefresh)
	if ans := e.enroll(tok("rsa-2"), nil); ans.status != http.StatusServiceUnavailable || ans.err.Code != "temporarily_unavailable" {
		t.Fatalf("keys too old: %d %+v", ans.status, ans.err)
	}
	if got := counter(t, e.reg, "passport_authority_enrollment_key_fetches_total", "issuer", "cluster", "result", "error"); got < 1 {
		t.Fatalf("fetch errors = %v", got)
	}
	// Back to health: a fetch succeeds again.
	j.set(doc)
	e.clock.Advance(DefaultJWKSMinRefresh)
	if ans := e.enroll(tok("rsa-2"), nil); ans.status != http.StatusOK {
		t.Fatalf("recovered: %d %+v", ans.status, ans.err)
	}
}

// Discovery that names another issuer is refused: its keys are never used.
func TestEnrollDiscoveryIssuerMismatch(t *testing.T) {
	j := newJWKSServer(t, nil)
	p := newIdP(t, "")
	p.issuer = j.srv.URL
	j.set(p.jwksDoc())
	j.issuer = "https://evil.test"
	e := newEnv(t, func(c *Config) {
		c.TrustedIssuers = []TrustedIssuer{{Issuer: p.issuer, Discovery: true, CAFile: j.caFile, Audiences: []string{testEnrollAud},
			Rules: []EnrollRule{registerRule("x:*", "acme", passport.TrustLow)}}}
	}, nil, nil)
	ans := e.enroll(p.token(p.claims(e.clock.Now(), "x:y")), nil)
	if ans.status != http.StatusServiceUnavailable || j.count("/openid/v1/jwks") != 0 {
		t.Fatalf("mismatched discovery: %d %+v, %d jwks fetches", ans.status, ans.err, j.count("/openid/v1/jwks"))
	}
}

// A JWKS that offers what must never verify — an HMAC key, a weak RSA
// key, private material, one kid twice — keeps only the good keys.
func TestParseJWKSLeavesOutBadKeys(t *testing.T) {
	p := newIdP(t, "https://idp.test")
	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	pub := func(k jose.JSONWebKey) map[string]any {
		b, err := json.Marshal(k)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		return m
	}
	keys := []any{
		pub(jose.JSONWebKey{Key: &p.rsa.PublicKey, KeyID: "good", Algorithm: "RS256"}),
		map[string]any{"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
		pub(jose.JSONWebKey{Key: &weak.PublicKey, KeyID: "weak", Algorithm: "RS256"}),
		pub(jose.JSONWebKey{Key: p.ec, KeyID: "private", Algorithm: "ES256"}),
		pub(jose.JSONWebKey{Key: &p.ec.PublicKey, KeyID: "twice", Algorithm: "ES256"}),
		pub(jose.JSONWebKey{Key: &p.rsa.PublicKey, KeyID: "twice", Algorithm: "RS256"}),
		pub(jose.JSONWebKey{Key: &p.ec.PublicKey, KeyID: "enc", Algorithm: "ES256", Use: "enc"}),
		pub(jose.JSONWebKey{Key: &p.ec.PublicKey, KeyID: "misfit", Algorithm: "RS256"}),
		pub(jose.JSONWebKey{Key: &p.ec.PublicKey, Algorithm: "ES256"}), // no kid
	}
	doc, _ := json.Marshal(map[string]any{"keys": keys})
	k := &issuerKeys{cfg: TrustedIssuer{Name: "t"}, log: testLogger(t)}
	got, err := k.parseJWKS(context.Background(), doc)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got["good"].pub == nil {
		t.Fatalf("kept %v, want only good", got)
	}
	if _, err := k.parseJWKS(context.Background(), []byte(`{"keys":[],"keys":[]}`)); err == nil {
		t.Fatal("duplicate keys member accepted")
	}
}

// The Go client enrolls from a token file (a projected volume) with the
// grant, and authenticates a token exchange with the same token as its
// client assertion.
func TestWorkloadClient(t *testing.T) {
	p := newIdP(t, "https://kubernetes.test")
	e := newEnv(t, func(c *Config) {
		c.TrustedIssuers = []TrustedIssuer{k8sIssuer(p, registerRule("system:serviceaccount:acme:*", "acme", passport.TrustMedium))}
	}, nil, nil)
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(p.token(p.claims(e.clock.Now(), "system:serviceaccount:acme:inventory"))+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := client.NewWorkload(e.srv.URL, client.TokenFile(path), client.Options{Clock: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Token(context.Background(), client.TokenRequest{})
	if err != nil {
		t.Fatal(err)
	}
	claims, err := verifyGoJose(t, tok.Raw, e.fetchJWKS())
	if err != nil || claims.Tenant != "acme" || claims.Agent.TrustLevel != passport.TrustMedium {
		t.Fatalf("workload passport: %+v %v", claims, err)
	}

	// A token exchange: the subject agent lets the workload's agent act.
	subj := e.register("acme", "subject", passport.TypeObserver, passport.TrustHigh, func(s *client.AgentSpec) {
		s.MayDelegateTo = []string{claims.Subject}
	})
	delegated, err := c.Exchange(context.Background(), client.ExchangeRequest{SubjectToken: e.token(subj, nil)})
	if err != nil {
		t.Fatal(err)
	}
	dc, err := verifyGoJose(t, delegated.Raw, e.fetchJWKS())
	if err != nil || dc.Subject != claims.Subject || dc.Act == nil || dc.Act.Sub != subj.ID || dc.Agent.TrustLevel != passport.TrustMedium {
		t.Fatalf("delegated passport: %+v %v", dc, err)
	}

	if _, err := client.NewWorkload(e.srv.URL, nil, client.Options{}); err == nil {
		t.Fatal("workload client without a source")
	}
	if _, err := client.NewWorkload(e.srv.URL, client.TokenFile(filepath.Join(t.TempDir(), "missing")), client.Options{}); err != nil {
		t.Fatal(err) // the file is read per request, not at construction
	}
}

// The authority configurations in docs/enrollment.md (the yaml blocks
// after an "<!-- authority.yaml -->" line) load strictly and validate.
func TestEnrollmentDocsConfigsValidate(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "docs", "enrollment.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks := strings.Split(string(b), "<!-- authority.yaml -->\n```yaml\n")[1:]
	if len(blocks) < 4 {
		t.Fatalf("found %d authority configurations in docs/enrollment.md", len(blocks))
	}
	for i, blk := range blocks {
		yml, _, _ := strings.Cut(blk, "```")
		cfg := DefaultConfig()
		if err := config.Decode(fmt.Sprintf("docs/enrollment.md block %d", i), []byte(yml), &cfg); err != nil {
			t.Fatal(err)
		}
		if len(cfg.TrustedIssuers) == 0 {
			t.Fatalf("block %d has no trusted_issuers", i)
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("block %d: %v", i, err)
		}
	}
}

// One token accepted once, presented at once to two replicas many times:
// exactly one passport.
func TestEnrollConcurrentReplayAcrossReplicas(t *testing.T) {
	p := newIdP(t, "https://idp.test")
	mut := func(c *Config) {
		c.TrustedIssuers = []TrustedIssuer{{Issuer: p.issuer, JWKSFile: p.jwks, Audiences: []string{testEnrollAud},
			Rules: []EnrollRule{registerRule("ci:*", "acme", passport.TrustLow)}}}
		c.Passport.IssueBurst = 100
	}
	a := newEnv(t, mut, nil, nil)
	b := newEnv(t, func(c *Config) { mut(c); c.Issuer = a.a.cfg.Issuer }, a.rs, a.clock)
	tok := p.token(p.claims(a.clock.Now(), "ci:job"))
	var (
		mu sync.Mutex
		ok int
		wg sync.WaitGroup
	)
	for i := range 20 {
		e := a
		if i%2 == 1 {
			e = b
		}
		wg.Go(func() {
			resp, _ := e.postForm("/oauth2/token", url.Values{"grant_type": {GrantTypeJWTBearer}, "assertion": {tok}}, "", "")
			if resp.StatusCode == http.StatusOK {
				mu.Lock()
				ok++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if ok != 1 {
		t.Fatalf("%d passports for one single-use token", ok)
	}
}

// Each issuer's tokens verify with its own keys only, even when two
// issuers publish the same kid.
func TestEnrollKeysAreScopedToTheirIssuer(t *testing.T) {
	pa := newIdP(t, "https://a.test")
	pb := newIdP(t, "https://b.test")
	pb.ec, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pb.publish(pb.jwksDoc())
	rule := []EnrollRule{registerRule("x:*", "acme", passport.TrustLow)}
	e := newEnv(t, func(c *Config) {
		c.TrustedIssuers = []TrustedIssuer{
			{Name: "a", Issuer: pa.issuer, JWKSFile: pa.jwks, Audiences: []string{testEnrollAud}, Rules: rule},
			{Name: "b", Issuer: pb.issuer, JWKSFile: pb.jwks, Audiences: []string{testEnrollAud}, Rules: rule},
		}
	}, nil, nil)
	c := pa.claims(e.clock.Now(), "x:y") // iss a ...
	forged := pb.ecToken(c)              // ... signed by b's ec-1
	if ans := e.enroll(forged, nil); ans.status != http.StatusBadRequest || ans.err.Code != "invalid_grant" {
		t.Fatalf("cross-issuer key: %d %+v", ans.status, ans.err)
	}
	if got := counter(t, e.reg, "passport_authority_enrollments_total", "issuer", "a", "result", "bad_signature"); got != 1 {
		t.Fatalf("bad_signature for a = %v", got)
	}
	if ans := e.enroll(pa.ecToken(c), nil); ans.status != http.StatusOK {
		t.Fatalf("a's own key: %d %+v", ans.status, ans.err)
	}
}

// FuzzVerifyExternal: whatever the token, the verifier never panics, and
// what it accepts verifies with go-jose against the issuer's published key
// and names the configured issuer and an audience.
func FuzzVerifyExternal(f *testing.F) {
	p := newIdP(f, "https://kubernetes.test")
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	f.Add(p.token(p.claims(now, "system:serviceaccount:acme:a")))
	f.Add(p.ecToken(p.claims(now, "system:serviceaccount:acme:b")))
	f.Add("eyJhbGciOiJub25lIn0.eyJpc3MiOiJodHRwczovL2t1YmVybmV0ZXMudGVzdCJ9.")
	f.Add("a.b.c")
	cfg := testConfig()
	cfg.TrustedIssuers = []TrustedIssuer{k8sIssuer(p, registerRule("system:serviceaccount:acme:*", "acme", passport.TrustLow))}
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never reached: verifying needs no Redis
	defer rdb.Close()
	a, err := New(cfg, Deps{Audit: audit.Discard, Redis: rdb, Logger: slog.New(slog.DiscardHandler), Clock: func() time.Time { return now }})
	if err != nil {
		f.Fatal(err)
	}
	set := jose.JSONWebKeySet{}
	if err := json.Unmarshal(p.jwksDoc(), &set); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		id, _, err := a.verifyExternal(context.Background(), raw)
		if err != nil {
			return
		}
		jws, err := jose.ParseSigned(raw, []jose.SignatureAlgorithm{jose.RS256, jose.ES256})
		if err != nil {
			t.Fatalf("accepted, but go-jose cannot parse it: %v", err)
		}
		keys := set.Key(jws.Signatures[0].Header.KeyID)
		if len(keys) != 1 {
			t.Fatal("accepted with a kid not in the JWKS")
		}
		if _, err := jws.Verify(keys[0]); err != nil {
			t.Fatalf("accepted, but go-jose says the signature is bad: %v", err)
		}
		if id.iss.cfg.Issuer != p.issuer || id.claims["iss"] != p.issuer {
			t.Fatal("accepted for another issuer")
		}
	})
}
