package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentpassport/passport/approval"
	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/passport"
	"github.com/agentpassport/passport/proxy/internal/testkeys"
)

// testFleet is what the test MCP server's tools change.
type testFleet struct {
	mu       sync.Mutex
	restarts map[string]int
	replicas map[string]int
	posts    int      // POST requests that reached the server
	calls    []string // tools/call bodies that reached it
}

func (f *testFleet) restarted(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.restarts[name]
}

func (f *testFleet) reached() (int, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.posts, slices.Clone(f.calls)
}

type target struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

type scaleIn struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Replicas  int    `json:"replicas"`
}

func text(s string) *mcp.CallToolResult {
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: s}}}
}

// newMCPServer is a real MCP server (the official Go SDK) whose tools
// change a test fleet, behind a recorder of what reached it.
func newMCPServer(t *testing.T, opts *mcp.StreamableHTTPOptions) (*testFleet, string) {
	t.Helper()
	f := &testFleet{restarts: map[string]int{}, replicas: map[string]int{}}
	s := mcp.NewServer(&mcp.Implementation{Name: "test-fleet", Version: "1.0.0"}, nil)
	mcp.AddTool(s, &mcp.Tool{Name: "list_pods", Description: "List the pods of a namespace"},
		func(_ context.Context, _ *mcp.CallToolRequest, in struct {
			Namespace string `json:"namespace"`
		}) (*mcp.CallToolResult, any, error) {
			return text("web-1 api-1"), nil, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "restart_deployment", Description: "Restart a deployment"},
		func(_ context.Context, _ *mcp.CallToolRequest, in target) (*mcp.CallToolResult, any, error) {
			f.mu.Lock()
			f.restarts[in.Name]++
			f.mu.Unlock()
			return text("restarted " + in.Name), nil, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "scale_deployment", Description: "Scale a deployment"},
		func(_ context.Context, _ *mcp.CallToolRequest, in scaleIn) (*mcp.CallToolResult, any, error) {
			f.mu.Lock()
			f.replicas[in.Name] = in.Replicas
			f.mu.Unlock()
			return text(fmt.Sprintf("scaled %s to %d", in.Name, in.Replicas)), nil, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "fail_deployment", Description: "A tool that fails"},
		func(_ context.Context, _ *mcp.CallToolRequest, in target) (*mcp.CallToolResult, any, error) {
			return nil, nil, errors.New("deployment is on fire")
		})
	// A tool that asks for a confirmation first (input_required, current
	// revision), then restarts.
	mcp.AddTool(s, &mcp.Tool{Name: "confirm_restart", Description: "Restart after a confirmation"},
		func(_ context.Context, req *mcp.CallToolRequest, in target) (*mcp.CallToolResult, any, error) {
			if _, ok := req.Params.InputResponses["confirm"]; !ok || req.Params.RequestState != "state-1" {
				return &mcp.CallToolResult{InputRequests: mcp.InputRequestMap{"confirm": &mcp.ElicitParams{Message: "Restart " + in.Name + "?"}},
					RequestState: "state-1"}, nil, nil
			}
			f.mu.Lock()
			f.restarts[in.Name]++
			f.mu.Unlock()
			return text("restarted " + in.Name), nil, nil
		})
	for _, name := range []string{"retired_tool", "delete_namespace"} {
		mcp.AddTool(s, &mcp.Tool{Name: name, Description: "should never run"},
			func(_ context.Context, _ *mcp.CallToolRequest, in target) (*mcp.CallToolResult, any, error) {
				f.mu.Lock()
				f.restarts["NEVER-"+name]++
				f.mu.Unlock()
				return text("ran"), nil, nil
			})
	}
	h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s }, opts)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			b, _ := io.ReadAll(r.Body)
			r.Body = io.NopCloser(strings.NewReader(string(b)))
			f.mu.Lock()
			f.posts++
			if strings.Contains(string(b), "tools/call") {
				f.calls = append(f.calls, string(b))
			}
			f.mu.Unlock()
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return f, srv.URL
}

// mcpConfig fronts the MCP server at upURL with one MCP route.
func mcpConfig(upURL string) func(*Config) {
	return func(c *Config) {
		c.Policy.Dir = "testdata/mcppolicy"
		c.Upstreams = map[string]Upstream{"mcp": {URL: upURL}}
		c.Routes = []Route{{Name: "mcp", Match: "POST /mcp", Protocol: ProtocolMCP, Tools: map[string]MCPTool{
			"list_pods":          {Action: "pod.list", Resource: "*"},
			"restart_deployment": {Action: "deployment.restart", Resource: "{arguments.name}"},
			"scale_deployment":   {Action: "deployment.scale", Resource: "{arguments.namespace}:{arguments.name}"},
			"fail_deployment":    {Action: "deployment.restart", Resource: "{arguments.name}"},
			"retired_tool":       {Action: "deployment.restart", Resource: "*"},
			"confirm_restart":    {Action: "deployment.restart", Resource: "{arguments.name}"},
		}}}
	}
}

// mcpAgent is a registered operator of acme allowed the fleet's actions.
func (h *harness) mcpAgent() string {
	h.agent("acme", "operator-1", 90)
	c := testkeys.Claims(h.now(), "acme", "operator-1", "healer", passport.TrustHigh,
		"pod.list", "deployment.restart", "deployment.scale")
	return h.keys.Sign(h.t, c)
}

type bearer struct{ token string }

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return http.DefaultTransport.RoundTrip(r)
}

func (h *harness) mcpSession(ctx context.Context, token, version string) *mcp.ClientSession {
	h.t.Helper()
	tr := &mcp.StreamableClientTransport{Endpoint: h.url + "/mcp", HTTPClient: &http.Client{Transport: bearer{token}}, MaxRetries: -1}
	cl := mcp.NewClient(&mcp.Implementation{Name: "test-agent", Version: "1.0.0"}, nil)
	cs, err := cl.Connect(ctx, tr, &mcp.ClientSessionOptions{ProtocolVersion: version})
	if err != nil {
		h.t.Fatalf("connect (%s): %v", version, err)
	}
	h.t.Cleanup(func() { _ = cs.Close() })
	return cs
}

// rpcData is the refusal in a JSON-RPC error's data.
func rpcData(t *testing.T, err error) rpcRefusal {
	t.Helper()
	var werr *jsonrpc.Error
	if !errors.As(err, &werr) {
		t.Fatalf("want a JSON-RPC error, got %v", err)
	}
	var d rpcRefusal
	if err := json.Unmarshal(werr.Data, &d); err != nil {
		t.Fatalf("error data %s: %v", werr.Data, err)
	}
	return d
}

// TestMCPThroughProxy: a real MCP client and server (the official Go
// SDK) through the proxy, on both protocol revisions and both answer
// forms: the list is filtered, allowed calls change the fleet, denied ones
// come back as JSON-RPC errors with their reasons and reach nothing, and
// the records carry the tool.
func TestMCPThroughProxy(t *testing.T) {
	for _, version := range []string{mcpRevisionStateless, mcpRevisionSessions} {
		for _, jsonAnswers := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/json=%v", version, jsonAnswers), func(t *testing.T) {
				// The SDK serves the current revision statelessly, the
				// older one with sessions.
				fleet, up := newMCPServer(t, &mcp.StreamableHTTPOptions{JSONResponse: jsonAnswers,
					Stateless: version == mcpRevisionStateless})
				h := newHarness(t, mcpConfig(up))
				tok := h.mcpAgent()
				ctx := t.Context()
				cs := h.mcpSession(ctx, tok, version)
				if got := cs.InitializeResult().ProtocolVersion; got != version {
					t.Fatalf("negotiated %s, want %s", got, version)
				}
				if version == mcpRevisionSessions && cs.ID() == "" {
					t.Fatal("the older revision should hold a session id")
				}

				// The list holds what the agent could be allowed to call:
				// not the retired tool (denied whatever the arguments),
				// not the unmapped one, but scale (its bound is on the
				// arguments, unknown when listing).
				lt, err := cs.ListTools(ctx, nil)
				if err != nil {
					t.Fatal(err)
				}
				var names []string
				for _, tl := range lt.Tools {
					names = append(names, tl.Name)
				}
				slices.Sort(names)
				if want := []string{"confirm_restart", "fail_deployment", "list_pods", "restart_deployment", "scale_deployment"}; !slices.Equal(names, want) {
					t.Fatalf("tools %v, want %v", names, want)
				}

				// Allowed calls, several over one session on the older revision.
				for i := range 3 {
					res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "restart_deployment",
						Arguments: map[string]any{"namespace": "prod", "name": "web"}})
					if err != nil || res.IsError {
						t.Fatalf("call %d: %v %+v", i, err, res)
					}
				}
				if n := fleet.restarted("web"); n != 3 {
					t.Fatalf("web restarted %d times, want 3", n)
				}

				// Denied by the resource, and by the arguments.
				_, err = cs.CallTool(ctx, &mcp.CallToolParams{Name: "restart_deployment",
					Arguments: map[string]any{"namespace": "prod", "name": "payments"}})
				d := rpcData(t, err)
				if d.Code != "policy_denied" || !slices.Contains(d.Reasons, "resource_forbidden") ||
					d.Action != "deployment.restart" || d.Resource != "payments" || d.Tool != "restart_deployment" || d.RequestID == "" {
					t.Fatalf("denial data %+v", d)
				}
				if fleet.restarted("payments") != 0 {
					t.Fatal("a denied call reached the server")
				}
				_, err = cs.CallTool(ctx, &mcp.CallToolParams{Name: "scale_deployment",
					Arguments: map[string]any{"namespace": "prod", "name": "web", "replicas": 50}})
				if d := rpcData(t, err); !slices.Contains(d.Reasons, "replicas_out_of_bounds") || d.Resource != "prod:web" {
					t.Fatalf("scale denial data %+v", d)
				}
				// A denied tool and an unmapped one.
				_, err = cs.CallTool(ctx, &mcp.CallToolParams{Name: "retired_tool", Arguments: map[string]any{}})
				if d := rpcData(t, err); !slices.Contains(d.Reasons, "tool_retired") {
					t.Fatalf("retired tool data %+v", d)
				}
				_, err = cs.CallTool(ctx, &mcp.CallToolParams{Name: "delete_namespace", Arguments: map[string]any{"name": "prod"}})
				if d := rpcData(t, err); d.Code != "mcp_tool_unmapped" || d.Tool != "delete_namespace" {
					t.Fatalf("unmapped tool data %+v", d)
				}
				for _, name := range []string{"NEVER-retired_tool", "NEVER-delete_namespace"} {
					if fleet.restarted(name) != 0 {
						t.Fatalf("%s reached the server", name)
					}
				}
				// A tool that fails: allowed, and its outcome says so.
				res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "fail_deployment",
					Arguments: map[string]any{"namespace": "prod", "name": "web"}})
				if err != nil || !res.IsError {
					t.Fatalf("failing tool: %v %+v", err, res)
				}

				// The records: a decision with the tool before each
				// forwarded call, its outcome with the JSON-RPC result.
				// An outcome is recorded once the proxy's copy of the answer
				// ends, which can be after the client has read it.
				var allowed, denied, toolErrors, results int
				count := func() {
					allowed, denied, toolErrors, results = 0, 0, 0, 0
					for _, rec := range h.sink.all() {
						var det struct {
							MCP struct {
								Tool    string      `json:"tool"`
								Outcome *mcpOutcome `json:"outcome"`
							} `json:"mcp"`
						}
						_ = json.Unmarshal(rec.Details, &det)
						switch {
						case rec.Kind == audit.KindDecision && det.MCP.Tool == "restart_deployment" && rec.Decision == audit.DecisionAllow:
							allowed++
						case rec.Kind == audit.KindDecision && rec.Decision == audit.DecisionDeny && det.MCP.Tool != "":
							denied++
						case rec.Kind == audit.KindOutcome && det.MCP.Outcome != nil && det.MCP.Outcome.Result == "tool_error":
							toolErrors++
						case rec.Kind == audit.KindOutcome && det.MCP.Tool == "restart_deployment" && det.MCP.Outcome != nil && det.MCP.Outcome.Result == "result":
							results++
						}
					}
				}
				waitFor(t, "the tool calls' outcome records", func() bool { count(); return toolErrors >= 1 && results >= 3 })
				allowed, denied, toolErrors, results = 0, 0, 0, 0
				for _, rec := range h.sink.all() {
					var det struct {
						MCP struct {
							Method  string      `json:"method"`
							Tool    string      `json:"tool"`
							Outcome *mcpOutcome `json:"outcome"`
						} `json:"mcp"`
					}
					if rec.Details != nil {
						if err := json.Unmarshal(rec.Details, &det); err != nil {
							t.Fatal(err)
						}
					}
					switch {
					case rec.Kind == audit.KindDecision && det.MCP.Tool == "restart_deployment" && rec.Decision == audit.DecisionAllow:
						allowed++
						if rec.Action != "deployment.restart" || rec.Resource != "web" || !strings.Contains(string(rec.Input), `"tool":"restart_deployment"`) {
							t.Errorf("decision record %+v", rec)
						}
					case rec.Kind == audit.KindDecision && rec.Decision == audit.DecisionDeny && det.MCP.Tool != "":
						denied++
					case rec.Kind == audit.KindOutcome && det.MCP.Outcome != nil && det.MCP.Outcome.Result == "tool_error":
						toolErrors++
					case rec.Kind == audit.KindOutcome && det.MCP.Tool == "restart_deployment" && det.MCP.Outcome != nil && det.MCP.Outcome.Result == "result":
						results++
					}
				}
				if allowed != 3 || denied != 4 || toolErrors != 1 || results != 3 {
					t.Fatalf("records: %d allowed, %d denied, %d tool errors, %d results; want 3, 4, 1, 3", allowed, denied, toolErrors, results)
				}
			})
		}
	}
}

// mcpPost sends one raw MCP message.
func (h *harness) mcpPost(token, body string, hdr map[string]string) resp {
	h.t.Helper()
	all := map[string]string{"Accept": "application/json, text/event-stream"}
	for k, v := range hdr {
		all[k] = v
	}
	return h.do("POST", "/mcp", token, all, body)
}

// cur is the current revision's headers of a message.
func cur(method, name string) map[string]string {
	h := map[string]string{"Mcp-Protocol-Version": mcpRevisionStateless, "Mcp-Method": method}
	if name != "" {
		h["Mcp-Name"] = name
	}
	return h
}

const restartWeb = `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"restart_deployment","arguments":{"namespace":"prod","name":"web"}}}`

// TestMCPHostile: raw JSON-RPC requests built to make the proxy judge one
// thing while the server runs another. Each is refused, answered as a
// JSON-RPC error with the request's id where there is one, and reaches
// nothing.
func TestMCPHostile(t *testing.T) {
	fleet, up := newMCPServer(t, &mcp.StreamableHTTPOptions{Stateless: true, JSONResponse: true})
	h := newHarness(t, mcpConfig(up))
	tok := h.mcpAgent()
	deep := strings.Repeat(`{"a":`, 40) + "1" + strings.Repeat("}", 40)
	for _, tc := range []struct {
		name   string
		body   string
		hdr    map[string]string
		status int
		code   string
		id     string // the id the error answers ("" when not JSON-RPC)
	}{
		{"Mcp-Method disagrees with the body", restartWeb, cur("tools/list", "restart_deployment"), 400, "mcp_header_mismatch", "7"},
		{"Mcp-Name disagrees with the body", restartWeb, cur("tools/call", "list_pods"), 400, "mcp_header_mismatch", "7"},
		{"Mcp-Method missing on the current revision", restartWeb, map[string]string{"Mcp-Protocol-Version": mcpRevisionStateless, "Mcp-Name": "restart_deployment"}, 400, "mcp_header_mismatch", "7"},
		{"Mcp-Name missing on the current revision", restartWeb, cur("tools/call", ""), 400, "mcp_header_mismatch", "7"},
		{"Mcp-Name on a method without a name", `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`, cur("tools/list", "restart_deployment"), 400, "mcp_header_mismatch", "1"},
		{"Mcp_Method spelled with an underscore", restartWeb, map[string]string{"Mcp-Protocol-Version": mcpRevisionStateless, "Mcp-Method": "tools/call", "Mcp-Name": "restart_deployment", "Mcp_Method": "tools/list"}, 400, "mcp_header_mismatch", "7"},
		{"mcp.name spelled with a dot", restartWeb, map[string]string{"Mcp-Protocol-Version": mcpRevisionStateless, "Mcp-Method": "tools/call", "Mcp-Name": "restart_deployment", "mcp.name": "list_pods"}, 400, "mcp_header_mismatch", "7"},
		{"body revision disagrees with the header", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2025-11-25"},"name":"restart_deployment","arguments":{"name":"web"}}}`, cur("tools/call", "restart_deployment"), 400, "mcp_header_mismatch", "7"},
		{"case-colliding argument names", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"restart_deployment","arguments":{"name":"web","Name":"payments"}}}`, cur("tools/call", "restart_deployment"), 400, "bad_body", "null"},
		{"argument folding to another (Kelvin sign)", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"restart_deployment","arguments":{"name":"web","\u212aey":1,"key":2}}}`, cur("tools/call", "restart_deployment"), 400, "bad_body", "null"},
		{"argument name not in folded form", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"restart_deployment","arguments":{"Name":"payments"}}}`, cur("tools/call", "restart_deployment"), 400, "mcp_bad_arguments", "7"},
		{"Arguments spelled in another case", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"restart_deployment","Arguments":{"name":"payments"}}}`, cur("tools/call", "restart_deployment"), 400, "mcp_bad_message", "7"},
		{"Name spelled in another case", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"Name":"restart_deployment","arguments":{"name":"web"}}}`, nil, 400, "mcp_bad_message", "7"},
		{"duplicate method member", `{"jsonrpc":"2.0","id":7,"method":"tools/list","method":"tools/call","params":{"name":"restart_deployment","arguments":{"name":"payments"}}}`, nil, 400, "bad_body", "null"},
		{"duplicate tool name", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"list_pods","name":"restart_deployment","arguments":{"name":"payments"}}}`, nil, 400, "bad_body", "null"},
		{"method in another spelling", `{"jsonrpc":"2.0","id":7,"method":"Tools/Call","params":{"name":"restart_deployment","arguments":{"name":"payments"}}}`, nil, 403, "mcp_method_refused", "7"},
		{"method the proxy does not govern", `{"jsonrpc":"2.0","id":7,"method":"resources/read","params":{"uri":"file:///etc/passwd"}}`, nil, 403, "mcp_method_refused", "7"},
		{"unmapped tool", `{"jsonrpc":"2.0","id":"a<b","method":"tools/call","params":{"name":"delete_namespace","arguments":{"name":"prod"}}}`, nil, 403, "mcp_tool_unmapped", `"a\u003cb"`},
		{"arguments that are not an object", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"restart_deployment","arguments":["payments"]}}`, nil, 400, "mcp_bad_arguments", "7"},
		{"resource argument missing", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"restart_deployment","arguments":{}}}`, nil, 400, "mcp_bad_arguments", "7"},
		{"resource argument with a slash", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"restart_deployment","arguments":{"name":"web/../payments"}}}`, nil, 400, "mcp_bad_arguments", "7"},
		{"resource argument holding the template's separator", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"scale_deployment","arguments":{"namespace":"prod:payments","name":"x","replicas":1}}}`, nil, 400, "mcp_bad_arguments", "7"},
		{"resource argument that is a wildcard", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"restart_deployment","arguments":{"name":"*"}}}`, nil, 400, "mcp_bad_arguments", "7"},
		{"resource argument not a string", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"restart_deployment","arguments":{"name":{"x":"payments"}}}}`, nil, 400, "mcp_bad_arguments", "7"},
		{"deep arguments", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"restart_deployment","arguments":{"name":"web","x":` + deep + `}}}`, nil, 400, "bad_body", "null"},
		{"oversized arguments", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"restart_deployment","arguments":{"name":"web","x":"` + strings.Repeat("a", 70<<10) + `"}}}`, nil, 413, "body_too_large", ""},
		{"number past float precision", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"scale_deployment","arguments":{"namespace":"prod","name":"web","replicas":10.0000000000000000001}}}`, nil, 400, "bad_body", "null"},
		{"invalid UTF-8", "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/call\",\"params\":{\"name\":\"restart_deployment\",\"arguments\":{\"name\":\"web\xff\"}}}", nil, 400, "bad_body", "null"},
		{"fractional id", `{"jsonrpc":"2.0","id":7.5,"method":"tools/call","params":{"name":"restart_deployment","arguments":{"name":"web"}}}`, nil, 400, "mcp_bad_message", "null"},
		{"not JSON-RPC 2.0", `{"jsonrpc":"1.0","id":7,"method":"tools/call","params":{"name":"restart_deployment","arguments":{"name":"web"}}}`, nil, 400, "mcp_bad_message", "null"},
		{"unknown top-level member", `{"jsonrpc":"2.0","id":7,"method":"ping","extra":{"method":"tools/call"}}`, nil, 400, "mcp_bad_message", "null"},
		{"a call without an id", `{"jsonrpc":"2.0","method":"tools/call","params":{"name":"restart_deployment","arguments":{"name":"web"}}}`, nil, 400, "mcp_bad_message", "null"},
		{"a notification with an id", `{"jsonrpc":"2.0","id":3,"method":"notifications/initialized"}`, nil, 400, "mcp_bad_message", "3"},
		{"batch sneaking a denied call behind a list", `[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"restart_deployment","arguments":{"name":"payments"}}}]`, nil, 200, "policy_denied", "[1,2]"},
		{"batch of an allowed and a denied call", `[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"restart_deployment","arguments":{"name":"web"}}},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"retired_tool","arguments":{}}}]`, nil, 200, "policy_denied", "[1,2]"},
		{"batch with an unmapped tool", `[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"restart_deployment","arguments":{"name":"web"}}},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_namespace","arguments":{}}}]`, nil, 403, "mcp_tool_unmapped", "[1,2]"},
		{"batch with a mirrored header", `[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"restart_deployment","arguments":{"name":"web"}}}]`, map[string]string{"Mcp-Method": "tools/call"}, 400, "mcp_batch_refused", "[1]"},
		{"empty batch", `[]`, nil, 400, "mcp_batch_refused", "null"},
		{"batch too long", "[" + strings.TrimSuffix(strings.Repeat(`{"jsonrpc":"2.0","method":"notifications/progress"},`, 17), ",") + "]", nil, 400, "mcp_batch_refused", "null"},
		{"text/plain body", restartWeb, map[string]string{"Content-Type": "text/plain"}, 415, "unsupported_media_type", "null"},
		{"compressed body", restartWeb, map[string]string{"Content-Encoding": "gzip"}, 415, "unsupported_media_type", "null"},
		{"a top-level scalar", `"tools/call"`, nil, 400, "mcp_bad_message", "null"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			postsBefore, _ := fleet.reached()
			res := h.mcpPost(tok, tc.body, tc.hdr)
			if res.status != tc.status {
				t.Fatalf("status %d, want %d: %s", res.status, tc.status, res.body)
			}
			if tc.id == "" {
				if !strings.Contains(res.body, `"code":"`+tc.code+`"`) {
					t.Fatalf("answer %s, want code %s", res.body, tc.code)
				}
			} else {
				checkRPCError(t, res, tc.code, tc.id)
			}
			if posts, _ := fleet.reached(); posts != postsBefore {
				t.Fatal("the refused message reached the server")
			}
		})
	}
	for _, name := range []string{"payments", "NEVER-retired_tool", "NEVER-delete_namespace"} {
		if fleet.restarted(name) != 0 {
			t.Fatalf("%s reached the fleet", name)
		}
	}
}

// checkRPCError checks a JSON-RPC error answer (or a batch of them): its
// ids and its refusal code.
func checkRPCError(t *testing.T, res resp, code, ids string) {
	t.Helper()
	if ct := res.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("content type %q: %s", ct, res.body)
	}
	var msgs []rpcResponse
	if strings.HasPrefix(ids, "[") {
		if err := json.Unmarshal([]byte(res.body), &msgs); err != nil {
			t.Fatalf("%v: %s", err, res.body)
		}
	} else {
		var one rpcResponse
		if err := json.Unmarshal([]byte(res.body), &one); err != nil {
			t.Fatalf("%v: %s", err, res.body)
		}
		msgs = []rpcResponse{one}
	}
	var got []string
	for _, m := range msgs {
		got = append(got, string(m.ID))
		if m.JSONRPC != "2.0" || m.Error == nil || m.Error.Data.Code != code || m.Error.Data.RequestID != res.header.Get("X-Request-Id") {
			t.Fatalf("answer %s, want code %s", res.body, code)
		}
	}
	want := ids
	if strings.HasPrefix(ids, "[") {
		want = strings.Trim(ids, "[]")
	}
	if g := strings.Join(got, ","); g != want {
		t.Fatalf("ids %s, want %s: %s", g, want, res.body)
	}
}

// TestMCPSessionsAndStreams: the older revision's session through raw
// requests: initialize answers with the server's Mcp-Session-Id, later
// requests carry it, the GET stream and the session DELETE need a passport
// and are recorded, a batch of allowed calls is judged call by call and
// recorded with each decision, and a filtered list is private.
func TestMCPSessionsAndStreams(t *testing.T) {
	fleet, up := newMCPServer(t, &mcp.StreamableHTTPOptions{JSONResponse: true})
	h := newHarness(t, mcpConfig(up))
	tok := h.mcpAgent()

	res := h.mcpPost(tok, `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`, nil)
	sid := res.header.Get("Mcp-Session-Id")
	if res.status != 200 || sid == "" {
		t.Fatalf("initialize: %d %v %s", res.status, res.header, res.body)
	}
	old := map[string]string{"Mcp-Session-Id": sid, "Mcp-Protocol-Version": mcpRevisionSessions}
	if res = h.mcpPost(tok, `{"jsonrpc":"2.0","method":"notifications/initialized"}`, old); res.status != 202 {
		t.Fatalf("initialized: %d %s", res.status, res.body)
	}
	res = h.mcpPost(tok, `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`, old)
	if res.status != 200 || res.header.Get("Cache-Control") != "private, no-store" || !strings.Contains(res.body, `"cacheScope":"private"`) ||
		strings.Contains(res.body, "retired_tool") || strings.Contains(res.body, "delete_namespace") || !strings.Contains(res.body, "restart_deployment") {
		t.Fatalf("tools/list: %d %v %s", res.status, res.header, res.body)
	}

	// A batch of two allowed calls (older clients batch): judged one by
	// one, forwarded as sent. The server may refuse batches itself.
	res = h.mcpPost(tok, `[{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"restart_deployment","arguments":{"name":"web"}}},`+
		`{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"restart_deployment","arguments":{"name":"api"}}}]`, old)
	_, calls := fleet.reached()
	if len(calls) != 1 || !strings.Contains(calls[0], `"api"`) {
		t.Fatalf("the batch did not reach the server as sent: %d %s, calls %q", res.status, res.body, calls)
	}
	var batchRec *audit.Record
	for _, rec := range h.sink.byRequest(res.header.Get("X-Request-Id")) {
		if rec.Kind == audit.KindDecision {
			batchRec = rec
		}
	}
	if batchRec == nil || batchRec.Decision != audit.DecisionAllow ||
		!strings.Contains(string(batchRec.Details), `"batch":[{"method":"tools/call","tool":"restart_deployment","decision":"allow"},{"method":"tools/call","tool":"restart_deployment","decision":"allow"}]`) {
		t.Fatalf("batch record %+v", batchRec)
	}

	// The GET stream: a passport first.
	req, _ := http.NewRequest("GET", h.url+"/mcp", nil)
	req.Header.Set("Accept", "text/event-stream")
	for k, v := range old {
		req.Header.Set(k, v)
	}
	anon, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	anon.Body.Close()
	if anon.StatusCode != 401 || !strings.Contains(anon.Header.Get("WWW-Authenticate"), "resource_metadata=") {
		t.Fatalf("GET stream without a passport: %d %v", anon.StatusCode, anon.Header)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	stream, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if stream.StatusCode != 200 || stream.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("GET stream: %d %v", stream.StatusCode, stream.Header)
	}
	streamID := stream.Header.Get("X-Request-Id")
	stream.Body.Close()
	recs := h.sink.byRequest(streamID)
	if len(recs) == 0 || recs[0].Decision != audit.DecisionAllow || recs[0].Action != mcpDiscoverAction || !strings.Contains(string(recs[0].Details), `"stream":true`) {
		t.Fatalf("stream records %+v", recs)
	}

	// A session DELETE, with a mirrored header it cannot have: refused.
	res = h.do("DELETE", "/mcp", tok, map[string]string{"Mcp-Session-Id": sid, "Mcp-Method": "tools/call"}, "")
	if res.status != 400 || !strings.Contains(res.body, "mcp_header_mismatch") {
		t.Fatalf("DELETE with Mcp-Method: %d %s", res.status, res.body)
	}
	if res = h.do("DELETE", "/mcp", tok, old, ""); res.status != 204 {
		t.Fatalf("DELETE: %d %s", res.status, res.body)
	}
	if res = h.mcpPost(tok, `{"jsonrpc":"2.0","id":9,"method":"ping"}`, old); res.status != 404 {
		t.Fatalf("after DELETE the session should be gone: %d %s", res.status, res.body)
	}
}

// TestMCPMetadataNamesToolActions: an MCP client that gets a 401 finds
// the authority in the RFC 9728 metadata, whose scopes include the tools'
// actions.
func TestMCPMetadataNamesToolActions(t *testing.T) {
	_, up := newMCPServer(t, &mcp.StreamableHTTPOptions{Stateless: true})
	h := newHarness(t, mcpConfig(up))
	res := h.mcpPost("", restartWeb, cur("tools/call", "restart_deployment"))
	if res.status != 401 || !strings.Contains(res.header.Get("WWW-Authenticate"), `resource_metadata="`) {
		t.Fatalf("no passport: %d %v", res.status, res.header)
	}
	meta := h.do("GET", metadataPath, "", nil, "")
	for _, want := range []string{`"authorization_servers":["` + testkeys.Issuer + `"]`, `"deployment.restart"`, `"deployment.scale"`, `"pod.list"`, `"mcp.discover"`} {
		if !strings.Contains(meta.body, want) {
			t.Errorf("metadata lacks %s: %s", want, meta.body)
		}
	}
}

// TestMCPConfig: an MCP route in YAML (the shape of ARCHITECTURE.md) loads,
// and each mistake in one is named.
func TestMCPConfig(t *testing.T) {
	dir := t.TempDir()
	good := dir + "/proxy.yaml"
	yaml := `upstreams:
  mcp: {url: "http://127.0.0.1:9100"}
routes:
  - name: mcp
    match: "POST /mcp"
    protocol: mcp
    upstream: mcp
    tools:
      list_services: {action: service.list, resource: "*"}
      restart_service: {action: service.restart, resource: "{arguments.name}"}
`
	if err := writeFile(good, yaml); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(good)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if r := c.Routes[0]; r.Action != mcpDiscoverAction || r.Resource != "*" || r.Tools["restart_service"].Resource != "{arguments.name}" {
		t.Fatalf("route %+v", r)
	}
	for _, tc := range []struct {
		name string
		mod  func(*Route)
		want string
	}{
		{"unknown protocol", func(r *Route) { r.Protocol = "grpc" }, `protocol "grpc"`},
		{"tools without protocol", func(r *Route) { r.Protocol = "" }, "need protocol: mcp"},
		{"GET match", func(r *Route) { r.Match = "GET /mcp" }, "matches POST"},
		{"policy_body", func(r *Route) { r.PolicyBody = true }, "no policy_body"},
		{"bad action", func(r *Route) { r.Tools["x"] = MCPTool{Action: "Restart", Resource: "*"} }, "tools.x: action"},
		{"resource not an argument", func(r *Route) { r.Tools["x"] = MCPTool{Action: "a.b", Resource: "{name}"} }, "{arguments.NAME}"},
		{"nested argument", func(r *Route) { r.Tools["x"] = MCPTool{Action: "a.b", Resource: "{arguments.a.b}"} }, "{arguments.NAME}"},
		{"unclosed", func(r *Route) { r.Tools["x"] = MCPTool{Action: "a.b", Resource: "{arguments.a"} }, "unclosed"},
		{"empty resource", func(r *Route) { r.Tools["x"] = MCPTool{Action: "a.b"} }, "required"},
		{"bad default", func(r *Route) { r.DefaultTool = &MCPTool{Action: "x", Resource: "*"} }, "default_tool"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := LoadConfig(good)
			tc.mod(&c.Routes[0])
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one with %q", err, tc.want)
			}
		})
	}
}

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o600) }

// TestMCPInputRequired: a tool that answers input_required and the
// client's retry are each a tools/call, each judged and recorded: a retry
// that changes the arguments is judged on them.
func TestMCPInputRequired(t *testing.T) {
	fleet, up := newMCPServer(t, &mcp.StreamableHTTPOptions{Stateless: true})
	h := newHarness(t, mcpConfig(up))
	tok := h.mcpAgent()
	ctx := t.Context()
	tr := &mcp.StreamableClientTransport{Endpoint: h.url + "/mcp", HTTPClient: &http.Client{Transport: bearer{tok}}, MaxRetries: -1}
	cl := mcp.NewClient(&mcp.Implementation{Name: "test-agent", Version: "1.0.0"},
		&mcp.ClientOptions{MultiRoundTrip: &mcp.MultiRoundTripOptions{Disabled: true}})
	cs, err := cl.Connect(ctx, tr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "confirm_restart", Arguments: map[string]any{"namespace": "prod", "name": "web"}})
	if err != nil || !res.NeedsInput() || fleet.restarted("web") != 0 {
		t.Fatalf("first round: %v %+v %s", err, res, res.Content[0].(*mcp.TextContent).Text)
	}
	accept := mcp.InputResponseMap{"confirm": &mcp.ElicitResult{Action: "accept"}}
	// The retry may not carry other arguments past the policy.
	_, err = cs.CallTool(ctx, &mcp.CallToolParams{Name: "confirm_restart", Arguments: map[string]any{"namespace": "prod", "name": "payments"},
		InputResponses: accept, RequestState: res.RequestState})
	if d := rpcData(t, err); !slices.Contains(d.Reasons, "resource_forbidden") {
		t.Fatalf("changed retry: %+v", d)
	}
	res2, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "confirm_restart", Arguments: map[string]any{"namespace": "prod", "name": "web"},
		InputResponses: accept, RequestState: res.RequestState})
	if err != nil || res2.NeedsInput() || res2.IsError || fleet.restarted("web") != 1 || fleet.restarted("payments") != 0 {
		t.Fatalf("retry: %v %+v", err, res2)
	}
	waitFor(t, "outcomes", func() bool {
		var inputRequired, result int
		for _, rec := range h.sink.all() {
			d := string(rec.Details)
			if rec.Kind == audit.KindOutcome && strings.Contains(d, `"tool":"confirm_restart"`) {
				if strings.Contains(d, `"result":"input_required"`) {
					inputRequired++
				}
				if strings.Contains(d, `"result":"result"`) {
					result++
				}
			}
		}
		return inputRequired == 1 && result == 1
	})
	var decisions int
	for _, rec := range h.sink.all() {
		if rec.Kind == audit.KindDecision && strings.Contains(string(rec.Details), `"tool":"confirm_restart"`) {
			decisions++
		}
	}
	if decisions != 3 {
		t.Fatalf("%d decision records for confirm_restart, want 3 (ask, changed retry, retry)", decisions)
	}
}

// TestMCPAnswersStream: an event-stream answer reaches the client event
// by event, before the server has finished it, and the outcome is noted
// once it ends.
func TestMCPAnswersStream(t *testing.T) {
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		_, _ = io.WriteString(w, "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":1,\"progress\":1}}\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"content\":[],\"isError\":true}}\n\n")
	}))
	t.Cleanup(up.Close)
	h := newHarness(t, mcpConfig(up.URL))
	tok := h.mcpAgent()
	req, _ := http.NewRequest("POST", h.url+"/mcp", strings.NewReader(restartWeb))
	for k, v := range map[string]string{"Authorization": "Bearer " + tok, "Content-Type": "application/json", "Accept": "application/json, text/event-stream"} {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	br := bufio.NewReader(res.Body)
	first, err := br.ReadString('\n')
	if err != nil || first != "event: message\n" {
		t.Fatalf("first line %q %v", first, err)
	}
	second, _ := br.ReadString('\n')
	if !strings.Contains(second, "notifications/progress") {
		t.Fatalf("the progress event did not come through before the answer ended: %q", second)
	}
	close(release)
	rest, _ := io.ReadAll(br)
	if !strings.Contains(string(rest), `"id":7`) {
		t.Fatalf("rest %q", rest)
	}
	id := res.Header.Get("X-Request-Id")
	waitFor(t, "the outcome", func() bool {
		for _, rec := range h.sink.byRequest(id) {
			if rec.Kind == audit.KindOutcome && strings.Contains(string(rec.Details), `"outcome":{"result":"tool_error"}`) {
				return true
			}
		}
		return false
	})
}

// TestMCPApprovalRequired: a tool call the policy sends to a person is
// answered as a JSON-RPC error that carries the approval (id, page,
// expiry) as the REST answer does, and the decision record keeps both the
// approval and the MCP call; nothing reaches the server. Approved, the
// client's retry (a new message) opens that tool call once.
func TestMCPApprovalRequired(t *testing.T) {
	fleet, upURL := newMCPServer(t, &mcp.StreamableHTTPOptions{Stateless: true, JSONResponse: true})
	dir := t.TempDir()
	if err := writeFile(dir+"/authz.rego", `package passport.authz

reasons contains "approval_required" if {
	input.mcp.tool == "restart_deployment"
	not input.approval
}

decision := {"allow": false, "reasons": reasons, "approval": {"required": true, "reason": "restarts need a person"}} if {
	reasons == {"approval_required"}
} else := {"allow": count(reasons) == 0, "reasons": reasons}
`); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, mcpConfig(upURL), func(c *Config) {
		c.Policy.Dir = dir
		c.Approvals.DashboardURL = "https://dash.example"
	})
	tok := h.mcpAgent()
	res := h.mcpPost(tok, restartWeb, cur("tools/call", "restart_deployment"))
	var out struct {
		Error struct {
			Code int        `json:"code"`
			Data rpcRefusal `json:"data"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(res.body), &out); err != nil || out.Error.Data.Code != "approval_required" ||
		!approval.ValidID(out.Error.Data.ApprovalID) || out.Error.Data.ApprovalURL != approval.PageURL("https://dash.example", "acme", out.Error.Data.ApprovalID) ||
		out.Error.Data.ExpiresAt == "" {
		t.Fatalf("answer %d %s (%v)", res.status, res.body, err)
	}
	if n, _ := fleet.reached(); n != 0 {
		t.Fatalf("the MCP server was reached %d times", n)
	}
	found := false
	for _, rec := range h.sink.byRequest(res.header.Get("X-Request-Id")) {
		if rec.Kind == audit.KindDecision {
			if d := string(rec.Details); !strings.Contains(d, `"approval_id":"`+out.Error.Data.ApprovalID+`"`) || !strings.Contains(d, `"tool":"restart_deployment"`) {
				t.Fatalf("decision record details %s", d)
			}
			found = true
		}
	}
	if !found {
		t.Fatal("no decision record")
	}

	// Approved, the call opens once. An MCP client's retry is a new
	// JSON-RPC message (another id, its own _meta): the approval binds the
	// tool call, not those. Other arguments are another call.
	id := out.Error.Data.ApprovalID
	approve(t, h, "acme", id, "alice")
	with := func(hdr map[string]string) map[string]string {
		for k, v := range withApproval(id) {
			hdr[k] = v
		}
		return hdr
	}
	otherArgs := `{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"restart_deployment","arguments":{"namespace":"prod","name":"api"}}}`
	if res := h.mcpPost(tok, otherArgs, with(cur("tools/call", "restart_deployment"))); !strings.Contains(res.body, `"code":"approval_mismatch"`) {
		t.Fatalf("other arguments with the approval: %d %s", res.status, res.body)
	}
	retry := `{"jsonrpc":"2.0","id":"retry-1","method":"tools/call","params":{"_meta":{"progressToken":"p1",` +
		`"io.modelcontextprotocol/protocolVersion":"` + mcpRevisionStateless + `","io.modelcontextprotocol/clientInfo":{"name":"t","version":"1"},` +
		`"io.modelcontextprotocol/clientCapabilities":{}},` +
		`"arguments":{"name":"web","namespace":"prod"},"name":"restart_deployment"}}`
	if res := h.mcpPost(tok, retry, with(cur("tools/call", "restart_deployment"))); res.status != 200 || strings.Contains(res.body, `"error"`) {
		t.Fatalf("the approved call, retried: %d %s", res.status, res.body)
	}
	if n := fleet.restarted("web"); n != 1 {
		t.Fatalf("web restarted %d times, want 1", n)
	}
	if res := h.mcpPost(tok, retry, with(cur("tools/call", "restart_deployment"))); !strings.Contains(res.body, `"code":"approval_used"`) {
		t.Fatalf("the approval used twice: %d %s", res.status, res.body)
	}
	if n := fleet.restarted("web") + fleet.restarted("api"); n != 1 {
		t.Fatalf("%d restarts, want 1", n)
	}
}
