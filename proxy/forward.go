package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/problem"
)

// Identity headers the proxy sets upstream from the verified passport.
const (
	HeaderAgent     = "X-Passport-Agent"
	HeaderTenant    = "X-Passport-Tenant"
	HeaderRequestID = "X-Passport-Request-Id"
	HeaderXRequest  = "X-Request-Id"
)

// forward sends an allowed call to its upstream. It takes the receipt of
// the call's decision record, which only an acknowledged append gives
// (record.go): a call cannot be forwarded unrecorded, whatever the order
// of the statements before it. A receipt that is not this call's (the
// zero Receipt, another call's) refuses the call instead.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request, c *call, receipt audit.Receipt) {
	if !receipt.For(c.id) {
		p.log.ErrorContext(r.Context(), "forward without the receipt of the call's decision record; refusing", "request_id", c.id)
		p.answer(w, r, c, refuseAuditUnavailable)
		return
	}
	rt, cl := c.route, c.vp.Claims
	if ref := p.attach(r, c, receipt); ref != nil {
		p.answer(w, r, c, ref)
		return
	}
	ctx := context.WithValue(r.Context(), ctxKey{}, c)
	var cancel context.CancelFunc
	if rt.Timeout > 0 && rt.Timeout != rt.upstream.timeout {
		// A route's own timeout needs a deadline; the upstream's default is
		// already the transport's ResponseHeaderTimeout, which costs nothing
		// per call.
		ctx, cancel = context.WithTimeout(ctx, rt.Timeout)
	}
	sw := &statusWriter{ResponseWriter: w}
	c.fw.Store(&forwarding{outcome: func(status int) *audit.Record {
		return p.outcomeRecord(c, cl, status)
	}})
	c.upStart = time.Now()
	if fw := rt.ForwardPassport; !fw {
		r.Header.Del("Authorization")
	}
	defer func() {
		// ReverseProxy ends the handler with http.ErrAbortHandler when an
		// answer breaks off mid-body (the agent left, the upstream dropped
		// the connection): the call was forwarded all the same.
		v := recover()
		if cancel != nil {
			cancel()
		}
		p.forwarded(r, c, sw.status, v != nil)
		if v != nil {
			panic(v)
		}
	}()
	rt.upstream.rp.ServeHTTP(sw, r.WithContext(ctx))
}

// forwarded ends a forwarded call: its metrics, its budgets and its one
// outcome record, marked interrupted when its answer broke off (an MCP
// client may close a stream once its JSON-RPC answer is in: not a break).
func (p *Proxy) forwarded(r *http.Request, c *call, status int, interrupted bool) {
	if c.upStatus == 0 {
		c.upStatus = status
	}
	switch {
	case status != 0:
		c.status = status
	case interrupted:
		c.status = http.StatusBadGateway // nothing reached the agent
	default:
		c.status = http.StatusOK
	}
	p.count(c, audit.DecisionAllow)
	p.refundBudgets(r, c) // budget.go: refund_on_5xx
	var edit func(*audit.Record)
	if interrupted && !c.mcp.answered() {
		edit = func(rec *audit.Record) { rec.Reasons = []string{"interrupted"} }
	}
	p.recordOutcome(c, c.status, edit) // unless the drain recorded it already
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
	if c.credName != "" {
		setCredential(h, c.credName, c.credValue)
	}
	if ah := c.route.assertHeader; ah != "" {
		// Only the proxy speaks in this header: an agent's copy goes,
		// on every route.
		setCredential(h, ah, c.assertion)
		if c.assertion == "" {
			delete(h, ah)
		}
	}
	h.Set(HeaderAgent, c.agentID)
	h.Set(HeaderTenant, c.tenant)
	h.Set(HeaderRequestID, c.id)
	h.Set(HeaderXRequest, c.id)
}

// attach produces what the upstream gets beside the call once it is
// allowed and recorded: its credential and its signed assertion. A
// credential that cannot be had refuses the call (502), recorded.
func (p *Proxy) attach(r *http.Request, c *call, receipt audit.Receipt) *refusal {
	rt := c.route
	if cs := rt.credential; cs != nil {
		v, err := cs.value(r.Context())
		if err != nil {
			p.m.credentialFailures.WithLabelValues(rt.upstream.name).Inc()
			p.log.WarnContext(r.Context(), "upstream credential unavailable; not forwarding",
				"request_id", c.id, "upstream", rt.upstream.name, "error", err)
			return refuseCredential
		}
		c.credName, c.credValue = cs.header, v
	}
	if rt.assertion {
		a, err := p.assert.assertionFor(c, r, rt.assertAud, receipt.ID(), p.clock())
		if err != nil {
			p.log.ErrorContext(r.Context(), "assertion not signed; not forwarding", "request_id", c.id, "error", err)
			return refuseCredential
		}
		c.assertion = a
	}
	return nil
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
		if c.mcp != nil {
			return c.mcp.modifyResponse(resp) // a tools/list filtered, a tools/call's result noted (mcp_answer.go)
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
	var bad *refusal
	if c != nil {
		bad = c.body.streamRefusal()
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
