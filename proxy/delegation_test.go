package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/passport"
	"github.com/agentpassport/passport/proxy/internal/testkeys"
)

// Passports in these tests are signed with go-jose, a JOSE implementation
// independent of the verifier, from claims written as JSON objects, so a
// forged or inconsistent chain is exactly what an attacker would send.

// joseSign signs payload (JSON) as a passport with the harness's Ed25519
// key: typ at+jwt, kid set.
func joseSign(t testing.TB, k *testkeys.Keys, payload []byte) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType(passport.TokenType).WithHeader("kid", k.EdKID)
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: k.Ed}, opts)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := s.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	out, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// chainLink is one agent of a test chain.
type chainLink struct {
	id    string
	trust passport.TrustLevel
}

// delegated returns the claims of a passport held by the last agent of
// links, exchanged from each earlier one in turn, as the authority makes
// it (sub = agent.id = client_id), as a JSON object a test may change.
func delegated(now time.Time, tenant string, links []chainLink, actions ...string) (map[string]any, []string) {
	holder := links[len(links)-1]
	c := testkeys.Claims(now, tenant, holder.id, "healer", holder.trust, actions...)
	c.Subject, c.ClientID = holder.id, holder.id
	var act *passport.Actor
	d := &passport.Delegation{Depth: len(links) - 1, Root: links[0].id}
	var jtis []string
	for i, l := range links {
		d.Chain = append(d.Chain, l.id)
		if i == len(links)-1 {
			break
		}
		jti := fmt.Sprintf("jti-%s-%d", l.id, now.UnixNano())
		jtis = append(jtis, jti)
		d.Links = append(d.Links, passport.DelegationLink{Sub: l.id, Name: l.id, Type: "healer", TrustLevel: l.trust, JTI: jti})
		act = &passport.Actor{Sub: l.id, Act: act}
	}
	c.Act, c.Delegation = act, d
	b, _ := json.Marshal(c)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	return m, jtis
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// reasonOf is the first reason of a problem answer.
func reasonOf(r resp) string {
	var p struct {
		Reasons []string `json:"reasons"`
	}
	_ = json.Unmarshal([]byte(r.body), &p)
	if len(p.Reasons) == 0 {
		return ""
	}
	return p.Reasons[0]
}

// TestDelegatedPassport: B on behalf of A is forwarded as B; the policy
// sees the chain in input.passport.act and input.passport.delegation, and
// the decision and outcome records name the whole chain.
func TestDelegatedPassport(t *testing.T) {
	h := newHarness(t)
	h.agent("acme", "commander-1", 90)
	h.agent("acme", "healer-1", 90)
	claims, _ := delegated(h.now(), "acme", []chainLink{{"commander-1", passport.TrustHigh}, {"healer-1", passport.TrustHigh}},
		"service.get", "service.restart")
	tok := joseSign(t, h.keys, mustJSON(claims))
	r := h.do("POST", "/services/checkout/restart", tok, nil, "")
	if r.status != 200 {
		t.Fatalf("delegated passport: %d %s", r.status, r.body)
	}
	up, _ := h.up.lastReq()
	if got := up.Header.Get(HeaderAgent); got != "healer-1" {
		t.Fatalf("upstream saw agent %q, want the holder healer-1", got)
	}
	id := r.header.Get(HeaderXRequest)
	waitFor(t, "outcome record", func() bool { return len(h.sink.byRequest(id)) == 2 })
	want := []audit.ChainLink{{ID: "commander-1", Name: "commander-1"}, {ID: "healer-1", Name: "healer-1"}}
	for _, rec := range h.sink.byRequest(id) {
		if fmt.Sprint(rec.Chain) != fmt.Sprint(want) || rec.Subject != "commander-1" || rec.AgentID != "healer-1" {
			t.Fatalf("%s record: chain %v subject %q agent %q", rec.Kind, rec.Chain, rec.Subject, rec.AgentID)
		}
		if rec.Kind != audit.KindDecision {
			continue
		}
		// The policy's input, with the passport's claims put back from the
		// passport record the decision references.
		input, err := audit.ExpandInput(rec, func(ref string) (*audit.Record, error) {
			for i, r := range h.sink.all() {
				if fmt.Sprintf("%d-0", i+1) == ref {
					return r, nil
				}
			}
			return nil, fmt.Errorf("no record %s", ref)
		})
		if err != nil {
			t.Fatal(err)
		}
		var in struct {
			Passport struct {
				Act        map[string]any      `json:"act"`
				Delegation passport.Delegation `json:"delegation"`
			} `json:"passport"`
		}
		if err := json.Unmarshal(input, &in); err != nil {
			t.Fatal(err)
		}
		if in.Passport.Act["sub"] != "commander-1" || in.Passport.Delegation.Root != "commander-1" ||
			strings.Join(in.Passport.Delegation.Chain, ">") != "commander-1>healer-1" {
			t.Fatalf("policy input: act %v delegation %+v", in.Passport.Act, in.Passport.Delegation)
		}
	}

	// A refused delegated call names the chain too.
	h.rdb.SAdd(context.Background(), passport.BlockedKey, passport.BlockedMember("acme", "commander-1"))
	h.rdb.Publish(context.Background(), passport.RevocationChannel,
		passport.RevocationEvent{Type: passport.EventBlock, Tenant: "acme", AgentID: "commander-1"}.Marshal())
	var id2 string
	within(t, time.Second, "ancestor block", func() bool {
		r := h.do("POST", "/services/checkout/restart", tok, nil, "")
		id2 = r.header.Get(HeaderXRequest)
		return r.status == 401 && reasonOf(r) == "ancestor_blocked"
	})
	waitFor(t, "refusal record", func() bool { return len(h.sink.byRequest(id2)) == 1 })
	if rec := h.sink.byRequest(id2)[0]; fmt.Sprint(rec.Chain) != fmt.Sprint(want) {
		t.Fatalf("refusal record chain %v", rec.Chain)
	}
}

// TestDelegationForgedChains: a chain is accepted only when every place
// that repeats it agrees, it is no deeper than configured, and its holder
// is its last agent. Each forgery is signed by the authority's own key:
// only the chain is wrong. Nothing reaches the upstream.
func TestDelegationForgedChains(t *testing.T) {
	h := newHarness(t)
	for _, id := range []string{"root-1", "mid-1", "mid-2", "mid-3", "healer-1", "other-1"} {
		h.agent("acme", id, 90)
	}
	two := []chainLink{{"root-1", passport.TrustHigh}, {"mid-1", passport.TrustHigh}, {"healer-1", passport.TrustHigh}}
	cases := []struct {
		name   string
		links  []chainLink
		mut    func(m map[string]any)
		reason string
	}{
		{"act names another agent", two, func(m map[string]any) { m["act"].(map[string]any)["sub"] = "other-1" }, "bad_delegation"},
		{"act one link short", two, func(m map[string]any) { delete(m["act"].(map[string]any), "act") }, "bad_delegation"},
		{"root is not the first agent", two, func(m map[string]any) { m["delegation"].(map[string]any)["root"] = "mid-1" }, "bad_delegation"},
		{"chain does not end with the holder", two, func(m map[string]any) {
			m["delegation"].(map[string]any)["chain"] = []any{"root-1", "mid-1", "other-1"}
		}, "bad_delegation"},
		{"a forged link inserted", two, func(m map[string]any) {
			d := m["delegation"].(map[string]any)
			d["chain"] = []any{"root-1", "other-1", "mid-1", "healer-1"}
		}, "bad_delegation"},
		{"depth says less", two, func(m map[string]any) { m["delegation"].(map[string]any)["depth"] = 1 }, "bad_delegation"},
		{"link names another agent", two, func(m map[string]any) {
			m["delegation"].(map[string]any)["links"].([]any)[1].(map[string]any)["sub"] = "other-1"
		}, "bad_delegation"},
		{"holder more trusted than a link", []chainLink{{"root-1", passport.TrustLow}, {"healer-1", passport.TrustHigh}}, nil, "bad_delegation"},
		{"act without delegation", two, func(m map[string]any) { delete(m, "delegation") }, "bad_delegation"},
		{"delegation without act", two, func(m map[string]any) { delete(m, "act") }, "bad_delegation"},
		{"sub is not the agent", two, func(m map[string]any) {
			m["sub"], m["client_id"] = "mid-2", "mid-2"
			d := m["delegation"].(map[string]any)
			d["chain"] = []any{"root-1", "mid-1", "mid-2"}
		}, "bad_delegation"},
		{"deeper than max_depth", []chainLink{{"root-1", passport.TrustHigh}, {"mid-1", passport.TrustHigh},
			{"mid-2", passport.TrustHigh}, {"healer-1", passport.TrustHigh}}, nil, "delegation_too_deep"},
		{"a cycle", []chainLink{{"root-1", passport.TrustHigh}, {"mid-1", passport.TrustHigh}, {"root-1", passport.TrustHigh},
			{"healer-1", passport.TrustHigh}}, nil, "bad_delegation"},
		{"ancestor not registered", []chainLink{{"ghost-1", passport.TrustHigh}, {"healer-1", passport.TrustHigh}}, nil, "ancestor_unknown"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, _ := delegated(h.now(), "acme", tc.links, "service.get")
			if tc.mut != nil {
				tc.mut(m)
			}
			before := h.up.hits.Load()
			r := h.do("GET", "/services/checkout", joseSign(t, h.keys, mustJSON(m)), nil, "")
			if r.status != 401 || reasonOf(r) != tc.reason {
				t.Fatalf("got %d %q, want 401 %s (%s)", r.status, reasonOf(r), tc.reason, r.body)
			}
			if h.up.hits.Load() != before {
				t.Fatal("forwarded")
			}
		})
	}

	// A chain beyond the verifier's own bound (8) is refused whatever the
	// configuration says.
	t.Run("beyond the hard limit", func(t *testing.T) {
		h := newHarness(t, func(c *Config) { c.Delegation.MaxDepth = passport.MaxDelegationDepth })
		var links []chainLink
		for i := range passport.MaxDelegationDepth + 2 {
			id := fmt.Sprintf("agent-%d", i)
			h.agent("acme", id, 90)
			links = append(links, chainLink{id, passport.TrustHigh})
		}
		m, _ := delegated(h.now(), "acme", links, "service.get")
		if r := h.do("GET", "/services/checkout", joseSign(t, h.keys, mustJSON(m)), nil, ""); r.status != 401 || reasonOf(r) != "bad_delegation" {
			t.Fatalf("depth 9: %d %q", r.status, reasonOf(r))
		}
		m, _ = delegated(h.now(), "acme", links[:passport.MaxDelegationDepth+1], "service.get")
		if r := h.do("GET", "/services/checkout", joseSign(t, h.keys, mustJSON(m)), nil, ""); r.status != 200 {
			t.Fatalf("depth 8 with max_depth 8: %d %s", r.status, r.body)
		}
	})
	t.Run("delegation off", func(t *testing.T) {
		h := newHarness(t, func(c *Config) { c.Delegation.MaxDepth = 0 })
		h.agent("acme", "root-1", 90)
		h.agent("acme", "healer-1", 90)
		m, _ := delegated(h.now(), "acme", []chainLink{{"root-1", passport.TrustHigh}, {"healer-1", passport.TrustHigh}}, "service.get")
		if r := h.do("GET", "/services/checkout", joseSign(t, h.keys, mustJSON(m)), nil, ""); r.status != 401 || reasonOf(r) != "delegation_unsupported" {
			t.Fatalf("max_depth 0: %d %q", r.status, reasonOf(r))
		}
	})
}

// TestAncestorRevocationWithinOneSecond: revoking any passport a chain
// was exchanged from, or blocking any agent of it, refuses the
// descendant at the proxy within a second, through the same pub/sub as
// the holder's own revocation (a real Redis), and with the subscription
// down the proxy asks Redis per call.
func TestAncestorRevocationWithinOneSecond(t *testing.T) {
	ctx := context.Background()
	links := []chainLink{{"root-1", passport.TrustHigh}, {"mid-1", passport.TrustHigh}, {"healer-1", passport.TrustHigh}}
	setup := func(t *testing.T) (*harness, string, []string, int64) {
		h := newHarness(t)
		for _, l := range links {
			h.agent("acme", l.id, 90)
		}
		m, jtis := delegated(h.now(), "acme", links, "service.get")
		tok := joseSign(t, h.keys, mustJSON(m))
		if r := h.do("GET", "/services/checkout", tok, nil, ""); r.status != 200 {
			t.Fatalf("before: %d %s", r.status, r.body)
		}
		return h, tok, jtis, int64(m["exp"].(float64))
	}
	for i, which := range []string{"root", "mid-chain"} {
		t.Run("revoke "+which, func(t *testing.T) {
			h, tok, jtis, exp := setup(t)
			h.rdb.ZAdd(ctx, passport.RevokedKey, redisZ(exp, jtis[i]))
			h.rdb.Publish(ctx, passport.RevocationChannel, passport.RevocationEvent{Type: passport.EventRevoke, JTI: jtis[i], Exp: exp}.Marshal())
			took := within(t, time.Second, "ancestor revocation", func() bool {
				r := h.do("GET", "/services/checkout", tok, nil, "")
				return r.status == 401 && reasonOf(r) == "ancestor_revoked"
			})
			t.Logf("descendant refused %s after its %s link was revoked", took, which)
		})
		t.Run("block "+which, func(t *testing.T) {
			h, tok, _, _ := setup(t)
			id := links[i].id
			h.rdb.SAdd(ctx, passport.BlockedKey, passport.BlockedMember("acme", id))
			h.rdb.HSet(ctx, passport.AgentKey("acme", id), passport.FieldBlocked, "1")
			h.rdb.Publish(ctx, passport.RevocationChannel, passport.RevocationEvent{Type: passport.EventBlock, Tenant: "acme", AgentID: id}.Marshal())
			within(t, time.Second, "ancestor block", func() bool {
				r := h.do("GET", "/services/checkout", tok, nil, "")
				return r.status == 401 && reasonOf(r) == "ancestor_blocked"
			})
		})
	}
	t.Run("revoked while the subscription is down", func(t *testing.T) {
		h, tok, jtis, exp := setup(t)
		h.p.revoked.live.Store(false) // as if the subscription had dropped: every call asks Redis
		h.rdb.ZAdd(ctx, passport.RevokedKey, redisZ(exp, jtis[0]))
		if r := h.do("GET", "/services/checkout", tok, nil, ""); r.status != 401 || reasonOf(r) != "ancestor_revoked" {
			t.Fatalf("direct check: %d %q", r.status, reasonOf(r))
		}
	})
}
