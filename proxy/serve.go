package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/problem"
	"github.com/agentpassport/passport/passport"
)

// Identity headers the proxy sets upstream from the verified passport.
const (
	HeaderAgent     = "X-Passport-Agent"
	HeaderTenant    = "X-Passport-Tenant"
	HeaderRequestID = "X-Passport-Request-Id"
	HeaderXRequest  = "X-Request-Id"
)

// call is the state of one request as it goes through the chain.
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

	cancel context.CancelCauseFunc    // the drain cuts the call with it
	fw     atomic.Pointer[forwarding] // set once the call is forwarded
}

type ctxKey struct{}

func callOf(r *http.Request) *call {
	c, _ := r.Context().Value(ctxKey{}).(*call)
	return c
}

// statusWriter remembers the status written.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// headerSize is the size of the request's header fields as received.
func headerSize(h http.Header) int {
	n := 0
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

// serve is the whole chain for one call.
func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	c := &call{id: newRequestID(), clientID: clientRequestID(r), start: time.Now()}
	w.Header().Set(HeaderXRequest, c.id)
	callCtx, cut := context.WithCancelCause(r.Context())
	defer cut(nil)
	c.cancel = cut
	r = r.WithContext(callCtx)
	if !p.flight.enter(c) {
		// Shutting down: an answer, not a refused connection, so the agent
		// knows to retry elsewhere.
		w.Header().Set("Connection", "close")
		w.Header().Set("Retry-After", "1")
		p.refuse(w, r, c, http.StatusServiceUnavailable, "draining", "the proxy is shutting down; retry", nil)
		return
	}
	defer p.flight.leave(c)

	if r.URL.Path == "/.well-known/oauth-protected-resource" && r.Method == http.MethodGet {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(p.metaJSON)
		return
	}
	if len(r.Header) > p.cfg.Limits.MaxHeaders || headerSize(r.Header) > p.cfg.Limits.MaxHeaderBytes {
		p.refuse(w, r, c, http.StatusRequestHeaderFieldsTooLarge, "headers_too_large", "the request headers are too large", nil)
		return
	}
	if isUpgrade(r) {
		p.refuse(w, r, c, http.StatusBadRequest, "upgrade_refused", "protocol upgrades are not allowed through the proxy", nil)
		return
	}
	path, segs, err := normalisePath(r.URL)
	if err != nil {
		p.refuse(w, r, c, http.StatusBadRequest, "bad_path", "the path is not in canonical form", nil)
		return
	}
	c.path = path
	var query url.Values
	if r.URL.RawQuery != "" {
		query, err = url.ParseQuery(r.URL.RawQuery)
		if err != nil || hasMethodField(query) {
			p.refuse(w, r, c, http.StatusBadRequest, "bad_query", "the query string is malformed", nil)
			return
		}
		c.query = query.Encode() // the upstream gets exactly what the policy saw
	}
	rt, params := p.router.match(r.Method, segs)
	if rt == nil {
		p.noRoute(w, r, c)
		return
	}
	c.route = rt
	if r.ContentLength > p.bodyLimit(rt) {
		p.refuse(w, r, c, http.StatusRequestEntityTooLarge, "body_too_large", "the request body is too large", nil)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, p.bodyLimit(rt))

	// Passport.
	decStart := time.Now()
	tok, err := p.verifier.bearer(r.Header)
	var vp *Verified
	if err == nil {
		vp, err = p.verifier.verify(r.Context(), tok)
	}
	if errors.Is(err, ErrKeysUnavailable) {
		w.Header().Set("Retry-After", "2")
		p.refuse(w, r, c, http.StatusServiceUnavailable, "keys_unavailable",
			"the authority's signing keys are not loaded yet, so no passport can be checked", nil)
		return
	}
	if err != nil {
		p.unauthorized(w, r, c, err, nil)
		return
	}
	cl := vp.Claims
	c.tenant, c.agentID = cl.Tenant, cl.Agent.ID
	if rt.Tenant != "" && rt.Tenant != cl.Tenant {
		c.tenant = rt.Tenant
		p.unauthorized(w, r, c, ErrTenantMismatch, vp)
		return
	}
	if err := p.revoked.check(r.Context(), cl.ID, cl.Tenant, cl.Agent.ID); err != nil {
		p.stateError(w, r, c, err, vp)
		return
	}
	st, err := p.reps.get(r.Context(), cl.Tenant, cl.Agent.ID)
	if err != nil {
		p.stateError(w, r, c, err, vp)
		return
	}
	switch {
	case st.blocked:
		p.unauthorized(w, r, c, ErrBlocked, vp)
		return
	case !st.exists && *p.cfg.RequireAgentRecord:
		p.unauthorized(w, r, c, ErrUnknownAgent, vp)
		return
	}
	now := p.clock()
	reputation := float64(cl.Agent.Reputation)
	if st.hasRep {
		reputation = st.reputation.At(now)
	}

	// Body: read whole before anything is forwarded (body.go), and shown
	// to the policy on routes that ask for it. bodyRaw is valid JSON: the
	// audit input copies it unchecked.
	body, bodyRaw, refusal := p.takeBody(r, c, rt)
	if refusal != nil {
		p.refuse(w, r, c, refusal.status, refusal.code, refusal.detail, vp)
		return
	}

	// Policy.
	in := p.buildInput(r, c, rt, params, query, vp, reputation, now, body, bodyRaw)
	dec, derr := p.enforced.Decide(r.Context(), in.value)
	rec := p.decisionRecord(c, rt, vp, reputation, in, now)
	rec.PolicyRevision = dec.Revision
	if p.shadow != nil {
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
	p.m.decisionSeconds.Observe(time.Since(decStart).Seconds())
	if derr != nil {
		p.log.ErrorContext(r.Context(), "policy evaluation failed; denying", "request_id", c.id, "error", derr)
		rec.Decision, rec.Reasons = audit.DecisionError, []string{"policy_error"}
		p.recordRefusal(r, rec, true)
		c.status = http.StatusForbidden
		problem.Write(w, problem.Details{Status: http.StatusForbidden, Code: "policy_error", RequestID: c.id,
			Detail: "the policy could not decide, so the call is denied", Action: rt.Action,
			Resource: in.doc.Resource, Reasons: rec.Reasons, Revision: dec.Revision})
		p.count(c, audit.DecisionError)
		return
	}
	if !dec.Allow {
		rec.Decision, rec.Reasons = audit.DecisionDeny, dec.Reasons
		p.recordRefusal(r, rec, true)
		p.denials.report(cl.Tenant, cl.Agent.ID)
		c.status = http.StatusForbidden
		problem.Write(w, problem.Details{Status: http.StatusForbidden, Code: "policy_denied", RequestID: c.id,
			Detail: "the policy denied " + rt.Action + " on " + in.doc.Resource, Action: rt.Action,
			Resource: in.doc.Resource, Reasons: dec.Reasons, Revision: dec.Revision})
		p.count(c, audit.DecisionDeny)
		return
	}

	// A forwarded call must get its outcome record: while the audit
	// backlog has no room for one, nothing new is forwarded.
	if p.backlog != nil {
		if err := p.backlog.OutcomeRoom(); err != nil {
			p.log.ErrorContext(r.Context(), "audit backlog full; refusing", "request_id", c.id, "error", err)
			w.Header().Set("Retry-After", "1")
			p.refuse(w, r, c, http.StatusServiceUnavailable, "audit_backlog_full",
				"the audit store is behind, so nothing is forwarded", vp)
			return
		}
	}

	// Write-ahead audit: no acknowledged record, no forwarding.
	rec.Decision, rec.Reasons = audit.DecisionAllow, dec.Reasons
	if _, err := p.audit.Append(r.Context(), rec); err != nil {
		p.m.auditFailures.WithLabelValues("decision").Inc()
		p.log.ErrorContext(r.Context(), "audit append failed; refusing", "request_id", c.id, "tenant", c.tenant, "error", err)
		w.Header().Set("Retry-After", "1")
		c.status = http.StatusServiceUnavailable
		problem.Write(w, problem.Details{Status: http.StatusServiceUnavailable, Code: "audit_unavailable", RequestID: c.id,
			Detail: "the audit store is unavailable, so nothing is forwarded"})
		p.count(c, audit.DecisionError)
		// A write that timed out may still land later: the stream would then
		// hold an allow for a call that never reached the upstream. The
		// outcome record says so; it waits in the outcome buffer until
		// Redis is back.
		out := p.outcomeRecord(r, c, rt, cl, rec.Resource, dec.Revision, c.status)
		out.Decision, out.Reasons = audit.DecisionError, []string{"audit_unavailable"}
		p.audit.Enqueue(out)
		return
	}

	// Forward.
	ctx := context.WithValue(r.Context(), ctxKey{}, c)
	var cancel context.CancelFunc
	if rt.Timeout > 0 && rt.Timeout != rt.upstream.timeout {
		// A route's own timeout needs a deadline; the upstream's default is
		// already the transport's ResponseHeaderTimeout, which costs nothing
		// per call.
		ctx, cancel = context.WithTimeout(ctx, rt.Timeout)
	}
	sw := &statusWriter{ResponseWriter: w}
	resource, revision := rec.Resource, dec.Revision
	c.fw.Store(&forwarding{outcome: func(status int) *audit.Record {
		return p.outcomeRecord(r, c, rt, cl, resource, revision, status)
	}})
	c.upStart = time.Now()
	if fw := rt.ForwardPassport; !fw {
		r.Header.Del("Authorization")
	}
	rt.upstream.rp.ServeHTTP(sw, r.WithContext(ctx))
	if cancel != nil {
		cancel()
	}
	if c.upStatus == 0 {
		c.upStatus = sw.status
	}
	c.status = sw.status
	if c.status == 0 {
		c.status = http.StatusOK
	}
	p.count(c, audit.DecisionAllow)
	p.recordOutcome(c, c.status, nil) // unless the drain recorded it already
}

// outcomeRecord is the record of how an allowed call ended: status is the
// answer the agent got (the upstream's, or the proxy's own when the call
// was not forwarded). It reads only what is fixed before forwarding, so
// the drain may call it while the call runs.
func (p *Proxy) outcomeRecord(r *http.Request, c *call, rt *route, cl *passport.Claims, resource, revision string, status int) *audit.Record {
	return &audit.Record{V: audit.Version, Kind: audit.KindOutcome, Time: p.clock(), RequestID: c.id,
		ClientRequestID: c.clientID, Tenant: c.tenant,
		AgentID: cl.Agent.ID, JTI: cl.ID, Method: r.Method, Path: c.path, Route: rt.Name, Action: rt.Action,
		Resource: resource, Decision: audit.DecisionAllow, PolicyRevision: revision, Status: status,
		LatencyMS: float64(time.Since(c.start).Microseconds()) / 1000}
}

func decisionLabel(allow bool) string {
	if allow {
		return audit.DecisionAllow
	}
	return audit.DecisionDeny
}

// count records the request metric once the answer is known.
func (p *Proxy) count(c *call, decision string) {
	route, action := "", ""
	if c.route != nil {
		route, action = c.route.Name, c.route.Action
	}
	p.m.requests.WithLabelValues(route, action, decision, strconv.Itoa(c.status)).Inc()
}

// refuse answers a request refused before the policy (400, 413, 431, 503)
// and audits it in the background.
func (p *Proxy) refuse(w http.ResponseWriter, r *http.Request, c *call, status int, code, detail string, vp *Verified) {
	c.status = status
	p.m.refusals.WithLabelValues(code).Inc()
	rec := p.refusalRecord(r, c, vp, code)
	p.recordRefusal(r, rec, vp != nil)
	problem.Write(w, problem.Details{Status: status, Code: code, Detail: detail, RequestID: c.id})
	p.count(c, audit.DecisionDeny)
}

// outageReasons are refusals that only happen while a dependency is down:
// always summarised, as a flood of them is the outage itself.
var outageReasons = map[string]bool{
	"state_unavailable": true, "audit_unavailable": true, "audit_backlog_full": true,
	"keys_unavailable": true, "draining": true,
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
	}
	if c.tenant != "" {
		rec.Tenant = c.tenant
	}
	return rec
}

// noRoute answers 404 and audits it, attributed to the passport's tenant
// when a valid passport came with it.
func (p *Proxy) noRoute(w http.ResponseWriter, r *http.Request, c *call) {
	var vp *Verified
	if tok, err := p.verifier.bearer(r.Header); err == nil {
		vp, _ = p.verifier.verify(r.Context(), tok)
	}
	p.refuse(w, r, c, http.StatusNotFound, "no_route", "no route matches this method and path", vp)
}

// unauthorized answers 401 for a refused passport.
func (p *Proxy) unauthorized(w http.ResponseWriter, r *http.Request, c *call, err error, vp *Verified) {
	var ae *AuthError
	if !errors.As(err, &ae) {
		ae = ErrMalformed
	}
	c.status = http.StatusUnauthorized
	p.m.refusals.WithLabelValues(ae.Reason).Inc()
	rec := p.refusalRecord(r, c, vp, ae.Reason)
	rec.Decision = audit.DecisionError
	p.recordRefusal(r, rec, vp != nil)
	writeUnauthorized(w, ae, c.id, p.metaURL)
	p.count(c, audit.DecisionError)
}

// stateError maps revocation/agent-state results: revoked and blocked are
// 401, an unreadable state is 503 (refused, never allowed).
func (p *Proxy) stateError(w http.ResponseWriter, r *http.Request, c *call, err error, vp *Verified) {
	var ae *AuthError
	if errors.As(err, &ae) {
		p.unauthorized(w, r, c, ae, vp)
		return
	}
	p.log.ErrorContext(r.Context(), "agent state unavailable; refusing", "request_id", c.id, "error", err)
	w.Header().Set("Retry-After", "1")
	p.refuse(w, r, c, http.StatusServiceUnavailable, "state_unavailable", "revocation state is unavailable, so the call is refused", vp)
}

// decisionRecord is the write-ahead record of a policy decision.
func (p *Proxy) decisionRecord(c *call, rt *route, vp *Verified, reputation float64, in *input, now time.Time) *audit.Record {
	cl := vp.Claims
	rec := &audit.Record{V: audit.Version, Kind: audit.KindDecision, Time: now, RequestID: c.id,
		ClientRequestID: c.clientID, Tenant: cl.Tenant,
		AgentID: cl.Agent.ID, AgentName: cl.Agent.Name, AgentType: cl.Agent.Type, TrustLevel: string(cl.Agent.TrustLevel),
		Reputation: reputation, JTI: cl.ID, Method: in.doc.Request.Method, Path: c.path, Route: rt.Name,
		Action: rt.Action, Resource: in.doc.Resource}
	if cl.Task != nil {
		rec.TaskID = cl.Task.ID
	}
	if b, err := in.doc.marshalJSON(); err == nil {
		rec.Input = b
	}
	return rec
}

// rewrite shapes the outbound request. ReverseProxy has already removed
// hop-by-hop headers (including any named in Connection) and Forwarded /
// X-Forwarded-* in their canonical spelling from pr.Out before calling it;
// other spellings are removed here.
func rewrite(pr *httputil.ProxyRequest, target *url.URL, strip *headerStrip) {
	c := callOf(pr.In)
	pr.SetURL(target)
	// The upstream receives exactly the path and query the policy judged.
	pr.Out.URL.Path = singleJoin(target.Path, c.path)
	pr.Out.URL.RawPath = ""
	pr.Out.URL.RawQuery = c.query
	// Identity, method, target and client address headers go, in every
	// spelling (headers.go); then the proxy sets its own.
	h := pr.Out.Header
	for k := range h {
		if isIdentityHeader(k) || strip.match(k) {
			delete(h, k)
		}
	}
	pr.SetXForwarded()
	h.Set(HeaderAgent, c.agentID)
	h.Set(HeaderTenant, c.tenant)
	h.Set(HeaderRequestID, c.id)
	h.Set(HeaderXRequest, c.id)
}

func singleJoin(base, p string) string {
	if base == "" || base == "/" {
		return p
	}
	if base[len(base)-1] == '/' {
		base = base[:len(base)-1]
	}
	return base + p
}

// isIdentityHeader reports whether a header name, with case folded and "_"
// and "." read as "-", is X-Passport or starts with X-Passport-: some
// upstream stacks (CGI, nginx with underscores_in_headers, Rails) treat
// those spellings as the same header, so a client could smuggle an
// identity past a strip that looked only for the canonical form.
func isIdentityHeader(k string) bool {
	const prefix = "x-passport"
	if len(k) < len(prefix) {
		return false
	}
	for i := 0; i < len(prefix); i++ {
		c := k[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c == '_' || c == '.' {
			c = '-'
		}
		if c != prefix[i] {
			return false
		}
	}
	if len(k) == len(prefix) {
		return true
	}
	c := k[len(prefix)]
	return c == '-' || c == '_' || c == '.'
}

func modifyResponse(resp *http.Response) error {
	// The proxy's own X-Request-Id is already on the answer.
	resp.Header.Del(HeaderXRequest)
	if c := callOf(resp.Request); c != nil {
		c.upStatus = resp.StatusCode
		if c.route != nil {
			c.route.m.upstream.Observe(time.Since(c.upStart).Seconds())
		}
	}
	return nil
}

// upstreamError answers 502, 504 or 413 when forwarding failed.
func (p *Proxy) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	c := callOf(r)
	var mbe *http.MaxBytesError
	status, code, detail := http.StatusBadGateway, "upstream_unavailable", "the upstream could not be reached"
	var ne net.Error
	var bad *bodyRefusal
	if c != nil {
		bad = c.body.refusal()
	}
	switch {
	case bad != nil:
		// A streamed body broke off or grew too large: the client's error.
		status, code, detail = bad.status, bad.code, bad.detail
	case errors.As(err, &mbe):
		status, code, detail = http.StatusRequestEntityTooLarge, "body_too_large", "the request body is too large"
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		status, code, detail = http.StatusGatewayTimeout, "upstream_timeout", "the upstream did not answer in time"
	case aborted(r.Context()):
		status, code, detail = http.StatusServiceUnavailable, "aborted", "the proxy shut down before the upstream answered"
	case errors.Is(err, context.Canceled):
		status = 499 // the client went away; nothing is written
	}
	id := ""
	if c != nil {
		id = c.id
		c.upStatus = status
	}
	p.log.WarnContext(r.Context(), "upstream failed", "request_id", id, "status", status, "error", err)
	if status == 499 {
		w.WriteHeader(status)
		return
	}
	problem.Write(w, problem.Details{Status: status, Code: code, Detail: detail, RequestID: id})
}

type bufferPool struct{ p sync.Pool }

func newBufferPool() *bufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}
}

func (b *bufferPool) Get() []byte  { return *(b.p.Get().(*[]byte)) }
func (b *bufferPool) Put(x []byte) { b.p.Put(&x) }

func slogErrorLog(l *slog.Logger) *log.Logger {
	return slog.NewLogLogger(l.Handler(), slog.LevelWarn)
}

// hasMethodField reports a query that carries a method override.
func hasMethodField(q url.Values) bool {
	for k := range q {
		if isMethodField(k) {
			return true
		}
	}
	return false
}

// input is the policy input document, as Go (for the audit record) and as
// an OPA value (for evaluation).
type input struct {
	doc   inputDoc
	value ast.Value
}

// inputDoc is the policy input document, version 1 (policies/README.md).
// Passport is json.Marshal of the passport's payload (Verified.payloadJSON),
// so valid and compact JSON; appendJSON copies it as it is.
type inputDoc struct {
	Version  int             `json:"version"`
	Time     string          `json:"time"`
	Tenant   string          `json:"tenant"`
	Action   string          `json:"action"`
	Resource string          `json:"resource"`
	Route    inputRoute      `json:"route"`
	Request  inputRequest    `json:"request"`
	Passport json.RawMessage `json:"passport"`
	Agent    inputAgent      `json:"agent"`
}

type inputRoute struct {
	Name       string `json:"name"`
	Template   string `json:"template"`
	Tenant     string `json:"tenant"`
	Production bool   `json:"production"`
}

// inputRequest is the request part of the input. Body is the request body
// as received, set only once decodeBody has accepted it, so a valid JSON
// text (whitespace and all), or nullJSON: appendJSON relies on that and
// does not check it again.
type inputRequest struct {
	ID      string              `json:"id"`
	Method  string              `json:"method"`
	Path    string              `json:"path"`
	Params  map[string]string   `json:"params"`
	Query   map[string][]string `json:"query"`
	Headers map[string]string   `json:"headers"`
	Body    json.RawMessage     `json:"body"`
}

type inputAgent struct {
	ID         string  `json:"id"`
	Name       string  `json:"name"`
	Type       string  `json:"type"`
	TrustLevel string  `json:"trust_level"`
	Reputation float64 `json:"reputation"`
	Blocked    bool    `json:"blocked"`
}

var nullJSON = json.RawMessage("null")

func (p *Proxy) buildInput(r *http.Request, c *call, rt *route, params map[string]string, query url.Values,
	vp *Verified, reputation float64, now time.Time, body any, bodyRaw json.RawMessage) *input {
	cl := vp.Claims
	headers := make(map[string]string, len(p.cfg.PolicyHeaders))
	for _, h := range p.cfg.PolicyHeaders {
		if v := r.Header.Get(h); v != "" {
			headers[h] = v
		}
	}
	if query == nil {
		query = url.Values{}
	}
	in := &input{doc: inputDoc{
		Version:  1,
		Time:     now.UTC().Format(time.RFC3339Nano),
		Tenant:   cl.Tenant,
		Action:   rt.Action,
		Resource: rt.resource(params),
		Route:    inputRoute{Name: rt.Name, Template: rt.tpl.raw, Tenant: rt.Tenant, Production: rt.production},
		Request: inputRequest{ID: c.id, Method: r.Method, Path: c.path, Params: params, Query: query,
			Headers: headers, Body: bodyRaw},
		Passport: vp.payloadJSON(),
		Agent: inputAgent{ID: cl.Agent.ID, Name: cl.Agent.Name, Type: cl.Agent.Type,
			TrustLevel: string(cl.Agent.TrustLevel), Reputation: reputation},
	}}
	if in.doc.Request.Body == nil {
		in.doc.Request.Body = nullJSON
	}
	d := &in.doc
	queryTerm := tEmptyObject
	if len(query) > 0 {
		obj := ast.NewObject()
		for k, vs := range query {
			ts := make([]*ast.Term, len(vs))
			for i, v := range vs {
				ts[i] = ast.StringTerm(v)
			}
			obj.Insert(ast.StringTerm(k), ast.ArrayTerm(ts...))
		}
		queryTerm = ast.NewTerm(obj)
	}
	bodyTerm := tNull
	if body != nil {
		if v, err := ast.InterfaceToValue(body); err == nil {
			bodyTerm = ast.NewTerm(v)
		}
	}
	pt := vp.terms()
	in.value = ast.NewObject(
		ast.Item(kVersion, tOne),
		ast.Item(kTime, ast.StringTerm(d.Time)),
		ast.Item(kTenant, pt.tenant),
		ast.Item(kAction, rt.actionTerm),
		ast.Item(kResource, ast.StringTerm(d.Resource)),
		ast.Item(kRoute, rt.inputTerm),
		ast.Item(kRequest, ast.ObjectTerm(
			ast.Item(kID, ast.StringTerm(d.Request.ID)),
			ast.Item(kMethod, ast.StringTerm(d.Request.Method)),
			ast.Item(kPath, ast.StringTerm(d.Request.Path)),
			ast.Item(kParams, stringsTerm(params)),
			ast.Item(kQuery, queryTerm),
			ast.Item(kHeaders, stringsTerm(headers)),
			ast.Item(kBody, bodyTerm),
		)),
		ast.Item(kPassport, pt.payload),
		ast.Item(kAgent, ast.ObjectTerm(
			ast.Item(kID, pt.agentID),
			ast.Item(kName, pt.agentName),
			ast.Item(kType, pt.agentType),
			ast.Item(kTrustLevel, pt.trustLevel),
			ast.Item(kReputation, ast.FloatNumberTerm(d.Agent.Reputation)),
			ast.Item(kBlocked, tFalse),
		)),
	)
	return in
}

// stringsTerm is m as an OPA object; the shared empty object when m is
// empty.
func stringsTerm(m map[string]string) *ast.Term {
	if len(m) == 0 {
		return tEmptyObject
	}
	obj := ast.NewObject()
	for k, v := range m {
		obj.Insert(ast.StringTerm(k), ast.StringTerm(v))
	}
	return ast.NewTerm(obj)
}

// Terms shared by every input document. OPA treats input as read-only and
// guards its lazily sorted keys with sync.Once, so sharing is safe and
// saves an allocation per key per call.
var (
	kVersion, kTime, kTenant, kAction, kResource = ast.StringTerm("version"), ast.StringTerm("time"), ast.StringTerm("tenant"), ast.StringTerm("action"), ast.StringTerm("resource")
	kRoute, kRequest, kPassport, kAgent          = ast.StringTerm("route"), ast.StringTerm("request"), ast.StringTerm("passport"), ast.StringTerm("agent")
	kID, kMethod, kPath, kParams, kQuery         = ast.StringTerm("id"), ast.StringTerm("method"), ast.StringTerm("path"), ast.StringTerm("params"), ast.StringTerm("query")
	kHeaders, kBody, kName, kType, kTrustLevel   = ast.StringTerm("headers"), ast.StringTerm("body"), ast.StringTerm("name"), ast.StringTerm("type"), ast.StringTerm("trust_level")
	kReputation, kBlocked, kTemplate             = ast.StringTerm("reputation"), ast.StringTerm("blocked"), ast.StringTerm("template")
	kProduction                                  = ast.StringTerm("production")
	tOne, tFalse, tNull, tEmptyObject            = ast.IntNumberTerm(1), ast.BooleanTerm(false), ast.NullTerm(), ast.ObjectTerm()
)

// routeTerm is the constant "route" part of the input for a route.
func routeTerm(r *route) *ast.Term {
	return ast.ObjectTerm(
		ast.Item(kName, ast.StringTerm(r.Name)),
		ast.Item(kTemplate, ast.StringTerm(r.tpl.raw)),
		ast.Item(kTenant, ast.StringTerm(r.Tenant)),
		ast.Item(kProduction, ast.BooleanTerm(r.production)),
	)
}

// passportTerms are the parts of the policy input that come from the
// passport alone, as OPA terms: built once per verified passport and shared
// by every call that shows it (OPA never writes to its input).
type passportTerms struct {
	payload, tenant, agentID, agentName, agentType, trustLevel *ast.Term
}

// payloadJSON and terms are the claims as the policy sees them, computed
// once per verified passport.
func (v *Verified) payloadJSON() json.RawMessage {
	v.once()
	return v.pjson
}

func (v *Verified) terms() *passportTerms {
	v.once()
	return &v.pterms
}

func (v *Verified) once() {
	v.inputMu.Do(func() {
		v.pjson, _ = json.Marshal(v.Payload)
		payload, err := ast.InterfaceToValue(v.Payload)
		if err != nil {
			payload = ast.NewObject()
		}
		cl := v.Claims
		v.pterms = passportTerms{payload: ast.NewTerm(payload), tenant: ast.StringTerm(cl.Tenant),
			agentID: ast.StringTerm(cl.Agent.ID), agentName: ast.StringTerm(cl.Agent.Name),
			agentType: ast.StringTerm(cl.Agent.Type), trustLevel: ast.StringTerm(string(cl.Agent.TrustLevel))}
	})
}
