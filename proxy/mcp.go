package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/strictjson"
	"github.com/agentpassport/passport/passport"
)

// MCP routes (docs/mcp.md): a route with protocol: mcp fronts an MCP
// server's Streamable HTTP endpoint, where every call is POST /mcp with a
// JSON-RPC message in the body. The proxy reads the message with the same
// strict decoder as policy bodies, checks that the mirrored headers
// (Mcp-Method, Mcp-Name, MCP-Protocol-Version) agree with it, and judges
// each tools/call as a call of its tool's action, with the tool's
// arguments as the request body the policy sees. Discovery, lists, pings,
// notifications and the client's answers to the server carry no call:
// they are allowed for any valid passport of the route's tenant, and
// audited. Any other method is refused: the proxy forwards only what it
// can judge.

// ProtocolMCP is Route.Protocol of an MCP route.
const ProtocolMCP = "mcp"

// mcpDiscoverAction is the default action of an MCP route: the action of
// its discovery messages, GET stream and session DELETE.
const mcpDiscoverAction = "mcp.discover"

// The protocol revisions the proxy knows (as the Go SDK names them).
const (
	mcpRevisionStateless = "2026-07-28" // current: stateless, mirrored headers
	mcpRevisionSessions  = "2025-11-25" // previous: initialize and Mcp-Session-Id
)

// The MCP headers.
const (
	hdrMCPMethod  = "Mcp-Method"
	hdrMCPName    = "Mcp-Name"
	hdrMCPVersion = "Mcp-Protocol-Version"
	hdrMCPSession = "Mcp-Session-Id"
	metaVersion   = "io.modelcontextprotocol/protocolVersion"
)

// mcpBatchMax bounds the messages of one batch: each tools/call in it
// costs an evaluation, which a client must not multiply at will.
const mcpBatchMax = 16

// mcpToolNameMax bounds a tool name as the proxy reads and records it.
const mcpToolNameMax = 128

// rpcMembers are the members of a JSON-RPC 2.0 message.
var rpcMembers = map[string]bool{"jsonrpc": true, "id": true, "method": true, "params": true, "result": true, "error": true}

// mcpPassMethods carry no call: allowed for any valid passport of the
// route's tenant (the policy is not asked), and audited. tools/list is
// here too; its answer is filtered to the tools the policy could allow.
var mcpPassMethods = map[string]bool{
	"server/discover": true, "initialize": true, "ping": true, "tools/list": true,
	"subscriptions/listen": true,
}

// fillMCP fills the defaults of an MCP route.
func (r *Route) fillMCP() {
	if r.Protocol != ProtocolMCP {
		return
	}
	if r.Action == "" {
		r.Action = mcpDiscoverAction
	}
	if r.Resource == "" {
		r.Resource = "*"
	}
}

// validateMCP reports the problems of a route's MCP settings.
func (r *Route) validateMCP(where string, t template) []error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(where+": "+format, a...)) }
	switch r.Protocol {
	case "":
		if len(r.Tools) > 0 || r.DefaultTool != nil {
			bad("tools and default_tool need protocol: mcp")
		}
		return errs
	case ProtocolMCP:
	default:
		bad("protocol %q: want %q or nothing", r.Protocol, ProtocolMCP)
		return errs
	}
	if t.method != http.MethodPost {
		bad("an mcp route matches POST (its GET stream and session DELETE follow)")
	}
	if r.PolicyBody || r.StreamBody {
		bad("an mcp route reads its messages itself: no policy_body or stream_body")
	}
	check := func(name string, tool MCPTool) {
		if !passport.ValidAction(tool.Action) {
			bad("tools.%s: action %q: want dotted lower case, e.g. deployment.restart", name, tool.Action)
		}
		if _, err := parseToolResource(tool.Resource); err != nil {
			bad("tools.%s: resource: %v", name, err)
		}
	}
	for name, tool := range r.Tools {
		if name == "" || len(name) > mcpToolNameMax {
			bad("tools: a tool name is 1 to %d bytes", mcpToolNameMax)
		}
		check(name, tool)
	}
	if r.DefaultTool != nil {
		check("default_tool", *r.DefaultTool)
	}
	return errs
}

// resPart is a piece of a tool's resource: a literal, or an argument.
type resPart struct {
	lit string
	arg string // the argument's name
}

// parseToolResource parses a tool's resource: literals and
// {arguments.NAME} (top-level arguments only: what a tool names).
func parseToolResource(res string) ([]resPart, error) {
	if res == "" {
		return nil, errors.New("required (a literal, \"*\" or {arguments.NAME})")
	}
	var parts []resPart
	for rest := res; rest != ""; {
		i := strings.IndexByte(rest, '{')
		if i < 0 {
			if strings.ContainsRune(rest, '}') {
				return nil, fmt.Errorf("%q: unopened }", res)
			}
			parts = append(parts, resPart{lit: rest})
			break
		}
		if i > 0 {
			parts = append(parts, resPart{lit: rest[:i]})
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			return nil, fmt.Errorf("%q: unclosed {", res)
		}
		name, ok := strings.CutPrefix(rest[i+1:i+j], "arguments.")
		if !ok || name == "" || strings.ContainsAny(name, "{}. ") {
			return nil, fmt.Errorf("%q: a placeholder is {arguments.NAME}", res)
		}
		parts = append(parts, resPart{arg: name})
		rest = rest[i+j+1:]
	}
	return parts, nil
}

// mcpRoute is the compiled MCP part of a route.
type mcpRoute struct {
	tools   map[string]*mcpTool
	def     *mcpTool           // unlisted tools, or nil: refused
	msgOpts strictjson.Options // the whole message
	argOpts strictjson.Options // the arguments: the route's body_names (depth: msgOpts)
}

// mcpTool is one tool: the route it is judged as (the MCP route with the
// tool's action) and its resource.
type mcpTool struct {
	rt   *route
	res  []resPart
	seps string // the characters of res's literal parts
	// terms are input.mcp of a call of this tool (not the default tool)
	// for each known revision, built once: OPA never writes to its input.
	terms map[string]*ast.Term
}

// compileMCP compiles the MCP part of route r (nil for other routes).
func (p *Proxy) compileMCP(r *route) *mcpRoute {
	if r.Protocol != ProtocolMCP {
		return nil
	}
	m := &mcpRoute{tools: map[string]*mcpTool{},
		// The envelope has camelCase names (inputResponses, _meta): any
		// spelling, but no two names that fold to the same; depth leaves
		// the arguments (message → params → arguments) the body's depth.
		msgOpts: strictjson.Options{MaxDepth: p.cfg.Limits.MaxBodyDepth + 2, Object: false},
		argOpts: r.bodyOpts}
	compile := func(t MCPTool) *mcpTool {
		tr := *r
		tr.Action, tr.Resource = t.Action, t.Resource
		tr.actionTerm = ast.StringTerm(t.Action)
		tr.mcp = nil
		res, _ := parseToolResource(t.Resource) // validated
		var seps strings.Builder
		for _, p := range res {
			seps.WriteString(p.lit)
		}
		return &mcpTool{rt: &tr, res: res, seps: seps.String()}
	}
	for name, t := range r.Tools {
		tool := compile(t)
		tool.terms = map[string]*ast.Term{}
		for _, v := range []string{"", mcpRevisionStateless, mcpRevisionSessions, "2025-06-18", "2025-03-26"} {
			tool.terms[v] = mcpInputTerm(false, "tools/call", v, name)
		}
		m.tools[name] = tool
	}
	if r.DefaultTool != nil {
		m.def = compile(*r.DefaultTool)
	}
	return m
}

// mcpCompanions are the GET (stream) and DELETE (session end) routes of
// each MCP route, unless the config routes them itself: the same
// endpoint, judged as discovery.
func mcpCompanions(routes []*route) []*route {
	taken := map[string]bool{}
	for _, r := range routes {
		taken[r.tpl.shape()] = true
	}
	var out []*route
	for _, r := range routes {
		if r.mcp == nil {
			continue
		}
		for _, method := range []string{http.MethodGet, http.MethodDelete} {
			c := *r
			c.tpl.method = method
			c.tpl.raw = method + strings.TrimPrefix(r.tpl.raw, r.tpl.method)
			if taken[c.tpl.shape()] {
				continue
			}
			taken[c.tpl.shape()] = true
			c.inputTerm = routeTerm(&c)
			out = append(out, &c)
		}
	}
	return out
}

// mcpCall is what the proxy read of an MCP call.
type mcpCall struct {
	msgs    []mcpMessage
	batch   bool
	version string      // MCP-Protocol-Version, as sent
	cur     *mcpMessage // the message being judged
	req     *http.Request
	p       *Proxy
	c       *call
	route   *route // the MCP route (c.route becomes a tool's while judging)
	outcome atomic.Pointer[mcpOutcome]
}

// mcpMessage is one JSON-RPC message.
type mcpMessage struct {
	method   string          // "" for a response
	id       json.RawMessage // nil for a notification
	name     string          // tools/call: the tool
	tool     *mcpTool        // tools/call: its mapping
	args     any             // tools/call: the arguments, as the policy sees them
	argsJSON []byte
	// approvalBody is what an approval binds (call.approvalBody).
	approvalBody []byte
	resource     string
	listing      bool // judged for a tools/list answer, arguments unknown
	decision     string
	reasons      []string
}

// mcpOutcome is what the upstream answered a tools/call.
type mcpOutcome struct {
	Result    string `json:"result"` // result, tool_error, input_required, error, unknown
	ErrorCode int64  `json:"error_code,omitempty"`
}

// Refusals of MCP messages. They are answered as JSON-RPC errors
// (mcpCall.answer).
var (
	refuseMCPMediaType = &refusal{status: http.StatusUnsupportedMediaType, code: "unsupported_media_type",
		detail: "an MCP message is an application/json body, without a content coding"}
	refuseMCPBody = &refusal{status: http.StatusBadRequest, code: "bad_body",
		detail: "the message is not JSON that every decoder reads the same way (see docs/security.md)"}
	refuseMCPMessage = &refusal{status: http.StatusBadRequest, code: "mcp_bad_message",
		detail: "the body is not a JSON-RPC 2.0 message the proxy can judge"}
	refuseMCPHeaders = &refusal{status: http.StatusBadRequest, code: "mcp_header_mismatch",
		detail: "the Mcp-Method, Mcp-Name or MCP-Protocol-Version header is missing, repeated, misspelled or disagrees with the message"}
	refuseMCPMethod = &refusal{status: http.StatusForbidden, code: "mcp_method_refused",
		detail: "the proxy does not govern this MCP method, so it forwards none of it"}
	refuseMCPTool = &refusal{status: http.StatusForbidden, code: "mcp_tool_unmapped",
		detail: "the tool is not mapped to an action on this route"}
	refuseMCPArguments = &refusal{status: http.StatusBadRequest, code: "mcp_bad_arguments",
		detail: "the tool's arguments are not an object the policy can judge, or lack what its resource names"}
	refuseMCPBatch = &refusal{status: http.StatusBadRequest, code: "mcp_batch_refused",
		detail: "the batch is empty, too long, or mixes in mirrored headers"}
	// A policy's answer to a tools/call is a JSON-RPC answer: 200, so that
	// every MCP client shows the error and its reasons (a 403 may start an
	// OAuth step-up in clients, or lose the body in others).
	refuseMCPDenied = &refusal{status: http.StatusOK, code: "policy_denied",
		record: recordDecision, report: true}
	refuseMCPPolicyError = &refusal{status: http.StatusOK, code: "policy_error",
		detail: "the policy could not decide, so the call is denied", record: recordDecision, decision: audit.DecisionError}
)

// mcpStep reads the MCP message of a call on an MCP route (a step of
// deciding, after readBody).
func (p *Proxy) mcpStep(_ http.ResponseWriter, r *http.Request, c *call) *refusal {
	mr := c.route.mcp
	if mr == nil {
		return nil
	}
	mc := &mcpCall{req: r, p: p, c: c, route: c.route, version: r.Header.Get(hdrMCPVersion)}
	c.mcp = mc
	if r.Method != http.MethodPost {
		// The GET stream and the session DELETE carry no message.
		if r.Header.Get(hdrMCPMethod) != "" || r.Header.Get(hdrMCPName) != "" {
			return refuseMCPHeaders
		}
		return checkMCPHeaderSpelling(r.Header)
	}
	mt, _ := bodyMediaType(r) // readBody refused a malformed one
	if mt != "application/json" || !identityCoding(r) {
		return refuseMCPMediaType
	}
	// readBody read the body whole and framed it with its length: these
	// are its bytes.
	raw := make([]byte, r.ContentLength)
	if _, err := io.ReadFull(r.Body, raw); err != nil {
		return refuseBodyRead
	}
	r.Body = io.NopCloser(bytes.NewReader(raw))
	v, err := strictjson.Decode(raw, mr.msgOpts)
	if err != nil {
		return refuseMCPBody
	}
	var elems []any
	switch v := v.(type) {
	case map[string]any:
		elems = []any{v}
	case []any:
		mc.batch = true
		elems = v
		if len(v) == 0 || len(v) > mcpBatchMax {
			return refuseMCPBatch
		}
	default:
		return refuseMCPMessage
	}
	mc.msgs = make([]mcpMessage, len(elems))
	for i, e := range elems {
		if ref := mr.readMessage(e, &mc.msgs[i], mc.version); ref != nil {
			mc.msgs = mc.msgs[:i+1] // what was read, for the record
			return ref
		}
	}
	if ref := checkMCPHeaderSpelling(r.Header); ref != nil {
		return ref
	}
	return mc.checkHeaders(r.Header)
}

// readMessage reads one JSON-RPC message into m.
func (mr *mcpRoute) readMessage(e any, m *mcpMessage, version string) *refusal {
	obj, ok := e.(map[string]any)
	if !ok || obj["jsonrpc"] != "2.0" {
		return refuseMCPMessage
	}
	for k := range obj {
		if !rpcMembers[k] {
			return refuseMCPMessage // also "Method", "ID": another reader could take them
		}
	}
	if id, ok := obj["id"]; ok {
		switch id := id.(type) {
		case string:
			m.id, _ = json.Marshal(id)
		case json.Number:
			if strings.ContainsAny(string(id), ".eE") {
				return refuseMCPMessage // MCP ids are strings or integers
			}
			m.id = json.RawMessage(id)
		default:
			return refuseMCPMessage
		}
	}
	method, hasMethod := obj["method"]
	_, hasResult := obj["result"]
	_, hasError := obj["error"]
	_, hasParams := obj["params"]
	if !hasMethod {
		// The client's answer to a request of the server (sampling,
		// elicitation, roots): it carries no call of the client.
		if m.id == nil || hasResult == hasError || hasParams {
			return refuseMCPMessage
		}
		return nil
	}
	if hasResult || hasError {
		return refuseMCPMessage
	}
	if m.method, ok = method.(string); !ok || m.method == "" {
		return refuseMCPMessage
	}
	params := map[string]any{}
	if pv, ok := obj["params"]; ok {
		if params, ok = pv.(map[string]any); !ok {
			return refuseMCPMessage
		}
	}
	if !exactNames(params, "name", "arguments", "_meta", "cursor", "inputResponses", "requestState",
		"protocolVersion", "capabilities", "clientInfo", "uri") {
		return refuseMCPMessage
	}
	if meta, ok := params["_meta"]; ok {
		mo, ok := meta.(map[string]any)
		if !ok || !exactNames(mo, metaVersion, "io.modelcontextprotocol/clientInfo",
			"io.modelcontextprotocol/clientCapabilities", "progressToken") {
			return refuseMCPMessage
		}
		// A mirrored field: the body's revision is the header's.
		if mv, ok := mo[metaVersion]; ok && version != "" && mv != version {
			return refuseMCPHeaders
		}
	}
	switch {
	case strings.HasPrefix(m.method, "notifications/"):
		if m.id != nil {
			return refuseMCPMessage
		}
		return nil
	case m.id == nil:
		return refuseMCPMessage // a request without an id is a notification
	case mcpPassMethods[m.method]:
		return nil
	case m.method != "tools/call":
		return refuseMCPMethod
	}
	name, ok := params["name"].(string)
	if !ok || name == "" || len(name) > mcpToolNameMax {
		return refuseMCPMessage
	}
	m.name = name
	if m.tool = mr.tools[name]; m.tool == nil {
		if m.tool = mr.def; m.tool == nil {
			return refuseMCPTool
		}
	}
	args := map[string]any{}
	if av, ok := params["arguments"]; ok {
		if args, ok = av.(map[string]any); !ok {
			return refuseMCPArguments
		}
	}
	// The message was read with any spelling of names (its own are
	// camelCase); the arguments are held to the route's body_names, as a
	// REST body is. Their JSON text is for the record.
	if mr.argOpts.Names == strictjson.NamesFolded && !strictjson.FoldedNames(args) {
		return refuseMCPArguments
	}
	b, err := json.Marshal(args)
	if err != nil {
		return refuseMCPArguments
	}
	m.args, m.argsJSON = args, b
	if m.resource, ok = m.tool.resource(args); !ok {
		return refuseMCPArguments
	}
	// What an approval binds: the call's params without _meta, with
	// members in order. A client's retry changes the id and _meta, never
	// the tool, its arguments or a round's inputResponses and requestState.
	call := make(map[string]any, len(params))
	for k, v := range params {
		if k != "_meta" {
			call[k] = v
		}
	}
	if m.approvalBody, err = json.Marshal(map[string]any{"method": m.method, "params": call}); err != nil {
		return refuseMCPArguments
	}
	return nil
}

// approvalBody is what an approval of the call binds in place of the body
// bytes: for a single tools/call, its method and params without the
// JSON-RPC id and _meta (which a client's retry changes); else the body.
func (c *call) approvalBody() []byte {
	if mc := c.mcp; mc != nil && !mc.batch && len(mc.msgs) == 1 && mc.msgs[0].approvalBody != nil {
		return mc.msgs[0].approvalBody
	}
	return c.rawBody
}

// exactNames reports whether every member name of obj that equals one of
// names once case is folded (as Go's encoding/json and others match
// names) is spelled as that name: {"Arguments": ...} would reach such an
// upstream as the arguments while the proxy read none.
func exactNames(obj map[string]any, names ...string) bool {
	for k := range obj {
		for _, n := range names {
			if k != n && strings.EqualFold(k, n) {
				return false
			}
		}
	}
	return true
}

// resource is the tool's resource for these arguments: false when an
// argument it names is missing, not a string or integer, empty, or holds
// a character that could shift the resource's parts or widen it: "/",
// "{", "}", "*", a control character, or any character of the template's
// own literal parts (":" in "{arguments.ns}:{arguments.name}").
func (t *mcpTool) resource(args map[string]any) (string, bool) {
	if len(t.res) == 1 && t.res[0].arg == "" {
		return t.res[0].lit, true
	}
	var b strings.Builder
	for _, p := range t.res {
		if p.arg == "" {
			b.WriteString(p.lit)
			continue
		}
		var s string
		switch v := args[p.arg].(type) {
		case string:
			s = v
		case json.Number:
			if strings.ContainsAny(string(v), ".eE") {
				return "", false
			}
			s = string(v)
		default:
			return "", false
		}
		if s == "" || strings.ContainsFunc(s, func(r rune) bool {
			return r < 0x20 || r == 0x7f || strings.ContainsRune("/{}*", r) || strings.ContainsRune(t.seps, r)
		}) {
			return "", false
		}
		b.WriteString(s)
	}
	return b.String(), true
}

// listingResource is the tool's resource with the arguments unknown: its
// literal, or "" when it names arguments.
func (t *mcpTool) listingResource() string {
	if len(t.res) == 1 && t.res[0].arg == "" {
		return t.res[0].lit
	}
	return ""
}

// checkHeaders refuses a call whose mirrored headers disagree with its
// message: a gateway or server that routes on the header while the proxy
// judged the body (or the reverse) is a bypass. From revision 2026-07-28
// on the headers are required, as the servers require them.
func (mc *mcpCall) checkHeaders(h http.Header) *refusal {
	methods, names, versions := h.Values(hdrMCPMethod), h.Values(hdrMCPName), h.Values(hdrMCPVersion)
	if len(methods) > 1 || len(names) > 1 || len(versions) > 1 {
		return refuseMCPHeaders
	}
	if mc.batch {
		if len(methods)+len(names) > 0 {
			return refuseMCPBatch // one header cannot mirror several messages
		}
		return nil
	}
	m := &mc.msgs[0]
	stateless := mc.version >= mcpRevisionStateless
	if len(methods) == 1 {
		if m.method == "" || methods[0] != m.method {
			return refuseMCPHeaders
		}
	} else if stateless && m.method != "" {
		return refuseMCPHeaders
	}
	if len(names) == 1 {
		if m.method != "tools/call" || names[0] != m.name {
			return refuseMCPHeaders
		}
	} else if stateless && m.method == "tools/call" {
		return refuseMCPHeaders
	}
	return nil
}

// checkMCPHeaderSpelling refuses the MCP headers in another spelling
// ("Mcp_Method", "mcp.name"): stacks that read "_" or "." as "-" would
// see a header the proxy did not compare.
func checkMCPHeaderSpelling(h http.Header) *refusal {
	for k := range h {
		if len(k) < 3 || !strings.EqualFold(k[:3], "mcp") {
			continue
		}
		n := strings.Map(func(r rune) rune {
			if r == '_' || r == '.' {
				return '-'
			}
			return r
		}, k)
		for _, want := range []string{hdrMCPMethod, hdrMCPName, hdrMCPVersion, hdrMCPSession} {
			if strings.EqualFold(n, want) && k != want {
				return refuseMCPHeaders
			}
		}
	}
	return nil
}

// evaluateMCP judges an MCP call: each tools/call through the policy as
// its tool's action, in order; a batch is refused whole at its first
// denial. A call with no tools/call is allowed without the policy (its
// passport and tenant were verified) and recorded as such.
func (p *Proxy) evaluateMCP(r *http.Request, c *call) *refusal {
	mc, base := c.mcp, c.route
	for i := range mc.msgs {
		m := &mc.msgs[i]
		if m.tool == nil {
			continue
		}
		c.route, mc.cur = m.tool.rt, m
		c.policyBody, c.bodyJSON = m.args, m.argsJSON
		ref := p.evaluate(r, c)
		m.decision, m.reasons = c.rec.Decision, c.rec.Reasons
		addDetails(c.rec, mc.details())
		switch ref {
		case nil:
			continue
		case refusePolicyDenied:
			return refuseMCPDenied
		case refusePolicyError:
			return refuseMCPPolicyError
		}
		return ref
	}
	if mc.cur != nil {
		return nil // every tools/call was allowed; c.rec is the last one's
	}
	c.route = base
	rec := p.refusalRecord(r, c, c.vp, "")
	rec.Time, rec.Reputation, rec.Decision, rec.Reasons = c.now, c.reputation, audit.DecisionAllow, nil
	rec.Status, rec.Resource = 0, base.Resource
	rec.Details = mc.details()
	c.rec = rec
	return nil
}

// details is the MCP part of the call's records, {"mcp": {...}}: the
// method and tool of the message (for a batch, of each message with the
// decision of each judged call), the revision, and in an outcome record
// the JSON-RPC result or error. Written by hand: it is in every record of
// every MCP call.
func (mc *mcpCall) details() json.RawMessage {
	b := make([]byte, 0, 128)
	b = append(b, `{"mcp":{`...)
	sep := false
	field := func(name, v string) {
		if v == "" {
			return
		}
		if sep {
			b = append(b, ',')
		}
		sep = true
		b = append(b, '"')
		b = append(b, name...)
		b = append(b, `":`...)
		b = appendJSONString(b, v)
	}
	switch {
	case len(mc.msgs) == 0:
		field("method", mc.req.Method)
		if mc.req.Method == http.MethodGet {
			b = append(b, `,"stream":true`...)
		}
	case !mc.batch:
		m := &mc.msgs[0]
		method := truncate(m.method, 64)
		if method == "" {
			method = "response"
		}
		field("method", method)
		field("tool", m.name)
	default:
		b = append(b, `"batch":[`...)
		for i, m := range mc.msgs {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '{')
			sep = false
			field("method", truncate(m.method, 64))
			field("tool", m.name)
			field("decision", m.decision)
			if len(m.reasons) > 0 {
				b = append(b, `,"reasons":`...)
				b = appendJSONStrings(b, m.reasons)
			}
			b = append(b, '}')
		}
		b = append(b, ']')
		sep = true
	}
	field("protocol_version", truncate(mc.version, 32))
	if o := mc.outcome.Load(); o != nil {
		b = append(b, `,"outcome":{"result":`...)
		b = appendJSONString(b, o.Result)
		if o.ErrorCode != 0 {
			b = append(b, `,"error_code":`...)
			b = strconv.AppendInt(b, o.ErrorCode, 10)
		}
		b = append(b, '}')
	}
	return append(b, "}}"...)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// inputMCP is input.mcp (policies/README.md): what the policy reads of a
// tools/call besides its action, resource and arguments (request.body).
type inputMCP struct {
	Listing         bool   `json:"listing"`
	Method          string `json:"method"`
	ProtocolVersion string `json:"protocol_version"`
	Tool            string `json:"tool"`
}

var (
	kMCP, kListing, kProtocolVersion, kTool = ast.StringTerm("mcp"), ast.StringTerm("listing"), ast.StringTerm("protocol_version"), ast.StringTerm("tool")
)

// mcpInput sets the MCP parts of the input document of the tools/call
// being judged, and returns input.mcp as a term (nil when the call is not
// a tools/call).
func (c *call) mcpInput(d *inputDoc) *ast.Term {
	if c.mcp == nil || c.mcp.cur == nil {
		return nil
	}
	m := c.mcp.cur
	d.Resource = m.resource
	d.MCP = &inputMCP{Listing: m.listing, Method: m.method, ProtocolVersion: c.mcp.version, Tool: m.name}
	if t, ok := m.tool.terms[c.mcp.version]; ok && !m.listing {
		return t
	}
	return mcpInputTerm(m.listing, m.method, c.mcp.version, m.name)
}

// mcpInputTerm is input.mcp as an OPA term.
func mcpInputTerm(listing bool, method, version, tool string) *ast.Term {
	return ast.ObjectTerm(
		ast.Item(kListing, ast.BooleanTerm(listing)),
		ast.Item(kMethod, ast.StringTerm(method)),
		ast.Item(kProtocolVersion, ast.StringTerm(version)),
		ast.Item(kTool, ast.StringTerm(tool)),
	)
}

// appendJSON appends input.mcp as json.Marshal writes it (input_json.go).
func (m *inputMCP) appendJSON(b []byte) []byte {
	b = append(b, `{"listing":`...)
	b = strconv.AppendBool(b, m.Listing)
	b = append(b, `,"method":`...)
	b = appendJSONString(b, m.Method)
	b = append(b, `,"protocol_version":`...)
	b = appendJSONString(b, m.ProtocolVersion)
	b = append(b, `,"tool":`...)
	b = appendJSONString(b, m.Tool)
	return append(b, '}')
}

// answerable reports whether a refusal of this call is answered as
// JSON-RPC: a POST (the GET stream and the session DELETE get
// problem+json). A message that could not be read is answered with id
// null, as JSON-RPC answers a parse error.
func (mc *mcpCall) answerable() bool { return mc.req.Method == http.MethodPost }

// JSON-RPC error codes of the proxy's refusals: JSON-RPC's and MCP's own
// where they fit (-32020 is MCP's header mismatch), else -31403, outside
// the range JSON-RPC reserves, where it cannot collide with a code an SDK
// gives its own meaning (the Go SDK reads -32003 as "client is closing").
const (
	rpcInvalidRequest = -32600
	rpcInvalidParams  = -32602
	rpcHeaderMismatch = -32020
	rpcRefused        = -31403
)

// rpcError is a JSON-RPC error object; Data carries the refusal.
type rpcError struct {
	Code    int        `json:"code"`
	Message string     `json:"message"`
	Data    rpcRefusal `json:"data"`
}

// rpcRefusal is error.data: the problem's members that a client needs.
type rpcRefusal struct {
	Code      string   `json:"code"`
	RequestID string   `json:"request_id"`
	Reasons   []string `json:"reasons,omitempty"`
	Action    string   `json:"action,omitempty"`
	Resource  string   `json:"resource,omitempty"`
	Revision  string   `json:"policy_revision,omitempty"`
	Tool      string   `json:"tool,omitempty"`
	// An approval the policy asked for (approval_required): the same
	// members as the problem+json answer of a REST call.
	ApprovalID  string `json:"approval_id,omitempty"`
	ApprovalURL string `json:"approval_url,omitempty"`
	ExpiresAt   string `json:"expires_at,omitempty"`
}

type rpcResponse struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Error   *rpcError       `json:"error"`
}

// answer writes refusal f as a JSON-RPC error with the request's id (for
// a batch, one error per request in it), status f.status.
func (mc *mcpCall) answer(w http.ResponseWriter, c *call, f *refusal, approvalID, approvalURL, expiresAt string) {
	e := &rpcError{Code: rpcRefused, Message: f.detail, Data: rpcRefusal{Code: f.code, RequestID: c.id,
		ApprovalID: approvalID, ApprovalURL: approvalURL, ExpiresAt: expiresAt}}
	switch f.code {
	case "bad_body", "mcp_bad_message", "mcp_batch_refused":
		e.Code = rpcInvalidRequest
	case "mcp_header_mismatch":
		e.Code = rpcHeaderMismatch
	case "mcp_bad_arguments":
		e.Code = rpcInvalidParams
	}
	if f.record == recordDecision {
		e.Data.Action, e.Data.Resource = c.rec.Action, c.rec.Resource
		e.Data.Reasons, e.Data.Revision = c.rec.Reasons, c.rec.PolicyRevision
		if e.Message == "" {
			e.Message = "the policy denied " + c.rec.Action + " on " + c.rec.Resource
		}
	}
	// The message refused: the first one denied, else the last one read.
	if len(mc.msgs) > 0 {
		judged := &mc.msgs[len(mc.msgs)-1]
		for i := range mc.msgs {
			if d := mc.msgs[i].decision; d != "" && d != audit.DecisionAllow {
				judged = &mc.msgs[i]
				break
			}
		}
		e.Data.Tool = judged.name
	}
	var out []byte
	switch {
	case len(mc.msgs) == 0:
		out, _ = json.Marshal(rpcResponse{JSONRPC: "2.0", ID: json.RawMessage("null"), Error: e})
	case !mc.batch:
		id := mc.msgs[0].id
		if id == nil {
			id = json.RawMessage("null")
		}
		out, _ = json.Marshal(rpcResponse{JSONRPC: "2.0", ID: id, Error: e})
	default:
		var all []rpcResponse
		for _, m := range mc.msgs {
			if m.id != nil && m.method != "" {
				all = append(all, rpcResponse{JSONRPC: "2.0", ID: m.id, Error: e})
			}
		}
		if len(all) == 0 {
			all = append(all, rpcResponse{JSONRPC: "2.0", ID: json.RawMessage("null"), Error: e})
		}
		out, _ = json.Marshal(all)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(f.status)
	_, _ = w.Write(append(out, '\n'))
}

// withMCPTools is routes and the tools of its MCP routes (in name order):
// their actions are scopes of the protected resource too.
func withMCPTools(routes []*route) []*route {
	out := slices.Clone(routes)
	for _, r := range routes {
		if r.mcp == nil {
			continue
		}
		names := slices.Sorted(maps.Keys(r.mcp.tools))
		for _, n := range names {
			out = append(out, r.mcp.tools[n].rt)
		}
		if r.mcp.def != nil {
			out = append(out, r.mcp.def.rt)
		}
	}
	return out
}

// FleetMCPRoute is the MCP route of the demo's MCP server
// (examples/mcpserver) on the upstream named "mcp": its tools are the
// fleet's actions, so the rules of the REST routes apply to them.
func FleetMCPRoute() Route {
	return Route{Name: "mcp", Match: "POST /mcp", Protocol: ProtocolMCP, Upstream: "mcp", Tools: map[string]MCPTool{
		"list_services":   {Action: "service.list", Resource: "*"},
		"restart_service": {Action: "service.restart", Resource: "{arguments.name}"},
		"scale_service":   {Action: "service.scale", Resource: "{arguments.name}"},
		"deploy_service":  {Action: "deployment.deploy", Resource: "{arguments.name}"},
	}}
}
