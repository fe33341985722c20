package proxy

import (
	"context"
	"encoding/json"
	"log"
	"log/slog"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/agentpassport/passport/approval"
	"github.com/agentpassport/passport/audit"
)

// The path of one call, file by file (docs/architecture.md):
//
//	serve.go    this driver and the call's state
//	router.go   admit: header limits, upgrades, the canonical path and query, the route
//	verify.go   identify: the passport, the route's tenant, revocation, the agent's state
//	body.go     the body, read whole and checked
//	decide.go   the steps in order, the policy input (input.go) and the decision
//	record.go   the records: the write-ahead decision and its receipt, refusals, outcomes
//	answer.go   a refusal answered: its record or summary, the metrics, the problem+json
//	forward.go  an allowed call, with the receipt of its record, to the upstream

// call is the state of one request as it goes through the chain. Each
// step of deciding fills its part; forward and answer read it.
type call struct {
	id       string // the proxy's own, unique: the key of the call's records
	clientID string // the client's X-Request-Id, sanitised: a label only
	start    time.Time
	path     string
	query    string
	route    *route
	tenant   string
	agentID  string
	status   int
	upStart  time.Time
	upStatus int
	body     *clientBody // a streamed body (route stream_body), else nil

	// What deciding found (admit, identify, readBody, evaluate).
	params      map[string]string
	queryValues url.Values
	decStart    time.Time // when judging the passport began
	vp          *Verified // the verified passport, once verified
	now         time.Time // the time the passport and the policy are judged at
	reputation  float64
	policyBody  any             // the body as the policy sees it, on routes that show it
	bodyJSON    json.RawMessage // its JSON text
	rec         *audit.Record   // the decision record, once the policy has decided
	refused     refusal         // a refusal made from the call's own values (call.refuse)
	proven      bool            // a bound passport's DPoP proof passed (dpop.go)
	mcp         *mcpCall        // on an MCP route: its message (mcp.go)

	// Approvals and budgets (approval.go, budget.go).
	rawBody  []byte             // the body's exact bytes (buffered routes)
	approval *approval.Approval // the presented approval, checked against the call
	asked    *approval.Approval // the approval the policy asked for
	budgets  []budgetHold       // the call's budget reservations

	// What forwarding adds (forward.go): never logged or recorded.
	credName, credValue string // the upstream credential
	assertion           string // the signed assertion

	cancel context.CancelCauseFunc    // the drain cuts the call with it
	fw     atomic.Pointer[forwarding] // set once the call is forwarded
}

type ctxKey struct{}

func callOf(r *http.Request) *call {
	c, _ := r.Context().Value(ctxKey{}).(*call)
	return c
}

// metadataPath is the RFC 9728 protected-resource metadata, which names
// the authority to an agent that has no passport yet.
const metadataPath = "/.well-known/oauth-protected-resource"

// serve is the driver of one call: decide, then either answer the
// refusal, or record the decision and forward with the record's receipt.
// Every refusal leaves through answer; nothing reaches forward without an
// acknowledged record.
func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	c := &call{id: newRequestID(), clientID: clientRequestID(r), start: time.Now()}
	w.Header().Set(HeaderXRequest, c.id)
	callCtx, cut := context.WithCancelCause(r.Context())
	defer cut(nil)
	c.cancel = cut
	r = r.WithContext(callCtx)
	if !p.flight.enter(c) {
		p.answer(w, r, c, refuseDraining)
		return
	}
	defer p.flight.leave(c)

	if r.URL.Path == metadataPath && r.Method == http.MethodGet {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(p.metaJSON)
		return
	}
	if ref := p.decide(w, r, c); ref != nil {
		p.answer(w, r, c, ref)
		return
	}
	receipt, ref := p.recordDecision(r, c)
	if ref != nil {
		p.answer(w, r, c, ref)
		return
	}
	p.forward(w, r, c, receipt)
}

// Shutting down: an answer, not a refused connection, so the agent knows
// to retry elsewhere.
var refuseDraining = &refusal{status: http.StatusServiceUnavailable, code: "draining",
	detail: "the proxy is shutting down; retry", retryAfter: "1", closeConn: true}

func slogErrorLog(l *slog.Logger) *log.Logger {
	return slog.NewLogLogger(l.Handler(), slog.LevelWarn)
}
