package proxy

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/passport"
	"github.com/agentpassport/passport/policies"
	"github.com/agentpassport/passport/proxy/policy"
)

// shippedPolicyDir is a directory holding the shipped policy library (its
// tests left out), which the test may edit to reload it.
func shippedPolicyDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	err := fs.WalkDir(policies.FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !policy.IsPolicyFile(p) || policy.IsTestFile(p) || strings.Contains(p, "/") {
			return err
		}
		b, err := fs.ReadFile(policies.FS, p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, p), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestStageKeptHonoursEveryPerCallFact: once a passport's stage on a
// route is kept (policy.Stage, decide.go), every later call is still
// judged on its own facts at once: a reputation change, another
// resource, a policy reload, a block, a revocation and the passport's
// expiry each change the very next answer, as they do without a stage.
func TestStageKeptHonoursEveryPerCallFact(t *testing.T) {
	dir := shippedPolicyDir(t)
	h := newHarness(t, func(c *Config) {
		c.Policy.Dir = dir
		c.ReputationCache = time.Nanosecond // every call reads the live reputation
	})
	ctx := context.Background()
	cl, tok := h.healer()
	rt, _ := h.p.router.match("POST", []string{"services", "checkout", "restart"})
	if rt == nil {
		t.Fatal("no restart route")
	}
	// kept is the stage kept for the passport on the restart route, which
	// must be the policy's (a value) and fresh.
	kept := func(what string) *policy.Stage {
		t.Helper()
		vp := h.p.verifier.cache.get(tok)
		if vp == nil {
			t.Fatalf("%s: the passport is not cached", what)
		}
		st := vp.stage(rt)
		if st.Term() == nil || !h.p.enforced.Fresh(st) {
			t.Fatalf("%s: no fresh stage kept for the passport (%v)", what, st)
		}
		return st
	}
	expect := func(what string, status int, reason string) {
		t.Helper()
		r := h.do("POST", "/services/checkout/restart", tok, nil, "")
		if r.status != status || reason != "" && reasonOf(r) != reason {
			t.Fatalf("%s: %d %s, want %d %s", what, r.status, r.body, status, reason)
		}
	}

	expect("first call", 200, "")
	first := kept("after the first call")
	expect("second call", 200, "")
	if kept("after the second call") != first {
		t.Fatal("the stage was computed again for the same passport, route and policy")
	}

	// The resource is the call's: another tenant's service is refused.
	if r := h.do("POST", "/services/search/restart", tok, nil, ""); r.status != 403 || reasonOf(r) != "resource_not_in_tenant" {
		t.Fatalf("another tenant's resource: %d %s", r.status, r.body)
	}

	// The live reputation is the call's.
	h.agent("acme", "healer-1", 10)
	expect("reputation 10", 403, "reputation_too_low")
	kept("after the reputation fell")
	h.agent("acme", "healer-1", 90)
	expect("reputation 90 again", 200, "")

	// A reload: the stage is stale at once, the next call is decided by
	// the new policy, and a new stage is kept.
	data, err := os.ReadFile(filepath.Join(dir, "data.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	stricter := strings.Replace(string(data), "trust: HIGH\n        min_reputation: 50", "trust: HIGH\n        min_reputation: 95", 1)
	if stricter == string(data) {
		t.Fatal("data.yaml no longer has the restart threshold this test edits")
	}
	rev := h.p.Revision()
	if err := os.WriteFile(filepath.Join(dir, "data.yaml"), []byte(stricter), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "reload", func() bool { return h.p.Revision() != rev })
	if h.p.enforced.Fresh(first) {
		t.Fatal("the stage of the previous policy is fresh after a reload")
	}
	expect("after the reload", 403, "reputation_too_low")
	if kept("after the reload") == first {
		t.Fatal("the stage of the previous policy was kept")
	}
	if err := os.WriteFile(filepath.Join(dir, "data.yaml"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "reload back", func() bool { return h.p.Revision() == rev })
	expect("after the reload back", 200, "")
	kept("after the reload back")

	// Expiry: the next call after exp (and the leeway) is refused.
	h.offset.Store(int64(time.Until(cl.ExpiresAt.Time) + h.p.cfg.Leeway + time.Second))
	expect("expired", 401, "")
	h.offset.Store(0)
	expect("not expired", 200, "")

	// Revocation of the passport: refused at once.
	exp := cl.ExpiresAt.Unix()
	h.rdb.ZAdd(ctx, passport.RevokedKey, redisZ(exp, cl.ID))
	h.rdb.Publish(ctx, passport.RevocationChannel, passport.RevocationEvent{Type: passport.EventRevoke, JTI: cl.ID, Exp: exp}.Marshal())
	within(t, time.Second, "revocation", func() bool {
		r := h.do("POST", "/services/checkout/restart", tok, nil, "")
		return r.status == 401 && reasonOf(r) == "revoked"
	})

	// A block of the agent: a second passport of it, with its stage kept,
	// is refused at once.
	_, tok2 := h.healer()
	if r := h.do("POST", "/services/checkout/restart", tok2, nil, ""); r.status != 200 {
		t.Fatalf("second passport: %d %s", r.status, r.body)
	}
	if vp := h.p.verifier.cache.get(tok2); vp == nil || vp.stage(rt).Term() == nil {
		t.Fatal("no stage kept for the second passport")
	}
	h.rdb.SAdd(ctx, passport.BlockedKey, passport.BlockedMember("acme", "healer-1"))
	h.rdb.HSet(ctx, passport.AgentKey("acme", "healer-1"), passport.FieldBlocked, "1")
	h.rdb.Publish(ctx, passport.RevocationChannel, passport.RevocationEvent{Type: passport.EventBlock, Tenant: "acme", AgentID: "healer-1"}.Marshal())
	within(t, time.Second, "block", func() bool {
		r := h.do("POST", "/services/checkout/restart", tok2, nil, "")
		return r.status == 401 && reasonOf(r) == "agent_blocked"
	})
}

// TestStageNotReadByTheShadow: the shadow policy never reads the enforced
// policy's stage (another load computed it); it decides each call with
// its own rules, on both evaluators. Its library asks for a reputation of
// 95 to restart where the enforced one asks for 50: had it read the
// enforced stage, it would allow what it must deny.
func TestStageNotReadByTheShadow(t *testing.T) {
	for _, engine := range []string{"fast", "rego"} {
		t.Run(engine, func(t *testing.T) {
			dir, shadow := shippedPolicyDir(t), shippedPolicyDir(t)
			data, err := os.ReadFile(filepath.Join(shadow, "data.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			stricter := strings.Replace(string(data), "trust: HIGH\n        min_reputation: 50", "trust: HIGH\n        min_reputation: 95", 1)
			if stricter == string(data) {
				t.Fatal("data.yaml no longer has the restart threshold this test edits")
			}
			if err := os.WriteFile(filepath.Join(shadow, "data.yaml"), []byte(stricter), 0o644); err != nil {
				t.Fatal(err)
			}
			h := newHarness(t, func(c *Config) {
				c.Policy.Dir, c.Policy.ShadowDir, c.Policy.Engine = dir, shadow, engine
				c.ReputationCache = time.Nanosecond
			})
			_, tok := h.healer()
			calls := []struct {
				path   string
				rep    float64
				status int
				shadow []string
			}{
				{"/services/checkout/restart", 90, 200, []string{"reputation_too_low"}},
				{"/services/checkout/restart", 90, 200, []string{"reputation_too_low"}}, // the stage kept
				{"/services/search/restart", 90, 403, []string{"reputation_too_low", "resource_not_in_tenant"}},
				{"/services/checkout/restart", 96, 200, nil},
			}
			for _, c := range calls {
				h.agent("acme", "healer-1", c.rep)
				if r := h.do("POST", c.path, tok, nil, ""); r.status != c.status {
					t.Fatalf("%s at %v: %d %s", c.path, c.rep, r.status, r.body)
				}
			}
			rt, _ := h.p.router.match("POST", []string{"services", "checkout", "restart"})
			if vp := h.p.verifier.cache.get(tok); vp == nil || vp.stage(rt).Term() == nil {
				t.Fatal("no stage kept: the test shows nothing")
			}
			// Records come appended (allowed calls) before enqueued
			// (denials): compare the shadow's answers as a multiset.
			var got, want []string
			for _, rec := range h.sink.all() {
				if rec.Kind == audit.KindDecision && rec.Shadow != nil {
					got = append(got, strings.Join(rec.Shadow.Reasons, ","))
				}
			}
			for _, c := range calls {
				want = append(want, strings.Join(c.shadow, ","))
			}
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Fatalf("the shadow's reasons %q, want %q", got, want)
			}
		})
	}
}
