package budget_test

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/open-policy-agent/opa/v1/util"

	"github.com/agentpassport/passport/budget"
	"github.com/agentpassport/passport/policies"
)

const declared = `
passport:
  budgets:
    - name: restarts-per-service
      actions: [service.restart]
      per: resource
      limit: 3
      window: 10m
    - name: deploys_per_agent
      actions: [deployment.deploy, deployment.rollback]
      per: agent
      limit: 5
      window: 1h30m
    - name: tenant-writes
      actions: [service.scale, cache.warm]
      per: tenant
      limit: 100
      window: 1s
`

func want() []budget.Budget {
	return []budget.Budget{
		{Name: "restarts-per-service", Actions: []string{"service.restart"}, Per: budget.PerResource, Limit: 3, Window: 10 * time.Minute},
		{Name: "deploys_per_agent", Actions: []string{"deployment.deploy", "deployment.rollback"}, Per: budget.PerAgent, Limit: 5, Window: 90 * time.Minute},
		{Name: "tenant-writes", Actions: []string{"service.scale", "cache.warm"}, Per: budget.PerTenant, Limit: 100, Window: time.Second},
	}
}

func TestFromData(t *testing.T) {
	var data map[string]any
	if err := util.Unmarshal([]byte(declared), &data); err != nil {
		t.Fatal(err)
	}
	got, err := budget.FromData(data)
	if err != nil || !reflect.DeepEqual(got, want()) {
		t.Fatalf("FromData = %+v, %v", got, err)
	}
	if !got[0].Matches("service.restart") || got[0].Matches("service.scale") {
		t.Fatal("Matches")
	}
	// The same from plain JSON (float64 numbers, as encoding/json gives).
	b, _ := json.Marshal(data)
	var plain map[string]any
	_ = json.Unmarshal(b, &plain)
	if got, err := budget.FromData(plain); err != nil || !reflect.DeepEqual(got, want()) {
		t.Fatalf("FromData(JSON) = %+v, %v", got, err)
	}
	// No budgets: none, no error.
	for _, d := range []map[string]any{nil, {}, {"passport": map[string]any{"config": map[string]any{}}}, {"passport": map[string]any{"budgets": nil}}} {
		if got, err := budget.FromData(d); err != nil || len(got) != 0 {
			t.Fatalf("FromData(%v) = %v, %v", d, got, err)
		}
	}
	if _, err := budget.FromData(map[string]any{"passport": "x"}); err == nil || !strings.Contains(err.Error(), "data.passport: want an object") {
		t.Fatalf("data.passport a string: %v", err)
	}
	// The window is written back as it is declared.
	if b, _ := json.Marshal(got[1]); !strings.Contains(string(b), `"window":"1h30m0s"`) {
		t.Fatalf("JSON %s", b)
	}
}

func TestParseRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, item, want string
	}{
		{"no name", `{"actions": ["service.restart"], "per": "agent", "limit": 1, "window": "1m"}`, "name: want lowercase"},
		{"name with a colon", `{"name": "a:b", "actions": ["service.restart"], "per": "agent", "limit": 1, "window": "1m"}`, "name: want lowercase"},
		{"name in capitals", `{"name": "Restarts", "actions": ["service.restart"], "per": "agent", "limit": 1, "window": "1m"}`, "name: want lowercase"},
		{"no actions", `{"name": "a", "actions": [], "per": "agent", "limit": 1, "window": "1m"}`, "actions: want a non-empty list"},
		{"actions not a list", `{"name": "a", "actions": "service.restart", "per": "agent", "limit": 1, "window": "1m"}`, "actions: want a non-empty list"},
		{"bad action", `{"name": "a", "actions": ["Service.Restart"], "per": "agent", "limit": 1, "window": "1m"}`, `actions: "Service.Restart" is not an action`},
		{"action not a string", `{"name": "a", "actions": [3], "per": "agent", "limit": 1, "window": "1m"}`, `actions: 3 is not an action`},
		{"bad per", `{"name": "a", "actions": ["service.restart"], "per": "service", "limit": 1, "window": "1m"}`, `per: "service": want agent, resource or tenant`},
		{"no per", `{"name": "a", "actions": ["service.restart"], "limit": 1, "window": "1m"}`, `per: missing`},
		{"limit zero", `{"name": "a", "actions": ["service.restart"], "per": "agent", "limit": 0, "window": "1m"}`, "limit: 0: want an integer of at least 1"},
		{"limit negative", `{"name": "a", "actions": ["service.restart"], "per": "agent", "limit": -2, "window": "1m"}`, "limit: -2"},
		{"limit fraction", `{"name": "a", "actions": ["service.restart"], "per": "agent", "limit": 2.5, "window": "1m"}`, "limit: 2.5"},
		{"limit string", `{"name": "a", "actions": ["service.restart"], "per": "agent", "limit": "3", "window": "1m"}`, `limit: "3"`},
		{"limit huge", `{"name": "a", "actions": ["service.restart"], "per": "agent", "limit": 1e300, "window": "1m"}`, "limit: 1e300"},
		{"window without unit", `{"name": "a", "actions": ["service.restart"], "per": "agent", "limit": 1, "window": "10"}`, `window: "10"`},
		{"window zero", `{"name": "a", "actions": ["service.restart"], "per": "agent", "limit": 1, "window": "0s"}`, `window: "0s"`},
		{"window negative", `{"name": "a", "actions": ["service.restart"], "per": "agent", "limit": 1, "window": "-1m"}`, `window: "-1m"`},
		{"window a number", `{"name": "a", "actions": ["service.restart"], "per": "agent", "limit": 1, "window": 600}`, "window: 600: want a Go duration"},
		{"window in days", `{"name": "a", "actions": ["service.restart"], "per": "agent", "limit": 1, "window": "1d"}`, `window: "1d"`},
		{"misspelt key", `{"name": "a", "actions": ["service.restart"], "per": "agent", "limt": 1, "window": "1m"}`, `unknown key "limt"`},
		{"refund not a bool", `{"name": "a", "actions": ["service.restart"], "per": "agent", "limit": 1, "window": "1m", "refund_on_5xx": "yes"}`, `refund_on_5xx: "yes": want true or false`},
		{"not an object", `"restarts"`, "want an object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var v any
			if err := util.Unmarshal([]byte(`[`+tc.item+`]`), &v); err != nil {
				t.Fatal(err)
			}
			_, err := budget.Parse(v)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "budgets[0]") {
				t.Fatalf("Parse: %v, want %q", err, tc.want)
			}
		})
	}
	var v any
	_ = util.Unmarshal([]byte(`[{"name": "a", "actions": ["service.restart"], "per": "agent", "limit": 1, "window": "1m"},
		{"name": "a", "actions": ["service.scale"], "per": "tenant", "limit": 2, "window": "1h"}]`), &v)
	if _, err := budget.Parse(v); err == nil || !strings.Contains(err.Error(), "budgets[1] (a): name also used by budgets[0]") {
		t.Fatalf("duplicate names: %v", err)
	}
	if _, err := budget.Parse(map[string]any{"a": 1}); err == nil || !strings.Contains(err.Error(), "want a list") {
		t.Fatalf("an object: %v", err)
	}
	_ = util.Unmarshal([]byte(`[{"name": "a", "actions": ["service.restart"], "per": "agent", "limit": 1, "window": "1m", "refund_on_5xx": true}]`), &v)
	if bs, err := budget.Parse(v); err != nil || len(bs) != 1 || !bs[0].RefundOn5xx {
		t.Fatalf("refund_on_5xx: %+v %v", bs, err)
	}
}

// CheckFS names the file of each problem, reads data files where OPA puts
// them (a file in passport/ declares "budgets" at its top), and agrees with
// the data the policy loader builds.
func TestCheckFS(t *testing.T) {
	rego := &fstest.MapFile{Data: []byte("package passport.authz\n\ndecision := {\"allow\": false, \"reasons\": [\"x\"]}\n")}
	for _, tc := range []struct {
		name  string
		files fstest.MapFS
		err   string
		n     int
	}{
		{"root file", fstest.MapFS{"authz.rego": rego, "data.yaml": {Data: []byte(declared)}}, "", 3},
		{"under passport/", fstest.MapFS{"authz.rego": rego, "passport/limits.yaml": {Data: []byte("budgets:\n  - {name: r, actions: [service.restart], per: agent, limit: 1, window: 1m}\n")}}, "", 1},
		{"json", fstest.MapFS{"authz.rego": rego, "data.json": {Data: []byte(`{"passport": {"budgets": [{"name": "r", "actions": ["service.restart"], "per": "agent", "limit": 1, "window": "1m"}]}}`)}}, "", 1},
		{"none", fstest.MapFS{"authz.rego": rego, "data.yaml": {Data: []byte("passport:\n  config: {}\n")}}, "", 0},
		{"elsewhere is not a budget", fstest.MapFS{"authz.rego": rego, "other/data.yaml": {Data: []byte("passport:\n  budgets: nonsense\n")}}, "", 0},
		{"hidden files are not loaded", fstest.MapFS{"authz.rego": rego, ".draft.yaml": {Data: []byte("passport:\n  budgets: nonsense\n")}}, "", 0},
		{"bad budget", fstest.MapFS{"authz.rego": rego, "data.yaml": {Data: []byte(strings.Replace(declared, "limit: 5", "limit: 0", 1))}},
			"data.yaml: budgets[1] (deploys_per_agent): limit: 0", 0},
		{"bad budget in passport/", fstest.MapFS{"authz.rego": rego, "passport/limits.yaml": {Data: []byte("budgets:\n  - {name: r, actions: [service.restart], per: agents, limit: 1, window: 1m}\n")}},
			`passport/limits.yaml: budgets[0] (r): per: "agents"`, 0},
		{"a folder of budgets", fstest.MapFS{"authz.rego": rego, "passport/budgets/r.yaml": {Data: []byte("name: r\n")}},
			"passport/budgets/r.yaml: lies under data.passport.budgets", 0},
		{"two files", fstest.MapFS{"authz.rego": rego, "data.yaml": {Data: []byte(declared)},
			"passport/more.yaml": {Data: []byte("budgets:\n  - {name: r, actions: [service.restart], per: agent, limit: 1, window: 1m}\n")}},
			"declare them in one file", 0},
		{"not yaml", fstest.MapFS{"authz.rego": rego, "data.yaml": {Data: []byte("passport: [\n")}}, "data.yaml:", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := budget.CheckFS(tc.files)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("CheckFS: %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || len(got) != tc.n {
				t.Fatalf("CheckFS: %d budgets, %v; want %d", len(got), err, tc.n)
			}
			// The loader the proxy's tools use reads the same budgets.
			lib, err := policies.Load(tc.files, false)
			if err != nil {
				t.Fatal(err)
			}
			fromLib, err := budget.FromData(lib.Data)
			if tc.name == "elsewhere is not a budget" || tc.name == "hidden files are not loaded" {
				return
			}
			if err != nil || !reflect.DeepEqual(fromLib, got) {
				t.Fatalf("FromData(loaded) = %+v, %v; CheckFS = %+v", fromLib, err, got)
			}
		})
	}
	// The shipped library declares its budgets validly.
	if _, err := budget.CheckFS(policies.TestFS); err != nil {
		t.Fatalf("the embedded library: %v", err)
	}
}
