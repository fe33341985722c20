// Package policies is Agent Passport's Rego library: the rules the proxy
// enforces on every call (package passport.authz), their *_test.rego tests
// and their data (data.yaml), embedded in the binary so that a proxy needs
// no files to start. Security teams edit the files in this folder and test
// them with `opa test policies/` or `passport policy test`.
//
// The Go side loads a policy directory the way the OPA command line does,
// compiles it strictly, runs its tests through OPA's tester (with coverage)
// and prepares the decision query, with the proxy engine's own loader
// (policy.Load), so what `opa test` passes is what gets enforced.
package policies

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"regexp"
	"slices"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/cover"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/tester"

	"github.com/agentpassport/passport/proxy/policy"
)

// The contract between the proxy and the library.
const (
	// Package is the Rego package of the library.
	Package = "passport.authz"
	// DecisionQuery is the query the proxy evaluates; it yields the
	// decision object {"allow": bool, "reasons": [string], ...}.
	DecisionQuery = "data.passport.authz.decision"
	// InputVersion is the version of the input document the library reads
	// (input.version); see README.md, "The input document".
	InputVersion = 1
)

//go:embed *.rego data.yaml
var embedded embed.FS

// FS is the embedded library as an engine loads it: every .rego file and
// data.yaml, without the *_test.rego files (tests are not part of what is
// enforced, and leaving them out keeps the compiled policy small).
var FS fs.FS = withoutTests{embedded}

// TestFS is the embedded library with its tests: what `passport policy
// test` runs when no directory is given.
var TestFS fs.FS = embedded

// IsTestFile reports whether name is a Rego test file (*_test.rego).
func IsTestFile(name string) bool { return policy.IsTestFile(name) }

// Library is a loaded policy directory: parsed modules and data.
type Library struct {
	// Modules are the parsed Rego files, by path inside the directory.
	Modules map[string]*ast.Module
	// Data is the merged content of every .json and .yaml file, rooted
	// at data (policies/data.yaml holds {"passport": {"config": ...}}).
	Data map[string]any
}

// Load reads a policy directory as `opa test DIR` does, through the
// proxy's own loader (policy.Load): every .rego file (the *_test.rego ones
// only when tests is true) and every .json or .yaml file as data,
// recursively; files in a subdirectory land under data at that
// directory's path. Rego is parsed as v1, with its annotations.
func Load(fsys fs.FS, tests bool) (*Library, error) {
	f, err := policy.Load(fsys, tests)
	if err != nil {
		return nil, fmt.Errorf("load policies: %w", err)
	}
	return &Library{Modules: f.Modules, Data: f.Data}, nil
}

// LoadDir is Load of a directory on disk, read as the proxy reads it
// (policy.ReadDir): regular files inside the directory only, bounded in
// size; a symbolic link (but a ConfigMap volume's, with that layout), a
// FIFO or a device is refused with the file and the reason.
func LoadDir(dir string, layout policy.DirLayout, tests bool) (*Library, error) {
	fsys, err := policy.ReadDir(dir, layout)
	if err != nil {
		return nil, fmt.Errorf("load policies: %w", err)
	}
	return Load(fsys, tests)
}

// files is the library as the loader returned it.
func (l *Library) files() *policy.Files { return &policy.Files{Modules: l.Modules, Data: l.Data} }

// compiler returns a compiler configured like `opa check`/`opa test`:
// the modules must not collide with the data (path conflicts), print
// statements are allowed, and strict adds the checks of --strict (unused
// variables and imports, shadowed builtins, deprecated builtins...).
func (l *Library) compiler(strict bool, caps *ast.Capabilities) *ast.Compiler {
	if caps == nil {
		caps = ast.CapabilitiesForThisVersion()
	}
	return ast.NewCompiler().
		WithStrict(strict).
		WithEnablePrintStatements(true).
		WithCapabilities(caps).
		WithPathConflictsCheck(dataFinder(l.Data))
}

// Compile compiles the modules, strictly like `opa check --strict` when
// strict is true, with this OPA version's capabilities.
func (l *Library) Compile(strict bool) (*ast.Compiler, error) {
	return l.CompileWith(strict, nil)
}

// CompileWith is Compile with the given capabilities (nil: this OPA
// version's), e.g. the proxy engine's, which leave out the builtins that
// reach the network.
func (l *Library) CompileWith(strict bool, caps *ast.Capabilities) (*ast.Compiler, error) {
	c := l.compiler(strict, caps)
	if c.Compile(l.Modules); c.Failed() {
		return nil, fmt.Errorf("compile policies: %w", c.Errors)
	}
	return c, nil
}

// ErrNoDecision means a policy directory does not define the decision rule
// the proxy evaluates.
var ErrNoDecision = errors.New("policies do not define " + DecisionQuery)

// Check compiles the directory's modules (tests included, since they must
// compile too) strictly, like `opa check --strict`, and checks that the
// decision rule exists, then loads it as the proxy's engine does (its
// load-time documents evaluated, the decision query prepared). caps are the capabilities to
// compile against (nil: this OPA version's); pass the proxy engine's so that
// a policy using a builtin the proxy removes fails here rather than at proxy
// start.
func Check(fsys fs.FS, caps *ast.Capabilities) error {
	lib, err := Load(fsys, true)
	if err != nil {
		return err
	}
	c, err := lib.CompileWith(true, caps)
	if err != nil {
		return err
	}
	ref := ast.MustParseRef(DecisionQuery)
	if len(c.GetRulesExact(ref)) == 0 {
		return ErrNoDecision
	}
	// Reasons go back to agents, and the proxy refuses a decision whose
	// reasons are not codes: catch a constant one here, before a deploy.
	for _, m := range lib.Modules {
		for _, r := range m.Rules {
			if r.Head.Name != "reasons" && r.Head.Ref().String() != "reasons" || r.Head.Key == nil {
				continue
			}
			if s, ok := r.Head.Key.Value.(ast.String); ok && !policy.IsReasonCode(string(s)) {
				return fmt.Errorf("%s: reason %q is not a reason code ([a-z][a-z0-9_]*, at most %d bytes): the proxy would deny every call it is given for",
					r.Location, s, policy.MaxReasonLen)
			}
		}
	}
	// Last, load it as the proxy would (tests left out): the load-time
	// documents evaluate and the decision query prepares, or the proxy
	// would refuse the policy.
	if _, err := policy.New(context.Background(), policy.Options{FS: fsys, Logger: slog.New(slog.DiscardHandler)}); err != nil {
		return err
	}
	return nil
}

// NotFormatted returns the .rego files of the directory that `opa fmt`
// would change.
func NotFormatted(fsys fs.FS) ([]string, error) {
	var out []string
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || path.Ext(p) != ".rego" {
			return err
		}
		src, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		got, err := formatSource(p, src)
		if err != nil {
			return err
		}
		if string(got) != string(src) {
			out = append(out, p)
		}
		return nil
	})
	return out, err
}

// EngineData returns a copy of the library's data as the proxy's engine
// holds it: with the load-time documents the library declares (the
// load_time annotation, policy.LoadTimeAnnotation) evaluated and added.
func (l *Library) EngineData(ctx context.Context) (map[string]any, error) {
	return l.files().EngineData(ctx, nil)
}

// Prepare compiles the library (as loaded: load it without tests for
// enforcement) and prepares the decision query once, over EngineData, so
// that each evaluation only binds an input, as in the proxy.
func (l *Library) Prepare(ctx context.Context) (rego.PreparedEvalQuery, error) {
	c, err := l.Compile(false)
	if err != nil {
		return rego.PreparedEvalQuery{}, err
	}
	data, err := l.EngineData(ctx)
	if err != nil {
		return rego.PreparedEvalQuery{}, err
	}
	pq, err := rego.New(
		rego.Query(DecisionQuery),
		rego.Compiler(c),
		rego.Store(inmem.NewFromObjectWithOpts(data, inmem.OptReturnASTValuesOnRead(true))),
	).PrepareForEval(ctx)
	if err != nil {
		return rego.PreparedEvalQuery{}, fmt.Errorf("prepare %s: %w", DecisionQuery, err)
	}
	return pq, nil
}

// TestOptions tunes Test.
type TestOptions struct {
	// Run, when set, runs only the tests whose name matches this regular
	// expression (like opa test --run).
	Run string
	// Coverage collects line coverage.
	Coverage bool
	// Timeout bounds each test (default 5s, like opa test).
	Timeout time.Duration
	// Trace records evaluation traces, for verbose failure output.
	Trace bool
	// Capabilities to compile against (nil: this OPA version's).
	Capabilities *ast.Capabilities
	// StrictBuiltinErrors makes a builtin error (a bad argument type, an
	// unparsable time) fail the test, as it fails the decision in the
	// proxy, which evaluates with strict builtin errors. opa test runs
	// without them, so the library must pass both ways.
	StrictBuiltinErrors bool
}

// TestReport is the outcome of Test.
type TestReport struct {
	// Results are the test results, in the tester's order.
	Results []*tester.Result
	// Modules are the modules that ran (library and tests).
	Modules map[string]*ast.Module
	// Coverage is OPA's coverage report over every module, tests
	// included: the figure `opa test --coverage` prints. Nil unless
	// TestOptions.Coverage.
	Coverage *cover.Report
	// LibraryCoverage is the line coverage (percent) of the library
	// files alone (*_test.rego left out), the honest figure.
	LibraryCoverage float64
}

// Passed reports whether every test passed and at least one ran.
func (r *TestReport) Passed() bool {
	if len(r.Results) == 0 {
		return false
	}
	for _, res := range r.Results {
		if !res.Pass() {
			return false
		}
	}
	return true
}

// Counts returns how many tests passed, failed and errored.
func (r *TestReport) Counts() (pass, fail, errored int) {
	for _, res := range r.Results {
		switch {
		case res.Error != nil:
			errored++
		case res.Fail:
			fail++
		case res.Pass():
			pass++
		}
	}
	return pass, fail, errored
}

// Test runs the directory's *_test.rego through OPA's tester, as `opa test
// DIR` does, optionally with coverage.
func Test(ctx context.Context, fsys fs.FS, opts TestOptions) (*TestReport, error) {
	lib, err := Load(fsys, true)
	if err != nil {
		return nil, err
	}
	if opts.Run != "" {
		if _, err := regexp.Compile(opts.Run); err != nil {
			return nil, fmt.Errorf("test filter %q: %w", opts.Run, err)
		}
	}
	store := inmem.NewFromObject(lib.Data)
	txn, err := store.NewTransaction(ctx, storage.WriteParams)
	if err != nil {
		return nil, fmt.Errorf("open policy store: %w", err)
	}
	defer store.Abort(ctx, txn)

	var cov *cover.Cover
	runner := tester.NewRunner().
		SetCompiler(lib.compiler(false, opts.Capabilities)).
		SetStore(store).
		SetModules(lib.Modules).
		CapturePrintOutput(true).
		EnableTracing(opts.Trace).
		RaiseBuiltinErrors(opts.StrictBuiltinErrors).
		SetTimeout(cmpDuration(opts.Timeout, 5*time.Second)).
		Filter(opts.Run)
	if opts.Coverage {
		cov = cover.New()
		runner = runner.SetCoverageQueryTracer(cov)
	}
	ch, err := runner.RunTests(ctx, txn)
	if err != nil {
		return nil, fmt.Errorf("run policy tests: %w", err)
	}
	rep := &TestReport{Modules: lib.Modules}
	for res := range ch {
		rep.Results = append(rep.Results, res)
	}
	if cov != nil {
		r := cov.Report(lib.Modules)
		rep.Coverage = &r
		rep.LibraryCoverage = libraryCoverage(r)
	}
	return rep, nil
}

// libraryCoverage is the line coverage of the non-test files.
func libraryCoverage(r cover.Report) float64 {
	var covered, notCovered int
	for name, f := range r.Files {
		if IsTestFile(name) {
			continue
		}
		covered += f.CoveredLines
		notCovered += f.NotCoveredLines
	}
	if covered+notCovered == 0 {
		return 0
	}
	return 100 * float64(covered) / float64(covered+notCovered)
}

// LibraryFiles returns the names of the non-test modules, sorted.
func (r *TestReport) LibraryFiles() []string {
	var out []string
	for name := range r.Modules {
		if !IsTestFile(name) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

func cmpDuration(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}
