package mcpserver

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// Agent is the demo agent that acts through the MCP server, as an agent
// built on an MCP client does: every Interval it gets a passport, connects
// through the proxy (the current, stateless revision), lists the tools it
// may call (the proxy filters the list) and calls list_services. Its
// records carry the tool, beside the REST calls of the other agents.
type Agent struct {
	// Endpoint is the proxy's MCP route, e.g. http://127.0.0.1:8080/mcp.
	Endpoint string
	// Passport gets a passport for the agent.
	Passport func(context.Context) (string, error)
	// Interval between rounds. Default 15s.
	Interval time.Duration
	Log      *slog.Logger
	// HTTPClient's transport carries the calls. Default http.DefaultTransport.
	HTTPClient *http.Client
}

// Run acts every Interval until ctx ends. A failed round is logged, not
// fatal: the proxy may refuse, the authority may be restarting.
func (a *Agent) Run(ctx context.Context) error {
	if a.Endpoint == "" || a.Passport == nil || a.Log == nil {
		return errors.New("mcp agent: endpoint, passport and logger are required")
	}
	every := a.Interval
	if every <= 0 {
		every = 15 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if err := a.Round(ctx); err != nil && ctx.Err() == nil {
			a.Log.WarnContext(ctx, "mcp agent round failed", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Round is one round: connect, list the tools, call list_services.
func (a *Agent) Round(ctx context.Context) error {
	_, err := a.Call(ctx, "list_services", map[string]any{})
	return err
}

// Call connects, lists the tools and calls one: the result, or the
// JSON-RPC error the proxy answered for a refused call.
func (a *Agent) Call(ctx context.Context, tool string, args map[string]any) (*mcp.CallToolResult, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tok, err := a.Passport(ctx)
	if err != nil {
		return nil, err
	}
	base := http.DefaultTransport
	if a.HTTPClient != nil && a.HTTPClient.Transport != nil {
		base = a.HTTPClient.Transport
	}
	tr := &mcp.StreamableClientTransport{Endpoint: a.Endpoint, MaxRetries: -1, DisableStandaloneSSE: true,
		HTTPClient: &http.Client{Transport: bearer{token: tok, next: base}}}
	cl := mcp.NewClient(&mcp.Implementation{Name: "passport-demo-agent", Version: "1.0.0"}, nil)
	cs, err := cl.Connect(ctx, tr, nil)
	if err != nil {
		return nil, err
	}
	defer cs.Close()
	if _, err := cs.ListTools(ctx, nil); err != nil {
		return nil, err
	}
	return cs.CallTool(ctx, &mcp.CallToolParams{Name: tool, Arguments: args})
}

// bearer sends the passport with every request.
type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}
