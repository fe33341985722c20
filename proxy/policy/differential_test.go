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
// The mutation tests below prove that it catches a divergence: a wrong
// data cache in the fast evaluator (in one field of the stored allowed
// decision only, and in a value the full rules read), and a changed input.

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
	d, err := e.Decide(context.Background(), in)
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

// compare runs n calls of the corpus of one data variant through both evaluators of
// es and both references, with engineInput (when set) editing the input
// the engines see, and returns every disagreement and the number of
// allowed and denied calls.
func compare(t *testing.T, variant string, n int, es map[policy.Evaluator]*policy.Engine, refs map[string]rego.PreparedEvalQuery,
	engineInput func(map[string]any)) (out []mismatch, allowed, denied int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(2, uint64(len(variant))))
	for range n {
		call := corpus.Call(rng)
		in, err := ast.InterfaceToValue(call)
		if err != nil {
			t.Fatal(err)
		}
		seen := in
		if engineInput != nil {
			edited := roundTrip(t, call)
			engineInput(edited)
			if seen, err = ast.InterfaceToValue(edited); err != nil {
				t.Fatal(err)
			}
		}
		got := map[policy.Evaluator]string{}
		for ev, e := range es {
			got[ev] = decide(t, e, seen)
		}
		for name, pq := range refs {
			want := referenceAnswer(t, pq, in)
			for ev, g := range got {
				if g != want {
					out = append(out, mismatch{variant, string(ev), name, call, g, want})
				}
			}
		}
		switch {
		case strings.Contains(got[policy.Fast], `"allow":true`):
			allowed++
		default:
			denied++
		}
	}
	return out, allowed, denied
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
			ms, allowed, denied := compare(t, v.Name, corpusSize(), es, refs, nil)
			for i, m := range ms {
				if i == 5 {
					t.Errorf("... and %d more", len(ms)-5)
					break
				}
				t.Error(m)
			}
			t.Logf("%d calls: %d allowed, %d denied or failed", allowed+denied, allowed, denied)
			// The corpus must exercise both answers, or agreement proves
			// little.
			if allowed < corpusSize()/10 || denied < corpusSize()/10 {
				t.Fatalf("%d allowed, %d denied: the corpus no longer exercises both answers", allowed, denied)
			}
		})
	}
}

// TestDifferentialCatchesMutations proves that the comparison fails when
// an evaluator diverges: each mutation must produce mismatches against
// both references, and only on the evaluator mutated.
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
	cases := []struct {
		name        string
		cache       map[string]ast.Value // path below data -> value, in the fast evaluator's cache only
		engineInput func(map[string]any)
		// sameVerdict: the mutation changes another field of the decision
		// object, never allow or reasons.
		sameVerdict bool
	}{
		{name: "cache: one field of the stored allowed decision",
			cache:       map[string]ast.Value{"passport.loaded.clearances.allowed.data_revision": ast.String("tampered")},
			sameVerdict: true},
		{name: "cache: a trust rank the full rules read",
			cache: map[string]ast.Value{"passport.config.trust_levels.HIGH": ast.Number("1")}},
		// denials[0][0][1][1]: a call that passes every check but whose
		// passport does not grant the action, turned into an allow.
		{name: "cache: a denial of the fast path's table",
			cache: map[string]ast.Value{"passport.loaded.clearances.denials.0.0.1.1": ast.MustParseTerm(
				`{"allow": true, "reasons": [], "input_version": 1, "data_revision": "2026-11-25.1"}`).Value}},
		{name: "input: another trust level", engineInput: func(in map[string]any) {
			if a, ok := in["agent"].(map[string]any); ok {
				if a["trust_level"] == "HIGH" {
					a["trust_level"] = "LOW"
				} else {
					a["trust_level"] = "HIGH"
				}
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			es := engines(t, lib, data)
			for path, v := range tc.cache {
				if err := policy.CorruptCache(es[policy.Fast], path, v); err != nil {
					t.Fatal(err)
				}
			}
			ms, _, _ := compare(t, "shipped", mutationCorpus, es, refs, tc.engineInput)
			byRef := map[string]int{}
			for _, m := range ms {
				byRef[m.evaluator+"/"+m.reference]++
				if tc.engineInput == nil && m.evaluator != string(policy.Fast) {
					t.Fatalf("the mutation of the fast evaluator's cache shows on %s:\n%v", m.evaluator, m)
				}
				if tc.sameVerdict && !sameVerdict(t, m.got, m.want) {
					t.Fatalf("the mutation changed allow or reasons:\n%v", m)
				}
			}
			t.Logf("mismatches: %v", byRef)
			for ref := range refs {
				if byRef[string(policy.Fast)+"/"+ref] == 0 {
					t.Fatalf("the comparison with the %s reference did not catch the mutation", ref)
				}
			}
		})
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
