package stack_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/examples/mcpserver"
	"github.com/agentpassport/passport/internal/stack"
)

// TestEndToEndMCP: the demo's MCP server behind the demo proxy, with the
// policy library. The observer's MCP agent lists services through it on
// its own; a healer restarts a service with a tool call; the observer's
// restart is refused with the library's reasons as a JSON-RPC error; the
// records carry the tools.
func TestEndToEndMCP(t *testing.T) {
	r := startStack(t, stack.Config{ChaosInterval: -1, NoRogue: true})
	agentFor := func(role string) *mcpserver.Agent {
		a := r.agent(t, "acme", role)
		tok := r.passport(t, a, client.TokenRequest{})
		return &mcpserver.Agent{Endpoint: r.demo.URLs.Proxy + "/mcp", Log: nil,
			Passport: func(context.Context) (string, error) { return tok, nil }}
	}
	ctx := t.Context()

	res, err := agentFor("healer").Call(ctx, "restart_service", map[string]any{"name": "checkout"})
	if err != nil || res.IsError {
		t.Fatalf("healer restart through MCP: %v %+v", err, res)
	}
	_, err = agentFor("observer").Call(ctx, "restart_service", map[string]any{"name": "checkout"})
	var werr *jsonrpc.Error
	if !errors.As(err, &werr) {
		t.Fatalf("observer restart: want a JSON-RPC error, got %v", err)
	}
	var data struct {
		Code    string   `json:"code"`
		Reasons []string `json:"reasons"`
	}
	if err := json.Unmarshal(werr.Data, &data); err != nil || data.Code != "policy_denied" ||
		!slices.Contains(data.Reasons, "agent_type_not_permitted") || !slices.Contains(data.Reasons, "trust_level_too_low") {
		t.Fatalf("observer refusal: %s (%v)", werr.Data, err)
	}

	eventually(t, 20*time.Second, "the MCP records", func() (bool, string) {
		var listed, restarted, refused bool
		for _, rec := range r.records(t, "acme") {
			d := string(rec.Details)
			switch {
			case rec.Kind == audit.KindDecision && rec.Action == "service.list" && strings.Contains(d, `"tool":"list_services"`) && rec.Decision == audit.DecisionAllow:
				listed = true // the observer's own rounds
			case rec.Kind == audit.KindOutcome && rec.Action == "service.restart" && strings.Contains(d, `"tool":"restart_service"`) && strings.Contains(d, `"result":"result"`):
				restarted = true
			case rec.Kind == audit.KindDecision && rec.Action == "service.restart" && strings.Contains(d, `"tool":"restart_service"`) && rec.Decision == audit.DecisionDeny:
				refused = true
			}
		}
		return listed && restarted && refused, "listed, restarted, refused: not all yet"
	})
}
