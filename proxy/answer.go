package proxy

import (
	"fmt"
	"net"
	"net/http"
	"strconv"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/problem"
)

// refusal is a call the proxy answers itself, as a value: the answer
// (status, code, detail, headers), the metrics, and the audit record it
// gets. Refusals that depend only on their cause are package variables;
// one made from the call's own values lives in the call (call.refuse), so
// refusing costs no allocation.
type refusal struct {
	status int
	code   string // the problem's code (401: from auth)
	detail string // a fixed, safe sentence (policy_denied: from the record)
	// reason is the audit reason and the refusals metric's label: the code
	// unless set.
	reason string
	// decision is the audit decision and the requests metric's label:
	// deny unless set (error when nothing could be judged).
	decision   string
	record     recordKind
	retryAfter string     // Retry-After, for refusals that pass
	closeConn  bool       // Connection: close (draining)
	auth       *AuthError // a refused passport: 401 with an RFC 6750 challenge
	report     bool       // a policy denial, reported to the authority's reputation model
}

// recordKind is the audit record a refusal gets.
type recordKind uint8

const (
	// recordRefusal: a refusal record built from the call (refusalRecord),
	// written or counted in a refusals summary; counted in
	// passport_proxy_refusals_total.
	recordRefusal recordKind = iota
	// recordDecision: the call's decision record, with the policy's
	// reasons and input.
	recordDecision
	// recordOutcome: the decision record could not be written; an outcome
	// record says the call was refused, from the outcome buffer.
	recordOutcome
)

func (f *refusal) auditReason() string {
	if f.reason != "" {
		return f.reason
	}
	return f.code
}

func (f *refusal) auditDecision() string {
	if f.decision != "" {
		return f.decision
	}
	return audit.DecisionDeny
}

// refuse keeps f as the call's refusal and returns it.
func (c *call) refuse(f refusal) *refusal {
	c.refused = f
	return &c.refused
}

// answer is the one way a refusal leaves the proxy: its audit record (or
// its count in a refusals summary), the metrics, and the problem+json.
func (p *Proxy) answer(w http.ResponseWriter, r *http.Request, c *call, f *refusal) {
	c.status = f.status
	if len(c.budgets) > 0 {
		p.releaseBudgets(r, c) // not forwarded: its units go back (budget.go)
	}
	switch f.record {
	case recordRefusal:
		p.m.refusals.WithLabelValues(f.auditReason()).Inc()
		rec := p.refusalRecord(r, c, c.vp, f.auditReason())
		rec.Decision = f.auditDecision()
		p.recordRefusal(r, rec, c.authenticated())
	case recordDecision:
		p.recordRefusal(r, c.rec, true)
		if f.report {
			p.denials.report(c.tenant, c.agentID)
		}
	case recordOutcome:
		// Its decision record may never have landed: this record says
		// what was refused on its own.
		out := p.outcomeRecord(c, c.vp.Claims, c.status)
		out.Decision, out.Reasons = f.auditDecision(), []string{f.auditReason()}
		out.JTI, out.Method, out.Path, out.ClientRequestID = c.vp.Claims.ID, r.Method, c.path, c.clientID
		out.Route, out.Action, out.Resource, out.PolicyRevision = c.route.Name, c.route.Action, c.rec.Resource, c.rec.PolicyRevision
		p.audit.Enqueue(out)
	}

	h := w.Header()
	if f.retryAfter != "" {
		h.Set("Retry-After", f.retryAfter)
	}
	if f.closeConn {
		h.Set("Connection", "close")
	}
	switch {
	case f.auth != nil:
		writeUnauthorized(w, f.auth, c.id, p.metaURL, challengeScheme(r, f.auth))
	case c.mcp != nil && c.mcp.answerable():
		id, url, exp := p.approvalProblem(c)
		c.mcp.answer(w, c, f, id, url, exp) // a JSON-RPC error, which an MCP client shows (mcp.go)
	case f.record == recordDecision:
		detail := f.detail
		if detail == "" {
			detail = "the policy denied " + c.route.Action + " on " + c.rec.Resource
		}
		d := problem.Details{Status: f.status, Code: f.code, Detail: detail, RequestID: c.id,
			Action: c.route.Action, Resource: c.rec.Resource, Reasons: c.rec.Reasons, Revision: c.rec.PolicyRevision}
		d.ApprovalID, d.ApprovalURL, d.ExpiresAt = p.approvalProblem(c)
		problem.Write(w, d)
	default:
		problem.Write(w, problem.Details{Status: f.status, Code: f.code, Detail: f.detail, RequestID: c.id})
	}
	p.count(c, f.auditDecision())
}

// count records the request metric once the answer is known.
func (p *Proxy) count(c *call, decision string) {
	route, action := "", ""
	if c.route != nil {
		route, action = c.route.Name, c.route.Action
	}
	p.m.requests.WithLabelValues(route, action, decision, strconv.Itoa(c.status)).Inc()
}

// outageReasons are refusals that only happen while a dependency is down:
// always summarised, as a flood of them is the outage itself.
var outageReasons = map[string]bool{
	"state_unavailable": true, "audit_unavailable": true, "audit_backlog_full": true,
	"keys_unavailable": true, "draining": true, "budget_unavailable": true, "approval_unavailable": true,
}

// recordRefusal writes a refusal's decision record, or counts it in a
// refusals summary (one record per source, reason and second): always
// when no valid passport came with the call (so that a flood of
// passport-less calls cannot grow Redis one record per call), for outage
// reasons, and for every refusal while the audit store is degraded (so
// that refusals never crowd out the outcome records of forwarded calls).
func (p *Proxy) recordRefusal(r *http.Request, rec *audit.Record, authenticated bool) {
	reason := ""
	if len(rec.Reasons) > 0 {
		reason = rec.Reasons[0]
	}
	degraded := p.backlog != nil && p.backlog.Degraded()
	if authenticated && !degraded && !outageReasons[reason] {
		p.audit.Enqueue(rec)
		return
	}
	p.refusals.Add(rec, clientAddr(r), degraded)
}

// clientAddr is the caller's IP address as the proxy's socket saw it
// (never a forwarding header, which the caller writes).
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// writeUnauthorized answers 401 with an RFC 6750 challenge, or an RFC
// 9449 §7.1 one (scheme DPoP, with the accepted algs). The challenge
// names the protected-resource metadata (RFC 9728 §5.1) so an agent can
// find the authority.
func writeUnauthorized(w http.ResponseWriter, ae *AuthError, reqID, metadataURL, scheme string) {
	ch := scheme + ` realm="passport"`
	if ae.Code != "" {
		ch += fmt.Sprintf(`, error=%q, error_description=%q`, ae.Code, ae.Description)
	}
	if scheme == "DPoP" {
		ch += fmt.Sprintf(`, algs=%q`, dpopAlgs)
	}
	ch += fmt.Sprintf(`, resource_metadata=%q`, metadataURL)
	w.Header().Set("WWW-Authenticate", ch)
	code := ae.Code
	if code == "" {
		code = "passport_required"
	}
	problem.Write(w, problem.Details{Status: http.StatusUnauthorized, Code: code, Detail: ae.Description, RequestID: reqID,
		Reasons: []string{ae.Reason}})
}
