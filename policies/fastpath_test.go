package policies

import (
	"context"
	"encoding/json"
	"maps"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"

	"github.com/agentpassport/passport/policies/corpus"
	"github.com/agentpassport/passport/proxy/policy"
)

// fastPathReasons are the reason rules (code: number of rules) that the
// fast path of decision (authz.rego) states positively. A new reason rule needs a
// counterpart in the fast path, or it would not be applied to calls that
// pass every other check; this list is the reminder.
var fastPathReasons = map[string]int{
	"input_version_unsupported": 1, "unknown_action": 1,
	"agent_blocked": 1, "unknown_agent_type": 1, "agent_type_not_permitted": 1, "action_not_granted": 1,
	"trust_level_too_low": 1, "reputation_too_low": 1,
	"tenant_mismatch": 1, "resource_not_in_tenant": 1,
	"invalid_argument": 2, "replicas_out_of_bounds": 1, "fault_type_not_permitted": 1, "chaos_on_production_route": 1,
	"change_freeze": 1, "invalid_time": 1,
	"task_target_mismatch": 1, "task_action_mismatch": 1,
	"delegated_production_write": 1, // fast.rego: a delegated passport takes the full evaluation
}

// TestFastPathCoversEveryReasonRule fails when the reason rules change:
// extend the fast path of decision in authz.rego, then fastPathReasons.
func TestFastPathCoversEveryReasonRule(t *testing.T) {
	lib, err := Load(FS, false)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, m := range lib.Modules {
		for _, r := range m.Rules {
			if r.Head.Name != "reasons" && r.Head.Ref().String() != "reasons" {
				continue
			}
			s, ok := r.Head.Key.Value.(ast.String)
			if !ok {
				t.Fatalf("%s: reason rule with a non-constant code %v", r.Location, r.Head.Key)
			}
			got[string(s)]++
		}
	}
	if !maps.Equal(got, fastPathReasons) {
		t.Fatalf("reason rules = %v\nfast path covers %v\nadd the new check to the fast path of decision (authz.rego), then to fastPathReasons", got, fastPathReasons)
	}
}

// TestFastDecisionMatchesFullDecision evaluates decision (fast path
// first) and full_decision (every rule) on thousands of inputs derived
// from allowed calls of every agent type, under the shipped data and
// variants of it, and requires the same answer, error or not.
func TestFastDecisionMatchesFullDecision(t *testing.T) {
	lib, err := Load(FS, false)
	if err != nil {
		t.Fatal(err)
	}
	n := 600
	if testing.Short() {
		n = 150
	}
	ctx := context.Background()
	for _, v := range corpus.Variants() {
		name := v.Name
		t.Run(name, func(t *testing.T) {
			patched, err := v.Apply(lib.Data)
			if err != nil {
				t.Fatal(err)
			}
			// As the proxy does on every load (proxy/policy).
			data, err := (&policy.Files{Modules: lib.Modules, Data: patched}).EngineData(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			store := inmem.NewFromObjectWithOpts(data, inmem.OptReturnASTValuesOnRead(true))
			prep := func(q string) rego.PreparedEvalQuery {
				pq, err := rego.New(rego.Query(q), rego.Compiler(mustCompile(t, lib)), rego.Store(store),
					rego.StrictBuiltinErrors(true)).PrepareForEval(ctx)
				if err != nil {
					t.Fatal(err)
				}
				return pq
			}
			decide, full := prep("data.passport.authz.decision"), prep("data.passport.authz.full_decision")
			// slow is "slow" when decision falls back to full_decision.
			slow := prep(`data.passport.authz.decision with data.passport.authz.full_decision as "slow"`)
			eval := func(pq rego.PreparedEvalQuery, in ast.Value) (any, string) {
				rs, err := pq.Eval(ctx, rego.EvalParsedInput(in))
				if err != nil {
					return nil, err.Error()
				}
				if len(rs) == 0 {
					return nil, "undefined"
				}
				return rs[0].Expressions[0].Value, ""
			}
			rng := rand.New(rand.NewPCG(1, uint64(len(name))))
			allowed, fastHits, denied, tableHits := 0, 0, 0, 0
			for i := range n {
				in := corpus.Call(rng)
				v, err := ast.InterfaceToValue(in)
				if err != nil {
					t.Fatal(err)
				}
				got, gotErr := eval(decide, v)
				want, wantErr := eval(full, v)
				if gotErr != "" || wantErr != "" {
					// An error must stay an error (the proxy fails closed either way).
					if (gotErr == "") != (wantErr == "") {
						t.Fatalf("input %d %s:\ndecision: %v %s\nfull: %v %s", i, mustJSON(in), got, gotErr, want, wantErr)
					}
					continue
				}
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("input %d %s:\ndecision:      %v\nfull_decision: %v", i, mustJSON(in), got, want)
				}
				quick := false
				if d, _ := eval(slow, v); d != "slow" {
					quick = true
				}
				if want.(map[string]any)["allow"] == true {
					allowed++
					if quick {
						fastHits++
					}
				} else {
					denied++
					if quick {
						tableHits++
					}
				}
			}
			t.Logf("%d inputs, %d allowed, %d of them through a fast path; %d denied, %d of them through the table path",
				n, allowed, fastHits, denied, tableHits)
			if allowed < n/10 {
				t.Fatalf("only %d of %d inputs allowed: the generator no longer exercises the fast path", allowed, n)
			}
			// Chaos actions (non-production routes) and calls around a
			// window with an unparseable time take the full evaluation;
			// most allowed calls must not.
			if name == "malformed" {
				if fastHits+tableHits != 0 {
					t.Fatalf("%d calls took a fast path with malformed windows", fastHits+tableHits)
				}
			} else if fastHits < allowed/2 {
				t.Fatalf("only %d of %d allowed calls took the fast path", fastHits, allowed)
			} else if tableHits < denied/10 {
				// Most generated denials change a field to another type or
				// remove it, which the proxy never does, and those take the
				// full evaluation; the well-formed ones must not.
				t.Fatalf("only %d of %d denied calls took the table path", tableHits, denied)
			}
		})
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
