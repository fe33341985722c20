package policy_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"

	"github.com/agentpassport/passport/policies/corpus"
	"github.com/agentpassport/passport/proxy/policy"
)

// writeLibrary writes the library's modules and data into dir.
func writeLibrary(t *testing.T, dir string, lib library, data map[string]any) {
	t.Helper()
	for name, src := range lib.modules {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := json.Marshal(data)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "data.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// stagedCall is a corpus call with the stage an engine computed for it.
type stagedCall struct {
	call map[string]any
	st   *policy.Stage
}

// with is the call's input with the stage, edited by edit when set.
func (c stagedCall) with(t *testing.T, edit func(map[string]any)) ast.Value {
	t.Helper()
	in := roundTrip(t, c.call)
	if edit != nil {
		edit(in)
	}
	v, err := ast.InterfaceToValue(in)
	if err != nil {
		t.Fatal(err)
	}
	return policy.WithStage(v, c.st)
}

// TestStageHonoursPerCallFactsAndReloads: a stage computed once per
// passport and route, then kept, gives the rules' decision on every later
// call: when the reputation changes, when the agent is blocked, when the
// call names another resource or another time, and after a reload that
// changes the policy (the stale stage is left out, and the next stage is
// the new policy's). A stage handed in without its handle, or a handle
// with another value, is left out too.
func TestStageHonoursPerCallFactsAndReloads(t *testing.T) {
	lib := shippedLibrary(t)
	variants := corpus.Variants()
	shipped, err := variants[0].Apply(lib.data)
	if err != nil {
		t.Fatal(err)
	}
	changed, err := variants[2].Apply(lib.data) // "actions": thresholds, deploy, task reads
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range []policy.Evaluator{policy.Fast, policy.Rego} {
		t.Run(string(ev), func(t *testing.T) {
			dir := t.TempDir()
			writeLibrary(t, dir, lib, shipped)
			e, err := policy.New(context.Background(), policy.Options{Dir: dir, Evaluator: ev, Timeout: time.Minute,
				Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			ref := reference(t, lib, shipped, true)
			check := func(what string, pq rego.PreparedEvalQuery, c stagedCall, edit func(map[string]any), st *policy.Stage) {
				t.Helper()
				in := roundTrip(t, c.call)
				if edit != nil {
					edit(in)
				}
				want, err := ast.InterfaceToValue(in)
				if err != nil {
					t.Fatal(err)
				}
				if got, w := decideStaged(t, e, c.with(t, edit), st), referenceAnswer(t, pq, want); got != w {
					b, _ := json.Marshal(in)
					t.Fatalf("%s: input %s:\nwith the stage: %s\nthe rules:      %s", what, b, got, w)
				}
			}
			rng := rand.New(rand.NewPCG(3, 16))
			var calls []stagedCall
			for len(calls) < 100 {
				call := corpus.Call(rng)
				in, err := ast.InterfaceToValue(call)
				if err != nil {
					t.Fatal(err)
				}
				st, err := e.Stage(context.Background(), in)
				if err != nil {
					t.Fatal(err)
				}
				if st.Term() != nil {
					calls = append(calls, stagedCall{call, st})
				}
			}
			set := func(path ...any) func(map[string]any) {
				return func(in map[string]any) {
					obj := in
					for _, k := range path[:len(path)-2] {
						next, ok := obj[k.(string)].(map[string]any)
						if !ok {
							next = map[string]any{}
							obj[k.(string)] = next
						}
						obj = next
					}
					obj[path[len(path)-2].(string)] = path[len(path)-1]
				}
			}
			edits := map[string]func(map[string]any){
				"reputation 0":              set("agent", "reputation", 0),
				"reputation 49.9":           set("agent", "reputation", 49.9),
				"reputation 50":             set("agent", "reputation", 50),
				"reputation text":           set("agent", "reputation", "90"),
				"blocked":                   set("agent", "blocked", true),
				"another tenant's resource": set("resource", "search"),
				"a frozen time":             set("time", "2026-12-25T00:00:00Z"),
				"too many replicas":         set("request", "body", map[string]any{"replicas": 30}),
				"an exhausted budget": set("budgets", map[string]any{"restarts-per-service": map[string]any{
					"limit": 3, "used": 3, "remaining": 0, "window": "10m0s", "reserved": false}}),
			}
			allowed := 0
			for _, c := range calls {
				if got := decideStaged(t, e, c.with(t, nil), c.st); got == referenceAnswer(t, ref, mustValue(t, c.call)) &&
					json.Valid([]byte(got)) && got[:13] == `{"allow":true` {
					allowed++
				}
				check("as it is", ref, c, nil, c.st)
				for name, edit := range edits {
					check(name, ref, c, edit, c.st)
				}
				// A stage without its handle, or with another's, is not
				// read: a tampered value would allow what the rules deny.
				forged := policy.TamperStage(c.st, func(o ast.Object) ast.Object {
					o.Insert(ast.StringTerm("resources"), ast.MustParseTerm(`{"search": true}`))
					o.Insert(ast.StringTerm("min_reputation"), ast.IntNumberTerm(0))
					return o
				})
				forgedCall := stagedCall{c.call, forged}
				for _, st := range []*policy.Stage{nil, c.st} {
					if got, want := decideStaged(t, e, forgedCall.with(t, set("resource", "search")), st),
						referenceAnswer(t, ref, mustValue(t, c.call, set("resource", "search"))); got != want {
						t.Fatalf("a forged stage was read: %s, want %s", got, want)
					}
				}
			}
			if allowed < len(calls)/4 {
				t.Fatalf("%d of %d calls with a stage allowed: too few to show anything", allowed, len(calls))
			}

			// A reload that changes the policy: every stage is stale, left
			// out, and the decisions are the new policy's.
			writeLibrary(t, dir, lib, changed)
			if err := e.Reload(context.Background()); err != nil {
				t.Fatal(err)
			}
			refChanged := reference(t, lib, changed, true)
			for _, c := range calls {
				if e.Fresh(c.st) {
					t.Fatal("a stage of the previous load is fresh after the reload")
				}
				check("after a reload, the stale stage", refChanged, c, nil, c.st)
				st, err := e.Stage(context.Background(), mustValue(t, c.call))
				if err != nil {
					t.Fatal(err)
				}
				if !e.Fresh(st) {
					t.Fatal("a stage of the load in force is not fresh")
				}
				check("after a reload, the new stage", refChanged, stagedCall{c.call, st}, nil, st)
				check("after a reload, the new stage, reputation 0", refChanged, stagedCall{c.call, st}, edits["reputation 0"], st)
			}
		})
	}
}

// mustValue is call, edited by the edits, as an input value.
func mustValue(t *testing.T, call map[string]any, edits ...func(map[string]any)) ast.Value {
	t.Helper()
	in := roundTrip(t, call)
	for _, e := range edits {
		e(in)
	}
	v, err := ast.InterfaceToValue(in)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
