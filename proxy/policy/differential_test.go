package policy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"gopkg.in/yaml.v3"

	"github.com/agentpassport/passport/policies"
	"github.com/agentpassport/passport/policies/corpus"
	"github.com/agentpassport/passport/proxy/policy"
)

// The differential test: the shipped policy library's generated corpus
// (policies/corpus: calls derived from allowed ones of every agent type,
// under the shipped data and variants of it) goes through the engine with
// each evaluator and through rego.PreparedEvalQuery built here
// independently, and every decision must be identical: allow, reasons and
// every field of the decision object, or an error on both sides (the proxy
// denies on any error). Two references: the data with the library's
// load-time document, as the proxy holds it, and the data alone (the
// library must answer the same without it, only slower).
//
// Each engine answers every call twice: as it is, and with the call's
// per-passport stage (Engine.Stage, computed from the call's stage input
// alone, then handed back as input.stage, as the proxy does): the library
// must give the same decision with and without its stage.
//
// The mutation tests below prove that it catches a divergence: a wrong
// data cache in the fast evaluator (in one field of the stored allowed
// decision only, and in a value the full rules read), a changed input,
// and a wrong stage (another passport's, or a tampered value).

// corpusSize is the number of calls per data variant.
func corpusSize() int {
	if testing.Short() {
		return 150
	}
	return 600
}

// mutationCorpus is the number of calls a mutation test runs: enough to
// meet each mutation many times over.
const mutationCorpus = 200

// library is the shipped library's Rego modules (sources, tests left out)
// and its data, read here without the engine's loader.
type library struct {
	modules map[string]string
	data    map[string]any
}

func shippedLibrary(t *testing.T) library {
	t.Helper()
	lib := library{modules: map[string]string{}}
	err := fs.WalkDir(policies.FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(policies.FS, p)
		if err != nil {
			return err
		}
		switch {
		case strings.HasSuffix(p, ".rego"):
			lib.modules[p] = string(b)
		case p == "data.yaml":
			var doc map[string]any
			if err := yaml.Unmarshal(b, &doc); err != nil {
				return err
			}
			lib.data = roundTrip(t, doc)
		default:
			return fmt.Errorf("unexpected file %s in the library", p)
		}
		return nil
	})
	if err != nil || len(lib.modules) == 0 || lib.data == nil {
		t.Fatalf("read the library: %v (%d modules)", err, len(lib.modules))
	}
	return lib
}

// roundTrip gives v as encoding/json would decode it.
func roundTrip(t *testing.T, v any) map[string]any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// engines loads the library with data through the engine, once per
// evaluator.
func engines(t *testing.T, lib library, data map[string]any) map[policy.Evaluator]*policy.Engine {
	t.Helper()
	b, err := json.Marshal(data)
	if err != nil {
		t.Fatal(err)
	}
	fsys := fstest.MapFS{"data.json": {Data: b}}
	for name, src := range lib.modules {
		fsys[name] = &fstest.MapFile{Data: []byte(src)}
	}
	out := map[policy.Evaluator]*policy.Engine{}
	for _, ev := range []policy.Evaluator{policy.Fast, policy.Rego} {
		// A long deadline: this compares answers, and a shared machine
		// can stall one evaluation past the default.
		e, err := policy.New(context.Background(), policy.Options{FS: fsys, Evaluator: ev, Timeout: time.Minute,
			Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatalf("%s: %v", ev, err)
		}
		out[ev] = e
	}
	return out
}

// reference prepares the decision query with the rego package over data,
// plus the library's clearances at data.passport.loaded.clearances when
// loaded is set (evaluated here with the rego package, as the library's
// annotation asks).
func reference(t *testing.T, lib library, data map[string]any, loaded bool) rego.PreparedEvalQuery {
	t.Helper()
	ctx := context.Background()
	data = roundTrip(t, data)
	var mods []func(*rego.Rego)
	for name, src := range lib.modules {
		mods = append(mods, rego.Module(name, src))
	}
	if loaded {
		rs, err := rego.New(append(mods, rego.Query("data.passport.authz.clearances"),
			rego.Store(inmem.NewFromObject(data)), rego.StrictBuiltinErrors(true))...).Eval(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(rs) == 1 {
			data["passport"].(map[string]any)["loaded"] = map[string]any{"clearances": rs[0].Expressions[0].Value}
		}
	}
	pq, err := rego.New(append(mods, rego.Query(policies.DecisionQuery), rego.Store(inmem.NewFromObject(data)),
		rego.StrictBuiltinErrors(true))...).PrepareForEval(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return pq
}

// decide is the engine's answer as one string: the decision object as
// canonical JSON, or "error". It checks that Allow and Reasons are the
// object's.
func decide(t *testing.T, e *policy.Engine, in ast.Value) string {
	t.Helper()
	return decideStaged(t, e, in, nil)
}

// decideStaged is decide for an input that carries st (policy.WithStage).
func decideStaged(t *testing.T, e *policy.Engine, in ast.Value, st *policy.Stage) string {
	t.Helper()
	d, err := e.DecideStaged(context.Background(), in, st)
	if err != nil {
		if d.Allow {
			t.Fatalf("an error that allows: %+v %v", d, err)
		}
		return "error"
	}
	obj, err := d.Object()
	if err != nil {
		t.Fatal(err)
	}
	var reasons []string
	list, _ := obj["reasons"].([]any)
	for _, r := range list {
		reasons = append(reasons, r.(string))
	}
	slices.Sort(reasons)
	if allow, _ := obj["allow"].(bool); d.Allow != allow || !slices.Equal(d.Reasons, reasons) {
		t.Fatalf("Decision %+v does not read its object %v", d, obj)
	}
	return canonical(t, obj)
}

// referenceAnswer is the reference's answer as decide gives the engine's.
func referenceAnswer(t *testing.T, pq rego.PreparedEvalQuery, in ast.Value) string {
	t.Helper()
	rs, err := pq.Eval(context.Background(), rego.EvalParsedInput(in))
	if err != nil || len(rs) == 0 {
		return "error"
	}
	return canonical(t, rs[0].Expressions[0].Value)
}

func canonical(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// mismatch is one input on which an evaluator and a reference disagree.
type mismatch struct {
	variant, evaluator, reference string
	input                         map[string]any
	got, want                     string
}

func (m mismatch) String() string {
	b, _ := json.Marshal(m.input)
	return fmt.Sprintf("variant %s, input %s:\n%s engine: %s\n%s reference: %s", m.variant, b, m.evaluator, m.got,
		m.reference, m.want)
}

// staging gives an engine's stage for a call (the edited input the
// engine sees): by default the engine's own (Engine.Stage); a mutation
// test gives a wrong one.
type staging func(t *testing.T, e *policy.Engine, call map[string]any, seen ast.Value) *policy.Stage

func ownStage(t *testing.T, e *policy.Engine, _ map[string]any, seen ast.Value) *policy.Stage {
	t.Helper()
	st, err := e.Stage(context.Background(), seen)
	if err != nil {
		t.Fatalf("stage: %v", err)
	}
	return st
}

// staged is the suffix of an evaluator's name for its answers with the
// stage.
const staged = "+stage"

// tally is what compare found: every disagreement, and how many calls
// were allowed, denied (or failed), had a stage, and were allowed with it.
type tally struct {
	mismatches                             []mismatch
	allowed, denied, staged, stagedAllowed int
}

// compare runs n calls of the corpus of one data variant through both
// evaluators of es, each without and with the call's stage (stageOf, nil
// for the engine's own), and both references, with engineInput (when
// set) editing the input the engines see.
func compare(t *testing.T, variant string, n int, es map[policy.Evaluator]*policy.Engine, refs map[string]rego.PreparedEvalQuery,
	engineInput func(map[string]any), stageOf staging) (out tally) {
	t.Helper()
	if stageOf == nil {
		stageOf = ownStage
	}
	rng := rand.New(rand.NewPCG(2, uint64(len(variant))))
	for range n {
		call := corpus.Call(rng)
		in, err := ast.InterfaceToValue(call)
		if err != nil {
			t.Fatal(err)
		}
		seen := call
		if engineInput != nil {
			seen = roundTrip(t, call)
			engineInput(seen)
		}
		got := map[string]string{}
		hadStage := false
		for ev, e := range es {
			// A value per evaluation: WithStage adds to it.
			plain, err := ast.InterfaceToValue(seen)
			if err != nil {
				t.Fatal(err)
			}
			got[string(ev)] = decide(t, e, plain)
			st := stageOf(t, e, call, plain)
			hadStage = hadStage || st.Term() != nil
			withStage, err := ast.InterfaceToValue(seen)
			if err != nil {
				t.Fatal(err)
			}
			got[string(ev)+staged] = decideStaged(t, e, policy.WithStage(withStage, st), st)
		}
		for name, pq := range refs {
			want := referenceAnswer(t, pq, in)
			for ev, g := range got {
				if g != want {
					out.mismatches = append(out.mismatches, mismatch{variant, ev, name, call, g, want})
				}
			}
		}
		allowed := strings.Contains(got[string(policy.Fast)], `"allow":true`)
		switch {
		case allowed:
			out.allowed++
		default:
			out.denied++
		}
		if hadStage {
			out.staged++
			if allowed {
				out.stagedAllowed++
			}
		}
	}
	return out
}

// TestDifferentialCorpus: on the whole corpus, under every data variant,
// both evaluators give exactly the rego package's decisions.
func TestDifferentialCorpus(t *testing.T) {
	lib := shippedLibrary(t)
	for _, v := range corpus.Variants() {
		t.Run(v.Name, func(t *testing.T) {
			data, err := v.Apply(lib.data)
			if err != nil {
				t.Fatal(err)
			}
			es := engines(t, lib, data)
			refs := map[string]rego.PreparedEvalQuery{
				"loaded": reference(t, lib, data, true),
				"plain":  reference(t, lib, data, false),
			}
			res := compare(t, v.Name, corpusSize(), es, refs, nil, nil)
			for i, m := range res.mismatches {
				if i == 5 {
					t.Errorf("... and %d more", len(res.mismatches)-5)
					break
				}
				t.Error(m)
			}
			t.Logf("%d calls: %d allowed, %d denied or failed; %d with a stage, %d of them allowed",
				res.allowed+res.denied, res.allowed, res.denied, res.staged, res.stagedAllowed)
			// The corpus must exercise both answers, or agreement proves
			// little.
			if res.allowed < corpusSize()/10 || res.denied < corpusSize()/10 {
				t.Fatalf("%d allowed, %d denied: the corpus no longer exercises both answers", res.allowed, res.denied)
			}
			// And the stage, with both answers, where the library has
			// one (not under "malformed": without clearances there is no
			// stage).
			if v.Name != "malformed" && (res.stagedAllowed < corpusSize()/10 || res.staged-res.stagedAllowed < corpusSize()/20) {
				t.Fatalf("%d calls with a stage, %d allowed: the corpus no longer exercises the stage", res.staged, res.stagedAllowed)
			}
		})
	}
}

// TestDifferentialCatchesMutations proves that the comparison fails when
// an evaluator diverges: each mutation must produce mismatches against
// both references on every evaluator it must reach, and none on the
// others.
func TestDifferentialCatchesMutations(t *testing.T) {
	lib := shippedLibrary(t)
	data, err := corpus.Variants()[0].Apply(lib.data) // the shipped data
	if err != nil {
		t.Fatal(err)
	}
	refs := map[string]rego.PreparedEvalQuery{
		"loaded": reference(t, lib, data, true),
		"plain":  reference(t, lib, data, false),
	}
	fast, fastStaged, regoStaged := string(policy.Fast), string(policy.Fast)+staged, string(policy.Rego)+staged
	cases := []struct {
		name        string
		cache       map[string]ast.Value // path below data -> value, in the fast evaluator's cache only
		engineInput func(map[string]any)
		stageOf     staging
		// must: the evaluators the mutation must show on; on: those it
		// may show on (nil: any).
		must, on []string
		// sameVerdict: the mutation changes another field of the decision
		// object, never allow or reasons.
		sameVerdict bool
	}{
		{name: "cache: one field of the stored allowed decision",
			cache:       map[string]ast.Value{"passport.loaded.clearances.allowed.data_revision": ast.String("tampered")},
			sameVerdict: true, must: []string{fast, fastStaged}, on: []string{fast, fastStaged}},
		{name: "cache: a trust rank the full rules read",
			cache: map[string]ast.Value{"passport.config.trust_levels.HIGH": ast.Number("1")},
			must:  []string{fast}, on: []string{fast, fastStaged}},
		// denials[0][0][1][1]: a call that passes every check but whose
		// passport does not grant the action, turned into an allow.
		{name: "cache: a denial of the fast path's table",
			cache: map[string]ast.Value{"passport.loaded.clearances.denials.0.0.1.1": ast.MustParseTerm(
				`{"allow": true, "reasons": [], "input_version": 1, "data_revision": "2026-11-25.1"}`).Value},
			must: []string{fast}, on: []string{fast, fastStaged}},
		{name: "input: another trust level", engineInput: func(in map[string]any) {
			if a, ok := in["agent"].(map[string]any); ok {
				if a["trust_level"] == "HIGH" {
					a["trust_level"] = "LOW"
				} else {
					a["trust_level"] = "HIGH"
				}
			}
		}, must: []string{fast, fastStaged, regoStaged}},
		// A stage cached under the wrong key: another passport's, which
		// grants the call's action and binds no task.
		{name: "stage: another passport's", stageOf: func(t *testing.T, e *policy.Engine, call map[string]any, _ ast.Value) *policy.Stage {
			other := roundTrip(t, call)
			if p, ok := other["passport"].(map[string]any); ok {
				p["authorization_details"] = []any{map[string]any{"type": "agent_action", "actions": []any{other["action"]}}}
				delete(p, "task")
			}
			in, err := ast.InterfaceToValue(other)
			if err != nil {
				t.Fatal(err)
			}
			return ownStage(t, e, nil, in)
		}, must: []string{fastStaged, regoStaged}, on: []string{fastStaged, regoStaged}},
		{name: "stage: resources of another tenant", stageOf: tampered(func(st ast.Object) ast.Object {
			st.Insert(ast.StringTerm("resources"), ast.MustParseTerm(
				`{"checkout": true, "payments": true, "search": true, "inventory": true, "*": true}`))
			return st
		}), must: []string{fastStaged, regoStaged}, on: []string{fastStaged, regoStaged}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			es := engines(t, lib, data)
			for path, v := range tc.cache {
				if err := policy.CorruptCache(es[policy.Fast], path, v); err != nil {
					t.Fatal(err)
				}
			}
			res := compare(t, "shipped", mutationCorpus, es, refs, tc.engineInput, tc.stageOf)
			byRef := map[string]int{}
			for _, m := range res.mismatches {
				byRef[m.evaluator+"/"+m.reference]++
				if tc.on != nil && !slices.Contains(tc.on, m.evaluator) {
					t.Fatalf("the mutation shows on %s:\n%v", m.evaluator, m)
				}
				if tc.sameVerdict && !sameVerdict(t, m.got, m.want) {
					t.Fatalf("the mutation changed allow or reasons:\n%v", m)
				}
			}
			t.Logf("mismatches: %v", byRef)
			for _, ev := range tc.must {
				for ref := range refs {
					if byRef[ev+"/"+ref] == 0 {
						t.Fatalf("the comparison of %s with the %s reference did not catch the mutation", ev, ref)
					}
				}
			}
		})
	}
}

// tampered is the engine's own stage with its value edited.
func tampered(edit func(ast.Object) ast.Object) staging {
	return func(t *testing.T, e *policy.Engine, call map[string]any, seen ast.Value) *policy.Stage {
		return policy.TamperStage(ownStage(t, e, call, seen), edit)
	}
}

// sameVerdict reports whether two answers have the same allow and reasons.
func sameVerdict(t *testing.T, a, b string) bool {
	t.Helper()
	var x, y struct {
		Allow   bool     `json:"allow"`
		Reasons []string `json:"reasons"`
	}
	if json.Unmarshal([]byte(a), &x) != nil || json.Unmarshal([]byte(b), &y) != nil {
		return false
	}
	return x.Allow == y.Allow && slices.Equal(x.Reasons, y.Reasons)
}
