package policy

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/metrics"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/topdown"
)

// fastQuery is the decision query of one load, compiled for OPA's
// evaluator (topdown), which the fast evaluator runs directly: the rego
// package would build an evaluation context, a result set and Go copies of
// the result around every call, which cost about as much as a small
// policy's evaluation (BenchmarkDecide/rego against /fast; the figures are
// in docs/performance.md).
type fastQuery struct {
	compiler *ast.Compiler
	qc       ast.QueryCompiler
	query    ast.Body // resultVar = <Options.Query>
	stageQC  ast.QueryCompiler
	stage    ast.Body // resultVar = <Options.StageQuery>
	store    storage.Store
	txn      storage.Transaction // shared by every evaluation; aborted by close
	data     dataCache
}

// resultVar is bound to the decision in the compiled query.
const resultVar = ast.Var("decision")

// noMetrics is shared by every evaluation: nothing reads per-evaluation
// metrics, and a registry with timers per call is not free.
var noMetrics = metrics.NoOp()

// prepareFast compiles modules, the decision query and the stage query
// over data (with its load-time documents) for the fast evaluator.
func prepareFast(ctx context.Context, modules []*ast.Module, data map[string]any, query, stageQuery string, caps *ast.Capabilities) (*fastQuery, error) {
	// The store is never written after the load, so one read transaction
	// is opened per load and shared by every evaluation of it (which
	// saves a lock and an allocation per call); it is aborted when the
	// load is replaced and its last evaluation has ended (prepared). The
	// store keeps data as OPA values, so a read hands out the stored value
	// instead of converting Go maps on every evaluation.
	store := newStore(data)
	txn, err := store.NewTransaction(ctx)
	if err != nil {
		return nil, fmt.Errorf("open policy store: %w", err)
	}
	q := &fastQuery{store: store, txn: txn}
	ready := false
	defer func() {
		if !ready {
			q.close() // nothing will evaluate it
		}
	}()
	// The rego package compiles the modules and checks the query, with
	// its settings (capabilities, strict builtin errors, Rego v1); the
	// hook keeps its compiler, on which the query is compiled again for
	// the evaluator.
	opts := []func(*rego.Rego){
		rego.Query(query),
		rego.Transaction(txn),
		rego.Capabilities(caps),
		rego.StrictBuiltinErrors(true),
		rego.SetRegoVersion(ast.RegoV1),
		rego.Store(store),
		rego.CompilerHook(func(c *ast.Compiler) { q.compiler = c }),
	}
	for _, m := range modules {
		opts = append(opts, rego.ParsedModule(m))
	}
	if _, err := rego.New(opts...).PrepareForEval(ctx); err != nil {
		return nil, err // compile errors name file and line
	}
	if q.qc, q.query, err = compileQuery(q.compiler, query); err != nil {
		return nil, err
	}
	if q.stageQC, q.stage, err = compileQuery(q.compiler, stageQuery); err != nil {
		return nil, err
	}
	root, err := store.Read(ctx, txn, storage.RootPath)
	if err != nil {
		return nil, fmt.Errorf("read policy data: %w", err)
	}
	obj, ok := root.(ast.Object)
	if !ok {
		return nil, fmt.Errorf("read policy data: unexpected %T", root)
	}
	// The evaluator hides the system document from reads of all of data;
	// the cache does the same, and reads under it go to the store.
	obj, _ = obj.Map(func(k, v *ast.Term) (*ast.Term, *ast.Term, error) {
		if k.Equal(ast.InternedTerm(string(ast.SystemDocumentKey))) {
			return nil, nil, nil
		}
		return k, v, nil
	})
	q.data = dataCache{root: obj}
	ready = true
	return q, nil
}

// newStore builds the store of one load; a variable so that tests can
// watch its transactions.
var newStore = func(data map[string]any) storage.Store {
	return inmem.NewFromObjectWithOpts(data, inmem.OptRoundTripOnWrite(false), inmem.OptReturnASTValuesOnRead(true))
}

// close aborts the shared read transaction. Only prepared.release calls
// it, after the last evaluation of the load has ended.
func (q *fastQuery) close() {
	if q.txn != nil {
		q.store.Abort(context.Background(), q.txn)
	}
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

// eval runs one evaluation for input within c, and returns the decision
// term (nil when undefined).
func (q *fastQuery) eval(ctx context.Context, c *deadline, input ast.Value) (*ast.Term, error) {
	return q.run(ctx, c, q.qc, q.query, input)
}

// evalStage evaluates the stage query for a stage input (stage.go).
func (q *fastQuery) evalStage(ctx context.Context, c *deadline, input ast.Value) (*ast.Term, error) {
	return q.run(ctx, c, q.stageQC, q.stage, input)
}

func (q *fastQuery) run(ctx context.Context, c *deadline, qc ast.QueryCompiler, query ast.Body, input ast.Value) (*ast.Term, error) {
	if c.check() {
		// The deadline passed, or the caller went away, before the
		// evaluation started.
		return nil, c.reason()
	}
	if growStacks {
		growStack(stackProbe)
	}
	rs, err := topdown.NewQuery(query).
		WithQueryCompiler(qc).
		WithCompiler(q.compiler).
		WithStore(q.store).
		WithTransaction(q.txn).
		WithBaseCache(q.data).
		WithInput(ast.NewTerm(input)).
		WithMetrics(noMetrics).
		WithStrictBuiltinErrors(true).
		WithCancel(c).
		Run(ctx)
	switch {
	case err != nil:
		return nil, err
	case len(rs) == 0:
		return nil, nil
	case len(rs) > 1:
		return nil, fmt.Errorf("%w: %d", errManyResults, len(rs))
	}
	return rs[0][resultVar], nil
}

// dataCache hands the evaluator the policy's data, which never changes
// within a load, as the OPA value read from the store once per load. The
// evaluator consults its base-document cache before the store; without
// this one it would start each evaluation with an empty cache, then read
// and convert every document it touches again (BenchmarkDecide/nocache).
// Get only reads, so one value serves every evaluation at once; a miss (a
// path the data does not have) falls through to the store.
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

// evalStack is how much stack an evaluation is given room for before it
// starts (see growStack): OPA's evaluator recurses deeply, and an
// evaluation of the policy library needs 64 to 128 KB of stack.
const evalStack = 96 << 10

// stackProbe is never changed; growStack cannot know that.
var stackProbe = 0

// growStacks is always true but in the benchmarks that show what growStack
// saves (BenchmarkDecide/fast/new_goroutine).
var growStacks = true

// growStack has a frame of evalStack bytes, so that calling it grows the
// goroutine's stack to fit one at once, while little of it is in use. OPA
// would otherwise grow it during the evaluation, deep in its recursion:
// the runtime doubles a stack by copying it and adjusting every frame on
// it, several times per evaluation, and again after each garbage
// collection has shrunk the stacks of idle connections (the measurement
// is in docs/performance.md). The array is never touched, so a stack that
// is already large costs a comparison.
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
// context.WithTimeout and context.AfterFunc would cost.
//
// It is safe for concurrent use, as topdown.Cancel requires: ctx and at
// never change after newDeadline, the step count is atomic, and the reason
// it ended is set once, by compare-and-swap, and read atomically. Any
// goroutine may call Cancel while others ask Cancelled; the first reason
// stays.
type deadline struct {
	ctx   context.Context
	at    time.Time
	n     atomic.Uint32
	ended atomic.Pointer[endReason]
}

// endReason is why an evaluation ended: one value per reason, so that
// ending allocates nothing.
type endReason struct{ err error }

var (
	endCanceled = &endReason{context.Canceled}
	endDeadline = &endReason{context.DeadlineExceeded}
)

// deadlineEvery is how many steps pass between two looks at the clock.
const deadlineEvery = 16

func newDeadline(ctx context.Context, timeout time.Duration) *deadline {
	return &deadline{ctx: ctx, at: time.Now().Add(timeout)}
}

// Cancel ends the evaluation (topdown.Cancel).
func (c *deadline) Cancel() { c.end(endCanceled) }

// Cancelled reports whether the evaluation must stop (topdown.Cancel).
func (c *deadline) Cancelled() bool {
	if c.ended.Load() != nil {
		return true
	}
	if c.n.Add(1)%deadlineEvery != 0 {
		return false
	}
	return c.check()
}

// check looks at the caller's context and the clock now.
func (c *deadline) check() bool {
	if err := c.ctx.Err(); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			c.end(endDeadline)
		} else {
			c.end(endCanceled)
		}
	} else if !time.Now().Before(c.at) {
		c.end(endDeadline)
	}
	return c.ended.Load() != nil
}

// end records why the evaluation ended, unless it has already.
func (c *deadline) end(r *endReason) { c.ended.CompareAndSwap(nil, r) }

// reason is context.DeadlineExceeded or context.Canceled once the
// evaluation has ended, else nil (also for a nil deadline).
func (c *deadline) reason() error {
	if c == nil {
		return nil
	}
	if r := c.ended.Load(); r != nil {
		return r.err
	}
	return nil
}

var _ topdown.Cancel = (*deadline)(nil)
