package policy

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/open-policy-agent/opa/v1/ast"
)

// The per-passport stage (policies/README.md, "The per-passport stage").
//
// Part of a decision depends only on the passport, the route and the
// policy: the agent's type and trust level, the passport's grants, task
// and tenant, the route's action and tenant. A policy may state that part
// as a rule, the stage (Options.StageQuery), which the engine evaluates
// against the stage input (StageInput: the input without any per-call
// fact) once per passport, route and load (Engine.Stage). The caller
// keeps the value and hands it back with each call's input
// (Engine.DecideStaged), where the policy reads it as input.stage and
// evaluates only the rest, the residual, against the call's own facts:
// the time, the live reputation, the block, the resource, the arguments,
// the budgets. Rego still decides every call.
//
// A stage is only ever evaluated by the load that computed it: the engine
// drops input.stage from any input whose stage is not the one given, or
// was computed by another load (a reload, another engine), and the policy
// then decides the call without it. A policy must give the same decisions
// with and without the stage (the differential test, differential_test.go).

// DefaultStageQuery is the rule that computes the stage.
const DefaultStageQuery = "data.passport.authz.stage"

// StageKey is the input member that carries the stage.
var StageKey = ast.StringTerm("stage")

// Stage is the value of a policy's stage for one passport and route,
// computed by one load of the policy. A nil term means the policy has no
// stage for them (its rule was undefined): the calls are decided without.
type Stage struct {
	load uint64
	term *ast.Term
}

// Term is the stage's value (nil when the policy has none).
func (s *Stage) Term() *ast.Term {
	if s == nil {
		return nil
	}
	return s.term
}

// loads numbers the loads of every engine of the process, so that a stage
// names the one load that may read it.
var loads atomic.Uint64

// The members of the input the stage may read, and those of input.agent.
// Everything else (time, request, approval, budgets, mcp, resource, and
// agent.reputation and agent.blocked) changes per call, and a stage never
// sees it.
var (
	stageMembers      = []*ast.Term{ast.StringTerm("version"), ast.StringTerm("tenant"), ast.StringTerm("action"), ast.StringTerm("route"), ast.StringTerm("passport")}
	stageAgentMembers = []*ast.Term{ast.StringTerm("id"), ast.StringTerm("name"), ast.StringTerm("type"), ast.StringTerm("trust_level")}
	agentMember       = ast.StringTerm("agent")
)

// StageInput is the part of a call's input that the stage may read:
// version, tenant, action, route and passport, and agent without its
// reputation and its blocked flag. It is what a passport and a route
// decide, the same for every call of theirs; the caller computes the stage
// once per passport and route from it (the proxy: from the first call's
// input). A member the input lacks is absent here too.
func StageInput(input ast.Value) (ast.Object, error) {
	obj, ok := input.(ast.Object)
	if !ok {
		return nil, errors.New("stage input: the input is not an object")
	}
	out := ast.NewObject()
	for _, k := range stageMembers {
		if v := obj.Get(k); v != nil {
			out.Insert(k, v)
		}
	}
	if a := obj.Get(agentMember); a != nil {
		agent, ok := a.Value.(ast.Object)
		if !ok {
			out.Insert(agentMember, a) // not an object: no per-call fact can hide in it
		} else {
			o := ast.NewObject()
			for _, k := range stageAgentMembers {
				if v := agent.Get(k); v != nil {
					o.Insert(k, v)
				}
			}
			out.Insert(agentMember, ast.NewTerm(o))
		}
	}
	return out, nil
}

// Stage evaluates the stage of the policy in force for a call's input: its
// StageInput alone, never its per-call facts. The result is valid for
// every call with the same passport and route while the load that
// computed it is in force (Fresh); DecideStaged ignores it afterwards. An
// error leaves the caller to decide without a stage.
func (e *Engine) Stage(ctx context.Context, input ast.Value) (_ *Stage, err error) {
	p := e.hold()
	if p == nil {
		return nil, ErrNotLoaded
	}
	defer p.release()
	in, err := StageInput(input)
	if err != nil {
		return nil, err
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: stage: panic: %v", ErrEval, r)
		}
	}()
	var v *ast.Term
	if p.rego != nil {
		v, _, err = p.rego.evalStage(ctx, e.opts.Timeout, in)
	} else {
		v, err = p.fast.evalStage(ctx, newDeadline(ctx, e.opts.Timeout), in)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: stage: %w", ErrEval, err)
	}
	return &Stage{load: p.load, term: v}, nil
}

// Fresh reports whether st was computed by the load in force: a reload
// makes every stage stale, and the caller computes it again.
func (e *Engine) Fresh(st *Stage) bool {
	p := e.cur.Load()
	return st != nil && p != nil && st.load == p.load
}

// WithStage adds st to a call's input, built by the caller for this call
// (input.stage), and returns it; an input that is not an object, or a
// stage without a value, leaves it as it is.
func WithStage(input ast.Value, st *Stage) ast.Value {
	if obj, ok := input.(ast.Object); ok && st.Term() != nil {
		obj.Insert(StageKey, st.term)
	}
	return input
}

// stagedInput is the input p evaluates: input as it is, unless it carries
// a stage that is not st or that another load computed, which is left
// out. Only the load that computed a stage ever reads it.
func (p *prepared) stagedInput(input ast.Value, st *Stage) ast.Value {
	obj, ok := input.(ast.Object)
	if !ok {
		return input
	}
	t := obj.Get(StageKey)
	if t == nil || st != nil && st.load == p.load && st.term != nil && t == st.term {
		return input
	}
	out, _ := obj.Map(func(k, v *ast.Term) (*ast.Term, *ast.Term, error) {
		if k.Equal(StageKey) {
			return nil, nil, nil
		}
		return k, v, nil
	})
	return out
}
