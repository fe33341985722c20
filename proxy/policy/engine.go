// Package policy is the embedded OPA engine of the proxy. It loads and
// compiles the Rego library once per load, prepares the decision query
// once, evaluates it on every call and, when it has a policy directory,
// reloads it when its files change (Run).
//
// Every failure is a deny: an evaluation error, a timeout, an undefined
// decision or a decision whose "allow" is not a boolean returns an error
// from Decide, and the proxy fails closed on any error. Policies cannot
// reach the network or the host: http.send, net.lookup_ip_addr and
// opa.runtime are removed from the capabilities, so a policy that uses
// them does not compile.
//
// Two evaluators sit behind Decide (Options.Evaluator). The fast one
// drives OPA's evaluator (topdown) directly, with a read transaction and a
// base-document cache shared by every evaluation of a load and a deadline
// checked every few steps (fast.go). The rego one is OPA's rego package as
// documented (rego.PreparedEvalQuery), the fallback should the fast one
// ever be in doubt. Both give the same decisions: the differential test
// (differential_test.go) runs the shipped library's generated corpus
// through both and through a plain rego.PreparedEvalQuery.
package policy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentpassport/passport/budget"
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

// Evaluator selects how an Engine evaluates the decision.
type Evaluator string

const (
	// Fast runs OPA's evaluator directly (fast.go). The default.
	Fast Evaluator = "fast"
	// Rego runs the rego package's prepared query, as OPA documents it:
	// slower, and the fallback should the fast evaluator be in doubt.
	Rego Evaluator = "rego"
)

// ParseEvaluator reads an evaluator name; "" is Fast.
func ParseEvaluator(s string) (Evaluator, error) {
	switch Evaluator(s) {
	case "", Fast:
		return Fast, nil
	case Rego:
		return Rego, nil
	}
	return "", fmt.Errorf("policy engine %q: want %q or %q", s, Fast, Rego)
}

// Options configures an Engine.
type Options struct {
	// Name labels metrics and logs: "enforced" or "shadow".
	Name string
	// Dir is a policy directory on disk, read with ReadDir and reloaded
	// by Run when it changes. When empty, FS is used and never reloaded.
	Dir string
	// Layout is how Dir may be laid out (ReadDir). Default PlainDir:
	// every symbolic link is refused.
	Layout DirLayout
	// FS is an embedded policy tree (for example policies.FS).
	FS fs.FS
	// Query defaults to DefaultQuery.
	Query string
	// StageQuery is the policy's per-passport stage (stage.go); it
	// defaults to DefaultStageQuery. A policy without that rule has no
	// stage, and every call is decided without one.
	StageQuery string
	// Evaluator defaults to Fast.
	Evaluator Evaluator
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

// Engine evaluates the decision query against the current policy.
type Engine struct {
	opts Options
	cur  atomic.Pointer[prepared]
	sig  string // last seen directory signature (Run goroutine only)
	caps *ast.Capabilities
}

// prepared is one load of the policy, ready to evaluate. users counts the
// evaluations using it, plus one while it is the engine's current policy;
// when a reload has replaced it and its last evaluation has ended, it is
// closed (its read transaction aborted), once.
type prepared struct {
	load     uint64 // this load's number among all the process's (loads)
	revision string
	fast     *fastQuery // Options.Evaluator Fast
	rego     *regoQuery // Options.Evaluator Rego
	budgets  []budget.Budget
	users    atomic.Int64
	closed   atomic.Bool
}

// hold counts one more user of p, unless p has been closed.
func (p *prepared) hold() bool {
	for {
		n := p.users.Load()
		if n == 0 {
			return false
		}
		if p.users.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// release counts one user less, and closes p after the last.
func (p *prepared) release() {
	if p.users.Add(-1) == 0 {
		p.closed.Store(true)
		if p.fast != nil {
			p.fast.close()
		}
	}
}

// New builds an engine and loads the policy once: a policy that does not
// load is an error, and the proxy does not start without one. It starts
// nothing: Run watches the directory.
func New(ctx context.Context, opts Options) (*Engine, error) {
	if opts.Logger == nil {
		return nil, errors.New("policy: logger required")
	}
	if opts.Dir == "" && opts.FS == nil {
		return nil, errors.New("policy: a directory or an fs.FS is required")
	}
	ev, err := ParseEvaluator(string(opts.Evaluator))
	if err != nil {
		return nil, err
	}
	opts.Evaluator = ev
	if opts.Name == "" {
		opts.Name = "enforced"
	}
	if opts.Query == "" {
		opts.Query = DefaultQuery
	}
	if opts.StageQuery == "" {
		opts.StageQuery = DefaultStageQuery
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
		e.sig = signature(opts.Dir, opts.Layout) // before the load, so Run sees any later change
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

// Evaluator is the evaluator in use.
func (e *Engine) Evaluator() Evaluator { return e.opts.Evaluator }

// Reload reads, compiles and prepares the policy, and swaps it in when it
// compiles; the policy it replaces is closed once its last evaluation has
// ended. On failure the policy in force stays, the error (with file and
// line) is logged and returned, and the failure is counted.
func (e *Engine) Reload(ctx context.Context) error {
	fsys := e.opts.FS
	src := "embedded"
	var err error
	if e.opts.Dir != "" {
		src = e.opts.Dir
		fsys, err = ReadDir(e.opts.Dir, e.opts.Layout) // regular files inside the directory only (dir.go)
	}
	var p *prepared
	if err == nil {
		p, err = e.prepare(ctx, fsys)
	}
	if err != nil {
		e.opts.Metrics.Reloads.WithLabelValues(e.opts.Name, "failure").Inc()
		e.opts.Logger.ErrorContext(ctx, "policy load failed; keeping the last good policy",
			"policy", e.opts.Name, "source", src, "revision_in_force", e.Revision(), "error", err)
		return fmt.Errorf("load policy %s: %w", src, err)
	}
	p.users.Store(1) // the engine's own hold, while p is current
	old := e.cur.Swap(p)
	if old != nil {
		e.opts.Metrics.Revision.DeleteLabelValues(e.opts.Name, old.revision)
		old.release()
	}
	e.opts.Metrics.Revision.WithLabelValues(e.opts.Name, p.revision).Set(1)
	e.opts.Metrics.Reloads.WithLabelValues(e.opts.Name, "success").Inc()
	if old == nil || old.revision != p.revision {
		e.opts.Logger.InfoContext(ctx, "policy loaded", "policy", e.opts.Name, "source", src,
			"revision", p.revision, "evaluator", string(e.opts.Evaluator))
	}
	return nil
}

// prepare loads the policy of fsys (Load, without tests), adds its
// load-time documents to its data (Files.EngineData) and prepares the
// decision query for the engine's evaluator. A panic on the way (OPA's
// compiler on a policy it chokes on) is a failed load, so that Run's
// reloads cannot take the proxy down.
func (e *Engine) prepare(ctx context.Context, fsys fs.FS) (_ *prepared, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic while loading the policy: %v", r)
		}
	}()
	files, err := Load(fsys, false)
	if err != nil {
		return nil, err
	}
	data, err := files.EngineData(ctx, e.caps)
	if err != nil {
		return nil, err
	}
	budgets, err := budget.FromData(data)
	if err != nil {
		return nil, fmt.Errorf("policy data: %w", err)
	}
	modules := files.sortedModules()
	p := &prepared{load: loads.Add(1), revision: files.Revision, budgets: budgets}
	if e.opts.Evaluator == Rego {
		p.rego, err = prepareRego(ctx, modules, data, e.opts.Query, e.opts.StageQuery, e.caps)
	} else {
		p.fast, err = prepareFast(ctx, modules, data, e.opts.Query, e.opts.StageQuery, e.caps)
	}
	if err != nil {
		return nil, err
	}
	return p, nil
}

// Decide evaluates the decision for input. A nil error means the policy
// returned a well-formed decision; any error means the caller must deny.
// The returned Decision always carries the revision that was asked. It
// runs on the caller's goroutine and is safe for concurrent use, also
// while a reload replaces the policy.
//
// An input.stage member is left out (stage.go): use DecideStaged.
func (e *Engine) Decide(ctx context.Context, input ast.Value) (Decision, error) {
	return e.DecideStaged(ctx, input, nil)
}

// DecideStaged is Decide for an input that carries st as input.stage
// (WithStage): the policy reads the stage only when the load in force
// computed it (Engine.Stage), and otherwise decides the call without it,
// as it does for a nil st.
func (e *Engine) DecideStaged(ctx context.Context, input ast.Value, st *Stage) (Decision, error) {
	p := e.hold()
	if p == nil {
		return Decision{}, ErrNotLoaded
	}
	defer p.release()
	return e.evaluate(ctx, p, p.stagedInput(input, st))
}

// hold returns the current policy, held for one evaluation, or nil before
// the first load.
func (e *Engine) hold() *prepared {
	for {
		p := e.cur.Load()
		if p == nil || p.hold() {
			return p
		}
		// A reload replaced p, and p's last evaluation ended, between the
		// load and the hold: cur holds its successor by now.
	}
}

// evaluate runs one evaluation of p for input, within ctx.
func (e *Engine) evaluate(ctx context.Context, p *prepared, input ast.Value) (d Decision, err error) {
	d = Decision{Revision: p.revision}
	var c *deadline
	defer func() {
		// A panic in the evaluator is a failed evaluation: the call is
		// denied and audited, where net/http would have recovered it by
		// dropping the connection, with no answer and no record.
		if r := recover(); r != nil {
			e.opts.Logger.ErrorContext(ctx, "policy evaluation panicked; denying", "policy", e.opts.Name, "panic", r)
			d, err = e.fail(ctx, p, c.reason(), fmt.Errorf("panic: %v", r))
		}
	}()
	var (
		v     *ast.Term
		ended error
	)
	if p.rego != nil {
		v, ended, err = p.rego.eval(ctx, e.opts.Timeout, input)
	} else {
		c = newDeadline(ctx, e.opts.Timeout)
		v, err = p.fast.eval(ctx, c, input)
		ended = c.reason()
	}
	switch {
	case errors.Is(err, errManyResults):
		e.opts.Metrics.Errors.WithLabelValues(e.opts.Name, "malformed").Inc()
		return d, fmt.Errorf("%w: %w", ErrBadDecision, err)
	case err != nil:
		return e.fail(ctx, p, ended, err)
	case v == nil:
		e.opts.Metrics.Errors.WithLabelValues(e.opts.Name, "undefined").Inc()
		return d, ErrUndefined
	}
	allow, reasons, err := readDecision(v)
	if err != nil {
		e.opts.Metrics.Errors.WithLabelValues(e.opts.Name, "malformed").Inc()
		return d, err
	}
	d.Allow, d.Reasons, d.value = allow, reasons, v.Value
	if !allow {
		if d.Approval, err = readApproval(v.Value); err != nil {
			e.opts.Metrics.Errors.WithLabelValues(e.opts.Name, "malformed").Inc()
			return Decision{Revision: p.revision}, err
		}
	}
	return d, nil
}

// errManyResults: the decision query had more than one result.
var errManyResults = errors.New("more than one result")

// fail counts a failed evaluation (a timeout when it ended for that
// reason, or when the caller's context has) and returns it as ErrEval.
func (e *Engine) fail(ctx context.Context, p *prepared, ended, err error) (Decision, error) {
	kind := "error"
	if ended != nil || ctx.Err() != nil {
		kind = "timeout"
		if ended != nil && !errors.Is(err, ended) {
			err = fmt.Errorf("%w: %w", ended, err)
		}
	}
	e.opts.Metrics.Errors.WithLabelValues(e.opts.Name, kind).Inc()
	return Decision{Revision: p.revision}, fmt.Errorf("%w: %w", ErrEval, err)
}

// Run watches the policy directory (when the engine has one) and reloads
// it when a file changes, until ctx ends; then it returns nil. It polls
// file names, sizes and modification times: that works the same on every
// filesystem and with every editor's save strategy (rename, truncate,
// atomic replace), and a poll of a few dozen files a second costs nothing.
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
		sig := signature(e.opts.Dir, e.opts.Layout)
		if sig == e.sig {
			continue
		}
		e.sig = sig
		_ = e.Reload(ctx) // logged and counted by Reload
	}
}

// signature describes the policy files of dir as ReadDir would load them:
// names, and the path, size and modification time of what each resolves
// to (a Kubernetes ConfigMap update changes the files its links lead to,
// not the links). A directory ReadDir refuses has the refusal as its
// signature, so that Reload reports it once, and again when it changes.
func signature(dir string, layout DirLayout) string {
	files, err := scanDir(dir, layout, false)
	if err != nil {
		return "refused: " + err.Error()
	}
	var b strings.Builder
	for _, f := range files {
		if IsTestFile(f.name) {
			continue // not loaded by the engine
		}
		fmt.Fprintf(&b, "%s|%s|%d|%d\n", f.name, f.target, f.info.Size(), f.info.ModTime().UnixNano())
	}
	return b.String()
}
