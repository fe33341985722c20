package authority

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/passport"
)

func mayDelegate(to ...string) func(*client.AgentSpec) {
	return func(s *client.AgentSpec) { s.MayDelegateTo = to }
}

// exchangeResult is a token endpoint answer to a token exchange.
type exchangeResult struct {
	status int
	header http.Header
	tr     client.TokenResponse
	err    oauthErr
	body   string
}

// exchange asks for a delegated passport: actor authenticates with
// client_secret_basic (unless mod replaces that) and trades subject.
func (e *env) exchange(actor client.Registration, subject string, extra url.Values, mod func(*http.Request)) exchangeResult {
	e.t.Helper()
	form := url.Values{
		"grant_type": {passport.GrantTypeTokenExchange}, "subject_token": {subject},
		"subject_token_type": {passport.TokenTypeAccessToken},
	}
	for k, v := range extra {
		form[k] = v
	}
	resp, body := e.post("/oauth2/token", "application/x-www-form-urlencoded", form.Encode(), func(r *http.Request) {
		if actor.ClientID != "" {
			r.SetBasicAuth(actor.ClientID, actor.ClientSecret)
		}
		if mod != nil {
			mod(r)
		}
	})
	res := exchangeResult{status: resp.StatusCode, header: resp.Header, body: string(body)}
	if resp.StatusCode == http.StatusOK {
		_ = json.Unmarshal(body, &res.tr)
	} else {
		_ = json.Unmarshal(body, &res.err)
	}
	return res
}

func (e *env) mustExchange(actor client.Registration, subject string, extra url.Values, mod func(*http.Request)) (string, passport.Claims) {
	e.t.Helper()
	res := e.exchange(actor, subject, extra, mod)
	if res.status != http.StatusOK {
		e.t.Fatalf("exchange by %s: %d %s", actor.Name, res.status, res.body)
	}
	c, err := verifyGoJose(e.t, res.tr.AccessToken, e.fetchJWKS())
	if err != nil {
		e.t.Fatalf("go-jose verify of the delegated passport: %v", err)
	}
	return res.tr.AccessToken, c
}

func (e *env) claims(raw string) passport.Claims {
	e.t.Helper()
	c, err := verifyGoJose(e.t, raw, e.fetchJWKS())
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// delegationFleet registers a commander (HIGH) that lets healers and
// observers act for it, a healer (MEDIUM) that lets observers act for it,
// an observer (LOW), a deployer nobody lists, and an agent in globex.
type delegationFleet struct {
	commander, healer, observer, deployer, globex client.Registration
}

func newDelegationFleet(e *env) delegationFleet {
	return delegationFleet{
		commander: e.register("acme", "commander", "healer", passport.TrustHigh, mayDelegate("type:healer", "type:observer"),
			func(s *client.AgentSpec) { s.Owner = "sre-oncall" }),
		healer:   e.register("acme", "healer-2", "healer", passport.TrustMedium, mayDelegate("type:observer")),
		observer: e.register("acme", "sub-agent", "observer", passport.TrustLow),
		deployer: e.register("acme", "deployer-1", "deployer", passport.TrustHigh),
		globex:   e.register("globex", "healer-g", "healer", passport.TrustHigh, mayDelegate("type:healer", "type:observer")),
	}
}

// A delegated passport names the acting agent in sub, the chain in act
// (nested, RFC 8693 §4.1) and delegation, and only narrows. Verified with
// go-jose against the JWKS.
func TestTokenExchangeIssuesTheChain(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	f := newDelegationFleet(e)
	task := `{"id":"inc-1","purpose":"restart checkout","target":"checkout","actions":["service.get","service.restart"]}`
	rootRaw := e.token(f.commander, url.Values{"task": {task}})
	root := e.claims(rootRaw)

	res := e.exchange(f.healer, rootRaw, nil, nil)
	if res.status != 200 || res.tr.IssuedTokenType != passport.TokenTypeAccessToken || res.tr.TokenType != "Bearer" ||
		res.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("exchange: %d %+v %s", res.status, res.tr, res.body)
	}
	d1 := e.claims(res.tr.AccessToken)
	if d1.Subject != f.healer.ID || d1.ClientID != f.healer.ID || d1.Agent.ID != f.healer.ID || d1.Agent.Name != "healer-2" || d1.Tenant != "acme" {
		t.Fatalf("holder: %+v", d1)
	}
	if d1.Act == nil || d1.Act.Sub != f.commander.ID || d1.Act.Act != nil {
		t.Fatalf("act: %+v", d1.Act)
	}
	wantLink := passport.DelegationLink{Sub: f.commander.ID, Name: "commander", Type: "healer", TrustLevel: passport.TrustHigh, JTI: root.ID}
	if d := d1.Delegation; d == nil || d.Depth != 1 || d.Root != f.commander.ID || !slices.Equal(d.Chain, []string{f.commander.ID, f.healer.ID}) ||
		len(d.Links) != 1 || d.Links[0] != wantLink {
		t.Fatalf("delegation: %+v", d1.Delegation)
	}
	if d1.Agent.TrustLevel != passport.TrustMedium || d1.ExpiresAt.After(root.ExpiresAt.Time) || d1.ID == root.ID ||
		d1.Task == nil || d1.Task.ID != "inc-1" || d1.Task.Target != "checkout" || d1.Scope != "service.get service.restart" ||
		d1.AuthorizationDetails[0].Identifier != "checkout" || d1.Cnf != nil {
		t.Fatalf("narrowing: trust %s exp %v (root %v) task %+v scope %q details %+v", d1.Agent.TrustLevel, d1.ExpiresAt, root.ExpiresAt,
			d1.Task, d1.Scope, d1.AuthorizationDetails)
	}
	if res.tr.ExpiresIn != int64(d1.ExpiresAt.Sub(e.clock.Now().Truncate(time.Second))/time.Second) {
		t.Fatalf("expires_in %d for exp %v", res.tr.ExpiresIn, d1.ExpiresAt)
	}

	// Depth 2: the observer acts for the healer, who acts for the
	// commander. act nests outward-in: the healer, then the commander.
	d2raw, d2 := e.mustExchange(f.observer, res.tr.AccessToken, url.Values{"scope": {"service.get"}}, nil)
	if d2.Act == nil || d2.Act.Sub != f.healer.ID || d2.Act.Act == nil || d2.Act.Act.Sub != f.commander.ID || d2.Act.Act.Act != nil {
		t.Fatalf("act at depth 2: %+v", d2.Act)
	}
	if d := d2.Delegation; d.Depth != 2 || d.Root != f.commander.ID || !slices.Equal(d.Chain, []string{f.commander.ID, f.healer.ID, f.observer.ID}) ||
		len(d.Links) != 2 || d.Links[1].JTI != d1.ID || d.Links[1].TrustLevel != passport.TrustMedium {
		t.Fatalf("delegation at depth 2: %+v", d)
	}
	if d2.Agent.TrustLevel != passport.TrustLow || d2.Scope != "service.get" || d2.Task.ID != "inc-1" {
		t.Fatalf("depth 2 narrowing: %+v", d2)
	}
	// The authority's strict verifier and introspection accept it and
	// show the chain.
	m := e.introspect(d2raw, adminAuth(testAdminToken))
	if m["active"] != true || m["act"] == nil || m["delegation"] == nil || m["sub"] != f.observer.ID {
		t.Fatalf("introspection: %v", m)
	}
	if got := counter(t, e.reg, "passport_authority_token_exchanges_total", "depth", "2"); got != 1 {
		t.Fatalf("exchanges metric at depth 2 = %v", got)
	}

	// Depth 3 is over the default limit of 2, even for an agent every
	// link allows.
	e2 := newEnv(t, func(c *Config) { c.Delegation.MaxDepth, c.Issuer = 1, e.a.cfg.Issuer }, e.rs, e.clock)
	res = e2.exchange(f.observer, res.tr.AccessToken, nil, nil)
	if res.status != 400 || res.err.Error != "invalid_request" || !strings.Contains(res.err.Desc, "deep") {
		t.Fatalf("depth 2 with max_depth 1: %d %s", res.status, res.body)
	}
}

// Every attempt to widen, and every unacceptable subject, is refused
// with the RFC 8693 §2.2.2 / RFC 6749 §5.2 code, and nothing is issued.
func TestTokenExchangeOnlyNarrows(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Audiences = []string{"passport-proxy", "other-api"} }, nil, nil)
	f := newDelegationFleet(e)
	task := `{"id":"inc-1","target":"checkout"}`
	subject := e.token(f.commander, url.Values{"scope": {"service.get service.restart"}, "task": {task}})
	globexSubject := e.token(f.globex, nil)
	otherAud := e.token(f.commander, url.Values{"audience": {"other-api"}})
	cases := []struct {
		name    string
		actor   client.Registration
		subject string
		extra   url.Values
		code    string
	}{
		{"scope beyond the subject's", f.healer, subject, url.Values{"scope": {"service.get deployment.rollback"}}, "invalid_scope"},
		{"scope beyond the actor's registration", f.observer, subject, url.Values{"scope": {"service.restart"}}, "invalid_scope"},
		{"audience the subject lacks", f.healer, subject, url.Values{"audience": {"other-api"}}, "invalid_target"},
		{"unknown audience", f.healer, subject, url.Values{"resource": {"elsewhere"}}, "invalid_target"},
		{"another task", f.healer, subject, url.Values{"task": {`{"id":"inc-2","target":"checkout"}`}}, "invalid_request"},
		{"another task target", f.healer, subject, url.Values{"task": {`{"id":"inc-1","target":"payments"}`}}, "invalid_request"},
		{"task actions beyond the subject's", f.healer, subject, url.Values{"task": {`{"id":"inc-1","target":"checkout","actions":["cache.warm"]}`}}, "invalid_scope"},
		{"authorization_details beyond the subject's", f.healer, subject, url.Values{"authorization_details": {
			`[{"type":"agent_action","actions":["deployment.rollback"]}]`}}, "invalid_authorization_details"},
		{"authorization_details for another resource", f.healer, subject, url.Values{"authorization_details": {
			`[{"type":"agent_action","actions":["service.restart"],"identifier":"payments"}]`}}, "invalid_authorization_details"},
		{"another tenant asked for", f.healer, subject, url.Values{"tenant": {"globex"}}, "invalid_target"},
		{"subject from another tenant", f.healer, globexSubject, nil, "invalid_request"},
		{"nothing the actor may do", f.deployer, otherAud, nil, "invalid_request"}, // deployer is in no may_delegate_to
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := e.rdb.ZCard(context.Background(), issuedKey("acme", tc.actor.ID)).Result()
			res := e.exchange(tc.actor, tc.subject, tc.extra, nil)
			if res.status != http.StatusBadRequest || res.err.Error != tc.code {
				t.Fatalf("got %d %s, want 400 %s", res.status, res.body, tc.code)
			}
			if strings.Contains(res.body, "access_token") {
				t.Fatal("issued")
			}
			if after, _ := e.rdb.ZCard(context.Background(), issuedKey("acme", tc.actor.ID)).Result(); after != before {
				t.Fatal("a jti was recorded for a refused exchange")
			}
		})
	}

	// What narrowing leaves: the subject's task and details, cut down.
	_, c := e.mustExchange(f.healer, subject, url.Values{"scope": {"service.restart"}}, nil)
	if c.Scope != "service.restart" || c.Task == nil || c.Task.Target != "checkout" || len(c.AuthorizationDetails) != 1 ||
		c.AuthorizationDetails[0].Identifier != "checkout" || !slices.Equal(c.AuthorizationDetails[0].Locations, []string{"passport-proxy"}) {
		t.Fatalf("narrowed: %+v", c)
	}
	_, c = e.mustExchange(f.healer, otherAud, url.Values{"authorization_details": {`[{"type":"agent_action","actions":["service.get"]}]`}}, nil)
	if !slices.Equal([]string(c.Audience), []string{"other-api"}) || c.Scope != "service.get" || c.AuthorizationDetails[0].Locations[0] != "other-api" {
		t.Fatalf("audience inherited: %+v", c)
	}

	// exp: never later than the subject's, and expires_in says so.
	subjC := e.claims(subject)
	e.clock.Advance(4 * time.Minute)
	res := e.exchange(f.healer, subject, nil, nil)
	c = e.claims(res.tr.AccessToken)
	if !c.ExpiresAt.Equal(subjC.ExpiresAt.Time) || res.tr.ExpiresIn > 60 {
		t.Fatalf("exp %v (subject %v), expires_in %d", c.ExpiresAt, subjC.ExpiresAt, res.tr.ExpiresIn)
	}
}

// The trust level is no higher than the actor's ceiling, the actor's
// reputation, the subject passport's and the subject agent's live one.
func TestTokenExchangeTrust(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	lowRoot := e.register("acme", "low-root", "healer", passport.TrustLow, mayDelegate("type:healer"))
	highRoot := e.register("acme", "high-root", "healer", passport.TrustHigh, mayDelegate("type:healer"))
	highActor := e.register("acme", "high-actor", "healer", passport.TrustHigh)
	if _, c := e.mustExchange(highActor, e.token(lowRoot, nil), nil, nil); c.Agent.TrustLevel != passport.TrustLow {
		t.Fatalf("HIGH actor for a LOW subject got %s", c.Agent.TrustLevel)
	}
	// The subject agent's reputation fell after its passport was issued.
	subject := e.token(highRoot, nil)
	for range 2 {
		if _, err := e.admin.ReportOutcome(context.Background(), "acme", highRoot.ID, client.OutcomeDenied); err != nil {
			t.Fatal(err)
		}
	}
	if _, c := e.mustExchange(highActor, subject, nil, nil); c.Agent.TrustLevel != passport.TrustMedium {
		t.Fatalf("subject's live reputation ignored: %s", c.Agent.TrustLevel)
	}
	// The actor's own reputation counts too: 90 - 5×10 = 40, below
	// medium_min (50).
	otherRoot := e.register("acme", "other-root", "healer", passport.TrustHigh, mayDelegate("type:healer"))
	for range 5 {
		if _, err := e.admin.ReportOutcome(context.Background(), "acme", highActor.ID, client.OutcomeDenied); err != nil {
			t.Fatal(err)
		}
	}
	if _, c := e.mustExchange(highActor, e.token(otherRoot, nil), nil, nil); c.Agent.TrustLevel != passport.TrustLow {
		t.Fatalf("actor's reputation ignored: %s", c.Agent.TrustLevel)
	}
}

// The subject token must be a valid, live passport whose every agent lets
// the actor act for it.
func TestTokenExchangeSubjectMustBeValid(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	f := newDelegationFleet(e)
	ctx := context.Background()
	k, err := e.a.keys.signer()
	if err != nil {
		t.Fatal(err)
	}
	genuine := e.token(f.commander, nil)
	var payload map[string]any
	_ = json.Unmarshal(decodePart(t, genuine, 1), &payload)
	// joseSign signs claims with go-jose: with the authority's own key
	// (and kid), or a stranger's.
	joseSign := func(key any, typ string, mut func(m map[string]any)) string {
		t.Helper()
		m := map[string]any{}
		b, _ := json.Marshal(payload)
		_ = json.Unmarshal(b, &m)
		m["jti"] = randomID(8)
		if mut != nil {
			mut(m)
		}
		opts := (&jose.SignerOptions{}).WithType(jose.ContentType(typ)).WithHeader("kid", k.stored.KID)
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: key}, opts)
		if err != nil {
			t.Fatal(err)
		}
		pb, _ := json.Marshal(m)
		obj, err := s.Sign(pb)
		if err != nil {
			t.Fatal(err)
		}
		out, _ := obj.CompactSerialize()
		return out
	}
	_, stranger, _ := ed25519.GenerateKey(rand.Reader)
	if res := e.exchange(f.healer, joseSign(k.priv, passport.TokenType, nil), nil, nil); res.status != 200 {
		t.Fatalf("go-jose re-signed subject with the authority's key: %d %s", res.status, res.body)
	}
	// A forged chain: the commander's passport claiming to be delegated
	// already, from an agent that does not exist, at a higher trust.
	forgedChain := joseSign(k.priv, passport.TokenType, func(m map[string]any) {
		m["act"] = map[string]any{"sub": "agt_ghost"}
		m["delegation"] = map[string]any{"depth": 1, "root": "agt_ghost", "chain": []string{"agt_ghost", f.commander.ID},
			"links": []map[string]any{{"sub": "agt_ghost", "name": "g", "type": "healer", "trust_level": "LOW", "jti": "j"}}}
	})

	cases := []struct {
		name    string
		subject string
		extra   url.Values
		actor   client.Registration
		status  int
		code    string
	}{
		{"garbage", "not-a-passport", nil, f.healer, 400, "invalid_request"},
		{"signed by a stranger", joseSign(stranger, passport.TokenType, nil), nil, f.healer, 400, "invalid_request"},
		{"typ JWT", joseSign(k.priv, "JWT", nil), nil, f.healer, 400, "invalid_request"},
		{"an inconsistent chain", forgedChain, nil, f.healer, 400, "invalid_request"},
		{"another subject_token_type", genuine, url.Values{"subject_token_type": {"urn:ietf:params:oauth:token-type:id_token"}}, f.healer, 400, "invalid_request"},
		{"no subject_token", "", nil, f.healer, 400, "invalid_request"},
		{"requested_token_type id_token", genuine, url.Values{"requested_token_type": {"urn:ietf:params:oauth:token-type:id_token"}}, f.healer, 400, "invalid_request"},
		{"actor_token_type without actor_token", genuine, url.Values{"actor_token_type": {passport.TokenTypeAccessToken}}, f.healer, 400, "invalid_request"},
		{"not in may_delegate_to", genuine, nil, f.deployer, 400, "invalid_request"},
		{"the subject itself", genuine, nil, f.commander, 400, "invalid_request"},
		{"no client authentication", genuine, nil, client.Registration{}, 401, "invalid_client"},
		{"wrong client secret", genuine, nil, client.Registration{Agent: client.Agent{ClientID: f.healer.ClientID}, ClientSecret: "cs_wrong"}, 401, "invalid_client"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := e.exchange(tc.actor, tc.subject, tc.extra, nil)
			if res.status != tc.status || res.err.Error != tc.code {
				t.Fatalf("got %d %s, want %d %s", res.status, res.body, tc.status, tc.code)
			}
		})
	}

	// A cycle: the commander may not act for the healer acting for it.
	d1, _ := e.mustExchange(f.healer, genuine, nil, nil)
	if res := e.exchange(f.commander, d1, nil, nil); res.status != 400 || !strings.Contains(res.err.Desc, "already in") {
		t.Fatalf("cycle: %d %s", res.status, res.body)
	}
	// Every agent the actor would act for must allow it: the healer lets
	// observers act for it, but a scaler listed only by the healer is
	// refused because the commander does not list scalers.
	scaler := e.register("acme", "scaler-1", "scaler", passport.TrustLow)
	h2 := e.register("acme", "healer-3", "healer", passport.TrustMedium, mayDelegate("type:scaler", "type:observer"))
	viaH2, _ := e.mustExchange(h2, genuine, nil, nil)
	if res := e.exchange(scaler, viaH2, url.Values{"scope": {"service.get"}}, nil); res.status != 400 || !strings.Contains(res.err.Desc, "earlier in") {
		t.Fatalf("root does not allow scalers: %d %s", res.status, res.body)
	}

	// Liveness: a revoked or blocked link refuses every exchange below it.
	viaHealer, _ := e.mustExchange(f.healer, genuine, nil, nil)
	if _, err := e.admin.Block(ctx, "acme", f.commander.ID, "testing"); err != nil {
		t.Fatal(err)
	}
	if res := e.exchange(f.observer, viaHealer, nil, nil); res.status != 400 || !strings.Contains(res.err.Desc, "blocked") {
		t.Fatalf("ancestor blocked: %d %s", res.status, res.body)
	}
	if res := e.exchange(f.healer, genuine, nil, nil); res.status != 400 || !strings.Contains(res.err.Desc, "subject agent is blocked") {
		t.Fatalf("subject agent blocked: %d %s", res.status, res.body)
	}
	if _, err := e.admin.Unblock(ctx, "acme", f.commander.ID); err != nil {
		t.Fatal(err)
	}
	// The unblock revoked the commander's passports: the chain below them
	// can no longer be extended.
	if res := e.exchange(f.observer, viaHealer, nil, nil); res.status != 400 || !strings.Contains(res.err.Desc, "revoked") {
		t.Fatalf("ancestor revoked: %d %s", res.status, res.body)
	}
	fresh := e.token(f.commander, nil)
	viaHealer, _ = e.mustExchange(f.healer, fresh, nil, nil)
	resp, body := e.post("/oauth2/revoke", "application/x-www-form-urlencoded", url.Values{"token": {fresh}}.Encode(), basicAuthOf(f.commander))
	if resp.StatusCode != 200 {
		t.Fatalf("revoke: %d %s", resp.StatusCode, body)
	}
	if res := e.exchange(f.observer, viaHealer, nil, nil); res.status != 400 || !strings.Contains(res.err.Desc, "revoked") {
		t.Fatalf("root passport revoked: %d %s", res.status, res.body)
	}
	// A deleted subject agent.
	gone := e.register("acme", "gone", "healer", passport.TrustHigh, mayDelegate("type:healer"))
	goneTok := e.token(gone, nil)
	if err := e.admin.DeleteAgent(ctx, "acme", gone.ID); err != nil {
		t.Fatal(err)
	}
	if res := e.exchange(f.healer, goneTok, nil, nil); res.status != 400 || res.err.Error != "invalid_request" {
		t.Fatalf("deleted subject: %d %s", res.status, res.body)
	}
	// An expired subject, even within the verifiers' leeway.
	old := e.token(f.commander, nil)
	e.clock.Advance(passport.DefaultLifetime + time.Second)
	if res := e.exchange(f.healer, old, nil, nil); res.status != 400 || !strings.Contains(res.err.Desc, "expired") {
		t.Fatalf("expired subject: %d %s", res.status, res.body)
	}
	// A blocked actor.
	if _, err := e.admin.Block(ctx, "acme", f.healer.ID, "testing"); err != nil {
		t.Fatal(err)
	}
	if res := e.exchange(f.healer, e.token(f.commander, nil), nil, nil); res.status != 400 || res.err.Error != "unauthorized_client" {
		t.Fatalf("blocked actor: %d %s", res.status, res.body)
	}
	// Token exchange turned off.
	off := newEnv(t, func(c *Config) { c.Delegation.MaxDepth = 0 }, e.rs, e.clock)
	if res := off.exchange(f.observer, e.token(f.commander, nil), nil, nil); res.status != 400 || res.err.Error != "unsupported_grant_type" {
		t.Fatalf("exchange off: %d %s", res.status, res.body)
	}
}

// The actor may authenticate with its own passport (actor_token) instead
// of client credentials; a delegated, revoked or mismatched one is refused.
func TestTokenExchangeActorToken(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	f := newDelegationFleet(e)
	subject := e.token(f.commander, nil)
	own := e.token(f.healer, nil)
	actorOnly := func(r *http.Request) { r.Header.Del("Authorization") }
	withActor := func(tok string) url.Values {
		return url.Values{"actor_token": {tok}, "actor_token_type": {passport.TokenTypeAccessToken}}
	}
	_, c := e.mustExchange(f.healer, subject, withActor(own), actorOnly)
	if c.Subject != f.healer.ID || c.Act.Sub != f.commander.ID {
		t.Fatalf("actor_token exchange: %+v", c)
	}
	if got := counter(t, e.reg, "passport_authority_passports_issued_total", "auth_method", authActorToken); got != 1 {
		t.Fatalf("issued by actor_token: %v", got)
	}
	// Both client credentials and actor_token: they must agree.
	if _, c := e.mustExchange(f.healer, subject, withActor(own), nil); c.Subject != f.healer.ID {
		t.Fatal("agreeing client and actor_token")
	}
	delegated, _ := e.mustExchange(f.healer, subject, nil, nil)
	obsOwn := e.token(f.observer, nil)
	for _, tc := range []struct {
		name  string
		actor client.Registration
		extra url.Values
		mod   func(*http.Request)
		code  string
	}{
		{"actor_token of another agent than the client", f.healer, withActor(obsOwn), nil, "invalid_request"},
		{"client_id of another agent", f.healer, url.Values{"actor_token": {own}, "actor_token_type": {passport.TokenTypeAccessToken}, "client_id": {f.observer.ID}}, actorOnly, "invalid_request"},
		{"delegated actor_token", f.observer, withActor(delegated), actorOnly, "invalid_request"},
		{"garbage actor_token", f.healer, withActor("x.y.z"), actorOnly, "invalid_request"},
		{"actor_token without its type", f.healer, url.Values{"actor_token": {own}}, actorOnly, "invalid_request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := e.exchange(tc.actor, subject, tc.extra, tc.mod)
			if res.status != 400 || res.err.Error != tc.code {
				t.Fatalf("got %d %s, want 400 %s", res.status, res.body, tc.code)
			}
		})
	}
	resp, _ := e.post("/oauth2/revoke", "application/x-www-form-urlencoded", url.Values{"token": {own}}.Encode(), basicAuthOf(f.healer))
	if resp.StatusCode != 200 {
		t.Fatal("revoke")
	}
	if res := e.exchange(f.healer, subject, withActor(own), actorOnly); res.status != 400 || !strings.Contains(res.err.Desc, "revoked") {
		t.Fatalf("revoked actor_token: %d %s", res.status, res.body)
	}
}

// Introspection follows the chain: a delegated passport is active only
// while every link is unrevoked and unblocked. An agent may revoke the
// delegated passports acting on its behalf, and no others.
func TestDelegatedIntrospectionAndRevocation(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	f := newDelegationFleet(e)
	ctx := context.Background()
	root := e.token(f.commander, nil)
	d1, _ := e.mustExchange(f.healer, root, nil, nil)
	d2, _ := e.mustExchange(f.observer, d1, nil, nil)
	active := func(tok string) bool { return e.introspect(tok, adminAuth(testAdminToken))["active"] == true }
	if !active(d1) || !active(d2) {
		t.Fatal("live chain inactive")
	}
	if _, err := e.admin.Block(ctx, "acme", f.healer.ID, "testing"); err != nil {
		t.Fatal(err)
	}
	if active(d2) || active(d1) || !active(root) {
		t.Fatal("a blocked middle link does not reach its descendants")
	}
	if _, err := e.admin.Unblock(ctx, "acme", f.healer.ID); err != nil {
		t.Fatal(err)
	}
	if active(d2) {
		t.Fatal("unblocking the middle link brought back its descendants (its passports are revoked)")
	}

	d1, _ = e.mustExchange(f.healer, root, nil, nil)
	d2, _ = e.mustExchange(f.observer, d1, nil, nil)
	revoke := func(tok string, by client.Registration) int {
		resp, _ := e.post("/oauth2/revoke", "application/x-www-form-urlencoded", url.Values{"token": {tok}}.Encode(), basicAuthOf(by))
		return resp.StatusCode
	}
	if got := revoke(d1, f.deployer); got != 400 || !active(d1) {
		t.Fatalf("an agent outside the chain revoked a delegated passport: %d", got)
	}
	if got := revoke(d2, f.commander); got != 200 || active(d2) || !active(d1) {
		t.Fatalf("root revoking a descendant: %d", got)
	}
	if got := revoke(root, f.commander); got != 200 || active(d1) {
		t.Fatalf("revoking the root passport left its descendant active: %d", got)
	}
}
