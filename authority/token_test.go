package authority

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/passport"
	"github.com/golang-jwt/jwt/v5"
)

func pemPublic(t *testing.T, pub crypto.PublicKey) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func jwkPublic(pub ed25519.PublicKey) string {
	return `{"kty":"OKP","crv":"Ed25519","x":"` + base64.RawURLEncoding.EncodeToString(pub) + `"}`
}

func assertion(t *testing.T, key crypto.Signer, clientID, aud string, now time.Time, jti string) string {
	t.Helper()
	var m jwt.SigningMethod = jwt.SigningMethodEdDSA
	if _, ok := key.(*ecdsa.PrivateKey); ok {
		m = jwt.SigningMethodES256
	}
	s, err := jwt.NewWithClaims(m, jwt.RegisteredClaims{
		Issuer: clientID, Subject: clientID, Audience: jwt.ClaimStrings{aud}, ID: jti,
		IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(time.Minute)),
	}).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Issuance end to end over HTTP against a real Redis for each client
// authentication method, each passport verified with go-jose against the
// JWKS fetched over HTTP.
func TestIssuanceEachAuthMethod(t *testing.T) {
	for _, alg := range []string{passport.AlgEdDSA, passport.AlgES256} {
		t.Run(alg, func(t *testing.T) {
			e := newEnv(t, func(c *Config) { c.Keys.Algorithm = alg }, nil, nil)
			_, edPriv, _ := ed25519.GenerateKey(rand.Reader)
			ecPriv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			edAgent := e.register("acme", "healer-1", "healer", passport.TrustHigh, func(s *client.AgentSpec) {
				s.PublicKey = pemPublic(t, edPriv.Public())
			})
			ecAgent := e.register("acme", "deployer-1", "deployer", passport.TrustMedium, func(s *client.AgentSpec) {
				s.PublicKey = pemPublic(t, ecPriv.Public())
			})
			jwkAgent := e.register("acme", "observer-1", "observer", passport.TrustLow, func(s *client.AgentSpec) {
				s.PublicKey = jwkPublic(edPriv.Public().(ed25519.PublicKey))
			})
			tokenURL := e.srv.URL + "/oauth2/token"
			cases := []struct {
				name   string
				agent  client.Registration
				form   url.Values
				basic  bool
				method string
			}{
				{"client_secret_basic", edAgent, url.Values{}, true, authBasic},
				{"client_secret_post", edAgent, url.Values{"client_id": {edAgent.ClientID}, "client_secret": {edAgent.ClientSecret}}, false, authPost},
				{"private_key_jwt Ed25519 PEM", edAgent, url.Values{
					"client_assertion_type": {assertionTypeJWT},
					"client_assertion":      {assertion(t, edPriv, edAgent.ClientID, tokenURL, e.clock.Now(), "a1")},
				}, false, authPrivateKeyJWT},
				{"private_key_jwt ES256 aud=issuer", ecAgent, url.Values{
					"client_assertion_type": {assertionTypeJWT},
					"client_assertion":      {assertion(t, ecPriv, ecAgent.ClientID, e.a.cfg.Issuer, e.clock.Now(), "a2")},
				}, false, authPrivateKeyJWT},
				{"private_key_jwt Ed25519 JWK", jwkAgent, url.Values{
					"client_id":             {jwkAgent.ClientID},
					"client_assertion_type": {assertionTypeJWT},
					"client_assertion":      {assertion(t, edPriv, jwkAgent.ClientID, tokenURL, e.clock.Now(), "a3")},
				}, false, authPrivateKeyJWT},
			}
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					form := url.Values{"grant_type": {"client_credentials"}}
					for k, v := range tc.form {
						form[k] = v
					}
					user, pass := "", ""
					if tc.basic {
						user, pass = tc.agent.ClientID, tc.agent.ClientSecret
					}
					resp, body := e.postForm("/oauth2/token", form, user, pass)
					if resp.StatusCode != http.StatusOK {
						t.Fatalf("status %d: %s", resp.StatusCode, body)
					}
					if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
						t.Errorf("Cache-Control = %q, want no-store", cc)
					}
					var tr client.TokenResponse
					if err := json.Unmarshal(body, &tr); err != nil {
						t.Fatal(err)
					}
					if tr.TokenType != "Bearer" || tr.ExpiresIn != int64(passport.DefaultLifetime.Seconds()) {
						t.Errorf("token_type %q expires_in %d", tr.TokenType, tr.ExpiresIn)
					}
					c, err := verifyGoJose(t, tr.AccessToken, e.fetchJWKS())
					if err != nil {
						t.Fatalf("go-jose verify: %v", err)
					}
					now := e.clock.Now()
					if c.Issuer != e.a.cfg.Issuer || c.Subject != tc.agent.ClientID || c.ClientID != tc.agent.ClientID ||
						c.Tenant != "acme" || !slices.Equal([]string(c.Audience), []string{"passport-proxy"}) || c.ID == "" {
						t.Errorf("claims: %+v", c)
					}
					if !c.ExpiresAt.Time.Equal(now.Truncate(time.Second).Add(5*time.Minute)) || !c.IssuedAt.Time.Equal(now.Truncate(time.Second)) {
						t.Errorf("iat %v exp %v, now %v", c.IssuedAt, c.ExpiresAt, now)
					}
					if c.Agent.ID != tc.agent.ID || c.Agent.Name != tc.agent.Name || c.Agent.Type != tc.agent.Type ||
						c.Agent.TrustLevel != tc.agent.TrustLevel || c.Agent.Reputation != int(passport.BaselineReputation(tc.agent.TrustLevel)) {
						t.Errorf("agent claim %+v, registered %+v", c.Agent, tc.agent.Agent)
					}
					if !slices.Equal(c.Actions(), tc.agent.Capabilities) || tr.Scope != strings.Join(tc.agent.Capabilities, " ") {
						t.Errorf("actions %v scope %q, want %v", c.Actions(), tr.Scope, tc.agent.Capabilities)
					}
					if got := counter(t, e.reg, "passport_authority_passports_issued_total", "auth_method", tc.method); got < 1 {
						t.Errorf("issued metric for %s = %v", tc.method, got)
					}
				})
			}
		})
	}
}

func TestAssertionRules(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	ag := e.register("acme", "healer-1", "healer", passport.TrustHigh, func(s *client.AgentSpec) { s.PublicKey = pemPublic(t, key.Public()) })
	noKey := e.register("acme", "healer-2", "healer", passport.TrustHigh)
	tokenURL := e.srv.URL + "/oauth2/token"
	now := e.clock.Now()
	send := func(a string, extra url.Values) int {
		form := url.Values{"grant_type": {"client_credentials"}, "client_assertion_type": {assertionTypeJWT}, "client_assertion": {a}}
		for k, v := range extra {
			form[k] = v
		}
		resp, _ := e.postForm("/oauth2/token", form, "", "")
		return resp.StatusCode
	}
	good := assertion(t, key, ag.ClientID, tokenURL, now, "once")
	if got := send(good, nil); got != 200 {
		t.Fatalf("first use: %d", got)
	}
	cases := []struct {
		name string
		a    string
		form url.Values
	}{
		{"replayed jti", good, nil},
		{"wrong key", assertion(t, other, ag.ClientID, tokenURL, now, "j2"), nil},
		{"wrong audience", assertion(t, key, ag.ClientID, "https://elsewhere/token", now, "j3"), nil},
		{"expired", assertion(t, key, ag.ClientID, tokenURL, now.Add(-10*time.Minute), "j4"), nil},
		{"no jti", assertion(t, key, ag.ClientID, tokenURL, now, ""), nil},
		{"client without key", assertion(t, key, noKey.ClientID, tokenURL, now, "j5"), nil},
		{"client_id mismatch", assertion(t, key, ag.ClientID, tokenURL, now, "j6"), url.Values{"client_id": {noKey.ClientID}}},
		{"not a jwt", "abc.def.ghi", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := send(tc.a, tc.form); got != http.StatusUnauthorized {
				t.Errorf("status %d, want 401", got)
			}
		})
	}
	// A too-long-lived assertion is refused.
	long, _ := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.RegisteredClaims{
		Issuer: ag.ClientID, Subject: ag.ClientID, Audience: jwt.ClaimStrings{tokenURL}, ID: "long",
		IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour)),
	}).SignedString(key)
	if got := send(long, nil); got != http.StatusUnauthorized {
		t.Errorf("hour-long assertion: %d", got)
	}
}

type oauthErr struct {
	Error string `json:"error"`
	Desc  string `json:"error_description"`
}

// Bad input: each gets its documented error and nothing is issued.
func TestTokenBadInput(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	ag := e.register("acme", "observer-1", "observer", passport.TrustLow)
	basic := func(r *http.Request) { r.SetBasicAuth(ag.ClientID, ag.ClientSecret) }
	form := "application/x-www-form-urlencoded"
	cases := []struct {
		name   string
		ctype  string
		body   string
		mod    func(*http.Request)
		status int
		code   string
	}{
		{"wrong secret", form, "grant_type=client_credentials", func(r *http.Request) { r.SetBasicAuth(ag.ClientID, "cs_wrong") }, 401, "invalid_client"},
		{"unknown client", form, "grant_type=client_credentials", func(r *http.Request) { r.SetBasicAuth("agt_doesnotexist", "x") }, 401, "invalid_client"},
		{"malformed client id", form, "grant_type=client_credentials&client_id=%7Bx%7D&client_secret=x", nil, 401, "invalid_client"},
		{"no credentials", form, "grant_type=client_credentials", nil, 401, "invalid_client"},
		{"malformed form", form, "grant_type=%zz&x", basic, 400, "invalid_request"},
		{"json body", "application/json", `{"grant_type":"client_credentials"}`, basic, 400, "invalid_request"},
		{"missing grant_type", form, "scope=service.list", basic, 400, "invalid_request"},
		{"duplicate parameter", form, "grant_type=client_credentials&scope=a&scope=b", basic, 400, "invalid_request"},
		{"two auth methods", form, "grant_type=client_credentials&client_secret=" + url.QueryEscape(ag.ClientSecret), basic, 400, "invalid_request"},
		{"unsupported grant type", form, "grant_type=password&username=a&password=b", basic, 400, "unsupported_grant_type"},
		{"scope wider than registered", form, "grant_type=client_credentials&scope=service.list+service.restart", basic, 400, "invalid_scope"},
		{"unknown scope", form, "grant_type=client_credentials&scope=root", basic, 400, "invalid_scope"},
		{"empty scope", form, "grant_type=client_credentials&scope=", basic, 400, "invalid_scope"},
		{"authorization_details wider", form, "grant_type=client_credentials&authorization_details=" +
			url.QueryEscape(`[{"type":"agent_action","actions":["service.restart"]}]`), basic, 400, "invalid_authorization_details"},
		{"authorization_details bad type", form, "grant_type=client_credentials&authorization_details=" +
			url.QueryEscape(`[{"type":"payment","actions":["service.list"]}]`), basic, 400, "invalid_authorization_details"},
		{"authorization_details not json", form, "grant_type=client_credentials&authorization_details=nope", basic, 400, "invalid_authorization_details"},
		{"task not json", form, "grant_type=client_credentials&task=%7Bbroken", basic, 400, "invalid_request"},
		{"task without id", form, "grant_type=client_credentials&task=" + url.QueryEscape(`{"purpose":"x"}`), basic, 400, "invalid_request"},
		{"task wider", form, "grant_type=client_credentials&task=" + url.QueryEscape(`{"id":"i","actions":["service.restart"]}`), basic, 400, "invalid_scope"},
		{"unknown audience", form, "grant_type=client_credentials&audience=other-api", basic, 400, "invalid_target"},
		{"other tenant", form, "grant_type=client_credentials&tenant=globex", basic, 400, "invalid_target"},
		{"oversized body", form, "grant_type=client_credentials&pad=" + strings.Repeat("a", DefaultMaxBodyBytes), basic, 413, "invalid_request"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := e.post("/oauth2/token", tc.ctype, tc.body, tc.mod)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			var oe oauthErr
			if err := json.Unmarshal(body, &oe); err != nil || oe.Error != tc.code {
				t.Fatalf("error %q (%v), want %q: %s", oe.Error, err, tc.code, body)
			}
			if strings.Contains(string(body), "access_token") {
				t.Fatalf("issued on bad input: %s", body)
			}
			if tc.status == 401 && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic") {
				t.Errorf("401 without WWW-Authenticate Basic: %q", resp.Header.Get("WWW-Authenticate"))
			}
			if resp.Header.Get("Cache-Control") != "no-store" {
				t.Errorf("Cache-Control %q", resp.Header.Get("Cache-Control"))
			}
		})
	}
	if n := counter(t, e.reg, "passport_authority_passports_issued_total"); n != 0 {
		t.Fatalf("issued %v passports on bad input", n)
	}
	if n, _ := e.rdb.ZCard(context.Background(), issuedKey("acme", ag.ID)).Result(); n != 0 {
		t.Fatalf("%d jtis recorded on bad input", n)
	}
	// The same agent with good input works.
	if raw := e.token(ag, nil); raw == "" {
		t.Fatal("no passport")
	}
}

func TestScopeAndTaskNarrow(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	ag := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	set := func() func(string) passport.Claims {
		return func(raw string) passport.Claims {
			c, err := verifyGoJose(t, raw, e.fetchJWKS())
			if err != nil {
				t.Fatal(err)
			}
			return c
		}
	}()
	c := set(e.token(ag, url.Values{"scope": {"service.restart service.get"}}))
	if !slices.Equal(c.Actions(), []string{"service.get", "service.restart"}) || c.Scope != "service.get service.restart" {
		t.Errorf("scope narrowing: %v %q", c.Actions(), c.Scope)
	}
	task := `{"id":"inc-123","purpose":"restart checkout","target":"checkout","actions":["service.restart"]}`
	c = set(e.token(ag, url.Values{"task": {task}}))
	if c.Task == nil || c.Task.ID != "inc-123" || c.Task.Target != "checkout" {
		t.Fatalf("task claim %+v", c.Task)
	}
	if !slices.Equal(c.Actions(), []string{"service.restart"}) || c.AuthorizationDetails[0].Identifier != "checkout" {
		t.Errorf("task narrowing: %+v", c.AuthorizationDetails)
	}
	ad := `[{"type":"agent_action","actions":["cache.warm"],"identifier":"payments"}]`
	c = set(e.token(ag, url.Values{"authorization_details": {ad}, "resource": {"passport-proxy"}}))
	if len(c.AuthorizationDetails) != 1 || c.AuthorizationDetails[0].Identifier != "payments" ||
		!slices.Equal(c.AuthorizationDetails[0].Locations, []string{"passport-proxy"}) || !slices.Equal(c.Actions(), []string{"cache.warm"}) {
		t.Errorf("authorization_details: %+v", c.AuthorizationDetails)
	}
}

func TestFailedAuthRateLimited(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Clients.AuthFailureLimit = 3 }, nil, nil)
	ag := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	form := url.Values{"grant_type": {"client_credentials"}}
	for i := range 3 {
		if resp, _ := e.postForm("/oauth2/token", form, ag.ClientID, "cs_guess"); resp.StatusCode != 401 {
			t.Fatalf("guess %d: %d", i, resp.StatusCode)
		}
	}
	// From the address that guessed, even the right secret waits: the
	// limit is checked before any credential.
	resp, body := e.postForm("/oauth2/token", form, ag.ClientID, ag.ClientSecret)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("after the limit, even the right secret: %d %s (Retry-After %q)", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	// The window lives in Redis; once it expires the agent gets through.
	if err := e.rdb.Del(context.Background(), clientFailKey("127.0.0.1", ag.ClientID)).Err(); err != nil {
		t.Fatal(err)
	}
	if raw := e.token(ag, nil); raw == "" {
		t.Fatal("no passport after the window")
	}
	key := clientFailKey("127.0.0.1", "agt_nobody")
	if ttl, _ := e.rdb.TTL(context.Background(), key).Result(); ttl > 0 {
		t.Fatal("unexpected counter")
	}
	e.postForm("/oauth2/token", form, "agt_nobody", "x")
	if ttl, _ := e.rdb.TTL(context.Background(), key).Result(); ttl <= 0 || ttl > time.Minute {
		t.Fatalf("failure counter for unknown client has TTL %v, want within the window", ttl)
	}
}

func TestSecretCacheNeverMatchesWrongSecret(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	ag := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	e.token(ag, nil) // fills the cache
	form := url.Values{"grant_type": {"client_credentials"}}
	if resp, _ := e.postForm("/oauth2/token", form, ag.ClientID, ag.ClientSecret+"x"); resp.StatusCode != 401 {
		t.Fatalf("wrong secret after a cached success: %d", resp.StatusCode)
	}
	e.token(ag, nil)
}
