package authority

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/passport"
	"github.com/redis/go-redis/v9"
)

func (e *env) introspect(raw string, auth func(*http.Request)) map[string]any {
	e.t.Helper()
	resp, body := e.post("/oauth2/introspect", "application/x-www-form-urlencoded", url.Values{"token": {raw}}.Encode(), auth)
	if resp.StatusCode != 200 {
		e.t.Fatalf("introspect: %d %s", resp.StatusCode, body)
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		e.t.Fatal(err)
	}
	return m
}

func adminAuth(tok string) func(*http.Request) {
	return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) }
}

func basicAuthOf(reg client.Registration) func(*http.Request) {
	return func(r *http.Request) { r.SetBasicAuth(reg.ClientID, reg.ClientSecret) }
}

// subscribe returns a channel of revocation events.
func (e *env) subscribe() <-chan passport.RevocationEvent {
	e.t.Helper()
	sub := e.rdb.Subscribe(context.Background(), passport.RevocationChannel)
	if _, err := sub.Receive(context.Background()); err != nil { // wait for the subscription
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = sub.Close() })
	out := make(chan passport.RevocationEvent, 64)
	go func() {
		for m := range sub.Channel() {
			var ev passport.RevocationEvent
			if json.Unmarshal([]byte(m.Payload), &ev) == nil {
				out <- ev
			}
		}
	}()
	return out
}

func awaitEvent(t *testing.T, ch <-chan passport.RevocationEvent, within time.Duration, match func(passport.RevocationEvent) bool) passport.RevocationEvent {
	t.Helper()
	timeout := time.After(within)
	for {
		select {
		case ev := <-ch:
			if match(ev) {
				return ev
			}
		case <-timeout:
			t.Fatalf("no matching revocation event within %v", within)
		}
	}
}

// Revocation: a subscriber sees the revoked jti within one second, the jti
// is stored until the passport's expiry, introspection says inactive.
func TestRevocation(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	ag := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	raw := e.token(ag, nil)
	c, err := verifyGoJose(t, raw, e.fetchJWKS())
	if err != nil {
		t.Fatal(err)
	}
	m := e.introspect(raw, basicAuthOf(ag))
	if m["active"] != true || m["jti"] != c.ID || m["client_id"] != ag.ClientID || m["tenant"] != "acme" || m["sub"] != ag.ID {
		t.Fatalf("introspection of a live passport: %v", m)
	}
	if m := e.introspect(raw, adminAuth(testAdminToken)); m["active"] != true {
		t.Fatalf("admin introspection: %v", m)
	}

	events := e.subscribe()
	start := time.Now()
	resp, body := e.post("/oauth2/revoke", "application/x-www-form-urlencoded", url.Values{"token": {raw}, "token_type_hint": {"access_token"}}.Encode(), basicAuthOf(ag))
	if resp.StatusCode != 200 {
		t.Fatalf("revoke: %d %s", resp.StatusCode, body)
	}
	ev := awaitEvent(t, events, time.Second, func(ev passport.RevocationEvent) bool { return ev.JTI == c.ID })
	if time.Since(start) > time.Second || ev.Type != passport.EventRevoke || ev.Exp != c.ExpiresAt.Unix() || ev.Tenant != "acme" {
		t.Fatalf("event %+v after %v", ev, time.Since(start))
	}
	score, err := e.rdb.ZScore(context.Background(), passport.RevokedKey, c.ID).Result()
	if err != nil || int64(score) != c.ExpiresAt.Unix() {
		t.Fatalf("revoked zset score %v (%v), want exp %d", score, err, c.ExpiresAt.Unix())
	}
	if m := e.introspect(raw, basicAuthOf(ag)); m["active"] != false || len(m) != 1 {
		t.Fatalf("introspection after revoke: %v", m)
	}
	if len(e.sink.kinds(audit.KindRevocation)) != 1 {
		t.Fatal("no revocation audit record")
	}

	// RFC 7009: unknown and garbage tokens answer 200.
	for _, tok := range []string{"not-a-token", "a.b.c", raw} {
		resp, _ := e.post("/oauth2/revoke", "application/x-www-form-urlencoded", url.Values{"token": {tok}}.Encode(), basicAuthOf(ag))
		if resp.StatusCode != 200 {
			t.Fatalf("revoke %q: %d", tok, resp.StatusCode)
		}
	}
	// Unauthenticated callers are refused.
	resp, _ = e.post("/oauth2/revoke", "application/x-www-form-urlencoded", url.Values{"token": {raw}}.Encode(), nil)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("unauthenticated revoke: %d", resp.StatusCode)
	}
	resp, _ = e.post("/oauth2/introspect", "application/x-www-form-urlencoded", url.Values{"token": {raw}}.Encode(), adminAuth("not-the-admin-token-at-all"))
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("introspect with a bad admin token: %d", resp.StatusCode)
	}
	// Expired revocations are pruned by the key loop's tick.
	e.clock.Advance(passport.DefaultLifetime + time.Minute)
	e.a.tick(context.Background())
	if _, err := e.rdb.ZScore(context.Background(), passport.RevokedKey, c.ID).Result(); !errors.Is(err, redis.Nil) {
		t.Fatalf("expired revocation not pruned: %v", err)
	}
	if m := e.introspect(raw, basicAuthOf(ag)); m["active"] != false {
		t.Fatalf("expired passport introspects active: %v", m)
	}
}

func TestAgentMayRevokeOnlyItsOwn(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	a1 := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	a2 := e.register("acme", "healer-2", "healer", passport.TrustHigh)
	raw := e.token(a1, nil)
	resp, _ := e.post("/oauth2/revoke", "application/x-www-form-urlencoded", url.Values{"token": {raw}}.Encode(), basicAuthOf(a2))
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("revoking another agent's passport: %d", resp.StatusCode)
	}
	if m := e.introspect(raw, basicAuthOf(a1)); m["active"] != true {
		t.Fatal("passport revoked by another agent")
	}
}

// Tenant isolation: a tenant admin cannot see or change another tenant's
// agents; an agent cannot obtain a passport for another tenant nor
// introspect another tenant's passports.
func TestTenantIsolation(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	acme := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	globex := e.register("globex", "healer-1", "healer", passport.TrustHigh)
	acmeAdmin, err := client.NewAdmin(e.srv.URL, acmeAdminToken, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	// Its own tenant works.
	if _, err := acmeAdmin.GetAgent(ctx, "acme", acme.ID); err != nil {
		t.Fatalf("acme admin on acme: %v", err)
	}
	if list, err := acmeAdmin.ListAgents(ctx, "acme"); err != nil || len(list) != 1 || list[0].ID != acme.ID {
		t.Fatalf("acme list: %v %v", list, err)
	}
	// Another tenant: 403 for every operation.
	ops := map[string]func() error{
		"list": func() error { _, err := acmeAdmin.ListAgents(ctx, "globex"); return err },
		"get":  func() error { _, err := acmeAdmin.GetAgent(ctx, "globex", globex.ID); return err },
		"register": func() error {
			_, err := acmeAdmin.RegisterAgent(ctx, "globex", client.AgentSpec{Name: "x", Type: "healer", TrustLevel: "HIGH"})
			return err
		},
		"block":   func() error { _, err := acmeAdmin.Block(ctx, "globex", globex.ID, "nope"); return err },
		"unblock": func() error { _, err := acmeAdmin.Unblock(ctx, "globex", globex.ID); return err },
		"outcome": func() error { _, err := acmeAdmin.ReportOutcome(ctx, "globex", globex.ID, "denied"); return err },
		"delete":  func() error { return acmeAdmin.DeleteAgent(ctx, "globex", globex.ID) },
		"rotate":  func() error { _, err := acmeAdmin.RotateKeys(ctx); return err },
	}
	for name, op := range ops {
		t.Run(name, func(t *testing.T) {
			if err := op(); !errors.Is(err, client.ErrForbidden) {
				t.Fatalf("acme admin %s on globex: %v, want 403", name, err)
			}
		})
	}
	// Another tenant's agent id under its own tenant path: 404.
	if _, err := acmeAdmin.GetAgent(ctx, "acme", globex.ID); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("globex agent via acme path: %v", err)
	}
	if _, err := acmeAdmin.Block(ctx, "acme", globex.ID, "x"); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("block globex agent via acme path: %v", err)
	}
	g, err := e.admin.GetAgent(ctx, "globex", globex.ID)
	if err != nil || g.Blocked {
		t.Fatalf("globex agent changed: %+v %v", g, err)
	}
	// No token / wrong token: 401.
	bad, _ := client.NewAdmin(e.srv.URL, "wrong-token-wrong-token", client.Options{})
	if _, err := bad.ListAgents(ctx, "acme"); !errors.Is(err, client.ErrUnauthenticated) {
		t.Fatalf("wrong admin token: %v", err)
	}

	// An acme agent cannot get a globex passport, and its passport says acme.
	form := url.Values{"grant_type": {"client_credentials"}, "tenant": {"globex"}}
	resp, body := e.postForm("/oauth2/token", form, acme.ClientID, acme.ClientSecret)
	if resp.StatusCode != 400 {
		t.Fatalf("acme agent asking for globex: %d %s", resp.StatusCode, body)
	}
	raw := e.token(acme, nil)
	c, err := verifyGoJose(t, raw, e.fetchJWKS())
	if err != nil || c.Tenant != "acme" {
		t.Fatalf("tenant claim %q (%v)", c.Tenant, err)
	}
	// A globex agent or the acme admin cannot introspect... only the acme
	// side sees it active.
	if m := e.introspect(raw, basicAuthOf(globex)); m["active"] != false {
		t.Fatalf("globex agent introspecting acme passport: %v", m)
	}
	graw := e.token(globex, nil)
	if m := e.introspect(graw, adminAuth(acmeAdminToken)); m["active"] != false {
		t.Fatalf("acme admin introspecting globex passport: %v", m)
	}
	if m := e.introspect(raw, adminAuth(acmeAdminToken)); m["active"] != true {
		t.Fatalf("acme admin introspecting acme passport: %v", m)
	}
}

// Reputation: enough failures block the agent, revoke its passports, and
// refuse new ones; unblock restores it.
func TestReputationBlocksAndUnblockRestores(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	ctx := context.Background()
	rogue := e.register("acme", "rogue", "observer", passport.TrustLow)
	healer := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	p1 := e.token(rogue, nil)
	p2 := e.token(rogue, url.Values{"scope": {"service.list"}})
	c1, _ := verifyGoJose(t, p1, e.fetchJWKS())
	c2, _ := verifyGoJose(t, p2, e.fetchJWKS())
	events := e.subscribe()

	// LOW baseline 60, denied -10, block below 25: the fourth denial blocks.
	var last client.OutcomeResult
	for i := range 4 {
		var err error
		last, err = e.admin.ReportOutcome(ctx, "acme", rogue.ID, client.OutcomeDenied)
		if err != nil {
			t.Fatal(err)
		}
		if i < 3 && (last.Blocked || last.AutoBlocked) {
			t.Fatalf("blocked after %d denials (score %v)", i+1, last.Reputation)
		}
	}
	if !last.Blocked || !last.AutoBlocked || last.Reputation != 20 || last.Previous != 30 {
		t.Fatalf("after 4 denials: %+v", last)
	}
	// The block is published; the block alone refuses the outstanding
	// passports, none is enumerated or revoked (constant time).
	ev := awaitEvent(t, events, time.Second, func(passport.RevocationEvent) bool { return true })
	if ev.Type != passport.EventBlock || ev.AgentID != rogue.ID || ev.Tenant != "acme" {
		t.Fatalf("first event after the block: %+v", ev)
	}
	if n, _ := e.rdb.ZCard(ctx, passport.RevokedKey).Result(); n != 0 {
		t.Fatalf("%d revocations written by a block", n)
	}
	if ok, _ := e.rdb.SIsMember(ctx, passport.BlockedKey, passport.BlockedMember("acme", rogue.ID)).Result(); !ok {
		t.Fatal("not in the blocked set")
	}
	if v, _ := e.rdb.HGet(ctx, passport.AgentKey("acme", rogue.ID), passport.FieldBlocked).Result(); v != "1" {
		t.Fatalf("blocked field %q", v)
	}
	if m := e.introspect(p1, basicAuthOf(healer)); m["active"] != false {
		t.Fatal("revoked passport introspects active")
	}
	// New passports are refused with a clear reason.
	resp, body := e.postForm("/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, rogue.ClientID, rogue.ClientSecret)
	var oe oauthErr
	_ = json.Unmarshal(body, &oe)
	if resp.StatusCode != 400 || oe.Error != "unauthorized_client" || oe.Desc != "agent is blocked: reputation 20.0 fell below 25.0" {
		t.Fatalf("token for a blocked agent: %d %s", resp.StatusCode, body)
	}
	// The block is recorded with its cause.
	recs := e.sink.kinds(audit.KindAgentBlocked)
	if len(recs) != 1 {
		t.Fatalf("%d agent_blocked records", len(recs))
	}
	var d map[string]any
	_ = json.Unmarshal(recs[0].Details, &d)
	if d["agent_id"] != rogue.ID || d["cause"] == "" || d["reason"] == "" || recs[0].Tenant != "acme" {
		t.Fatalf("agent_blocked details %v", d)
	}
	if n := len(e.sink.kinds(audit.KindReputation)); n != 4 {
		t.Fatalf("%d reputation records, want 4", n)
	}
	if counter(t, e.reg, "passport_authority_agent_blocks_total", "cause", "reputation") != 1 ||
		counter(t, e.reg, "passport_authority_revocations_total", "cause", "block") != 0 ||
		counter(t, e.reg, "passport_authority_reputation_updates_total", "outcome", "denied") != 4 {
		t.Fatal("metrics do not show the block")
	}
	// More denials while blocked do not block twice.
	if r, err := e.admin.ReportOutcome(ctx, "acme", rogue.ID, client.OutcomeDenied); err != nil || r.AutoBlocked {
		t.Fatalf("denial while blocked: %+v %v", r, err)
	}

	// Unblock restores: baseline reputation, passports again. The
	// passports from before the block stay dead: they are revoked, and
	// announced before the unblock.
	ag, err := e.admin.Unblock(ctx, "acme", rogue.ID)
	if err != nil || ag.Blocked || ag.Reputation != 60 {
		t.Fatalf("unblock: %+v %v", ag, err)
	}
	if ok, _ := e.rdb.SIsMember(ctx, passport.BlockedKey, passport.BlockedMember("acme", rogue.ID)).Result(); ok {
		t.Fatal("still in the blocked set")
	}
	seen := map[string]bool{}
	for !seen["unblock"] {
		ev := awaitEvent(t, events, time.Second, func(passport.RevocationEvent) bool { return true })
		switch {
		case ev.Type == passport.EventRevoke && (ev.JTI == c1.ID || ev.JTI == c2.ID):
			seen[ev.JTI] = true
		case ev.Type == passport.EventUnblock && ev.AgentID == rogue.ID:
			if !seen[c1.ID] || !seen[c2.ID] {
				t.Fatalf("unblock announced before the revocations: %v", seen)
			}
			seen["unblock"] = true
		}
	}
	for _, jti := range []string{c1.ID, c2.ID} {
		if _, err := e.rdb.ZScore(ctx, passport.RevokedKey, jti).Result(); err != nil {
			t.Fatalf("jti %s not in the revoked set: %v", jti, err)
		}
	}
	for _, p := range []string{p1, p2} {
		if m := e.introspect(p, basicAuthOf(healer)); m["active"] != false {
			t.Fatal("unblock resurrected a passport from before the block")
		}
	}
	if counter(t, e.reg, "passport_authority_revocations_total", "cause", "block") != 2 {
		t.Fatal("revocations on unblock not counted")
	}
	if p := e.token(rogue, nil); p == "" {
		t.Fatal("no passport after unblock")
	}
	if len(e.sink.kinds(audit.KindAgentUnblocked)) != 1 {
		t.Fatal("no agent_unblocked record")
	}
}

func TestReputationLowersTrustAndDrifts(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	ctx := context.Background()
	h := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	// HIGH baseline 90; two failures (-5 each) -> 80 (still HIGH), a third -> 75 (MEDIUM).
	for range 3 {
		if _, err := e.admin.ReportOutcome(ctx, "acme", h.ID, client.OutcomeFailure); err != nil {
			t.Fatal(err)
		}
	}
	c, err := verifyGoJose(t, e.token(h, nil), e.fetchJWKS())
	if err != nil {
		t.Fatal(err)
	}
	if c.Agent.TrustLevel != passport.TrustMedium || c.Agent.Reputation != 75 {
		t.Fatalf("after 3 failures: trust %s reputation %d", c.Agent.TrustLevel, c.Agent.Reputation)
	}
	// The proxy's view of the hash gives the same live score.
	m, _ := e.rdb.HGetAll(ctx, passport.AgentKey("acme", h.ID)).Result()
	if got := reputationFromHash(m).At(e.clock.Now()); got != 75 {
		t.Fatalf("hash reputation %v", got)
	}
	// One half-life later it is halfway back to 90: 82.5, HIGH again.
	e.clock.Advance(time.Hour)
	ag, err := e.admin.GetAgent(ctx, "acme", h.ID)
	if err != nil || ag.Reputation != 82.5 || ag.EffectiveTrustLevel != passport.TrustHigh {
		t.Fatalf("after drift: %+v %v", ag, err)
	}
	c, _ = verifyGoJose(t, e.token(h, nil), e.fetchJWKS())
	if c.Agent.TrustLevel != passport.TrustHigh {
		t.Fatalf("trust after drift %s", c.Agent.TrustLevel)
	}
	// Success raises, capped at 100.
	for range 30 {
		if _, err := e.admin.ReportOutcome(ctx, "acme", h.ID, client.OutcomeSuccess); err != nil {
			t.Fatal(err)
		}
	}
	if ag, _ := e.admin.GetAgent(ctx, "acme", h.ID); ag.Reputation != 100 {
		t.Fatalf("reputation %v, want capped at 100", ag.Reputation)
	}
	// A registered LOW agent never gets more than LOW however good.
	o := e.register("acme", "observer-1", "observer", passport.TrustLow)
	c, _ = verifyGoJose(t, e.token(o, nil), e.fetchJWKS())
	if c.Agent.TrustLevel != passport.TrustLow {
		t.Fatalf("LOW agent got %s", c.Agent.TrustLevel)
	}
}

func TestConcurrentOutcomesLoseNothing(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Reputation.BlockBelow = 0; c.Reputation.MediumMin = 0 }, nil, nil)
	h := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	ctx := context.Background()
	errs := make(chan error, 20)
	for range 20 {
		go func() {
			_, err := e.a.RecordOutcome(ctx, "acme", h.ID, client.OutcomeFailure, "")
			errs <- err
		}()
	}
	for range 20 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	ag, _ := e.admin.GetAgent(ctx, "acme", h.ID)
	if ag.Reputation != 0 { // 90 - 20*5 clamped at 0 ... every update applied
		t.Fatalf("reputation %v", ag.Reputation)
	}
	h2 := e.register("acme", "healer-2", "healer", passport.TrustHigh)
	for range 10 {
		go func() {
			_, err := e.a.RecordOutcome(ctx, "acme", h2.ID, client.OutcomeFailure, "")
			errs <- err
		}()
	}
	for range 10 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if ag, _ := e.admin.GetAgent(ctx, "acme", h2.ID); ag.Reputation != 40 {
		t.Fatalf("10 concurrent failures: reputation %v, want 40", ag.Reputation)
	}
}

func TestAdminBlockAndDelete(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	ctx := context.Background()
	h := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	raw := e.token(h, nil)
	ag, err := e.admin.Block(ctx, "acme", h.ID, "suspicious restarts")
	if err != nil || !ag.Blocked || ag.BlockedReason != "suspicious restarts" || ag.BlockedAt == nil {
		t.Fatalf("block: %+v %v", ag, err)
	}
	if m := e.introspect(raw, adminAuth(testAdminToken)); m["active"] != false {
		t.Fatal("passport alive after block")
	}
	c, err := client.New(e.srv.URL, h.ClientID, passport.Secret(h.ClientSecret), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Token(ctx, client.TokenRequest{})
	var ce *client.Error
	if !errors.Is(err, client.ErrBlocked) || !errors.As(err, &ce) || ce.Description != "agent is blocked: suspicious restarts" {
		t.Fatalf("token for blocked agent: %v", err)
	}
	if _, err := e.admin.Unblock(ctx, "acme", h.ID); err != nil {
		t.Fatal(err)
	}
	raw = e.token(h, nil)
	if err := e.admin.DeleteAgent(ctx, "acme", h.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.GetAgent(ctx, "acme", h.ID); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("get deleted: %v", err)
	}
	if m := e.introspect(raw, adminAuth(testAdminToken)); m["active"] != false {
		t.Fatal("passport of a deleted agent alive")
	}
	resp, _ := e.postForm("/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, h.ClientID, h.ClientSecret)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("token for a deleted agent: %d", resp.StatusCode)
	}
	if list, _ := e.admin.ListAgents(ctx, "acme"); slices.ContainsFunc(list, func(a client.Agent) bool { return a.ID == h.ID }) {
		t.Fatal("deleted agent listed")
	}
}

func TestRegisterValidation(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	cases := []struct {
		name string
		body string
		code int
	}{
		{"unknown type", `{"name":"a","type":"wizard","trust_level":"HIGH"}`, 400},
		{"bad trust", `{"name":"a","type":"healer","trust_level":"ROOT"}`, 400},
		{"bad name", `{"name":"a b/c","type":"healer","trust_level":"HIGH"}`, 400},
		{"unknown capability", `{"name":"a","type":"healer","trust_level":"HIGH","capabilities":["root.shell"]}`, 400},
		{"private JWK", `{"name":"a","type":"healer","trust_level":"HIGH","public_key":"{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"AAAA\",\"d\":\"BBBB\"}"}`, 400},
		{"garbage key", `{"name":"a","type":"healer","trust_level":"HIGH","public_key":"hello"}`, 400},
		{"unknown field", `{"name":"a","type":"healer","trust_level":"HIGH","admin":true}`, 400},
		{"not json", `{`, 400},
		{"bad tenant", ``, 400},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := "/v1/tenants/acme/agents"
			if tc.name == "bad tenant" {
				path = "/v1/tenants/ACME%7B/agents"
				tc.body = `{"name":"a","type":"healer","trust_level":"HIGH"}`
			}
			resp, body := e.post(path, "application/json", tc.body, adminAuth(testAdminToken))
			if resp.StatusCode != tc.code || resp.Header.Get("Content-Type") != "application/problem+json" {
				t.Fatalf("%d %s %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
			}
		})
	}
	// Explicit capabilities and lower-case trust are accepted; the secret
	// is stored only as a bcrypt hash.
	reg := e.register("acme", "custom", "observer", "low", func(s *client.AgentSpec) { s.Capabilities = []string{"service.get", "cache.warm", "cache.warm"} })
	if !slices.Equal(reg.Capabilities, []string{"cache.warm", "service.get"}) || reg.TrustLevel != passport.TrustLow || reg.ClientSecret == "" {
		t.Fatalf("registration %+v", reg)
	}
	m, _ := e.rdb.HGetAll(context.Background(), passport.AgentKey("acme", reg.ID)).Result()
	for k, v := range m {
		if v == reg.ClientSecret || (len(reg.ClientSecret) > 10 && strings.Contains(v, reg.ClientSecret[3:])) {
			t.Fatalf("secret stored in field %s", k)
		}
	}
	if len(m[fieldSecretHash]) < 59 || m[fieldSecretHash][:4] != "$2a$" {
		t.Fatalf("secret hash %q", m[fieldSecretHash])
	}
	if _, err := e.admin.GetAgent(context.Background(), "acme", reg.ID); err != nil {
		t.Fatal(err)
	}
}

// A block happens even when the audit store is down; the failure is
// counted, not swallowed silently.
func TestBlockSurvivesAuditFailure(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	ctx := context.Background()
	h := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	e.sink.mu.Lock()
	e.sink.err = errors.New("audit store down")
	e.sink.mu.Unlock()
	ag, err := e.admin.Block(ctx, "acme", h.ID, "incident")
	if err != nil || !ag.Blocked {
		t.Fatalf("block with audit down: %+v %v", ag, err)
	}
	if ok, _ := e.rdb.SIsMember(ctx, passport.BlockedKey, passport.BlockedMember("acme", h.ID)).Result(); !ok {
		t.Fatal("not blocked")
	}
	if n := counter(t, e.reg, "passport_authority_audit_errors_total"); n != 1 {
		t.Fatalf("audit errors %v", n)
	}
}
