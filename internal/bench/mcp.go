package main

import (
	"net/http"
	"strings"
)

// The MCP case: the same restart as the REST full path, as an MCP
// tools/call of the current revision (restart_service on the route of
// proxy.FleetMCPRoute), with its mirrored headers. Its proxy CPU per call
// should stay within 1.2x the REST call's (issue 20).
const (
	// mcpMethod is the load generator's name for that POST.
	mcpMethod   = "MCP"
	mcpCaseName = "MCP tools/call (allow)"
	mcpCall     = `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"},"name":"restart_service","arguments":{"name":"checkout"}}}`
	mcpResult   = `{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"restarted checkout"}]}}`
)

// newLoadRequest is a request of the load generator: method and url, or
// the MCP tools/call for mcpMethod; with the passport when token is set.
func newLoadRequest(method, url, token string) *http.Request {
	var req *http.Request
	if method == mcpMethod {
		req, _ = http.NewRequest(http.MethodPost, url, strings.NewReader(mcpCall))
		h := req.Header
		h.Set("Content-Type", "application/json")
		h.Set("Accept", "application/json, text/event-stream")
		h.Set("Mcp-Protocol-Version", "2026-07-28")
		h.Set("Mcp-Method", "tools/call")
		h.Set("Mcp-Name", "restart_service")
	} else {
		req, _ = http.NewRequest(method, url, nil)
	}
	setAuth(req, token) // Bearer, or DPoP with a fresh proof (dpop.go)
	return req
}
