package stack_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
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

	// The README's tour, as curl sends it: one message of the current
	// revision with its mirrored headers.
	obs := r.passport(t, r.agent(t, "acme", "observer"), client.TokenRequest{})
	for _, tc := range []struct{ tool, args, want string }{
		{"list_services", `{}`, `"checkout"`},
		{"restart_service", `{"name":"checkout"}`, `"reasons":["action_not_granted","agent_type_not_permitted","trust_level_too_low"]`},
	} {
		body := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"curl","version":"8"},"io.modelcontextprotocol/clientCapabilities":{}},"name":"` + tc.tool + `","arguments":` + tc.args + `}}`
		req, _ := http.NewRequest("POST", r.demo.URLs.Proxy+"/mcp", strings.NewReader(body))
		for k, v := range map[string]string{"Authorization": "Bearer " + obs, "Content-Type": "application/json",
			"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": tc.tool} {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), tc.want) {
			t.Fatalf("%s: %d %s", tc.tool, resp.StatusCode, b)
		}
	}

	eventually(t, 45*time.Second, "the MCP records", func() (bool, string) {
		var listed, restarted, refused bool
		recs := r.records(t, "acme")
		// Outcome records are minimal: their decision (same request id)
		// says what was called.
		restarts := map[string]bool{}
		for _, rec := range recs {
			if rec.Kind == audit.KindDecision && rec.Action == "service.restart" && rec.Decision == audit.DecisionAllow {
				restarts[rec.RequestID] = true
			}
		}
		for _, rec := range recs {
			d := string(rec.Details)
			switch {
			case rec.Kind == audit.KindDecision && rec.Action == "service.list" && strings.Contains(d, `"tool":"list_services"`) && rec.Decision == audit.DecisionAllow:
				listed = true // the observer's own rounds
			case rec.Kind == audit.KindOutcome && restarts[rec.RequestID] && strings.Contains(d, `"tool":"restart_service"`) && strings.Contains(d, `"result":"result"`):
				restarted = true
			case rec.Kind == audit.KindDecision && rec.Action == "service.restart" && strings.Contains(d, `"tool":"restart_service"`) && rec.Decision == audit.DecisionDeny:
				refused = true
			}
		}
		return listed && restarted && refused, fmt.Sprintf("listed %v, restarted %v, refused %v", listed, restarted, refused)
	})
}
