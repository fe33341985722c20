package proxy

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/problem"
	"github.com/agentpassport/passport/passport"
	"github.com/agentpassport/passport/proxy/internal/testkeys"
)

func TestAllowForwardsWithIdentity(t *testing.T) {
	h := newHarness(t)
	_, tok := h.healer()
	r := h.do("POST", "/services/checkout/restart?b=2&a=1", tok, map[string]string{
		"X-Request-Id":           "caller-id-123",
		"X-Passport-Agent":       "root",
		"x-passport-tenant":      "globex",
		"X_Passport_Agent":       "root",
		"X.Passport.Agent":       "root",
		"X-PASSPORT-REQUEST-ID":  "forged",
		"X-Passport":             "forged",
		"X-Http-Method-Override": "DELETE",
		"X-Forwarded-For":        "10.9.9.9",
		"Connection":             "X-Keep-Me",
		"X-Keep-Me":              "hop",
	}, "")
	if r.status != 200 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	// The proxy's own request id, never the caller's (requestid_test.go).
	id := r.header.Get("X-Request-Id")
	if got := r.header.Values("X-Request-Id"); len(got) != 1 || got[0] == "caller-id-123" || len(got[0]) != 32 {
		t.Fatalf("X-Request-Id %v, want exactly the proxy's own id", got)
	}
	req, _ := h.up.lastReq()
	if req.URL.Path != "/services/checkout/restart" || req.URL.RawQuery != "a=1&b=2" {
		t.Fatalf("upstream got %s?%s", req.URL.Path, req.URL.RawQuery)
	}
	for k, v := range req.Header {
		if isIdentityHeader(k) && k != HeaderAgent && k != HeaderTenant && k != HeaderRequestID {
			t.Errorf("identity header %s=%v reached the upstream", k, v)
		}
	}
	if got := req.Header.Values(HeaderAgent); len(got) != 1 || got[0] != "healer-1" {
		t.Errorf("%s = %v", HeaderAgent, got)
	}
	if got := req.Header.Values(HeaderTenant); len(got) != 1 || got[0] != "acme" {
		t.Errorf("%s = %v", HeaderTenant, got)
	}
	if got := req.Header.Get(HeaderRequestID); got != id {
		t.Errorf("%s = %q", HeaderRequestID, got)
	}
	if req.Header.Get("Authorization") != "" {
		t.Error("the passport was forwarded upstream")
	}
	if req.Header.Get("X-Http-Method-Override") != "" || req.Header.Get("X-Keep-Me") != "" {
		t.Error("method override or a Connection-named header reached the upstream")
	}
	if xff := req.Header.Get("X-Forwarded-For"); xff != "127.0.0.1" {
		t.Errorf("X-Forwarded-For %q: client-sent values must be replaced", xff)
	}
	// Write-ahead record before the outcome.
	recs := h.sink.byRequest(id)
	waitFor(t, "outcome record", func() bool { recs = h.sink.byRequest(id); return len(recs) == 2 })
	if recs[0].ClientRequestID != "caller-id-123" {
		t.Fatalf("the caller's id is not kept beside the proxy's: %q", recs[0].ClientRequestID)
	}
	// The outcome is minimal: its decision record holds the rest.
	if o := recs[1]; o.Kind != audit.KindOutcome || o.Status != 200 || o.AgentID == "" || o.Path != "" || o.ClientRequestID != "" || len(o.Input) != 0 {
		t.Fatalf("outcome record %+v", o)
	}
	if recs[0].Kind != audit.KindDecision || recs[0].Decision != audit.DecisionAllow || recs[0].Action != "service.restart" ||
		recs[0].Resource != "checkout" || recs[0].PolicyRevision == "" || recs[0].Tenant != "acme" || len(recs[0].Input) == 0 {
		t.Fatalf("decision record %+v", recs[0])
	}
	if recs[1].Kind != audit.KindOutcome || recs[1].Status != 200 {
		t.Fatalf("outcome record %+v", recs[1])
	}
	var in map[string]any
	full := h.sink.input(t, recs[0])
	if err := json.Unmarshal(full, &in); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(full), "Bearer") || strings.Contains(string(full), tok) {
		t.Fatal("the audit input holds the passport")
	}
	for _, k := range []string{"version", "time", "tenant", "action", "resource", "route", "request", "passport", "agent"} {
		if _, ok := in[k]; !ok {
			t.Errorf("input lacks %q", k)
		}
	}
}

// Test401 is every refused passport; the upstream must see nothing.
func Test401(t *testing.T) {
	h := newHarness(t)
	h.agent("acme", "healer-1", 90)
	h.agent("acme", "blocked-1", 90)
	h.agent("globex", "g-1", 90)
	now := h.now()
	valid := func() *passport.Claims {
		return testkeys.Claims(now, "acme", "healer-1", "healer", passport.TrustHigh, "chaos.inject", "service.get")
	}
	sign := func(c *passport.Claims) string { return h.keys.Sign(t, c) }
	header := `{"alg":"EdDSA","typ":"at+jwt","kid":"ed-1"}`
	payload := func(mut func(m map[string]any)) string {
		b, _ := json.Marshal(valid())
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		if mut != nil {
			mut(m)
		}
		out, _ := json.Marshal(m)
		return string(out)
	}
	revoked := valid()
	revoked.ID = "jti-revoked"
	h.rdb.ZAdd(context.Background(), passport.RevokedKey, redisZ(revoked.ExpiresAt.Unix(), "jti-revoked"))
	h.rdb.Publish(context.Background(), passport.RevocationChannel, passport.RevocationEvent{Type: passport.EventRevoke, JTI: "jti-revoked", Exp: revoked.ExpiresAt.Unix()}.Marshal())
	h.rdb.SAdd(context.Background(), passport.BlockedKey, passport.BlockedMember("acme", "blocked-1"))
	h.rdb.Publish(context.Background(), passport.RevocationChannel, passport.RevocationEvent{Type: passport.EventBlock, Tenant: "acme", AgentID: "blocked-1"}.Marshal())
	blocked := testkeys.Claims(now, "acme", "blocked-1", "healer", passport.TrustHigh, "chaos.inject")
	other := testkeys.Claims(now, "globex", "g-1", "healer", passport.TrustHigh, "chaos.inject")
	unknownKey := h.keys.AddEd("ed-2") // served, but sign with a key nobody serves:
	_ = unknownKey
	strangerKey := testkeys.SignEdWith(t, mustEd(t), "ed-9", valid())

	cases := []struct {
		name, auth string // auth is the whole Authorization header; "" sends none
		reason     string
	}{
		{"no token", "", "no_passport"},
		{"other scheme", "Basic dXNlcjpwYXNz", "no_passport"},
		{"malformed", "Bearer not-a-jwt", "malformed"},
		{"bad base64", "Bearer e30.e30!.sig", "malformed"},
		{"padded base64", "Bearer " + strings.Replace(sign(valid()), ".", "=.", 1), "malformed"},
		{"alg none", "Bearer " + b64s(`{"alg":"none","typ":"at+jwt","kid":"ed-1"}`) + "." + b64s(payload(nil)) + ".", "malformed"},
		{"alg none with sig", "Bearer " + b64s(`{"alg":"none","typ":"at+jwt","kid":"ed-1"}`) + "." + b64s(payload(nil)) + ".c2ln", "bad_algorithm"},
		{"HS256 with the public key", "Bearer " + h.keys.SignRaw(t, `{"alg":"HS256","typ":"at+jwt","kid":"ed-1"}`, payload(nil), h.keys.EdPublic()), "bad_algorithm"},
		{"ES256 header on the Ed25519 key", "Bearer " + h.keys.SignRaw(t, `{"alg":"ES256","typ":"at+jwt","kid":"ed-1"}`, payload(nil), nil), "bad_algorithm"},
		{"unknown kid after refresh", "Bearer " + strangerKey, "unknown_key"},
		{"tampered payload", "Bearer " + tamper(sign(valid())), "bad_signature"},
		{"expired", "Bearer " + sign(withTimes(valid(), now.Add(-10*time.Minute), now.Add(-time.Minute))), "expired"},
		{"not yet valid", "Bearer " + sign(withNbf(valid(), now.Add(time.Minute))), "not_yet_valid"},
		{"issued in the future", "Bearer " + sign(withTimes(valid(), now.Add(2*time.Minute), now.Add(5*time.Minute))), "not_yet_valid"},
		{"wrong aud", "Bearer " + sign(withAud(valid(), "other-proxy")), "bad_audience"},
		{"wrong iss", "Bearer " + sign(withIss(valid(), "http://evil.test")), "bad_issuer"},
		{"wrong typ", "Bearer " + h.keys.SignRaw(t, `{"alg":"EdDSA","typ":"JWT","kid":"ed-1"}`, payload(nil), nil), "bad_header"},
		{"no typ", "Bearer " + h.keys.SignRaw(t, `{"alg":"EdDSA","kid":"ed-1"}`, payload(nil), nil), "bad_header"},
		{"no kid", "Bearer " + h.keys.SignRaw(t, `{"alg":"EdDSA","typ":"at+jwt"}`, payload(nil), nil), "bad_header"},
		{"crit", "Bearer " + h.keys.SignRaw(t, `{"alg":"EdDSA","typ":"at+jwt","kid":"ed-1","crit":["exp"]}`, payload(nil), nil), "bad_header"},
		{"jku", "Bearer " + h.keys.SignRaw(t, `{"alg":"EdDSA","typ":"at+jwt","kid":"ed-1","jku":"http://evil.test/jwks"}`, payload(nil), nil), "bad_header"},
		{"embedded jwk", "Bearer " + h.keys.SignRaw(t, `{"alg":"EdDSA","typ":"at+jwt","kid":"ed-1","jwk":{"kty":"OKP"}}`, payload(nil), nil), "bad_header"},
		{"duplicate header key", "Bearer " + h.keys.SignRaw(t, `{"alg":"EdDSA","typ":"JWT","typ":"at+jwt","kid":"ed-1"}`, payload(nil), nil), "bad_header"},
		{"missing exp", "Bearer " + h.keys.SignRaw(t, header, payload(func(m map[string]any) { delete(m, "exp") }), nil), "bad_claims"},
		{"exp as string", "Bearer " + h.keys.SignRaw(t, header, payload(func(m map[string]any) { m["exp"] = "9999999999" }), nil), "bad_claims"},
		{"duplicate iss", "Bearer " + h.keys.SignRaw(t, header, strings.Replace(payload(nil), `"iss":`, `"iss":"http://evil.test","iss":`, 1), nil), "bad_claims"},
		{"ISS in upper case", "Bearer " + h.keys.SignRaw(t, header, payload(func(m map[string]any) { m["ISS"] = m["iss"]; delete(m, "iss") }), nil), "bad_claims"},
		{"tenant via Unicode folding", "Bearer " + h.keys.SignRaw(t, header, payload(func(m map[string]any) { m["tenan\u017f"] = "globex" }), nil), "bad_claims"},
		{"invalid utf-8", "Bearer " + h.keys.SignRaw(t, header, strings.Replace(payload(nil), `"acme"`, "\"acm\xff\"", 1), nil), "bad_claims"},
		{"lifetime too long", "Bearer " + sign(withTimes(valid(), now, now.Add(2*time.Hour))), "lifetime_too_long"},
		{"revoked", "Bearer " + sign(revoked), "revoked"},
		{"agent blocked", "Bearer " + sign(blocked), "agent_blocked"},
		{"another tenant's passport", "Bearer " + sign(other), "tenant_mismatch"},
		{"unregistered agent", "Bearer " + sign(testkeys.Claims(now, "acme", "ghost", "healer", passport.TrustHigh, "chaos.inject")), "agent_unknown"},
		{"oversized token", "Bearer " + strings.Repeat("a", 16<<10), "token_too_large"},
		{"two Authorization headers", "", "malformed"},
	}
	waitFor(t, "revocation and block events", func() bool {
		h.p.revoked.mu.RLock()
		defer h.p.revoked.mu.RUnlock()
		a := h.p.revoked.revoked.has("jti-revoked")
		_, b := h.p.revoked.blocked["acme/blocked-1"]
		return a && b
	})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := h.up.hits.Load()
			req, _ := http.NewRequest("POST", h.url+"/faults/checkout", nil)
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			if tc.name == "two Authorization headers" {
				req.Header["Authorization"] = []string{"Bearer " + sign(valid()), "Bearer " + sign(other)}
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var p problem.Details
			_ = json.NewDecoder(res.Body).Decode(&p)
			res.Body.Close()
			if res.StatusCode != 401 {
				t.Fatalf("status %d (%+v), want 401", res.StatusCode, p)
			}
			if h.up.hits.Load() != before {
				t.Fatal("the upstream saw the request")
			}
			ch := res.Header.Get("WWW-Authenticate")
			if !strings.HasPrefix(ch, "Bearer ") || !strings.Contains(ch, "resource_metadata=") {
				t.Fatalf("WWW-Authenticate %q", ch)
			}
			if tc.reason != "no_passport" && !strings.Contains(ch, `error="invalid_token"`) {
				t.Fatalf("WWW-Authenticate %q lacks error=\"invalid_token\"", ch)
			}
			if tc.reason == "no_passport" && strings.Contains(ch, "error=") {
				t.Fatalf("no passport must not carry an error code (RFC 6750 §3.1): %q", ch)
			}
			if len(p.Reasons) != 1 || p.Reasons[0] != tc.reason {
				t.Fatalf("reasons %v, want %s", p.Reasons, tc.reason)
			}
			if res.Header.Get("X-Request-Id") == "" || p.RequestID != res.Header.Get("X-Request-Id") {
				t.Fatal("no request id")
			}
		})
	}
	if h.keys.Fetches.Load() < 2 {
		t.Fatalf("JWKS fetched %d times; an unknown kid must trigger a refresh", h.keys.Fetches.Load())
	}
}

func TestCachedPassportStillExpires(t *testing.T) {
	h := newHarness(t)
	c, tok := h.healer()
	if r := h.do("GET", "/services/checkout", tok, nil, ""); r.status != 200 {
		t.Fatalf("status %d", r.status)
	}
	h.offset.Store(int64(c.ExpiresAt.Sub(h.now()) + h.p.cfg.Leeway + time.Second))
	if r := h.do("GET", "/services/checkout", tok, nil, ""); r.status != 401 || !strings.Contains(r.header.Get("WWW-Authenticate"), "expired") {
		t.Fatalf("status %d %q: a cached passport must still expire", r.status, r.header.Get("WWW-Authenticate"))
	}
}

func TestKeyRotationUnknownKID(t *testing.T) {
	h := newHarness(t)
	c, _ := h.healer()
	k2 := h.keys.AddEd("ed-2") // the authority rotates after the proxy fetched
	tok := testkeys.SignEdWith(t, k2, "ed-2", c)
	if r := h.do("GET", "/services/checkout", tok, nil, ""); r.status != 200 {
		t.Fatalf("status %d: a new kid must trigger a refresh", r.status)
	}
	// ES256 passports verify too.
	if r := h.do("GET", "/services/checkout", h.keys.SignES256(t, c), nil, ""); r.status != 200 {
		t.Fatalf("ES256 status %d", r.status)
	}
}

func TestPolicyDeny(t *testing.T) {
	h := newHarness(t)
	h.agent("acme", "obs-1", 90)
	c := testkeys.Claims(h.now(), "acme", "obs-1", "observer", passport.TrustLow, "service.list", "service.get")
	tok := h.keys.Sign(t, c)
	r := h.do("POST", "/services/checkout/restart", tok, nil, "")
	if r.status != 403 || r.header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("status %d %s", r.status, r.header.Get("Content-Type"))
	}
	var p problem.Details
	if err := json.Unmarshal([]byte(r.body), &p); err != nil {
		t.Fatal(err)
	}
	if p.Action != "service.restart" || p.Resource != "checkout" || p.RequestID != r.header.Get("X-Request-Id") ||
		strings.Join(p.Reasons, ",") != "action_not_granted,trust_level_too_low" || p.Code != "policy_denied" {
		t.Fatalf("problem %+v", p)
	}
	if h.up.hits.Load() != 0 {
		t.Fatal("a denied call reached the upstream")
	}
	recs := h.sink.byRequest(p.RequestID)
	if len(recs) != 1 || recs[0].Decision != audit.DecisionDeny || len(recs[0].Reasons) != 2 {
		t.Fatalf("records %+v", recs)
	}
	// The body reaches the policy on routes that opt in.
	_, htok := h.healer()
	if r := h.do("POST", "/services/checkout/scale", htok, nil, `{"replicas": 50}`); r.status != 403 || !strings.Contains(r.body, "replicas_out_of_bounds") {
		t.Fatalf("scale 50: %d %s", r.status, r.body)
	}
	if r := h.do("POST", "/services/checkout/scale", htok, nil, `{"replicas": 3}`); r.status != 200 {
		t.Fatalf("scale 3: %d %s", r.status, r.body)
	}
	if _, body := h.up.lastReq(); body != `{"replicas": 3}` {
		t.Fatalf("upstream body %q, want the body the policy saw", body)
	}
	if r := h.do("POST", "/services/checkout/scale", htok, nil, `{"replicas": 3`); r.status != 400 {
		t.Fatalf("bad JSON: %d", r.status)
	}
	if r := h.do("POST", "/services/checkout/scale", htok, nil, `{"replicas": 3, "pad": "`+strings.Repeat("x", 2000)+`"}`); r.status != 413 {
		t.Fatalf("body over the route limit: %d", r.status)
	}
}

func TestPolicyErrorFailsClosed(t *testing.T) {
	h := newHarness(t)
	_, tok := h.healer()
	r := h.do("POST", "/boom", tok, nil, "")
	if r.status != 403 || !strings.Contains(r.body, "policy_error") {
		t.Fatalf("status %d %s", r.status, r.body)
	}
	if h.up.hits.Load() != 0 {
		t.Fatal("a failed evaluation reached the upstream")
	}
	if strings.Contains(r.body, "to_number") {
		t.Fatal("an internal error string reached the agent")
	}
	if n := testutil.ToFloat64(h.p.m.policy.Errors.WithLabelValues("enforced", "error")); n != 1 {
		t.Fatalf("policy errors counted %v", n)
	}
}

func TestHotReloadThroughProxy(t *testing.T) {
	dir := t.TempDir()
	src, _ := os.ReadFile("testdata/policy/authz.rego")
	if err := os.WriteFile(filepath.Join(dir, "authz.rego"), src, 0o644); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, func(c *Config) { c.Policy.Dir = dir })
	_, tok := h.healer()
	if r := h.do("GET", "/services/payments", tok, nil, ""); r.status != 403 {
		t.Fatalf("before: %d", r.status)
	}
	rev := h.p.Revision()
	open := strings.Replace(string(src), `input.resource == "payments"`, `input.resource == "nothing"`, 1)
	if err := os.WriteFile(filepath.Join(dir, "authz.rego"), []byte(open), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "reload", func() bool { return h.p.Revision() != rev })
	if r := h.do("GET", "/services/payments", tok, nil, ""); r.status != 200 {
		t.Fatalf("after a valid change: %d", r.status)
	}
	good := h.p.Revision()
	if err := os.WriteFile(filepath.Join(dir, "authz.rego"), []byte("package passport.authz\ndecision := {"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "failed reload", func() bool {
		return testutil.ToFloat64(h.p.m.policy.Reloads.WithLabelValues("enforced", "failure")) >= 1
	})
	if r := h.do("GET", "/services/payments", tok, nil, ""); r.status != 200 || h.p.Revision() != good {
		t.Fatalf("after a broken change: %d, revision %s (want %s)", r.status, h.p.Revision(), good)
	}
	var last *audit.Record
	for _, rec := range h.sink.all() {
		if rec.Kind == audit.KindDecision && (last == nil || !rec.Time.Before(last.Time)) {
			last = rec
		}
	}
	if last == nil || last.PolicyRevision != good {
		t.Fatal("audit record does not carry the revision in force")
	}
}

// TestPathVariantsNeverForwarded: the policy denies "payments"; no other
// spelling of that path may reach the upstream.
func TestPathVariantsNeverForwarded(t *testing.T) {
	h := newHarness(t)
	_, tok := h.healer()
	variants := []struct {
		target string
		status int
	}{
		{"/services/payments/restart", 403},
		{"/services/payments/restart/", 403},
		{"/services/checkout/../payments/restart", 400},
		{"/services/./payments/restart", 400},
		{"/services//payments/restart", 400},
		{"//services/payments/restart", 400},
		{"/services/payments%2frestart", 400},
		{"/services/payments%2Frestart", 400},
		{"/services/%2e%2e/payments/restart", 400},
		{"/services/checkout/%2E%2E/payments/restart", 400},
		{"/services/payments%5crestart", 400},
		{"/services/payments\\restart", 400},
		{"/services/payments;x=1/restart", 400},
		{"/services/%70ayments/restart", 403}, // plain letters decode to the same path and are judged as it
		{"/services/payments%252frestart", 400},
		{"/services/payments%00/restart", 400},
		{"/Services/payments/restart", 404},
		{"/services/payments/restart?_method=GET", 400},
	}
	for _, v := range variants {
		t.Run(v.target, func(t *testing.T) {
			before := h.up.hits.Load()
			r := h.rawDo("POST", v.target, tok)
			if r.status != v.status {
				t.Fatalf("status %d, want %d (%s)", r.status, v.status, r.body)
			}
			if h.up.hits.Load() != before {
				t.Fatal("forwarded")
			}
			if r.header.Get("X-Request-Id") == "" {
				t.Fatal("no request id")
			}
		})
	}
	// And the allowed path goes through in its one spelling.
	if r := h.rawDo("POST", "/services/checkout/restart/", tok); r.status != 200 {
		t.Fatalf("allowed: %d", r.status)
	}
	if req, _ := h.up.lastReq(); req.URL.Path != "/services/checkout/restart" || req.URL.RawPath != "" {
		t.Fatalf("upstream path %q", req.URL.Path)
	}
}

func TestNoRouteIsAudited(t *testing.T) {
	h := newHarness(t)
	_, tok := h.healer()
	r := h.do("DELETE", "/services/checkout", tok, nil, "")
	if r.status != 404 {
		t.Fatalf("status %d", r.status)
	}
	recs := h.sink.byRequest(r.header.Get("X-Request-Id"))
	if len(recs) != 1 || recs[0].Reasons[0] != "no_route" || recs[0].Tenant != "acme" {
		t.Fatalf("records %+v", recs)
	}
	// Without a passport: counted in a refusals summary (issue 13, item 9).
	r = h.do("GET", "/nowhere", "", nil, "")
	if rec, sum := h.summaryOf(r.header.Get("X-Request-Id")); r.status != 404 || rec == nil || rec.Tenant != DefaultUnattributed || sum.Reason != "no_route" {
		t.Fatalf("anonymous 404: %d %+v", r.status, rec)
	}
}

func TestAuditDownRefuses(t *testing.T) {
	h := newHarness(t)
	_, tok := h.healer()
	h.sink.setErr(errAuditDown)
	r := h.do("GET", "/services/checkout", tok, nil, "")
	if r.status != 503 || !strings.Contains(r.body, "audit_unavailable") || strings.Contains(r.body, errAuditDown.Error()) {
		t.Fatalf("status %d %s", r.status, r.body)
	}
	if h.up.hits.Load() != 0 {
		t.Fatal("forwarded without an audit record")
	}
	// The decision write may still land after its timeout; the outcome
	// record, buffered until the store is back, says the call was refused.
	recs := h.sink.byRequest(r.header.Get("X-Request-Id"))
	if len(recs) != 1 || recs[0].Kind != audit.KindOutcome || recs[0].Status != 503 ||
		recs[0].Decision != audit.DecisionError || !slices.Equal(recs[0].Reasons, []string{"audit_unavailable"}) ||
		recs[0].Action != "service.get" || recs[0].Resource != "checkout" {
		t.Fatalf("records %+v", recs)
	}
}

func TestRefusedRequests(t *testing.T) {
	h := newHarness(t)
	_, tok := h.healer()
	cases := []struct {
		name   string
		hdr    map[string]string
		method string
		path   string
		body   string
		status int
	}{
		{"websocket upgrade", map[string]string{"Connection": "Upgrade", "Upgrade": "websocket"}, "GET", "/services/checkout", "", 400},
		{"h2c upgrade", map[string]string{"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c", "HTTP2-Settings": "AAMAAABkAAQAAP__"}, "GET", "/services/checkout", "", 400},
		{"body over the limit", nil, "POST", "/services/checkout/restart", strings.Repeat("x", 2<<20), 413},
		{"header flood", floodHeaders(200), "GET", "/services/checkout", "", 431},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := h.up.hits.Load()
			r := h.do(tc.method, tc.path, tok, tc.hdr, tc.body)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d", r.status, tc.status)
			}
			if h.up.hits.Load() != before {
				t.Fatal("forwarded")
			}
			if r.header.Get("X-Request-Id") == "" {
				t.Fatal("no request id")
			}
		})
	}
}

func floodHeaders(n int) map[string]string {
	m := map[string]string{}
	for i := 0; i < n; i++ {
		m["X-Flood-"+strings.Repeat("a", i%7)+string(rune('a'+i%26))+string(rune('a'+i/26))] = "v"
	}
	return m
}

func TestUpstreamFailures(t *testing.T) {
	h := newHarness(t)
	_, tok := h.healer()
	h.up.mu.Lock()
	h.up.delay = 2 * time.Second
	h.up.mu.Unlock()
	if r := h.do("GET", "/slow", tok, nil, ""); r.status != 504 || r.header.Get("X-Request-Id") == "" {
		t.Fatalf("slow upstream: %d", r.status)
	}
	h.up.mu.Lock()
	h.up.delay = 0
	h.up.mu.Unlock()
	h.up.srv.Close()
	if r := h.do("GET", "/services/checkout", tok, nil, ""); r.status != 502 || strings.Contains(r.body, "connection refused") {
		t.Fatalf("dead upstream: %d %s", r.status, r.body)
	}
}

func TestShadowDisagreement(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "p.rego"), []byte("package passport.authz\ndecision := {\"allow\": false, \"reasons\": [\"shadow_says_no\"]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, func(c *Config) { c.Policy.ShadowDir = dir })
	_, tok := h.healer()
	r := h.do("GET", "/services/checkout", tok, nil, "")
	if r.status != 200 {
		t.Fatalf("the shadow policy must not enforce: %d", r.status)
	}
	recs := h.sink.byRequest(r.header.Get("X-Request-Id"))
	if len(recs) == 0 || recs[0].Shadow == nil || !recs[0].Shadow.Disagree || recs[0].Shadow.Allow || recs[0].Shadow.Reasons[0] != "shadow_says_no" {
		t.Fatalf("records %+v", recs)
	}
	if n := testutil.ToFloat64(h.p.m.shadowDisagree.WithLabelValues("allow")); n != 1 {
		t.Fatalf("disagreements %v", n)
	}
}

func TestDenialsReportedToAuthority(t *testing.T) {
	got := make(chan string, 4)
	auth := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Method + " " + r.URL.Path + " " + r.Header.Get("Authorization")
		w.WriteHeader(200)
	}))
	defer auth.Close()
	h := newHarness(t, func(c *Config) { c.AuthorityURL = auth.URL; c.ReportToken = "admin-secret" })
	h.agent("acme", "rogue-1", 60)
	tok := h.keys.Sign(t, testkeys.Claims(h.now(), "acme", "rogue-1", "observer", passport.TrustLow, "service.list"))
	if r := h.do("POST", "/services/checkout/restart", tok, nil, ""); r.status != 403 {
		t.Fatalf("status %d", r.status)
	}
	select {
	case s := <-got:
		if s != "POST /v1/tenants/acme/agents/rogue-1/outcomes Bearer admin-secret" {
			t.Fatalf("report %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no denial report")
	}
}

func TestAdminEndpoints(t *testing.T) {
	h := newHarness(t)
	_, tok := h.healer()
	h.do("GET", "/services/checkout", tok, nil, "")
	get := func(u string) (int, string) {
		res, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b := new(strings.Builder)
		_, _ = ioCopy(b, res)
		return res.StatusCode, b.String()
	}
	if s, _ := get(h.admin + "/healthz"); s != 200 {
		t.Fatalf("healthz %d", s)
	}
	if s, b := get(h.admin + "/readyz"); s != 200 {
		t.Fatalf("readyz %d %s", s, b)
	}
	_, m := get(h.admin + "/metrics")
	for _, name := range []string{"passport_proxy_requests_total", "passport_proxy_decision_duration_seconds",
		"passport_proxy_upstream_duration_seconds", "passport_policy_reloads_total", "passport_policy_revision_info",
		"passport_proxy_key_refreshes_total", "passport_proxy_audit_failures_total"} {
		if !strings.Contains(m, name) {
			t.Errorf("metrics lack %s", name)
		}
	}
	if s, _ := get(h.url + "/metrics"); s == 200 {
		t.Fatal("metrics on the agent port")
	}
	s, b := get(h.url + "/.well-known/oauth-protected-resource")
	var meta map[string]any
	if s != 200 || json.Unmarshal([]byte(b), &meta) != nil || meta["authorization_servers"].([]any)[0] != testkeys.Issuer {
		t.Fatalf("metadata %d %s", s, b)
	}
	h.redis.Kill()
	if s, b := get(h.admin + "/readyz"); s != 503 || !strings.Contains(b, "redis") {
		t.Fatalf("readyz with redis down: %d %s", s, b)
	}
}

// helpers

func b64s(s string) string { return jwtEncode([]byte(s)) }

func jwtEncode(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func tamper(tok string) string {
	parts := strings.Split(tok, ".")
	p, _ := jwt.NewParser().DecodeSegment(parts[1])
	p = []byte(strings.Replace(string(p), `"healer-1"`, `"healer-2"`, 1))
	parts[1] = jwtEncode(p)
	return strings.Join(parts, ".")
}

func withTimes(c *passport.Claims, iat, exp time.Time) *passport.Claims {
	c.IssuedAt, c.ExpiresAt, c.NotBefore = jwt.NewNumericDate(iat), jwt.NewNumericDate(exp), jwt.NewNumericDate(iat)
	return c
}

func withNbf(c *passport.Claims, nbf time.Time) *passport.Claims {
	c.NotBefore = jwt.NewNumericDate(nbf)
	return c
}

func withAud(c *passport.Claims, aud string) *passport.Claims {
	c.Audience = jwt.ClaimStrings{aud}
	return c
}

func withIss(c *passport.Claims, iss string) *passport.Claims { c.Issuer = iss; return c }

// TestDrainOnShutdown: a call in flight when the proxy is told to stop
// (SIGTERM in `passport proxy`) is answered before Serve returns.
func TestDrainOnShutdown(t *testing.T) {
	h := newHarness(t)
	_, tok := h.healer()
	h.up.mu.Lock()
	h.up.delay = 300 * time.Millisecond
	h.up.mu.Unlock()
	got := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest("GET", h.url+"/services/checkout", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			got <- 0
			return
		}
		res.Body.Close()
		got <- res.StatusCode
	}()
	waitFor(t, "the call to reach the upstream", func() bool { return h.up.hits.Load() == 1 })
	if err := h.stop(); err != nil {
		t.Fatalf("serve: %v", err)
	}
	if s := <-got; s != 200 {
		t.Fatalf("in-flight call answered %d, want 200", s)
	}
}

func TestNotReadyWithoutKeys(t *testing.T) {
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	h := newHarness(t, func(c *Config) { c.JWKSURL = dead.URL + "/jwks" })
	res, err := http.Get(h.admin + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	b := new(strings.Builder)
	_, _ = ioCopy(b, res)
	res.Body.Close()
	if res.StatusCode != 503 || !strings.Contains(b.String(), "signing keys") {
		t.Fatalf("readyz %d %q", res.StatusCode, b.String())
	}
}

// TestConcurrentCalls shares one cached passport, its OPA value and the
// route terms across concurrent calls (run with -race).
func TestConcurrentCalls(t *testing.T) {
	h := newHarness(t)
	_, tok := h.healer()
	errs := make(chan int, 200)
	for g := 0; g < 20; g++ {
		go func() {
			for i := 0; i < 10; i++ {
				req, _ := http.NewRequest("POST", h.url+"/services/checkout/restart", nil)
				req.Header.Set("Authorization", "Bearer "+tok)
				res, err := http.DefaultClient.Do(req)
				if err != nil {
					errs <- 0
					continue
				}
				res.Body.Close()
				errs <- res.StatusCode
			}
		}()
	}
	for i := 0; i < 200; i++ {
		if s := <-errs; s != 200 {
			t.Fatalf("status %d", s)
		}
	}
	if h.up.hits.Load() != 200 {
		t.Fatalf("upstream hits %d", h.up.hits.Load())
	}
}

// TestUnknownKIDRefreshIsRateLimited: made-up kids cause at most one JWKS
// fetch per interval, and are refused at once (never queued).
func TestUnknownKIDRefreshIsRateLimited(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.JWKSUnknownKIDInterval = time.Hour })
	c, _ := h.healer()
	base := h.keys.Fetches.Load()
	for i := 0; i < 5; i++ {
		tok := testkeys.SignEdWith(t, mustEd(t), "made-up-"+string(rune('a'+i)), c)
		start := time.Now()
		if r := h.do("GET", "/services/checkout", tok, nil, ""); r.status != 401 {
			t.Fatalf("unknown kid: %d", r.status)
		}
		if time.Since(start) > 2*time.Second {
			t.Fatal("an unknown kid waited for the rate limiter")
		}
	}
	if n := h.keys.Fetches.Load() - base; n != 1 {
		t.Fatalf("%d JWKS fetches for five unknown kids in one interval, want 1", n)
	}
}
