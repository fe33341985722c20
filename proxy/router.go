package proxy

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/agentpassport/passport/internal/strictjson"
)

// admit is the first step of deciding a call: what can be judged before
// any passport. Header limits, protocol upgrades, the canonical path and
// query, the route, and the body's declared size; the body is bounded by
// the route's limit from here on.
func (p *Proxy) admit(w http.ResponseWriter, r *http.Request, c *call) *refusal {
	if len(r.Header) > p.cfg.Limits.MaxHeaders || headerSize(r.Header) > p.cfg.Limits.MaxHeaderBytes {
		return refuseHeaders
	}
	if isUpgrade(r) {
		return refuseUpgrade
	}
	path, segs, err := normalisePath(r.URL)
	if err != nil {
		return refuseBadPath
	}
	c.path = path
	if r.URL.RawQuery != "" {
		query, err := url.ParseQuery(r.URL.RawQuery)
		if err != nil || hasMethodField(query) {
			return refuseBadQuery
		}
		c.query = query.Encode() // the upstream gets exactly what the policy saw
		c.queryValues = query
	}
	rt, params := p.router.match(r.Method, segs)
	if rt == nil {
		c.vp = p.attribution(r)
		return refuseNoRoute
	}
	c.route, c.params = rt, params
	if r.ContentLength > p.bodyLimit(rt) {
		return refuseBodyTooLarge
	}
	r.Body = http.MaxBytesReader(w, r.Body, p.bodyLimit(rt))
	return nil
}

// Refusals before any passport is judged.
var (
	refuseHeaders = &refusal{status: http.StatusRequestHeaderFieldsTooLarge, code: "headers_too_large",
		detail: "the request headers are too large"}
	refuseUpgrade = &refusal{status: http.StatusBadRequest, code: "upgrade_refused",
		detail: "protocol upgrades are not allowed through the proxy"}
	refuseBadPath      = &refusal{status: http.StatusBadRequest, code: "bad_path", detail: "the path is not in canonical form"}
	refuseBadQuery     = &refusal{status: http.StatusBadRequest, code: "bad_query", detail: "the query string is malformed"}
	refuseNoRoute      = &refusal{status: http.StatusNotFound, code: "no_route", detail: "no route matches this method and path"}
	refuseBodyTooLarge = &refusal{status: http.StatusRequestEntityTooLarge, code: "body_too_large",
		detail: "the request body is too large"}
)

// attribution is the passport of a call refused before its route was
// known, when a valid one came with it: its refusal record then names the
// passport's tenant.
func (p *Proxy) attribution(r *http.Request) *Verified {
	tok, err := p.verifier.bearer(r.Header)
	if err != nil {
		return nil
	}
	vp, _ := p.verifier.verify(r.Context(), tok)
	if vp != nil && vp.Claims.BoundKey() != "" {
		return nil // a bound passport's proof is not checked here: no credential (dpop.go)
	}
	return vp
}

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

// hasMethodField reports a query that carries a method override.
func hasMethodField(q url.Values) bool {
	for k := range q {
		if isMethodField(k) {
			return true
		}
	}
	return false
}

// Errors of path normalisation; each is answered 400.
var (
	ErrBadPath     = errors.New("path is not in canonical form")
	ErrEncodedPath = errors.New("path has an encoded separator or dot")
	ErrDotSegment  = errors.New("path has a dot segment")
	ErrEmptySeg    = errors.New("path has an empty segment")
)

// template is a parsed "METHOD /a/{b}/c".
type template struct {
	method string
	segs   []tseg
	raw    string
}

type tseg struct {
	lit   string
	param string // non-empty for {param}
}

func parseTemplate(s string) (template, error) {
	method, p, ok := strings.Cut(strings.TrimSpace(s), " ")
	p = strings.TrimSpace(p)
	if !ok || method == "" || !strings.HasPrefix(p, "/") {
		return template{}, fmt.Errorf("%q: want \"METHOD /path/{param}\"", s)
	}
	if method != strings.ToUpper(method) || strings.ContainsAny(method, " /{}") {
		return template{}, fmt.Errorf("%q: method must be upper case", s)
	}
	t := template{method: method, raw: method + " " + p}
	if p == "/" {
		return t, nil
	}
	names := map[string]bool{}
	for _, seg := range strings.Split(p[1:], "/") {
		switch {
		case seg == "" || seg == "." || seg == "..":
			return template{}, fmt.Errorf("%q: empty or dot segment", s)
		case strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "}"):
			name := seg[1 : len(seg)-1]
			if name == "" || strings.ContainsAny(name, "{}") || names[name] {
				return template{}, fmt.Errorf("%q: bad or repeated parameter %q", s, seg)
			}
			names[name] = true
			t.segs = append(t.segs, tseg{param: name})
		case strings.ContainsAny(seg, "{}%"):
			return template{}, fmt.Errorf("%q: segment %q mixes a parameter with text", s, seg)
		default:
			t.segs = append(t.segs, tseg{lit: seg})
		}
	}
	return t, nil
}

// shape is the template with parameter names erased: two routes with the
// same shape would match the same paths.
func (t template) shape() string {
	var b strings.Builder
	b.WriteString(t.method)
	for _, s := range t.segs {
		b.WriteByte('/')
		if s.param != "" {
			b.WriteString("{}")
		} else {
			b.WriteString(s.lit)
		}
	}
	return b.String()
}

func (t template) checkResource(res string) error {
	for rest := res; ; {
		i := strings.IndexByte(rest, '{')
		if i < 0 {
			break
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			return fmt.Errorf("%q: unclosed {", res)
		}
		name := rest[i+1 : i+j]
		if !slices.ContainsFunc(t.segs, func(s tseg) bool { return s.param == name }) {
			return fmt.Errorf("%q: parameter {%s} is not in the path", res, name)
		}
		rest = rest[i+j+1:]
	}
	return nil
}

// route is a compiled Route.
type route struct {
	Route
	tpl          template
	production   bool
	upstream     *upstream
	m            *routeMetrics
	inputTerm    *ast.Term // the input's "route" object, built once
	actionTerm   *ast.Term
	bodyOpts     strictjson.Options // how a policy body is decoded
	credential   *credentialSource  // added upstream after the decision, or nil
	assertion    bool               // sign an assertion for the upstream
	assertAud    string
	assertHeader string
	mcp          *mcpRoute // an MCP route's tools (mcp.go), else nil
}

// router finds the route of a method and normalised path. Routes with a
// literal segment win over a parameter at the same position.
type router struct {
	byMethod map[string][]*route
}

func newRouter(routes []*route) *router {
	rt := &router{byMethod: map[string][]*route{}}
	for _, r := range routes {
		rt.byMethod[r.tpl.method] = append(rt.byMethod[r.tpl.method], r)
	}
	for _, rs := range rt.byMethod {
		slices.SortStableFunc(rs, func(a, b *route) int { return specificity(a.tpl, b.tpl) })
	}
	return rt
}

func specificity(a, b template) int {
	for i := 0; i < len(a.segs) && i < len(b.segs); i++ {
		al, bl := a.segs[i].param == "", b.segs[i].param == ""
		if al != bl {
			if al {
				return -1
			}
			return 1
		}
	}
	return 0
}

// match returns the route and its parameters, or nil.
func (rt *router) match(method string, segs []string) (*route, map[string]string) {
	for _, r := range rt.byMethod[method] {
		if len(r.tpl.segs) != len(segs) {
			continue
		}
		ok := true
		for i, s := range r.tpl.segs {
			if s.param == "" && s.lit != segs[i] {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		params := make(map[string]string, 2)
		for i, s := range r.tpl.segs {
			if s.param != "" {
				params[s.param] = segs[i]
			}
		}
		return r, params
	}
	return nil, nil
}

// resource expands the route's resource template with params.
func (r *route) resource(params map[string]string) string {
	if !strings.Contains(r.Resource, "{") {
		return r.Resource
	}
	var b strings.Builder
	rest := r.Resource
	for {
		i := strings.IndexByte(rest, '{')
		if i < 0 {
			b.WriteString(rest)
			return b.String()
		}
		j := strings.IndexByte(rest[i:], '}')
		b.WriteString(rest[:i])
		b.WriteString(params[rest[i+1:i+j]])
		rest = rest[i+j+1:]
	}
}

// normalisePath returns the one spelling of the request path that both the
// policy and the upstream see, and its segments.
//
// Why refuse rather than clean: a proxy that cleans "/a/../b" to "/b" but
// an upstream that resolves it differently (or the reverse) lets a request
// be judged as one path and executed as another. So anything whose meaning
// could differ between two parsers is refused with 400: percent-encoded
// "/", "\", "." or "%" (double encoding), ";" (path parameters), control
// characters, dot segments and empty segments ("//"). The only rewrite is
// dropping one trailing slash, and the upstream then receives that same
// path, so it cannot disagree with what the policy saw.
func normalisePath(u *url.URL) (string, []string, error) {
	raw := u.RawPath
	if raw == "" {
		raw = u.Path
	}
	if !strings.HasPrefix(raw, "/") {
		return "", nil, ErrBadPath
	}
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case c < 0x20 || c == 0x7f || c == '\\' || c == ';':
			return "", nil, ErrBadPath
		case c == '%':
			if i+2 >= len(raw) || !ishex(raw[i+1]) || !ishex(raw[i+2]) {
				return "", nil, ErrBadPath
			}
			b := unhex(raw[i+1])<<4 | unhex(raw[i+2])
			if b == '/' || b == '\\' || b == '.' || b == '%' || b == ';' || b < 0x20 || b == 0x7f {
				return "", nil, ErrEncodedPath
			}
			i += 2
		}
	}
	p := u.Path
	if p == "/" {
		return "/", nil, nil
	}
	if strings.HasSuffix(p, "/") {
		p = p[:len(p)-1]
	}
	segs := strings.Split(p[1:], "/")
	for _, s := range segs {
		switch s {
		case "":
			return "", nil, ErrEmptySeg
		case ".", "..":
			return "", nil, ErrDotSegment
		}
	}
	return p, segs, nil
}

func ishex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

// isUpgrade reports a request for a protocol switch (WebSocket, h2c): a
// tunnel would carry calls that skip policy and audit.
func isUpgrade(r *http.Request) bool {
	if r.Header.Get("Upgrade") != "" || r.Header.Get("Http2-Settings") != "" {
		return true
	}
	for _, v := range r.Header.Values("Connection") {
		for _, tok := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "upgrade") {
				return true
			}
		}
	}
	return r.Method == http.MethodConnect || r.ProtoMajor == 2 && r.Method == "PRI"
}
