package policy

import (
	"fmt"
	"sort"

	"github.com/open-policy-agent/opa/v1/ast"
)

// Decision is the outcome of the policy for one call.
type Decision struct {
	Allow    bool
	Reasons  []string
	Revision string
	// Approval is set when a denying decision asks a person to approve
	// the exact call (decision.approval.required).
	Approval *ApprovalAsk
	// value is the whole decision object as the policy returned it. It
	// may be a value the policy stored once per load and hands to every
	// call (an allowed decision), so it never leaves the package: Object
	// gives a copy.
	value ast.Value
}

// Object returns a copy of the whole decision object as the policy
// returned it ("allow", "reasons" in the policy's order, and any other
// field), in the Go types of encoding/json (numbers as json.Number); nil
// when the evaluation failed. It converts on every call: it is for tools
// and tests, not for the decision path.
func (d Decision) Object() (map[string]any, error) {
	if d.value == nil {
		return nil, nil
	}
	v, err := ast.JSON(d.value)
	if err != nil {
		return nil, fmt.Errorf("decision object: %w", err)
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("decision object: unexpected %T", v)
	}
	return obj, nil
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
