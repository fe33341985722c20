package policy

import (
	"fmt"
	"math"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/agentpassport/passport/budget"
)

// ApprovalAsk is a denying decision's request for a person: the
// decision's "approval" object with "required": true
// (policies/README.md, "The decision"). The proxy then stores a pending
// approval bound to the exact call instead of only refusing it.
type ApprovalAsk struct {
	// Reason is the policy's explanation, shown to the approvers.
	Reason string
	// Approvers is how many distinct approvers must approve (1 to
	// MaxApprovers).
	Approvers int
	// ExcludeOwner: the agent's registered owner may not approve.
	ExcludeOwner bool
}

// Bounds of an approval request.
const (
	MaxApprovers        = 10
	MaxApprovalReason   = 1024
	approvalRequestRule = `{"required": true, "reason": string, "approvers": 1-10, "exclude_owner": bool}`
)

var (
	keyApproval, keyRequired  = ast.StringTerm("approval"), ast.StringTerm("required")
	keyApprovers, keyExcludes = ast.StringTerm("approvers"), ast.StringTerm("exclude_owner")
	keyReason                 = ast.StringTerm("reason")
)

// readApproval reads a denying decision's "approval" object: nil when
// there is none or it is not required. A malformed one is a malformed
// decision (the call is denied with policy_error): a policy that meant to
// ask a person must not silently refuse instead, nor ask for less than it
// wrote.
func readApproval(v ast.Value) (*ApprovalAsk, error) {
	obj, ok := v.(ast.Object)
	if !ok {
		return nil, nil
	}
	at := obj.Get(keyApproval)
	if at == nil {
		return nil, nil
	}
	bad := func(what string) (*ApprovalAsk, error) {
		return nil, fmt.Errorf("%w: approval %s (want %s)", ErrBadDecision, what, approvalRequestRule)
	}
	ao, ok := at.Value.(ast.Object)
	if !ok {
		return bad("is not an object")
	}
	rt := ao.Get(keyRequired)
	if rt == nil {
		return bad("required is missing")
	}
	req, ok := rt.Value.(ast.Boolean)
	if !ok {
		return bad("required is not a boolean")
	}
	if !req {
		return nil, nil
	}
	a := &ApprovalAsk{Approvers: 1}
	if t := ao.Get(keyReason); t != nil {
		s, ok := t.Value.(ast.String)
		if !ok || len(s) > MaxApprovalReason {
			return bad("reason is not a string of at most 1024 bytes")
		}
		a.Reason = string(s)
	}
	if t := ao.Get(keyApprovers); t != nil {
		n, ok := t.Value.(ast.Number)
		if !ok {
			return bad("approvers is not a number")
		}
		f, _ := n.Float64()
		if f != math.Trunc(f) || f < 1 || f > MaxApprovers {
			return bad("approvers is not an integer from 1 to 10")
		}
		a.Approvers = int(f)
	}
	if t := ao.Get(keyExcludes); t != nil {
		b, ok := t.Value.(ast.Boolean)
		if !ok {
			return bad("exclude_owner is not a boolean")
		}
		a.ExcludeOwner = bool(b)
	}
	return a, nil
}

// Budgets are the budgets the policy in force declares
// (data.passport.budgets), read once per load: a policy whose budgets do
// not parse does not load. nil before the first load.
func (e *Engine) Budgets() []budget.Budget {
	if p := e.cur.Load(); p != nil {
		return p.budgets
	}
	return nil
}
