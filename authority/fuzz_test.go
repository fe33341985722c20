package authority

import (
	"crypto/ed25519"
	"errors"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/agentpassport/passport/passport"
	"github.com/golang-jwt/jwt/v5"
)

// FuzzParseTokenForm: the form parser never panics, and whatever it
// accepts names a grant type and exactly one client authentication method.
func FuzzParseTokenForm(f *testing.F) {
	f.Add("application/x-www-form-urlencoded", "grant_type=client_credentials&client_id=agt_a&client_secret=s", "", "", false)
	f.Add("application/x-www-form-urlencoded", "grant_type=client_credentials&scope=service.list", "agt_a", "s", true)
	f.Add("application/x-www-form-urlencoded; charset=utf-8", "grant_type=client_credentials&client_assertion_type="+
		url.QueryEscape(assertionTypeJWT)+"&client_assertion=a.b.c", "", "", false)
	f.Add("application/x-www-form-urlencoded", "grant_type=x&grant_type=y", "", "", false)
	f.Add("text/plain", "%zz", "u", "p", true)
	f.Add("application/x-www-form-urlencoded", "grant_type="+url.QueryEscape(GrantTypeJWTBearer)+"&assertion=a.b.c", "", "", false)
	f.Add("application/x-www-form-urlencoded", "grant_type="+url.QueryEscape(GrantTypeJWTBearer)+"&assertion=a.b.c&client_secret=s&client_id=agt_a", "", "", false)
	f.Add("application/x-www-form-urlencoded", "grant_type=client_credentials&task=%7B%22id%22%3A1%7D&client_secret=x&client_id=agt_b", "", "", false)
	f.Fuzz(func(t *testing.T, ctype, body, user, pass string, hasBasic bool) {
		tf, err := parseTokenForm(ctype, []byte(body), user, pass, hasBasic, false)
		if err != nil {
			var oe *oauthError
			if !errors.As(err, &oe) || oe.status == 0 || oe.code == "" {
				t.Fatalf("non-OAuth error %v", err)
			}
			return
		}
		if tf.GrantType == "" {
			t.Fatal("accepted without grant_type")
		}
		switch tf.method {
		case authBasic:
			if !hasBasic || tf.ClientID != user || tf.ClientSecret != pass {
				t.Fatal("basic credentials not taken from the header")
			}
		case authPost:
			if hasBasic || tf.ClientSecret == "" || tf.ClientID == "" {
				t.Fatal("post without secret or id")
			}
		case authPrivateKeyJWT:
			if tf.Assertion == "" || tf.AssertionType != assertionTypeJWT {
				t.Fatal("assertion method without an assertion")
			}
		case authJWTBearer:
			if tf.GrantType != GrantTypeJWTBearer || hasBasic || tf.ClientSecret != "" || tf.Assertion != "" || tf.AssertionType != "" {
				t.Fatal("the jwt-bearer grant with another credential")
			}
		default:
			t.Fatalf("accepted with method %q", tf.method)
		}
	})
}

// FuzzNarrow: whatever scope, task, authorization_details and audience an
// agent sends, the grant never holds an action outside its registration
// and never names a foreign audience.
func FuzzNarrow(f *testing.F) {
	f.Add("service.list service.restart", true, `{"id":"i","actions":["service.restart"]}`, `[{"type":"agent_action","actions":["service.get"]}]`, "passport-proxy")
	f.Add("", false, "", "", "")
	f.Add("chaos.inject", true, "", "", "")
	f.Add("", false, `{"id":"x","target":"checkout"}`, `[{"type":"agent_action","actions":["cache.warm"],"locations":["evil"]}]`, "")
	f.Add("", false, "", `[{"type":"agent_action","actions":["service.list","deployment.deploy"],"identifier":"x"}]`, "other")
	cfg := DefaultConfig()
	cfg.Audiences = []string{"passport-proxy", "second"}
	a := &Authority{cfg: cfg}
	caps := []string{"cache.warm", "service.get", "service.list", "service.restart"}
	agent := &agentRecord{ID: "agt_x", Tenant: "acme", Capabilities: caps}
	f.Fuzz(func(t *testing.T, scope string, hasScope bool, task, details, aud string) {
		g, err := a.narrow(agent, &tokenForm{Scope: scope, HasScope: hasScope, Task: task, AuthzDetails: details, Audience: aud})
		if err != nil {
			var oe *oauthError
			if !errors.As(err, &oe) || oe.status != 400 {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		if !slices.Contains(cfg.Audiences, g.audience) {
			t.Fatalf("audience %q", g.audience)
		}
		if len(g.actions) == 0 {
			t.Fatal("empty grant accepted")
		}
		for _, act := range g.actions {
			if !slices.Contains(caps, act) {
				t.Fatalf("widened: %q", act)
			}
		}
		for _, d := range g.details {
			if d.Type != passport.AuthorizationDetailType {
				t.Fatalf("detail type %q", d.Type)
			}
			for _, act := range d.Actions {
				if !slices.Contains(g.actions, act) {
					t.Fatalf("detail action %q outside grant %v", act, g.actions)
				}
			}
			for _, l := range d.Locations {
				if l != g.audience {
					t.Fatalf("location %q", l)
				}
			}
		}
		if g.task != nil {
			for _, act := range g.task.Actions {
				if !slices.Contains(caps, act) {
					t.Fatalf("task widened: %q", act)
				}
			}
		}
	})
}

// FuzzPeekAssertion: reading iss/sub of an untrusted assertion never
// panics and only ever yields iss == sub.
func FuzzPeekAssertion(f *testing.F) {
	_, key, _ := ed25519.GenerateKey(nil)
	good, _ := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.RegisteredClaims{
		Issuer: "agt_a", Subject: "agt_a", ExpiresAt: jwt.NewNumericDate(time.Unix(2e9, 0)),
	}).SignedString(key)
	f.Add(good, "")
	f.Add(good, "agt_b")
	f.Add("eyJhbGciOiJub25lIn0.eyJpc3MiOiJhIiwic3ViIjoiYSJ9.", "")
	f.Add("a.b.c", "")
	f.Fuzz(func(t *testing.T, raw, formID string) {
		c, id, err := peekAssertion(raw, formID)
		if err != nil {
			return
		}
		if c.Issuer != c.Subject || id != c.Issuer || id == "" || (formID != "" && formID != id) {
			t.Fatalf("peek accepted iss %q sub %q id %q form %q", c.Issuer, c.Subject, id, formID)
		}
	})
}
