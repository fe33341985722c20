// Package policy is the embedded OPA engine of the proxy. It compiles the
// Rego library once per load, prepares the decision query once, evaluates
// it on every call and hot-reloads a policy directory in the background.
//
// Every failure is a deny: an evaluation error, a timeout, an undefined
// decision or a decision whose "allow" is not a boolean returns an error
// from Decide, and the proxy fails closed on any error. Policies cannot
// reach the network or the host: http.send, net.lookup_ip_addr and
// opa.runtime are removed from the capabilities, so a policy that uses
// them does not compile.
package policy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"path"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/loader"
	"github.com/open-policy-agent/opa/v1/metrics"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/topdown"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultQuery is the rule the proxy evaluates.
const DefaultQuery = "data.passport.authz.decision"

// Defaults for Options.
const (
	DefaultTimeout      = 250 * time.Millisecond
	DefaultPollInterval = time.Second
)

// Sentinel errors; Decide wraps them so callers can count by kind.
var (
	ErrUndefined   = errors.New("policy decision undefined")
	ErrBadDecision = errors.New("policy decision malformed")
	ErrEval        = errors.New("policy evaluation failed")
	ErrNotLoaded   = errors.New("policy not loaded")
)

// deniedBuiltins reach outside the process (network, environment) and are
// removed from the capabilities: a policy decides on its input and data
// only, so a decision can be replayed and cannot leak or stall on I/O.
var deniedBuiltins = []string{
	"http.send",
	"net.lookup_ip_addr",
	"opa.runtime",
}

// Options configures an Engine.
type Options struct {
	// Name labels metrics and logs: "enforced" or "shadow".
	Name string
	// Dir is a policy directory on disk, watched for changes. When empty,
	// FS is used and never reloaded.
	Dir string
	// FS is an embedded policy tree (for example policies.FS).
	FS fs.FS
	// Query defaults to DefaultQuery.
	Query string
	// Timeout bounds one evaluation. Default DefaultTimeout.
	Timeout time.Duration
	// PollInterval is how often Dir is checked for changes. Default 1s.
	PollInterval time.Duration
	// Logger is required.
	Logger *slog.Logger
	// Metrics may be shared by several engines (enforced and shadow).
	Metrics *Metrics
}

// Metrics are the engine's Prometheus collectors.
type Metrics struct {
	Reloads  *prometheus.CounterVec // by policy, result
	Revision *prometheus.GaugeVec   // 1 for the current revision, by policy
	Errors   *prometheus.CounterVec // evaluation failures by policy, kind
}

// NewMetrics registers the engine metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_policy_reloads_total",
			Help: "Policy loads by policy (enforced, shadow) and result (success, failure).",
		}, []string{"policy", "result"}),
		Revision: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "passport_policy_revision_info",
			Help: "The policy revision (content hash) in force: 1 for the current revision.",
		}, []string{"policy", "revision"}),
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_policy_evaluation_errors_total",
			Help: "Evaluations that failed closed, by policy and kind (error, timeout, undefined, malformed).",
		}, []string{"policy", "kind"}),
	}
	if reg != nil {
		reg.MustRegister(m.Reloads, m.Revision, m.Errors)
	}
	return m
}

// Decision is the outcome of the policy for one call.
type Decision struct {
	Allow    bool
	Reasons  []string
	Revision string
}

// Engine evaluates the decision query against the current policy.
type Engine struct {
	opts Options
	cur  atomic.Pointer[prepared]
	sig  string // last seen directory signature (Run goroutine only)
	caps *ast.Capabilities
}

// prepared is one load of the policy, compiled, with its decision query
// compiled against it. Evaluations run OPA's evaluator (topdown) directly
// on these: the rego package would build an evaluation context, a result
// set and Go copies of the result around every call, which cost about as
// much as a small policy's evaluation itself (BenchmarkDecide).
type prepared struct {
	compiler *ast.Compiler
	qc       ast.QueryCompiler
	query    ast.Body // resultVar = <Options.Query>
	store    storage.Store
	txn      storage.Transaction
	data     dataCache
	revision string
}

// dataCache hands the evaluator the policy's data, which never changes
// within a load, as the OPA value read from the store once per load. The
// evaluator consults its base-document cache before the store; without
// this one it would start each evaluation with an empty cache, then read
// and cache every document it touches again, which cost more than the
// reads of input and most rules (about 1.5 µs and 15 allocations per
// document). Get only reads, so one value serves every evaluation at once;
// a miss (a path the data does not have) falls through to the store, as
// before.
type dataCache struct{ root ast.Value }

// Get returns the value at ref (data.…), or nil.
func (c dataCache) Get(ref ast.Ref) ast.Value {
	if c.root == nil || len(ref) == 0 || !ref[0].Equal(ast.DefaultRootDocument) {
		return nil
	}
	v, err := c.root.Find(ref[1:])
	if err != nil {
		return nil
	}
	return v
}

// Put keeps nothing: the cache holds all the data already.
func (dataCache) Put(ast.Ref, ast.Value) {}

// resultVar is bound to the decision in the compiled query.
const resultVar = ast.Var("decision")

// noMetrics is shared by every evaluation: nothing reads per-evaluation
// metrics, and a registry with timers per call is not free.
var noMetrics = metrics.NoOp()

// New builds an engine and loads the policy once. A policy that does not
// compile is an error: the proxy does not start without a policy.
func New(ctx context.Context, opts Options) (*Engine, error) {
	if opts.Logger == nil {
		return nil, errors.New("policy: logger required")
	}
	if opts.Dir == "" && opts.FS == nil {
		return nil, errors.New("policy: a directory or an fs.FS is required")
	}
	if opts.Name == "" {
		opts.Name = "enforced"
	}
	if opts.Query == "" {
		opts.Query = DefaultQuery
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultPollInterval
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics(nil)
	}
	e := &Engine{opts: opts, caps: Capabilities()}
	if opts.Dir != "" {
		e.sig, _ = signature(opts.Dir) // before the load, so Run sees any later change
	}
	if err := e.Reload(ctx); err != nil {
		return nil, err
	}
	return e, nil
}

// Capabilities returns this OPA version's capabilities minus the builtins
// that reach the network or the host.
func Capabilities() *ast.Capabilities {
	caps := ast.CapabilitiesForThisVersion()
	caps.Builtins = slices.DeleteFunc(slices.Clone(caps.Builtins), func(b *ast.Builtin) bool {
		return slices.Contains(deniedBuiltins, b.Name)
	})
	return caps
}

// Revision is the content hash of the policy in force ("" before a load).
func (e *Engine) Revision() string {
	if p := e.cur.Load(); p != nil {
		return p.revision
	}
	return ""
}

// Name is the engine's label (enforced or shadow).
func (e *Engine) Name() string { return e.opts.Name }

// Reload reads, compiles and prepares the policy, and swaps it in when it
// compiles. On failure the policy in force stays, the error (with file and
// line) is logged and returned, and the failure is counted.
func (e *Engine) Reload(ctx context.Context) error {
	fsys := e.opts.FS
	src := "embedded"
	var err error
	if e.opts.Dir != "" {
		src = e.opts.Dir
		fsys, err = ReadDir(e.opts.Dir) // regular files inside the directory only (dir.go)
	}
	var p *prepared
	if err == nil {
		p, err = compile(ctx, fsys, e.opts.Query, e.caps)
	}
	if err != nil {
		e.opts.Metrics.Reloads.WithLabelValues(e.opts.Name, "failure").Inc()
		e.opts.Logger.ErrorContext(ctx, "policy load failed; keeping the last good policy",
			"policy", e.opts.Name, "source", src, "revision_in_force", e.Revision(), "error", err)
		return fmt.Errorf("load policy %s: %w", src, err)
	}
	old := e.cur.Swap(p)
	if old != nil {
		e.opts.Metrics.Revision.DeleteLabelValues(e.opts.Name, old.revision)
	}
	e.opts.Metrics.Revision.WithLabelValues(e.opts.Name, p.revision).Set(1)
	e.opts.Metrics.Reloads.WithLabelValues(e.opts.Name, "success").Inc()
	if old == nil || old.revision != p.revision {
		e.opts.Logger.InfoContext(ctx, "policy loaded", "policy", e.opts.Name, "source", src, "revision", p.revision)
	}
	return nil
}

// policyFile reports whether name is part of the policy (Rego or data),
// excluding tests: the tests run with `opa test`, not in the proxy.
func policyFile(name string) bool {
	switch path.Ext(name) {
	case ".rego":
		return !strings.HasSuffix(name, "_test.rego")
	case ".json", ".yaml", ".yml":
		return true
	}
	return false
}

// files lists the policy files of fsys, sorted, with their contents.
func files(fsys fs.FS) (map[string][]byte, []string, error) {
	out := map[string][]byte{}
	var names []string
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != "." && strings.HasPrefix(d.Name(), ".") {
				return fs.SkipDir // editor and VCS directories
			}
			return nil
		}
		if strings.HasPrefix(d.Name(), ".") || !policyFile(p) {
			return nil
		}
		b, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		out[p] = b
		names = append(names, p)
		return nil
	})
	sort.Strings(names)
	return out, names, err
}

// revisionOf hashes names and contents: the revision changes exactly when
// what the engine would compile changes.
func revisionOf(contents map[string][]byte, names []string) string {
	h := sha256.New()
	for _, n := range names {
		fmt.Fprintf(h, "%s\x00%d\x00", n, len(contents[n]))
		h.Write(contents[n])
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func compile(ctx context.Context, fsys fs.FS, query string, caps *ast.Capabilities) (*prepared, error) {
	contents, names, err := files(fsys)
	if err != nil {
		return nil, fmt.Errorf("read policy files: %w", err)
	}
	if len(names) == 0 {
		return nil, errors.New("no policy files")
	}
	rev := revisionOf(contents, names)
	res, err := loader.NewFileLoader().
		WithFS(fsys).
		WithRegoVersion(ast.RegoV1).
		WithCapabilities(caps).
		Filtered([]string{"."}, func(abspath string, info fs.FileInfo, _ int) bool {
			if info.IsDir() {
				return abspath != "." && strings.HasPrefix(info.Name(), ".")
			}
			return strings.HasPrefix(info.Name(), ".") || !policyFile(abspath)
		})
	if err != nil {
		return nil, err // loader errors name file and line
	}
	parsed := make([]*ast.Module, 0, len(res.Modules))
	for _, k := range slices.Sorted(maps.Keys(res.Modules)) {
		parsed = append(parsed, res.Modules[k].Parsed)
	}
	if err := AddLoadTimeDocuments(ctx, res.Documents, parsed, caps); err != nil {
		return nil, err
	}
	// The store is never written after the load, so one read transaction
	// is opened per load and shared by every evaluation: that saves a
	// lock and an allocation per call. It keeps data as OPA values, so a
	// read hands out the stored value instead of converting Go maps on
	// every evaluation: the library reads its whole configuration once
	// per call (policies/fast.rego), which then costs nothing.
	store := inmem.NewFromObjectWithOpts(res.Documents,
		inmem.OptRoundTripOnWrite(false), inmem.OptReturnASTValuesOnRead(true))
	txn, err := store.NewTransaction(ctx)
	if err != nil {
		return nil, fmt.Errorf("open policy store: %w", err)
	}
	// The rego package compiles the modules and checks the query, with
	// its settings (capabilities, strict builtin errors, Rego v1); the
	// hook keeps its compiler, on which the query is compiled again for
	// the evaluator.
	var compiler *ast.Compiler
	opts := []func(*rego.Rego){
		rego.Query(query),
		rego.Transaction(txn),
		rego.Capabilities(caps),
		rego.StrictBuiltinErrors(true),
		rego.SetRegoVersion(ast.RegoV1),
		rego.Store(store),
		rego.CompilerHook(func(c *ast.Compiler) { compiler = c }),
	}
	for _, m := range parsed {
		opts = append(opts, rego.ParsedModule(m))
	}
	if _, err := rego.New(opts...).PrepareForEval(ctx); err != nil {
		return nil, err // compile errors name file and line
	}
	qc, body, err := compileQuery(compiler, query)
	if err != nil {
		return nil, err
	}
	root, err := store.Read(ctx, txn, storage.RootPath)
	if err != nil {
		return nil, fmt.Errorf("read policy data: %w", err)
	}
	data, ok := root.(ast.Object)
	if !ok {
		return nil, fmt.Errorf("read policy data: unexpected %T", root)
	}
	// The evaluator hides the system document from reads of all of data;
	// the cache does the same, and reads under it go to the store.
	data, _ = data.Map(func(k, v *ast.Term) (*ast.Term, *ast.Term, error) {
		if k.Equal(ast.InternedTerm(string(ast.SystemDocumentKey))) {
			return nil, nil, nil
		}
		return k, v, nil
	})
	return &prepared{compiler: compiler, qc: qc, query: body, store: store, txn: txn, data: dataCache{root: data},
		revision: rev}, nil
}

// compileQuery compiles "resultVar = query" on c, as the rego package
// compiles a query (no package, no imports, no print statements). query
// must be a reference, such as DefaultQuery.
func compileQuery(c *ast.Compiler, query string) (ast.QueryCompiler, ast.Body, error) {
	if c == nil {
		return nil, nil, errors.New("policy compiler unavailable")
	}
	ref, err := ast.ParseRef(query)
	if err != nil {
		return nil, nil, fmt.Errorf("decision query %q: %w", query, err)
	}
	qc := c.QueryCompiler().WithEnablePrintStatements(false).WithStrict(false)
	body, err := qc.Compile(ast.NewBody(ast.Equality.Expr(ast.VarTerm(string(resultVar)), ast.NewTerm(ref))))
	if err != nil {
		return nil, nil, fmt.Errorf("decision query %q: %w", query, err)
	}
	return qc, body, nil
}

// LoadTimeDocuments are rules that read data only, evaluated once per load
// and stored as base documents at Path: OPA would evaluate such a rule
// again in every evaluation that refers to it, and the decision rules read
// the stored value instead (policies/fast.rego, clearances). A policy
// without the rule stores nothing.
var LoadTimeDocuments = []struct{ Rule, Path string }{
	{Rule: "data.passport.authz.clearances", Path: "passport.loaded.clearances"},
}

// loadTimeTimeout bounds the evaluation of the load-time documents: a rule
// that takes longer fails the load, and the last good policy stays.
const loadTimeTimeout = 10 * time.Second

// AddLoadTimeDocuments evaluates each of LoadTimeDocuments against docs
// (the policy's data) and modules, and stores the values in docs, as the
// engine does on every load. Data that already holds one of the paths is
// refused: the documents are the engine's. An evaluation error fails the
// load.
func AddLoadTimeDocuments(ctx context.Context, docs map[string]any, modules []*ast.Module, caps *ast.Capabilities) error {
	ctx, cancel := context.WithTimeout(ctx, loadTimeTimeout)
	defer cancel()
	for _, d := range LoadTimeDocuments {
		keys := strings.Split(d.Path, ".")
		if taken(docs, keys) {
			return fmt.Errorf("data.%s is reserved for the value of %s", d.Path, d.Rule)
		}
		opts := []func(*rego.Rego){
			rego.Query(d.Rule),
			rego.Capabilities(caps),
			rego.StrictBuiltinErrors(true),
			rego.SetRegoVersion(ast.RegoV1),
			rego.Store(inmem.NewFromObjectWithOpts(docs, inmem.OptRoundTripOnWrite(false))),
		}
		for _, m := range modules {
			opts = append(opts, rego.ParsedModule(m))
		}
		rs, err := rego.New(opts...).Eval(ctx)
		if err != nil {
			return fmt.Errorf("evaluate %s: %w", d.Rule, err)
		}
		if len(rs) != 1 || len(rs[0].Expressions) != 1 {
			continue // undefined: nothing is stored
		}
		parent := docs
		for _, k := range keys[:len(keys)-1] {
			next, ok := parent[k].(map[string]any)
			if !ok {
				next = map[string]any{}
				parent[k] = next
			}
			parent = next
		}
		parent[keys[len(keys)-1]] = rs[0].Expressions[0].Value
	}
	return nil
}

// taken reports whether docs has a value at path, or a value that is not
// an object on the way to it.
func taken(docs map[string]any, path []string) bool {
	cur := docs
	for i, k := range path {
		v, ok := cur[k]
		if !ok {
			return false
		}
		if i == len(path)-1 {
			return true
		}
		if cur, ok = v.(map[string]any); !ok {
			return true
		}
	}
	return false
}

// Decide evaluates the decision for input. A nil error means the policy
// returned a well-formed decision; any error means the caller must deny.
// The returned Decision always carries the revision that was asked.
//
// It runs on the caller's goroutine. Handing evaluations to a few
// long-lived evaluator goroutines was measured: it spares the runtime the
// regrowing of connection goroutines' stacks for OPA's deep recursion, but
// the hand-over between threads cost more (the decision path went from 23
// to 31 µs at p50, and the full path gained nothing clear under load).
func (e *Engine) Decide(ctx context.Context, input ast.Value) (Decision, error) {
	p := e.cur.Load()
	if p == nil {
		return Decision{}, ErrNotLoaded
	}
	return e.evaluate(ctx, p, input)
}

// evaluate runs one evaluation of p for input, within ctx.
func (e *Engine) evaluate(ctx context.Context, p *prepared, input ast.Value) (d Decision, err error) {
	d = Decision{Revision: p.revision}
	c := &deadline{ctx: ctx, at: time.Now().Add(e.opts.Timeout)}
	if c.check() {
		// The deadline passed, or the caller went away, before the
		// evaluation started.
		return e.fail(ctx, c, p, c.ended)
	}
	defer func() {
		// A panic in the evaluator is a failed evaluation: the call is
		// denied and audited, where net/http would have recovered it by
		// dropping the connection, with no answer and no record.
		if r := recover(); r != nil {
			e.opts.Logger.ErrorContext(ctx, "policy evaluation panicked; denying", "policy", e.opts.Name, "panic", r)
			d, err = e.fail(ctx, c, p, fmt.Errorf("panic: %v", r))
		}
	}()
	growStack(stackProbe)
	q := topdown.NewQuery(p.query).
		WithQueryCompiler(p.qc).
		WithCompiler(p.compiler).
		WithStore(p.store).
		WithTransaction(p.txn).
		WithBaseCache(p.data).
		WithInput(ast.NewTerm(input)).
		WithMetrics(noMetrics).
		WithStrictBuiltinErrors(true).
		WithCancel(c)
	rs, err := q.Run(ctx)
	if err != nil {
		return e.fail(ctx, c, p, err)
	}
	if len(rs) == 0 {
		e.opts.Metrics.Errors.WithLabelValues(e.opts.Name, "undefined").Inc()
		return d, ErrUndefined
	}
	if len(rs) != 1 {
		e.opts.Metrics.Errors.WithLabelValues(e.opts.Name, "malformed").Inc()
		return d, fmt.Errorf("%w: %d results", ErrBadDecision, len(rs))
	}
	allow, reasons, err := readDecision(rs[0][resultVar])
	if err != nil {
		e.opts.Metrics.Errors.WithLabelValues(e.opts.Name, "malformed").Inc()
		return d, err
	}
	d.Allow, d.Reasons = allow, reasons
	return d, nil
}

// fail counts a failed evaluation (a timeout when c has ended) and
// returns it as ErrEval.
func (e *Engine) fail(ctx context.Context, c *deadline, p *prepared, err error) (Decision, error) {
	kind := "error"
	if c.ended != nil || ctx.Err() != nil {
		kind = "timeout"
		if c.ended != nil && !errors.Is(err, c.ended) {
			err = fmt.Errorf("%w: %w", c.ended, err)
		}
	}
	e.opts.Metrics.Errors.WithLabelValues(e.opts.Name, kind).Inc()
	return Decision{Revision: p.revision}, fmt.Errorf("%w: %w", ErrEval, err)
}

// evalStack is how much stack an evaluation is given room for before it
// starts (see growStack): OPA's evaluator recurses deeply, and one
// evaluation of the policy library takes 64 to 128 KB of stack.
const evalStack = 96 << 10

// stackProbe is never changed; growStack cannot know that.
var stackProbe = 0

// growStack has a frame of evalStack bytes, so that calling it grows the
// goroutine's stack to fit one at once, while little of it is in use. OPA
// would otherwise grow it during the evaluation, deep in its recursion:
// the runtime doubles a stack by copying it and adjusting every frame on
// it, several times per evaluation, and again after each garbage
// collection has shrunk the stacks of idle connections. Under load that
// was a quarter of the evaluations' CPU. The array is never touched, so a
// stack that is already large costs a comparison.
//
//go:noinline
func growStack(n int) byte {
	if n > 0 {
		var frame [evalStack]byte
		return frame[n%evalStack]
	}
	return 0
}

// deadline is an evaluation's topdown.Cancel: OPA asks it before every
// expression (and in its long-running builtins) whether to stop. It looks
// at the clock and at the caller's context every deadlineEvery-th time, so
// an evaluation ends within that many steps of its deadline or of the
// caller going away, without the timer, context and callback per call that
// context.WithTimeout and context.AfterFunc would cost. OPA uses it from
// the evaluating goroutine only.
type deadline struct {
	ctx   context.Context
	at    time.Time
	n     uint32
	ended error // context.DeadlineExceeded, or why ctx ended
}

// deadlineEvery is how many steps pass between two looks at the clock.
const deadlineEvery = 16

// Cancel ends the evaluation (topdown.Cancel).
func (c *deadline) Cancel() {
	if c.ended == nil {
		c.ended = context.Canceled
	}
}

// Cancelled reports whether the evaluation must stop (topdown.Cancel).
func (c *deadline) Cancelled() bool {
	if c.ended != nil {
		return true
	}
	c.n++
	if c.n%deadlineEvery != 0 {
		return false
	}
	return c.check()
}

// check looks at the caller's context and the clock now.
func (c *deadline) check() bool {
	if err := c.ctx.Err(); err != nil {
		c.ended = err
	} else if !time.Now().Before(c.at) {
		c.ended = context.DeadlineExceeded
	}
	return c.ended != nil
}

// Reasons go back to agents in 403 answers and into audit records, so a
// policy may only return reason codes: a policy (or its data) could
// otherwise hand an agent any string it can reach, such as a token in
// data. A decision with a reason that is not a code, or with more than
// MaxReasons, is malformed: the call is denied with policy_error.
const (
	// MaxReasons is the most reasons a decision may carry.
	MaxReasons = 32
	// MaxReasonLen is the longest reason code.
	MaxReasonLen   = 64
	reasonCodeRule = "lower-case snake_case, [a-z][a-z0-9_]*, at most 64 bytes"
)

// IsReasonCode reports whether s is a reason code: [a-z][a-z0-9_]*, at
// most MaxReasonLen bytes.
func IsReasonCode(s string) bool {
	if s == "" || len(s) > MaxReasonLen || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// The decision's keys, built once: OPA does not intern them, and a lookup
// with a fresh term costs an allocation.
var keyAllow, keyReasons = ast.StringTerm("allow"), ast.StringTerm("reasons")

// readDecision reads allow and reasons from the decision value (the
// *ast.Term bound to resultVar). allow must be a boolean; reasons, when
// present, a list (or set) of strings, returned sorted: sets come back
// unordered, and answers must be stable.
func readDecision(v any) (bool, []string, error) {
	t, ok := v.(*ast.Term)
	if !ok {
		return false, nil, fmt.Errorf("%w: unexpected result type %T", ErrBadDecision, v)
	}
	obj, ok := t.Value.(ast.Object)
	if !ok {
		return false, nil, fmt.Errorf("%w: decision is not an object", ErrBadDecision)
	}
	var allow bool
	if a := obj.Get(keyAllow); a != nil {
		b, ok := a.Value.(ast.Boolean)
		if !ok {
			return false, nil, fmt.Errorf("%w: allow is not a boolean", ErrBadDecision)
		}
		allow = bool(b)
	} else {
		return false, nil, fmt.Errorf("%w: allow is not a boolean", ErrBadDecision)
	}
	rt := obj.Get(keyReasons)
	if rt == nil {
		return allow, nil, nil
	}
	switch list := rt.Value.(type) {
	case *ast.Array:
		if list.Len() == 0 {
			return allow, []string{}, nil // an allowed call's answer, without allocating
		}
	case ast.Set:
		if list.Len() == 0 {
			return allow, []string{}, nil
		}
	}
	var reasons []string
	add := func(r *ast.Term) error {
		s, ok := r.Value.(ast.String)
		if !ok {
			return fmt.Errorf("%w: a reason is not a string", ErrBadDecision)
		}
		if !IsReasonCode(string(s)) {
			// Never quoted: it may be what a policy must not hand out.
			return fmt.Errorf("%w: reason %d is not a reason code (%s)", ErrBadDecision, len(reasons)+1, reasonCodeRule)
		}
		if len(reasons) == MaxReasons {
			return fmt.Errorf("%w: more than %d reasons", ErrBadDecision, MaxReasons)
		}
		reasons = append(reasons, string(s))
		return nil
	}
	var err error
	switch list := rt.Value.(type) {
	case *ast.Array:
		reasons = make([]string, 0, list.Len())
		list.Until(func(r *ast.Term) bool { err = add(r); return err != nil })
	case ast.Set:
		reasons = make([]string, 0, list.Len())
		list.Until(func(r *ast.Term) bool { err = add(r); return err != nil })
	default:
		return false, nil, fmt.Errorf("%w: reasons is not a list", ErrBadDecision)
	}
	if err != nil {
		return false, nil, err
	}
	sort.Strings(reasons)
	return allow, reasons, nil
}

// Run watches the policy directory (when the engine has one) and reloads
// it when a file changes. It polls file names, sizes and modification
// times: that works the same on every filesystem and with every editor's
// save strategy (rename, truncate, atomic replace), and a poll of a few
// dozen files a second costs nothing. It returns nil when ctx ends.
func (e *Engine) Run(ctx context.Context) error {
	if e.opts.Dir == "" {
		<-ctx.Done()
		return nil
	}
	t := time.NewTicker(e.opts.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		sig, err := signature(e.opts.Dir)
		if err != nil {
			e.opts.Logger.WarnContext(ctx, "policy directory unreadable; keeping the last good policy",
				"policy", e.opts.Name, "dir", e.opts.Dir, "error", err)
			continue
		}
		if sig == e.sig {
			continue
		}
		e.sig = sig
		_ = e.Reload(ctx) // logged and counted by Reload
	}
}

// signature describes the policy files of dir as ReadDir would load them:
// names, and the size and modification time of what each resolves to (a
// Kubernetes ConfigMap update changes the files its links lead to, not the
// links). A directory ReadDir refuses has the refusal as its signature, so
// that Reload reports it once, and again when it changes.
func signature(dir string) (string, error) {
	files, err := scanDir(dir, false)
	if err != nil {
		return "refused: " + err.Error(), nil
	}
	var b strings.Builder
	for _, f := range files {
		if policyFile(f.name) {
			fmt.Fprintf(&b, "%s|%d|%d\n", f.name, f.info.Size(), f.info.ModTime().UnixNano())
		}
	}
	return b.String(), nil
}
