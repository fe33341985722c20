package policy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// evaluators runs f once per evaluator: both must behave alike.
func evaluators(t *testing.T, f func(t *testing.T, ev Evaluator)) {
	t.Helper()
	for _, ev := range []Evaluator{Fast, Rego} {
		t.Run(string(ev), func(t *testing.T) { f(t, ev) })
	}
}

func input(t testing.TB, typ, action string) ast.Value {
	t.Helper()
	v, err := ast.InterfaceToValue(map[string]any{"action": action, "agent": map[string]any{"type": typ}})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestDecideAllowDeny(t *testing.T) { evaluators(t, testDecideAllowDeny) }

func testDecideAllowDeny(t *testing.T, ev Evaluator) {
	e, err := New(context.Background(), Options{Dir: "testdata/good", Logger: quiet(), Evaluator: ev})
	if err != nil {
		t.Fatal(err)
	}
	if e.Evaluator() != ev {
		t.Fatalf("evaluator %s, want %s", e.Evaluator(), ev)
	}
	cases := []struct {
		name, typ, action string
		allow             bool
		reasons           string
	}{
		{"healer restarts", "healer", "service.restart", true, ""},
		{"observer restarts", "observer", "service.restart", false, "action_not_allowed"},
		{"unknown type", "ghost", "service.list", false, "no_rule_matched"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, err := e.Decide(context.Background(), input(t, tc.typ, tc.action))
			if err != nil {
				t.Fatal(err)
			}
			if d.Allow != tc.allow || strings.Join(d.Reasons, ",") != tc.reasons {
				t.Fatalf("got %+v, want allow=%v reasons=%q", d, tc.allow, tc.reasons)
			}
			if d.Revision == "" || d.Revision != e.Revision() {
				t.Fatalf("revision %q vs %q", d.Revision, e.Revision())
			}
		})
	}
}

// TestDecideFailsClosed: every malformed or failing policy is an error,
// which the proxy turns into a deny.
func TestDecideFailsClosed(t *testing.T) { evaluators(t, testDecideFailsClosed) }

func testDecideFailsClosed(t *testing.T, ev Evaluator) {
	cases := []struct {
		name, rego string
		want       error
		timeout    time.Duration
	}{
		{"undefined", "package passport.authz\ndecision := {\"allow\": true} if input.nope\n", ErrUndefined, 0},
		{"allow not bool", "package passport.authz\ndecision := {\"allow\": \"yes\"}\n", ErrBadDecision, 0},
		{"not an object", "package passport.authz\ndecision := true\n", ErrBadDecision, 0},
		{"reasons not strings", "package passport.authz\ndecision := {\"allow\": false, \"reasons\": [1]}\n", ErrBadDecision, 0},
		{"strict builtin error", "package passport.authz\ndecision := {\"allow\": to_number(input.action) > 0}\n", ErrEval, 0},
		{"conflict", "package passport.authz\ndecision := {\"allow\": true} if true\ndecision := {\"allow\": false} if true\n", ErrEval, 0},
		{"timeout", "package passport.authz\ndecision := {\"allow\": count([x | some x in numbers.range(1, 100000000)]) > 0}\n", ErrEval, 20 * time.Millisecond},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			m := NewMetrics(reg)
			e, err := New(context.Background(), Options{
				FS:        fstest.MapFS{"p.rego": {Data: []byte(tc.rego)}},
				Logger:    quiet(),
				Timeout:   tc.timeout,
				Metrics:   m,
				Evaluator: ev,
			})
			if err != nil {
				t.Fatal(err)
			}
			d, err := e.Decide(context.Background(), input(t, "healer", "service.restart"))
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if d.Allow {
				t.Fatal("a failing decision must not allow")
			}
			var n float64
			for _, k := range []string{"error", "timeout", "undefined", "malformed"} {
				n += testutil.ToFloat64(m.Errors.WithLabelValues("enforced", k))
			}
			if n != 1 {
				t.Fatalf("errors counted %v, want 1", n)
			}
		})
	}
}

func TestNetworkBuiltinsRemoved(t *testing.T) { evaluators(t, testNetworkBuiltinsRemoved) }

func testNetworkBuiltinsRemoved(t *testing.T, ev Evaluator) {
	for _, b := range []string{
		`http.send({"method": "get", "url": "http://127.0.0.1:1"})`,
		`net.lookup_ip_addr("example.com")`,
		`opa.runtime()`,
	} {
		src := "package passport.authz\ndecision := {\"allow\": true, \"x\": " + b + "}\n"
		_, err := New(context.Background(), Options{FS: fstest.MapFS{"p.rego": {Data: []byte(src)}}, Logger: quiet(), Evaluator: ev})
		if err == nil {
			t.Fatalf("%s compiled; network and host builtins must be removed", b)
		}
	}
}

func TestBrokenPolicyNamesFileAndLine(t *testing.T) {
	_, err := New(context.Background(), Options{
		FS:     fstest.MapFS{"authz.rego": {Data: []byte("package passport.authz\n\ndecision := {\"allow\": \n")}},
		Logger: quiet(),
	})
	if err == nil || !strings.Contains(err.Error(), "authz.rego:") {
		t.Fatalf("want an error naming authz.rego and its line, got %v", err)
	}
}

func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

func TestHotReload(t *testing.T) { evaluators(t, testHotReload) }

func testHotReload(t *testing.T, ev Evaluator) {
	dir := copyDir(t, "testdata/good")
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	e, err := New(context.Background(), Options{Dir: dir, Logger: quiet(), PollInterval: 10 * time.Millisecond, Metrics: m,
		Evaluator: ev})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() { cancel(); <-done }()

	decide := func() bool {
		d, err := e.Decide(context.Background(), input(t, "observer", "service.restart"))
		if err != nil {
			t.Fatal(err)
		}
		return d.Allow
	}
	if decide() {
		t.Fatal("observer restart allowed before the change")
	}
	rev0 := e.Revision()

	// A valid change takes effect.
	data := "allowed:\n  observer: [\"service.list\", \"service.restart\"]\n"
	if err := os.WriteFile(filepath.Join(dir, "data.yaml"), []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the valid change", func() bool { return e.Revision() != rev0 })
	if !decide() {
		t.Fatal("valid reload did not take effect")
	}
	rev1 := e.Revision()

	// A broken file keeps the last good policy and counts the failure.
	if err := os.WriteFile(filepath.Join(dir, "authz.rego"), []byte("package passport.authz\ndecision := {{{\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the failed reload", func() bool {
		return testutil.ToFloat64(m.Reloads.WithLabelValues("enforced", "failure")) >= 1
	})
	if e.Revision() != rev1 || !decide() {
		t.Fatal("a broken file replaced the last good policy")
	}
	if got := testutil.ToFloat64(m.Revision.WithLabelValues("enforced", rev1)); got != 1 {
		t.Fatalf("revision metric for %s = %v", rev1, got)
	}
}

func BenchmarkDecide(b *testing.B) {
	e, err := New(context.Background(), Options{Dir: "testdata/good", Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	in := input(b, "healer", "service.restart")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.Decide(context.Background(), in); err != nil {
			b.Fatal(err)
		}
	}
}

// TestLoadTimeDocuments: a rule the policy declares a load-time document
// (the load_time annotation) is evaluated once per load and its value read
// as data by the decision; the engine names no rule or path of its own. A
// declaration that is malformed, data that claims the path, or a rule that
// fails, fails the load.
func TestLoadTimeDocuments(t *testing.T) {
	const declared = `package passport.authz

# METADATA
# custom:
#   load_time: data.passport.loaded.clearances
clearances := {"ok": config_ok}

config_ok := data.passport.config.ok

default loaded_ok := false

loaded_ok if data.passport.loaded.clearances.ok == true

decision := {"allow": loaded_ok}
`
	// Another library, other names: whatever is declared is evaluated.
	const other = `package lib

# METADATA
# custom:
#   load_time: data.precomputed.table
table := {"ok": data.settings.ok}

# METADATA
# custom:
#   load_time: data.precomputed.count
count_of_settings := count(data.settings)

decision := {"allow": data.precomputed.table.ok == true, "reasons": [sprintf("n%d", [data.precomputed.count])]}
`
	annotated := func(anno, rule string) string {
		return "package passport.authz\n\n# METADATA\n# custom:\n#   load_time: " + anno + "\n" + rule +
			"\ndecision := {\"allow\": true}\n"
	}
	cases := []struct {
		name, rego, data string
		query            string
		allow            bool
		reasons          string
		loadErr          string
	}{
		{"stored and read", declared, `{"passport": {"config": {"ok": true}}}`, "", true, "", ""},
		{"follows the data", declared, `{"passport": {"config": {"ok": false}}}`, "", false, "", ""},
		{"other names", other, `{"settings": {"ok": true, "b": 2}}`, "data.lib.decision", true, "n2", ""},
		{"not declared, not stored", strings.Replace(declared, "# METADATA\n# custom:\n#   load_time: data.passport.loaded.clearances\n", "", 1),
			`{"passport": {"config": {"ok": true}}}`, "", false, "", ""},
		{"undefined, not stored", annotated("data.passport.loaded.x", "x := 1 if false"), `{}`, "", true, "", ""},
		{"rule absent", "package passport.authz\ndecision := {\"allow\": true} if not data.passport.loaded\n", `{}`, "", true, "", ""},
		{"path taken by data", declared, `{"passport": {"config": {"ok": true}, "loaded": {"clearances": {"ok": true}}}}`, "", false, "", "data.passport.loaded.clearances is reserved"},
		{"parent taken by data", declared, `{"passport": {"config": {"ok": true}, "loaded": 5}}`, "", false, "", "data.passport.loaded.clearances is reserved"},
		{"rule fails", annotated("data.passport.loaded.x", "x := to_number(\"x\")"), `{}`, "", false, "", "evaluate data.passport.authz.x"},
		{"a function", annotated("data.passport.loaded.x", "f(y) := y"), `{}`, "", false, "", "annotates a function"},
		{"not a path", annotated("passport.loaded.x", "x := 1"), `{}`, "", false, "", "not a path of data"},
		{"not a string", annotated("[1]", "x := 1"), `{}`, "", false, "", "want a path of data"},
		{"variable key", annotated("data.passport[x]", "x := 1"), `{}`, "", false, "", "string keys only"},
		{"under system", annotated("data.system.x", "x := 1"), `{}`, "", false, "", "data.system"},
		{"root of data", annotated("data", "x := 1"), `{}`, "", false, "", "not a path of data"},
		{"overlapping", "package passport.authz\n\n# METADATA\n# custom:\n#   load_time: data.pre\na := 1\n\n" +
			"# METADATA\n# custom:\n#   load_time: data.pre.b\nb := 2\n\ndecision := {\"allow\": true}\n", `{}`, "", false, "", "overlaps"},
		{"package scope", "# METADATA\n# scope: package\n# custom:\n#   load_time: data.pre.x\npackage passport.authz\n\ndecision := {\"allow\": true}\n", `{}`, "", false, "", "annotates a rule"},
	}
	for _, tc := range cases {
		for _, ev := range []Evaluator{Fast, Rego} {
			t.Run(tc.name+"/"+string(ev), func(t *testing.T) {
				e, err := New(context.Background(), Options{
					FS:        fstest.MapFS{"p.rego": {Data: []byte(tc.rego)}, "data.json": {Data: []byte(tc.data)}},
					Logger:    quiet(),
					Query:     tc.query,
					Evaluator: ev,
				})
				if tc.loadErr != "" {
					if err == nil || !strings.Contains(err.Error(), tc.loadErr) {
						t.Fatalf("load error %v, want %q", err, tc.loadErr)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				d, err := e.Decide(context.Background(), input(t, "healer", "service.restart"))
				if err != nil || d.Allow != tc.allow || strings.Join(d.Reasons, ",") != tc.reasons {
					t.Fatalf("decision %+v %v, want allow=%v reasons=%q", d, err, tc.allow, tc.reasons)
				}
			})
		}
	}
}

// TestDecideDeadlinePassed: a deadline that has passed before the
// evaluation starts is a timeout (deny), counted as one.
func TestDecideDeadlinePassed(t *testing.T) { evaluators(t, testDecideDeadlinePassed) }

func testDecideDeadlinePassed(t *testing.T, ev Evaluator) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	e, err := New(context.Background(), Options{Dir: "testdata/good", Logger: quiet(), Metrics: m, Timeout: time.Nanosecond,
		Evaluator: ev})
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		if _, err := e.Decide(context.Background(), input(t, "healer", "service.restart")); !errors.Is(err, ErrEval) {
			t.Fatalf("err = %v, want ErrEval", err)
		}
	}
	if got := testutil.ToFloat64(m.Errors.WithLabelValues("enforced", "timeout")); got != 20 {
		t.Fatalf("timeouts counted = %v, want 20", got)
	}
}

// TestDecideStopsAtDeadline: an evaluation that runs past the engine's
// timeout, or past the caller's context, stops there (it would run for
// minutes otherwise), fails with the context error and counts as a timeout:
// a loop inside a builtin and a loop of Rego expressions alike.
func TestDecideStopsAtDeadline(t *testing.T) { evaluators(t, testDecideStopsAtDeadline) }

func testDecideStopsAtDeadline(t *testing.T, ev Evaluator) {
	const (
		builtinLoop = "package passport.authz\ndecision := {\"allow\": count([x | some x in numbers.range(1, 1000000000)]) > 0}\n"
		regoLoop    = "package passport.authz\ndecision := {\"allow\": count([x | some x in numbers.range(1, 100000000); x % 7 == 0]) > 0}\n"
	)
	cases := []struct {
		name, rego     string
		engine, caller time.Duration
	}{
		{"engine timeout, builtin loop", builtinLoop, 20 * time.Millisecond, time.Hour},
		{"engine timeout, rego loop", regoLoop, 20 * time.Millisecond, time.Hour},
		{"caller gone, rego loop", regoLoop, time.Hour, 20 * time.Millisecond},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMetrics(prometheus.NewRegistry())
			e, err := New(context.Background(), Options{FS: fstest.MapFS{"p.rego": {Data: []byte(tc.rego)}},
				Logger: quiet(), Timeout: tc.engine, Metrics: m, Evaluator: ev})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), tc.caller)
			defer cancel()
			start := time.Now()
			d, err := e.Decide(ctx, input(t, "healer", "service.restart"))
			if took := time.Since(start); took > 5*time.Second {
				t.Fatalf("the evaluation ran %v past a 20ms deadline", took)
			}
			if d.Allow || !errors.Is(err, ErrEval) || !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("decision %+v, err %v: want a deny with ErrEval and DeadlineExceeded", d, err)
			}
			if got := testutil.ToFloat64(m.Errors.WithLabelValues("enforced", "timeout")); got != 1 {
				t.Fatalf("timeouts counted = %v, want 1", got)
			}
		})
	}
}

// TestEvaluatorPanicDenies: a panic inside an evaluation is a failed
// evaluation (deny), and the engine goes on serving.
func TestEvaluatorPanicDenies(t *testing.T) {
	e, err := New(context.Background(), Options{Dir: "testdata/good", Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	broken := &prepared{revision: "broken"} // never prepared: evaluating it panics
	d, err := e.evaluate(context.Background(), broken, input(t, "healer", "service.restart"))
	if !errors.Is(err, ErrEval) || !strings.Contains(err.Error(), "panic") || d.Allow || d.Revision != "broken" {
		t.Fatalf("decision %+v, err %v: want a deny with ErrEval", d, err)
	}
	if d, err := e.Decide(context.Background(), input(t, "healer", "service.restart")); err != nil || !d.Allow {
		t.Fatalf("after a panic: %+v %v", d, err)
	}
}

// TestDecideConcurrent: many callers share one prepared policy; each gets
// the answer for its own input.
func TestDecideConcurrent(t *testing.T) { evaluators(t, testDecideConcurrent) }

func testDecideConcurrent(t *testing.T, ev Evaluator) {
	// A long deadline: 64 goroutines on a shared machine under the race
	// detector can stall one evaluation past the default.
	e, err := New(context.Background(), Options{Dir: "testdata/good", Logger: quiet(), Evaluator: ev, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 64)
	for i := range 64 {
		go func() {
			typ, want := "healer", true
			if i%2 == 1 {
				typ, want = "observer", false
			}
			for range 50 {
				d, err := e.Decide(context.Background(), input(t, typ, "service.restart"))
				if err != nil || d.Allow != want {
					errs <- fmt.Errorf("%s: %+v %v, want allow=%v", typ, d, err, want)
					return
				}
			}
			errs <- nil
		}()
	}
	for range 64 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// TestDataReadsAsOPA: the engine evaluates with its own data cache and
// compiled query; every way a policy reads data (a document, a whole
// object, a path the data lacks, a `with` override, a virtual document beside base
// ones, iteration) gives what the rego package gives for the same policy,
// data and input.
func TestDataReadsAsOPA(t *testing.T) { evaluators(t, testDataReadsAsOPA) }

func testDataReadsAsOPA(t *testing.T, ev Evaluator) {
	const lib = `package passport.authz

default missing := "none"

missing := data.passport.config.nothing.here

override := n if {
	n := count(data.passport.config.items) with data.passport.config.items as [1]
}

names contains name if some name, _ in data.passport.config.tenants

# Reasons must be codes (the engine refuses anything else), so the values
# read are spelt as codes.
code(s) := regex.replace(s, "[^a-z0-9_]+", "_")

decision := {"allow": input.action in data.passport.config.items, "reasons": [
	code(sprintf("items=%d", [count(data.passport.config.items)])),
	code(sprintf("config=%v", [sort(object.keys(data.passport.config))])),
	code(sprintf("missing=%v", [missing])),
	code(sprintf("override=%d", [override])),
	code(sprintf("names=%v", [sort(names)])),
	code(sprintf("tenant=%v", [object.get(data.passport.config.tenants, input.agent.type, "none")])),
	code(sprintf("direct=%v", [data.passport.config.tenants.healer])),
]}
`
	const dataJSON = `{"passport": {"config": {"items": ["service.restart", "service.get"], "tenants": {"healer": "acme", "observer": "globex"}}}}`
	fsys := fstest.MapFS{"p.rego": {Data: []byte(lib)}, "data.json": {Data: []byte(dataJSON)}}
	e, err := New(context.Background(), Options{FS: fsys, Logger: quiet(), Evaluator: ev})
	if err != nil {
		t.Fatal(err)
	}
	var docs map[string]any
	if err := json.Unmarshal([]byte(dataJSON), &docs); err != nil {
		t.Fatal(err)
	}
	ref := rego.New(rego.Query(DefaultQuery), rego.Module("p.rego", lib), rego.Store(inmem.NewFromObject(docs)),
		rego.StrictBuiltinErrors(true))
	pq, err := ref.PrepareForEval(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range []ast.Value{input(t, "healer", "service.restart"), input(t, "observer", "service.scale"),
		input(t, "nobody", "service.get")} {
		got, err := e.Decide(context.Background(), in)
		if err != nil {
			t.Fatal(err)
		}
		rs, err := pq.Eval(context.Background(), rego.EvalParsedInput(in))
		if err != nil || len(rs) != 1 {
			t.Fatalf("reference evaluation: %v %v", rs, err)
		}
		want := rs[0].Expressions[0].Value.(map[string]any)
		var wantReasons []string
		for _, r := range want["reasons"].([]any) {
			wantReasons = append(wantReasons, r.(string))
		}
		slices.Sort(wantReasons)
		if got.Allow != want["allow"] || !slices.Equal(got.Reasons, wantReasons) {
			t.Fatalf("input %v:\nengine: %v %q\nrego:   %v %q", in, got.Allow, got.Reasons, want["allow"], wantReasons)
		}
	}
}

// TestReadDecision: the decision object's shape, read without conversion.
func TestReadDecision(t *testing.T) {
	cases := []struct {
		decision string
		allow    bool
		reasons  []string // nil: absent
		err      bool
	}{
		{`{"allow": true, "reasons": []}`, true, []string{}, false},
		{`{"allow": true, "reasons": set()}`, true, []string{}, false},
		{`{"allow": true}`, true, nil, false},
		{`{"allow": false, "reasons": ["b", "a"]}`, false, []string{"a", "b"}, false},
		{`{"allow": false, "reasons": {"b", "a"}}`, false, []string{"a", "b"}, false},
		{`{"allow": false, "reasons": ["a", 1]}`, false, nil, true},
		{`{"allow": false, "reasons": "a"}`, false, nil, true},
		{`{"allow": false, "reasons": {}}`, false, nil, true},
		{`{"allow": "true", "reasons": []}`, false, nil, true},
		{`{"reasons": []}`, false, nil, true},
		{`[true]`, false, nil, true},
		// Reasons go back to agents: codes only, a bounded number
		// (proxy/reasons_test.go).
		{`{"allow": false, "reasons": ["admin token: s3cr3t"]}`, false, nil, true},
		{`{"allow": false, "reasons": ["Trust_Level"]}`, false, nil, true},
		{`{"allow": false, "reasons": ["1x"]}`, false, nil, true},
		{`{"allow": false, "reasons": [""]}`, false, nil, true},
		{`{"allow": false, "reasons": ["` + strings.Repeat("a", 65) + `"]}`, false, nil, true},
		{`{"allow": true, "reasons": ["note: ok"]}`, false, nil, true},
		{`{"allow": false, "reasons": [` + strings.TrimSuffix(strings.Repeat(`"r",`, 33), ",") + `]}`, false, nil, true},
		{`{"allow": false, "reasons": ["` + strings.Repeat("a", 64) + `", "a_1"]}`, false, []string{"a_1", strings.Repeat("a", 64)}, false},
	}
	for _, tc := range cases {
		allow, reasons, err := readDecision(ast.MustParseTerm(tc.decision))
		if tc.err {
			if !errors.Is(err, ErrBadDecision) || allow {
				t.Errorf("%s: allow %v, err %v; want ErrBadDecision and no allow", tc.decision, allow, err)
			}
			continue
		}
		if err != nil || allow != tc.allow || (reasons == nil) != (tc.reasons == nil) || !slices.Equal(reasons, tc.reasons) {
			t.Errorf("%s: %v %#v %v; want %v %#v", tc.decision, allow, reasons, err, tc.allow, tc.reasons)
		}
	}
}
