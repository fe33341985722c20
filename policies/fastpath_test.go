package policies

import (
	"context"
	"encoding/json"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"

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
	variants := map[string]func(cfg map[string]any){
		"shipped": func(map[string]any) {},
		"windows": func(cfg map[string]any) {
			cfg["freeze_windows"] = []any{
				map[string]any{"name": "all", "start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z",
					"tenants": []any{"globex"}},
				map[string]any{"name": "empty", "start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z",
					"actions": []any{}, "tenants": []any{}, "exempt_agent_types": []any{"chaos"}},
				map[string]any{"name": "reads", "start": "2026-11-25T00:00:00Z", "end": "2026-11-26T00:00:00Z",
					"actions": []any{"service.get"}, "exempt_agent_types": []any{}},
				map[string]any{"name": "typo", "start": "2026-13-01", "end": "2027-01-01T00:00:00Z",
					"actions": []any{"cache.warm"}, "tenants": []any{"acme"}},
			}
		},
		"actions": func(cfg map[string]any) {
			acts := cfg["actions"].(map[string]any)
			acts["service.get"].(map[string]any)["any_resource"] = true
			acts["chaos.inject"].(map[string]any)["non_production_only"] = false
			acts["cache.warm"].(map[string]any)["min_reputation"] = 70
			acts["service.scale"].(map[string]any)["min_reputation"] = 0
			acts["deployment.deploy"] = false
			cfg["task"] = map[string]any{"reads_exempt": false}
			delete(cfg, "revision")
		},
	}
	// Odd but valid data: a tenant that lists "*" as a service, an agent
	// type that is not an object, an action whose trust level is unknown,
	// an extra trust level, and a window whose end does not parse.
	variants["odd"] = func(cfg map[string]any) {
		acme := cfg["tenants"].(map[string]any)["acme"].(map[string]any)
		acme["services"] = append(acme["services"].([]any), "*")
		cfg["agent_types"].(map[string]any)["scaler"] = false
		cfg["actions"].(map[string]any)["cache.warm"].(map[string]any)["trust"] = "UNKNOWN"
		cfg["trust_levels"].(map[string]any)["ROOT"] = 9
		cfg["freeze_windows"] = []any{
			map[string]any{"start": "2026-11-01T00:00:00Z", "end": "soon", "actions": []any{"deployment.deploy"},
				"tenants": []any{"acme"}},
		}
	}
	// A window whose lists are not lists: clearances is undefined, and
	// every call takes the full evaluation.
	variants["malformed"] = func(cfg map[string]any) {
		cfg["freeze_windows"] = []any{
			map[string]any{"start": "2026-11-01T00:00:00Z", "end": "2027-01-01T00:00:00Z", "tenants": "acme"},
		}
	}
	n := 600
	if testing.Short() {
		n = 150
	}
	ctx := context.Background()
	for name, patch := range variants {
		t.Run(name, func(t *testing.T) {
			var data map[string]any
			b, _ := json.Marshal(lib.Data)
			if err := json.Unmarshal(b, &data); err != nil {
				t.Fatal(err)
			}
			patch(data["passport"].(map[string]any)["config"].(map[string]any))
			// As the proxy does on every load (proxy/policy).
			mods := make([]*ast.Module, 0, len(lib.Modules))
			for _, m := range lib.Modules {
				mods = append(mods, m)
			}
			if err := policy.AddLoadTimeDocuments(ctx, data, mods, nil); err != nil {
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
				in := randomCall(rng)
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

// randomCall is an allowed call of a random agent type and action, with
// zero to three fields then changed to another value, a wrong type or
// nothing.
func randomCall(rng *rand.Rand) map[string]any {
	types := map[string][]string{
		"healer":   {"service.list", "service.get", "service.restart", "deployment.rollback", "cache.warm"},
		"deployer": {"service.list", "service.get", "deployment.deploy", "deployment.rollback"},
		"scaler":   {"service.list", "service.get", "service.scale"},
		"observer": {"service.list", "service.get"},
		"chaos":    {"service.list", "service.get", "chaos.inject", "chaos.clear"},
	}
	names := slices.Sorted(maps.Keys(types))
	typ := names[rng.IntN(len(names))]
	acts := types[typ]
	action := acts[rng.IntN(len(acts))]
	tenant, resource := "acme", []string{"checkout", "payments"}[rng.IntN(2)]
	if rng.IntN(2) == 0 {
		tenant, resource = "globex", []string{"search", "inventory"}[rng.IntN(2)]
	}
	if action == "service.list" && rng.IntN(2) == 0 {
		resource = "*"
	}
	body := map[string]any{
		"service.scale": map[string]any{"replicas": 2}, "deployment.deploy": map[string]any{"version": "v2.1"},
		"chaos.inject": map[string]any{"type": "service_down"},
	}[action]
	in := map[string]any{
		"version": 1, "time": "2026-11-25T20:00:00.123456789Z", "tenant": tenant, "action": action, "resource": resource,
		"route":   map[string]any{"name": "r", "template": "t", "tenant": "", "production": !slices.Contains([]string{"chaos.inject", "chaos.clear"}, action)},
		"request": map[string]any{"id": "req-1", "method": "POST", "path": "/x", "params": map[string]any{}, "body": body},
		"passport": map[string]any{"tenant": tenant, "authorization_details": []any{
			map[string]any{"type": "agent_action", "actions": anys(acts)},
		}},
		"agent": map[string]any{"id": "ag", "type": typ, "trust_level": "HIGH", "reputation": 90.0, "blocked": false},
	}
	mutations := []struct {
		path   []string
		values []any
	}{
		{[]string{"version"}, []any{2, "1", nil, 1.0}},
		{[]string{"time"}, []any{"2026-12-25T00:00:00Z", "2026-11-25T12:00:00+01:00", "yesterday", nil, 5}},
		{[]string{"tenant"}, []any{"globex", "acme", "", nil, 7}},
		{[]string{"action"}, []any{"service.restart", "service.scale", "deployment.deploy", "chaos.inject", "chaos.clear",
			"service.list", "cache.warm", "nuke", nil}},
		{[]string{"resource"}, []any{"*", "checkout", "search", "", nil}},
		{[]string{"route"}, []any{nil, "x", map[string]any{}}},
		{[]string{"route", "tenant"}, []any{"acme", "globex", nil, 1}},
		{[]string{"route", "production"}, []any{false, true, nil, "false"}},
		{[]string{"request", "body"}, []any{nil, map[string]any{"replicas": 0}, map[string]any{"replicas": 9},
			map[string]any{"replicas": 2.5}, map[string]any{"replicas": "3"}, map[string]any{"version": "latest"},
			map[string]any{"version": 2}, map[string]any{"type": "meteor"}, map[string]any{"type": "cache_miss"}}},
		{[]string{"passport", "tenant"}, []any{"globex", "acme", nil}},
		{[]string{"passport", "authorization_details"}, []any{nil, []any{}, "x", []any{"x", 1},
			[]any{map[string]any{"type": "other", "actions": anys(acts)}},
			[]any{map[string]any{"type": "agent_action", "actions": []any{action}, "identifier": "checkout"}},
			[]any{map[string]any{"type": "agent_action", "actions": []any{action}, "identifier": ""}},
			[]any{map[string]any{"type": "agent_action", "actions": "service.list"}}}},
		{[]string{"passport", "task"}, []any{nil, "x", map[string]any{},
			map[string]any{"target": "checkout", "actions": []any{"service.restart"}},
			map[string]any{"target": resource, "actions": []any{action}},
			map[string]any{"target": resource}, map[string]any{"actions": []any{}}, map[string]any{"target": ""},
			map[string]any{"target": resource, "actions": 5}}},
		{[]string{"agent", "type"}, []any{"healer", "observer", "chaos", "robot", nil}},
		{[]string{"agent", "trust_level"}, []any{"LOW", "MEDIUM", "ROOT", nil}},
		{[]string{"agent", "reputation"}, []any{50, 49.9, 0, "90", nil}},
		{[]string{"agent", "blocked"}, []any{true, nil, "false", 0}},
	}
	for range rng.IntN(4) {
		m := mutations[rng.IntN(len(mutations))]
		v := m.values[rng.IntN(len(m.values))]
		obj := in
		for _, k := range m.path[:len(m.path)-1] {
			next, ok := obj[k].(map[string]any)
			if !ok {
				next = map[string]any{}
				obj[k] = next
			}
			obj = next
		}
		last := m.path[len(m.path)-1]
		if v == nil && rng.IntN(2) == 0 {
			delete(obj, last) // absent rather than null
		} else {
			obj[last] = v
		}
	}
	return in
}

func anys(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
