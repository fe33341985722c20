package authority

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"testing"

	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/problem"
)

// TestAdminErrorsAreProblems: the admin API answers errors through the
// project's one problem writer (a code member, a type naming the code's
// entry in docs/problems.md), and the client reads the code from it.
func TestAdminErrorsAreProblems(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	resp, body := e.get("/v1/tenants/acme/agents/agt_nosuchagent", testAdminToken)
	var p problem.Details
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusNotFound || p.Code != "agent_not_found" || p.Type != problem.Base+"agent_not_found" ||
		p.Status != http.StatusNotFound || p.Detail == "" {
		t.Fatalf("answer %d %+v", resp.StatusCode, p)
	}
	_, err := e.admin.GetAgent(context.Background(), "acme", "agt_nosuchagent")
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Status != http.StatusNotFound || ce.Code != "agent_not_found" {
		t.Fatalf("client error %#v", err)
	}
}
