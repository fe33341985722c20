package proxy

import (
	"math"
	"net/http"
	"time"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/proxy/policy"
)

// step is one stage of deciding a call. It reads what the steps before it
// left on the call, adds its own part, or refuses the call; a refusal ends
// the call there (answer.go).
type step func(p *Proxy, w http.ResponseWriter, r *http.Request, c *call) *refusal

// The steps before the policy, and after it allowed the call. A check that
// a later feature needs (a proof of possession, a tool call's arguments,
// an approval, a budget) is one more entry in one of these lists, not
// another exit in serve.
var (
	beforePolicy = []step{
		(*Proxy).admit,    // router.go: limits, path, query, route
		(*Proxy).identify, // verify.go: passport, tenant, revocation, agent state, delegation chain
		(*Proxy).possess,  // dpop.go: the passport's binding and its DPoP proof
		(*Proxy).readBody, // body.go: the body, whole and checked
		(*Proxy).mcpStep,  // mcp.go: an MCP route's JSON-RPC message and its headers
		// approval.go, budget.go: a presented approval, checked (not
		// used); the call's budgets, reserved. The policy sees both.
		(*Proxy).checkApproval,
		(*Proxy).reserveBudgets,
	}
	afterAllow = []step{
		(*Proxy).outcomeRoom, // a forwarded call must get its outcome record
		(*Proxy).useApproval, // approval.go: the presented approval, used once
	}
)

// decide runs the steps and the policy. nil means the call is allowed and
// holds its decision record (c.rec), ready to be written ahead of
// forwarding (record.go).
func (p *Proxy) decide(w http.ResponseWriter, r *http.Request, c *call) *refusal {
	for _, s := range beforePolicy {
		if ref := s(p, w, r, c); ref != nil {
			return ref
		}
	}
	evaluate := (*Proxy).evaluate
	if c.mcp != nil {
		evaluate = (*Proxy).evaluateMCP // each tools/call as its tool's action
	}
	if ref := evaluate(p, r, c); ref != nil {
		return ref
	}
	for _, s := range afterAllow {
		if ref := s(p, w, r, c); ref != nil {
			return ref
		}
	}
	return nil
}

// Refusals by the policy. Their answer and their record come from the
// call's decision record (answer.go).
var (
	refusePolicyDenied = &refusal{status: http.StatusForbidden, code: "policy_denied",
		record: recordDecision, report: true}
	refusePolicyError = &refusal{status: http.StatusForbidden, code: "policy_error",
		detail: "the policy could not decide, so the call is denied", record: recordDecision, decision: audit.DecisionError}
	refuseBacklogFull = &refusal{status: http.StatusServiceUnavailable, code: "audit_backlog_full",
		detail: "the audit store is behind, so nothing is forwarded", retryAfter: "1"}
)

// evaluate builds the policy input and the decision record, and asks the
// enforced policy (and the shadow one, which only records what it would
// have decided). A policy that fails, or an input that cannot be built,
// denies the call.
func (p *Proxy) evaluate(r *http.Request, c *call) *refusal {
	rt, vp := c.route, c.vp
	in, err := p.buildInput(r, c, rt, c.params, c.queryValues, vp, c.reputation, c.now, c.policyBody, c.bodyJSON)
	var pid, pdigest string
	if err == nil {
		pid, pdigest = p.referencePassport(r, c, vp)
	}
	rec, rerr := p.decisionRecord(c, rt, vp, c.reputation, in, c.now, pid, pdigest)
	c.rec = rec
	if err == nil {
		err = rerr // the record could not hold the input: nothing to replay, so nothing to forward
	}
	if err != nil {
		p.log.ErrorContext(r.Context(), "policy input could not be built; denying", "request_id", c.id, "error", err)
		rec.Input = nil // there is no input to keep
		if math.IsNaN(rec.Reputation) || math.IsInf(rec.Reputation, 0) {
			rec.Reputation = 0 // a record must encode; its reason says why the call was refused
		}
		rec.PolicyRevision = p.enforced.Revision()
		rec.Decision, rec.Reasons = audit.DecisionError, []string{"input_error"}
		p.m.decisionSeconds.Observe(time.Since(c.decStart).Seconds())
		return refusePolicyError
	}

	st := p.stage(r, c, in)
	dec, derr := p.enforced.DecideStaged(r.Context(), policy.WithStage(in.value, st), st)
	rec.PolicyRevision = dec.Revision
	if p.shadow != nil {
		// in.value carries the enforced policy's stage; the shadow engine
		// leaves it out (another load computed it) and decides the call
		// with its own rules alone.
		sd, serr := p.shadow.Decide(r.Context(), in.value)
		sh := &audit.Shadow{Revision: sd.Revision, Allow: serr == nil && sd.Allow, Reasons: sd.Reasons}
		if serr != nil {
			sh.Reasons = []string{"policy_error"}
		}
		sh.Disagree = sh.Allow != (derr == nil && dec.Allow)
		if sh.Disagree {
			p.m.shadowDisagree.WithLabelValues(decisionLabel(derr == nil && dec.Allow)).Inc()
		}
		rec.Shadow = sh
	}
	p.m.decisionSeconds.Observe(time.Since(c.decStart).Seconds())
	switch {
	case derr != nil:
		p.log.ErrorContext(r.Context(), "policy evaluation failed; denying", "request_id", c.id, "error", derr)
		rec.Decision, rec.Reasons = audit.DecisionError, []string{"policy_error"}
		return refusePolicyError
	case !dec.Allow:
		rec.Decision, rec.Reasons = audit.DecisionDeny, dec.Reasons
		return p.refuseDenied(r, c, &dec) // approval.go: a person, a budget, or a denial
	}
	rec.Decision, rec.Reasons = audit.DecisionAllow, dec.Reasons
	return nil
}

// stage is the enforced policy's per-passport stage (policy.Stage) for
// the call's passport and route: computed by the first call of the pair
// under the policy in force, from the parts of its input that the passport
// and the route decide (policy.StageInput), and kept beside the verified
// passport for the calls after it until a reload makes it stale. nil, and
// the call is decided without one, on an MCP route (a tool call's action
// and resource are the tool's, not the route's) or when the stage cannot
// be evaluated. It carries no per-call fact: expiry, revocation and
// blocks were checked by identify for this call, and the time, the
// reputation, the resource, the body and the budgets are in its input.
func (p *Proxy) stage(r *http.Request, c *call, in *input) *policy.Stage {
	if c.mcp != nil || c.vp == nil {
		return nil
	}
	if st := c.vp.stage(c.route); p.enforced.Fresh(st) {
		return st
	}
	st, err := p.enforced.Stage(r.Context(), in.value)
	if err != nil {
		p.log.WarnContext(r.Context(), "policy stage failed; deciding without it", "request_id", c.id, "error", err)
		return nil
	}
	c.vp.setStage(c.route, st)
	return st
}

// outcomeRoom refuses an allowed call while the audit backlog has no room
// for its outcome record: a forwarded call must get one.
func (p *Proxy) outcomeRoom(_ http.ResponseWriter, r *http.Request, c *call) *refusal {
	if p.backlog == nil {
		return nil
	}
	if err := p.backlog.OutcomeRoom(); err != nil {
		p.log.ErrorContext(r.Context(), "audit backlog full; refusing", "request_id", c.id, "error", err)
		return refuseBacklogFull
	}
	return nil
}

func decisionLabel(allow bool) string {
	if allow {
		return audit.DecisionAllow
	}
	return audit.DecisionDeny
}
