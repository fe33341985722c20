package proxy

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/passport"
)

// The audit records of a call: the decision, written ahead of forwarding
// and acknowledged with a receipt; the refusal, written or summarised by
// answer; the outcome of an allowed call, written once by the call or by
// the drain (drain.go).

// recordDecision writes the call's decision record and waits for the
// store to acknowledge it. Its receipt is the only way to forward: an
// append that fails refuses the call with 503 audit_unavailable.
func (p *Proxy) recordDecision(r *http.Request, c *call) (audit.Receipt, *refusal) {
	rc, err := p.audit.Append(r.Context(), c.rec)
	if err != nil {
		p.m.auditFailures.WithLabelValues("decision").Inc()
		p.log.ErrorContext(r.Context(), "audit append failed; refusing", "request_id", c.id, "tenant", c.tenant, "error", err)
		return audit.Receipt{}, refuseAuditUnavailable
	}
	return rc, nil
}

// A write that timed out may still land later: the stream would then hold
// an allow for a call that never reached the upstream. The refusal's
// outcome record says so; it waits in the outcome buffer until Redis is
// back.
var refuseAuditUnavailable = &refusal{status: http.StatusServiceUnavailable, code: "audit_unavailable",
	detail: "the audit store is unavailable, so nothing is forwarded", retryAfter: "1",
	record: recordOutcome, decision: audit.DecisionError}

// decisionRecord is the write-ahead record of a policy decision. An error
// means the input could not be kept (the record is returned without it).
func (p *Proxy) decisionRecord(c *call, rt *route, vp *Verified, reputation float64, in *input, now time.Time, passportID, passportDigest string) (*audit.Record, error) {
	cl := vp.Claims
	rec := &audit.Record{V: audit.Version, Kind: audit.KindDecision, Time: now, RequestID: c.id,
		ClientRequestID: c.clientID, Tenant: cl.Tenant,
		AgentID: cl.Agent.ID, AgentName: cl.Agent.Name, AgentType: cl.Agent.Type, TrustLevel: string(cl.Agent.TrustLevel),
		Reputation: reputation, JTI: cl.ID, Method: in.doc.Request.Method, Path: c.path, Route: rt.Name,
		Action: rt.Action, Resource: in.doc.Resource, PassportID: passportID, PassportSHA256: passportDigest}
	if cl.Task != nil {
		rec.TaskID = cl.Task.ID
	}
	setChain(rec, cl)
	b, err := in.doc.marshalJSON(rec.PassportID == "")
	if err != nil {
		return rec, err
	}
	rec.Input = b
	return rec, nil
}

// outcomeRecord is the record of how an allowed call ended: status is the
// answer the agent got (the upstream's, or the proxy's own when the call
// was not forwarded). It is minimal: the decision record of the same
// request id holds everything else (the agent id stays for the feed's
// filters, and a delegated call's chain, so that every record of it names
// the chain). It reads only what is fixed before forwarding, so the drain
// may call it while the call runs.
func (p *Proxy) outcomeRecord(c *call, cl *passport.Claims, status int) *audit.Record {
	rec := &audit.Record{V: audit.Version, Kind: audit.KindOutcome, Time: p.clock(), RequestID: c.id,
		Tenant: c.tenant, AgentID: cl.Agent.ID, Decision: audit.DecisionAllow, Status: status,
		LatencyMS: float64(time.Since(c.start).Microseconds()) / 1000}
	setChain(rec, cl)
	if c.mcp != nil {
		rec.Details = c.mcp.details() // with the JSON-RPC result or error
	}
	return rec
}

// refusalRecord is the decision record of a call refused before the policy
// decided, attributed to the passport's tenant when one was verified.
func (p *Proxy) refusalRecord(r *http.Request, c *call, vp *Verified, reason string) *audit.Record {
	rec := &audit.Record{V: audit.Version, Kind: audit.KindDecision, Time: p.clock(), RequestID: c.id,
		ClientRequestID: c.clientID, Tenant: p.cfg.UnattributedTenant, Method: r.Method, Path: c.path,
		Decision: audit.DecisionDeny, Reasons: []string{reason}, PolicyRevision: p.enforced.Revision(), Status: c.status}
	if c.path == "" {
		rec.Path = "" // an unparseable path is not stored; the reason says why
	}
	if c.route != nil {
		rec.Route, rec.Action = c.route.Name, c.route.Action
		if c.route.Tenant != "" {
			rec.Tenant = c.route.Tenant
		}
	}
	if vp != nil {
		cl := vp.Claims
		rec.Tenant, rec.AgentID, rec.AgentName, rec.AgentType = cl.Tenant, cl.Agent.ID, cl.Agent.Name, cl.Agent.Type
		rec.TrustLevel, rec.JTI = string(cl.Agent.TrustLevel), cl.ID
		if cl.Task != nil {
			rec.TaskID = cl.Task.ID
		}
		setChain(rec, cl)
	}
	if c.tenant != "" {
		rec.Tenant = c.tenant
	}
	if c.mcp != nil {
		rec.Details = c.mcp.details() // the method and tool refused
	}
	return rec
}

// addDetails merges the members of the JSON object add into the record's
// details (an approval's and an MCP call's parts share one decision
// record). An add that is not an object replaces nothing.
func addDetails(rec *audit.Record, add json.RawMessage) {
	if len(rec.Details) == 0 {
		rec.Details = add
		return
	}
	var have, more map[string]json.RawMessage
	if json.Unmarshal(rec.Details, &have) != nil || json.Unmarshal(add, &more) != nil {
		return
	}
	for k, v := range more {
		have[k] = v
	}
	if b, err := json.Marshal(have); err == nil {
		rec.Details = b
	}
}
