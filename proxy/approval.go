package proxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/approval"
	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/alert"
	"github.com/agentpassport/passport/proxy/policy"
)

// Approvals: a person's consent to one exact call (docs/approvals.md).
//
// When a denying decision carries approval.required, the proxy stores a
// pending approval bound to the call — tenant, agent, method, the
// normalised path and the query the upstream would get, and the SHA-256
// of the exact body bytes (of an MCP tool call, its method and params
// without the JSON-RPC id and _meta: call.approvalBody) — and answers 403
// approval_required with its id.
// The agent repeats the identical call with Passport-Approval: <id>. The
// proxy checks the approval before the policy runs (checkApproval: the
// policy sees input.approval only for an approval that matches), and uses
// it up only once the policy allowed the call (useApproval), in one Lua
// script, so of many concurrent retries through any number of proxies
// exactly one is forwarded, and a policy that still refuses does not burn
// it. Redis failing refuses (503 approval_unavailable).

// ApprovalsConfig tunes the approvals the proxy asks for.
type ApprovalsConfig struct {
	// DashboardURL is the dashboard's base URL: approval_url is its page
	// for the approval (approval.PageURL). Default "": a link relative to
	// the dashboard's root ("/#approval=...").
	DashboardURL string `yaml:"dashboard_url"`
	// TTL is how long a pending approval may be decided and used. Default
	// 15m, at most 24h.
	TTL time.Duration `yaml:"ttl"`
	// Alerts are the chat webhooks that hear of each new approval.
	// `passport proxy` builds Deps.Alerts from it. Default none.
	Alerts alert.Config `yaml:"alerts"`
}

func (a *ApprovalsConfig) validate() error {
	if a.TTL == 0 {
		a.TTL = approval.DefaultTTL
	}
	var errs []error
	if a.TTL < time.Second || a.TTL > approval.MaxTTL {
		errs = append(errs, fmt.Errorf("approvals.ttl: %s: want 1s to %s", a.TTL, approval.MaxTTL))
	}
	if err := a.Alerts.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("approvals.alerts: %w", err))
	}
	return errors.Join(errs...)
}

// escalations are the proxy's approvals and budgets: the store and the
// metrics.
type escalations struct {
	store               *approval.Store
	alerts              alert.Notifier
	approvals           *prometheus.CounterVec
	budgetReservations  *prometheus.CounterVec
	budgetReleaseErrors prometheus.Counter
}

func newEscalations(rdb redis.UniversalClient, clock func() time.Time, alerts alert.Notifier, reg prometheus.Registerer) *escalations {
	if alerts == nil {
		alerts = alert.Nop{}
	}
	e := &escalations{
		store:  approval.NewStore(rdb, approval.Options{Clock: clock}),
		alerts: alerts,
		approvals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_proxy_approvals_total",
			Help: "Approvals by event (requested, repeated, used) or refusal code (approval_used, approval_mismatch, ...).",
		}, []string{"event"}),
		budgetReservations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_proxy_budget_reservations_total",
			Help: "Budget reservations by result (reserved, exhausted).",
		}, []string{"result"}),
		budgetReleaseErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "passport_proxy_budget_release_errors_total",
			Help: "Units of refused calls that could not be given back (they stay counted for their window).",
		}),
	}
	reg.MustRegister(e.approvals, e.budgetReservations, e.budgetReleaseErrors)
	return e
}

var refuseApprovalUnavailable = &refusal{status: http.StatusServiceUnavailable, code: "approval_unavailable",
	detail: "the approval store is unavailable, so the call is refused", retryAfter: "1"}

// approvalDetails are the fixed sentences of the approval refusals.
var approvalDetails = map[string]string{
	approval.CodeUnknown:  "no such approval for this tenant (send one Passport-Approval header with an id the proxy gave)",
	approval.CodePending:  "the approval is still waiting for approvers",
	approval.CodeDenied:   "the approval was denied",
	approval.CodeUsed:     "the approval was used already: it opens one call, once",
	approval.CodeExpired:  "the approval expired",
	approval.CodeMismatch: "the approval was given for another call",
	approval.CodeLimit:    "the tenant holds too many live approvals; ask again later",
}

// refuseApproval refuses a call whose approval does not open it: 403 with
// the approval's own code; field names what differs on a mismatch.
func (p *Proxy) refuseApproval(c *call, code, field string) *refusal {
	p.esc.approvals.WithLabelValues(code).Inc()
	detail := approvalDetails[code]
	if code == approval.CodeMismatch && field != "" {
		detail = "the approval was given for another call: its " + field + " differs"
	}
	return c.refuse(refusal{status: http.StatusForbidden, code: code, detail: detail})
}

// checkApproval is the step that reads the approval a call presents and
// checks, without using it, that it is granted, unexpired and for exactly
// this call, in the order the store's consume script checks. The policy
// then sees it as input.approval.
func (p *Proxy) checkApproval(_ http.ResponseWriter, r *http.Request, c *call) *refusal {
	vs := r.Header.Values(approval.Header)
	if len(vs) == 0 {
		return nil
	}
	// One header, one id: a list could be read differently by two readers.
	if len(vs) > 1 || !approval.ValidID(vs[0]) {
		return p.refuseApproval(c, approval.CodeUnknown, "")
	}
	if c.body != nil {
		// A streamed body is not read before forwarding: nothing to bind.
		return p.refuseApproval(c, approval.CodeMismatch, "body")
	}
	ap, err := p.esc.store.Get(r.Context(), c.tenant, vs[0])
	if ref := p.approvalError(r, c, err); ref != nil {
		return ref
	}
	if code, field := matchApproval(&ap, c, r.Method); code != "" {
		return p.refuseApproval(c, code, field)
	}
	c.approval = &ap
	return nil
}

// approvalError maps a store error to a refusal (nil for none).
func (p *Proxy) approvalError(r *http.Request, c *call, err error) *refusal {
	if err == nil {
		return nil
	}
	var ae *approval.Error
	if errors.As(err, &ae) {
		return p.refuseApproval(c, ae.Code, ae.Field)
	}
	p.log.ErrorContext(r.Context(), "approval store failed; refusing", "request_id", c.id, "tenant", c.tenant, "error", err)
	return refuseApprovalUnavailable
}

// matchApproval says why ap does not open the call ("" when it does).
func matchApproval(ap *approval.Approval, c *call, method string) (code, field string) {
	switch {
	case ap.Tenant != c.tenant:
		return approval.CodeMismatch, "tenant"
	case ap.AgentID != c.agentID:
		return approval.CodeMismatch, "agent"
	case ap.State == approval.StateUsed:
		return approval.CodeUsed, ""
	case ap.State == approval.StateDenied:
		return approval.CodeDenied, ""
	case ap.State == approval.StateExpired:
		return approval.CodeExpired, ""
	case ap.State != approval.StateGranted:
		return approval.CodePending, ""
	case ap.Method != method:
		return approval.CodeMismatch, "method"
	case ap.Path != c.path:
		return approval.CodeMismatch, "path"
	case ap.Query != c.query:
		return approval.CodeMismatch, "query"
	case ap.BodySHA256 != approval.Digest(c.approvalBody()):
		return approval.CodeMismatch, "body"
	}
	return "", ""
}

// useApproval is the step, after the policy allowed the call, that uses
// the presented approval up, atomically: of concurrent retries exactly
// one gets past it. The decision record then names the approval and its
// approvers. It runs before the record is written: should the audit store
// then fail, the call is refused and the approval stays used (fail
// closed; a person asks again).
func (p *Proxy) useApproval(_ http.ResponseWriter, r *http.Request, c *call) *refusal {
	if c.approval == nil {
		return nil
	}
	ap, err := p.esc.store.Consume(r.Context(), c.approval.ID, approval.Call{Tenant: c.tenant, AgentID: c.agentID,
		Method: r.Method, Path: c.path, Query: c.query, Body: c.approvalBody(), RequestID: c.id})
	if ref := p.approvalError(r, c, err); ref != nil {
		return ref
	}
	p.esc.approvals.WithLabelValues("used").Inc()
	d := approvalUse{ID: ap.ID, Approvers: approverNames(ap), Required: ap.RequiredApprovers}
	if ap.GrantedAt != nil {
		d.GrantedAt = ap.GrantedAt.UTC().Format(time.RFC3339Nano)
	}
	b, err := json.Marshal(d)
	if err != nil {
		return refusePolicyError
	}
	addDetails(c.rec, b)
	return nil
}

// approvalUse is the decision record's details for a call an approval
// opened.
type approvalUse struct {
	ID        string   `json:"approval_id"`
	Approvers []string `json:"approvers"`
	GrantedAt string   `json:"granted_at,omitempty"`
	Required  int      `json:"required_approvers"`
}

func approverNames(ap approval.Approval) []string {
	out := make([]string, 0, len(ap.Approvers))
	for _, v := range ap.Approvers {
		out = append(out, v.Approver)
	}
	return out
}

// refuseDenied is the answer to a denying decision: a pending approval
// when the policy asks for a person (and the call did not already bring
// an approval, which the policy then found wanting), 429 when a budget ran
// out, else the plain policy denial.
func (p *Proxy) refuseDenied(r *http.Request, c *call, dec *policy.Decision) *refusal {
	if dec.Approval != nil && c.approval == nil && c.body == nil {
		return p.askApproval(r, c, dec)
	}
	if slices.Contains(dec.Reasons, reasonBudgetExhausted) {
		return c.refuse(refusal{status: http.StatusTooManyRequests, code: reasonBudgetExhausted,
			detail: "a budget that counts this action has no unit left in its window", record: recordDecision,
			retryAfter: p.budgetRetryAfter(c)})
	}
	return refusePolicyDenied
}

const (
	reasonBudgetExhausted = "budget_exhausted"
	codeApprovalRequired  = "approval_required"
)

// askApproval stores a pending approval for the call (or finds the live
// one of the identical call) and refuses with 403 approval_required. A new
// approval is audited (approval_requested), so the feed shows it, and sent
// to the chat webhooks.
func (p *Proxy) askApproval(r *http.Request, c *call, dec *policy.Decision) *refusal {
	cl, ask := c.vp.Claims, dec.Approval
	ap, created, err := p.esc.store.Create(r.Context(), approval.Request{
		Tenant: c.tenant, AgentID: c.agentID, AgentName: cl.Agent.Name, AgentType: cl.Agent.Type, JTI: cl.ID,
		RequestID: c.id, Method: r.Method, Path: c.path, Query: c.query, Body: c.approvalBody(),
		Action: c.route.Action, Resource: c.rec.Resource, Reasons: dec.Reasons, Reason: ask.Reason,
		Approvers: ask.Approvers, ExcludeOwner: ask.ExcludeOwner, TTL: p.cfg.Approvals.TTL,
	})
	switch {
	case errors.Is(err, approval.ErrInvalid):
		// The store will not show this call to a person (a field it
		// refuses): the policy's refusal stands.
		p.log.WarnContext(r.Context(), "approval not stored; denying", "request_id", c.id, "error", err)
		return refusePolicyDenied
	case errors.Is(err, approval.ErrLimit):
		p.esc.approvals.WithLabelValues(approval.CodeLimit).Inc()
		return c.refuse(refusal{status: http.StatusTooManyRequests, code: approval.CodeLimit,
			detail: approvalDetails[approval.CodeLimit], record: recordDecision, retryAfter: "60"})
	case err != nil:
		p.log.ErrorContext(r.Context(), "approval store failed; refusing", "request_id", c.id, "tenant", c.tenant, "error", err)
		return &refusal{status: refuseApprovalUnavailable.status, code: refuseApprovalUnavailable.code,
			detail: refuseApprovalUnavailable.detail, retryAfter: "1", record: recordDecision}
	}
	c.asked = &ap
	url := approval.PageURL(p.cfg.Approvals.DashboardURL, ap.Tenant, ap.ID)
	b, _ := json.Marshal(map[string]string{"approval_id": ap.ID}) // strings only: cannot fail
	addDetails(c.rec, b)
	if created {
		p.esc.approvals.WithLabelValues("requested").Inc()
		p.auditApprovalRequested(c, &ap, url)
		p.esc.alerts.Notify(alert.Alert{Kind: alert.KindApprovalRequested, Severity: "warning", Tenant: ap.Tenant,
			Time: p.clock(), Text: fmt.Sprintf("approval needed: agent %s wants %s %s (%s on %s) in %s: %s",
				approval.Visible(ap.AgentName), ap.Method, approval.Visible(ap.Path), ap.Action,
				approval.Visible(ap.Resource), ap.Tenant, url)})
	} else {
		p.esc.approvals.WithLabelValues("repeated").Inc()
	}
	return c.refuse(refusal{status: http.StatusForbidden, code: codeApprovalRequired,
		detail: "a person must approve this exact call; repeat it with Passport-Approval once approved",
		record: recordDecision})
}

// auditApprovalRequested writes the approval_requested record beside the
// call's decision record, queued like it (the feed shows it).
func (p *Proxy) auditApprovalRequested(c *call, ap *approval.Approval, url string) {
	details, _ := json.Marshal(map[string]any{ // strings, ints and bools: cannot fail
		"approval_id": ap.ID, "approval_url": url, "expires_at": ap.ExpiresAt.Format(time.RFC3339Nano),
		"required_approvers": ap.RequiredApprovers, "exclude_owner": ap.ExcludeOwner, "reason": ap.Reason,
		"query": ap.Query, "body_sha256": ap.BodySHA256, "body_bytes": ap.BodyBytes,
	})
	rec := c.rec
	p.audit.Enqueue(&audit.Record{V: audit.Version, Kind: audit.KindApprovalRequested, Time: p.clock(),
		RequestID: c.id, ClientRequestID: c.clientID, Tenant: c.tenant, AgentID: rec.AgentID, AgentName: rec.AgentName,
		AgentType: rec.AgentType, TrustLevel: rec.TrustLevel, JTI: rec.JTI, TaskID: rec.TaskID,
		Method: rec.Method, Path: rec.Path, Route: rec.Route, Action: rec.Action, Resource: rec.Resource,
		Decision: audit.DecisionDeny, Reasons: rec.Reasons, PolicyRevision: rec.PolicyRevision, Details: details})
}

// approvalProblem adds the pending approval to an approval_required
// answer.
func (p *Proxy) approvalProblem(c *call) (id, url, expires string) {
	if c.asked == nil {
		return "", "", ""
	}
	return c.asked.ID, approval.PageURL(p.cfg.Approvals.DashboardURL, c.asked.Tenant, c.asked.ID),
		c.asked.ExpiresAt.UTC().Format(time.RFC3339)
}

// inputApproval is input.approval, fields in the order of their names.
type inputApproval struct {
	Approvers []string `json:"approvers"`
	GrantedAt string   `json:"granted_at"`
	ID        string   `json:"id"`
}

var kApproval, kApprovers, kGrantedAt = ast.StringTerm("approval"), ast.StringTerm("approvers"), ast.StringTerm("granted_at")

// escalationInput adds input.approval (a presented approval that matches
// the call) and input.budgets (the call's reservations) to the input.
func (p *Proxy) escalationInput(c *call, in *input) {
	obj, ok := in.value.(ast.Object)
	if !ok {
		return
	}
	if ap := c.approval; ap != nil {
		ia := &inputApproval{ID: ap.ID, Approvers: approverNames(*ap)}
		if ap.GrantedAt != nil {
			ia.GrantedAt = ap.GrantedAt.UTC().Format(time.RFC3339Nano)
		}
		names := make([]*ast.Term, len(ia.Approvers))
		for i, n := range ia.Approvers {
			names[i] = ast.StringTerm(n)
		}
		in.doc.Approval = ia
		obj.Insert(kApproval, ast.ObjectTerm(
			ast.Item(kApprovers, ast.ArrayTerm(names...)),
			ast.Item(kGrantedAt, ast.StringTerm(ia.GrantedAt)),
			ast.Item(kID, ast.StringTerm(ia.ID)),
		))
	}
	if len(c.budgets) > 0 {
		var t *ast.Term
		in.doc.Budgets, t = budgetsInput(c.budgets)
		obj.Insert(kBudgets, t)
	}
}

// appendEscalationsJSON appends the input's approval and budgets members
// (after "agent", before "passport": canonical order).
func (d *inputDoc) appendEscalationsJSON(b []byte) ([]byte, error) {
	if d.Approval != nil {
		v, err := json.Marshal(d.Approval)
		if err != nil {
			return nil, fmt.Errorf("%w: approval: %w", errInputJSON, err)
		}
		b = append(append(b, `,"approval":`...), v...)
	}
	if len(d.Budgets) > 0 {
		v, err := json.Marshal(d.Budgets)
		if err != nil {
			return nil, fmt.Errorf("%w: budgets: %w", errInputJSON, err)
		}
		b = append(append(b, `,"budgets":`...), v...)
	}
	return b, nil
}
