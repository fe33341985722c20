package proxy

import (
	"strings"
	"testing"

	"github.com/agentpassport/passport/passport"
	"github.com/agentpassport/passport/proxy/internal/testkeys"
	"github.com/agentpassport/passport/proxy/policy"
)

// TestPolicyEngineSwitch: policy.engine selects the evaluator of the
// enforced and the shadow policy; with "rego" (the rego package, the
// fallback) the proxy allows, denies and fails closed as with the default.
func TestPolicyEngineSwitch(t *testing.T) {
	for _, engine := range []string{"", "fast", "rego"} {
		t.Run("engine="+engine, func(t *testing.T) {
			h := newHarness(t, func(c *Config) {
				c.Policy.Engine = engine
				c.Policy.ShadowDir = c.Policy.Dir
			})
			want := policy.Fast
			if engine == "rego" {
				want = policy.Rego
			}
			if h.p.enforced.Evaluator() != want || h.p.shadow.Evaluator() != want {
				t.Fatalf("evaluators %s, %s; want %s", h.p.enforced.Evaluator(), h.p.shadow.Evaluator(), want)
			}
			_, tok := h.healer()
			if r := h.do("POST", "/services/checkout/restart", tok, nil, ""); r.status != 200 {
				t.Fatalf("allowed call: %d %s", r.status, r.body)
			}
			if h.up.hits.Load() != 1 {
				t.Fatalf("upstream hits %d, want 1", h.up.hits.Load())
			}
			h.agent("acme", "obs-1", 90)
			obs := h.keys.Sign(t, testkeys.Claims(h.now(), "acme", "obs-1", "observer", passport.TrustLow, "service.list", "service.get"))
			if r := h.do("POST", "/services/checkout/restart", obs, nil, ""); r.status != 403 ||
				!strings.Contains(r.body, `"action_not_granted","trust_level_too_low"`) {
				t.Fatalf("denied call: %d %s", r.status, r.body)
			}
			if r := h.do("POST", "/boom", tok, nil, ""); r.status != 403 || !strings.Contains(r.body, "policy_error") {
				t.Fatalf("failing evaluation: %d %s", r.status, r.body)
			}
			if h.up.hits.Load() != 1 {
				t.Fatalf("upstream hits %d after the refusals, want 1", h.up.hits.Load())
			}
		})
	}
}
