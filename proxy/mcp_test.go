package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

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
				if want := []string{"fail_deployment", "list_pods", "restart_deployment", "scale_deployment"}; !slices.Equal(names, want) {
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
				waitFor(t, "outcome records", func() bool { return countKind(h.sink.all(), audit.KindOutcome) >= 6 })
				var allowed, denied, toolErrors, results int
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

func countKind(recs []*audit.Record, k audit.Kind) int {
	n := 0
	for _, r := range recs {
		if r.Kind == k {
			n++
		}
	}
	return n
}
