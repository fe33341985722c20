package policy

import (
	"context"
	"fmt"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
)

// regoQuery is the decision query of one load prepared by the rego
// package, and evaluated as OPA documents it: a read transaction per
// evaluation, the rego package's own cancellation, no cache or evaluator
// of ours. It shares with the fast evaluator only the loader, the
// load-time documents and the reading of the decision.
type regoQuery struct {
	pq    rego.PreparedEvalQuery
	stage rego.PreparedEvalQuery // Options.StageQuery
}

// prepareRego prepares query and stageQuery over modules and data (with
// its load-time documents) with the rego package.
func prepareRego(ctx context.Context, modules []*ast.Module, data map[string]any, query, stageQuery string, caps *ast.Capabilities) (*regoQuery, error) {
	store := inmem.NewFromObjectWithOpts(data, inmem.OptReturnASTValuesOnRead(true))
	pq, err := prepareRegoQuery(ctx, modules, store, query, caps)
	if err != nil {
		return nil, err
	}
	stage, err := prepareRegoQuery(ctx, modules, store, stageQuery, caps)
	if err != nil {
		return nil, err
	}
	return &regoQuery{pq: pq, stage: stage}, nil
}

func prepareRegoQuery(ctx context.Context, modules []*ast.Module, store storage.Store, query string, caps *ast.Capabilities) (rego.PreparedEvalQuery, error) {
	opts := []func(*rego.Rego){
		rego.Query(query),
		rego.Capabilities(caps),
		rego.StrictBuiltinErrors(true),
		rego.SetRegoVersion(ast.RegoV1),
		// Data as OPA values (a documented store option): the rego
		// package otherwise converts each document it reads from Go
		// values on every evaluation, which made a denial of the shipped
		// library six times dearer (BenchmarkLibraryDecide/rego).
		rego.Store(store),
	}
	for _, m := range modules {
		opts = append(opts, rego.ParsedModule(m))
	}
	return rego.New(opts...).PrepareForEval(ctx) // compile errors name file and line
}

// eval runs one evaluation for input within timeout, and returns the
// decision term (nil when undefined) and, when it failed because the
// timeout passed or ctx ended, why.
func (q *regoQuery) eval(ctx context.Context, timeout time.Duration, input ast.Value) (*ast.Term, error, error) {
	return runRego(ctx, q.pq, timeout, input)
}

// evalStage evaluates the stage query for a stage input (stage.go).
func (q *regoQuery) evalStage(ctx context.Context, timeout time.Duration, input ast.Value) (*ast.Term, error, error) {
	return runRego(ctx, q.stage, timeout, input)
}

func runRego(ctx context.Context, pq rego.PreparedEvalQuery, timeout time.Duration, input ast.Value) (*ast.Term, error, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := ctx.Err(); err != nil {
		return nil, err, err // ended before it started
	}
	rs, err := pq.Eval(ctx, rego.EvalParsedInput(input))
	if err == nil && ctx.Err() != nil {
		// Ended after its deadline: a timeout, as the fast evaluator
		// would have stopped it, although the rego package let it finish.
		err = ctx.Err()
	}
	switch {
	case err != nil:
		return nil, ctx.Err(), err
	case len(rs) == 0:
		return nil, nil, nil
	case len(rs) > 1 || len(rs[0].Expressions) != 1:
		return nil, nil, fmt.Errorf("%w: %d", errManyResults, len(rs))
	}
	v, err := ast.InterfaceToValue(rs[0].Expressions[0].Value)
	if err != nil {
		return nil, nil, fmt.Errorf("read the decision: %w", err)
	}
	return ast.NewTerm(v), nil, nil
}
