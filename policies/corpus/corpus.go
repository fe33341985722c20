// Package corpus generates the inputs and data on which the policy
// library's fast paths are checked against its full rules
// (policies/fastpath_test.go) and the proxy's fast evaluator against the
// rego package (proxy/policy/differential_test.go): calls derived from
// allowed ones of every agent type, and the shipped data with variants.
// Only tests import it.
package corpus

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
)

// Variant is an edit of the policy data (data.passport.config).
type Variant struct {
	Name string
	// Patch edits config, a copy of data.passport.config.
	Patch func(config map[string]any)
}

// Variants are the shipped data and edits of it that reach every branch of
// the fast paths. Under "malformed" the library's clearances is
// undefined, and every call takes the full evaluation.
func Variants() []Variant {
	return []Variant{
		{"shipped", func(map[string]any) {}},
		{"windows", func(cfg map[string]any) {
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
		}},
		{"actions", func(cfg map[string]any) {
			acts := cfg["actions"].(map[string]any)
			acts["service.get"].(map[string]any)["any_resource"] = true
			acts["chaos.inject"].(map[string]any)["non_production_only"] = false
			acts["cache.warm"].(map[string]any)["min_reputation"] = 70
			acts["service.scale"].(map[string]any)["min_reputation"] = 0
			acts["deployment.deploy"] = false
			cfg["task"] = map[string]any{"reads_exempt": false}
			delete(cfg, "revision")
		}},
		// Odd but valid data: a tenant that lists "*" as a service, an agent
		// type that is not an object, an action whose trust level is unknown,
		// an extra trust level, and a window whose end does not parse.
		{"odd", func(cfg map[string]any) {
			acme := cfg["tenants"].(map[string]any)["acme"].(map[string]any)
			acme["services"] = append(acme["services"].([]any), "*")
			cfg["agent_types"].(map[string]any)["scaler"] = false
			cfg["actions"].(map[string]any)["cache.warm"].(map[string]any)["trust"] = "UNKNOWN"
			cfg["trust_levels"].(map[string]any)["ROOT"] = 9
			cfg["freeze_windows"] = []any{
				map[string]any{"start": "2026-11-01T00:00:00Z", "end": "soon", "actions": []any{"deployment.deploy"},
					"tenants": []any{"acme"}},
			}
		}},
		// A window whose lists are not lists.
		{"malformed", func(cfg map[string]any) {
			cfg["freeze_windows"] = []any{
				map[string]any{"start": "2026-11-01T00:00:00Z", "end": "2027-01-01T00:00:00Z", "tenants": "acme"},
			}
		}},
	}
}

// Apply returns a copy of data (the policy's whole data document) with the
// variant's edit of data.passport.config.
func (v Variant) Apply(data map[string]any) (map[string]any, error) {
	b, err := json.Marshal(data)
	if err != nil {
		return nil, err
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, err
	}
	p, _ := out["passport"].(map[string]any)
	cfg, ok := p["config"].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("variant %s: the data has no passport.config", v.Name)
	}
	v.Patch(cfg)
	return out, nil
}

// Call is an allowed call of a random agent type and action (under the
// shipped data), with zero to three fields then changed to another value,
// a wrong type or nothing: the input document of a call, as Go values.
func Call(rng *rand.Rand) map[string]any {
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
		// Budgets and approvals (escalate.rego), as the proxy passes them.
		{[]string{"budgets"}, []any{budgetIn("restarts-per-service", true), budgetIn("restarts-per-service", false),
			budgetIn("other", false), map[string]any{}, "x", nil}},
		{[]string{"approval"}, []any{approvalIn("alice"), approvalIn(), approvalIn("alice", "bob"), "x", nil}},
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

func budgetIn(name string, reserved bool) map[string]any {
	return map[string]any{name: map[string]any{"limit": 3, "used": 3, "remaining": 0, "window": "10m0s", "reserved": reserved}}
}

func approvalIn(approvers ...string) map[string]any {
	return map[string]any{"id": "apr_0123456789abcdefghij", "approvers": anys(approvers), "granted_at": "2026-11-25T20:00:00Z"}
}

func anys(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}
