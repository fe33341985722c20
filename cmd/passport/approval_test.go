package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/agentpassport/passport/approval"
	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/authority"
	"github.com/agentpassport/passport/internal/redistest"
)

const cliApproverToken = "cli-test-approver-token-0123456789"

// startApprovalAuthority serves an authority with an approver (alice, for
// acme) on a private Redis, which it returns for the tests to create
// approvals in as the proxy would.
func startApprovalAuthority(t *testing.T) (*redistest.Server, string) {
	t.Helper()
	rs := redistest.Start(t)
	srv := httptest.NewUnstartedServer(nil)
	cfg := authority.DefaultConfig()
	cfg.AdminToken = cliAdminToken
	cfg.ApproverTokens = []authority.ApproverToken{{Approver: "alice@example.com", Token: cliApproverToken, Tenants: []string{"acme"}}}
	cfg.Clients.BcryptCost = bcrypt.MinCost
	cfg.Issuer = "http://" + srv.Listener.Addr().String()
	a, err := authority.New(cfg, authority.Deps{Audit: audit.Discard, Redis: rs.Client(), Logger: slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = a.Handler()
	srv.Start()
	t.Cleanup(srv.Close)
	return rs, srv.URL
}

// TestApprovalCommands drives passport approval list|show|approve|deny
// against a real authority on a real Redis, with --data DIR (demo.json's
// authority and admin token) and with an approver token from the
// environment or a file.
func TestApprovalCommands(t *testing.T) {
	rs, authURL := startApprovalAuthority(t)
	dir := t.TempDir()
	demo := `{"urls":{"authority":"` + authURL + `"},"admin_token":"` + cliAdminToken + `","agents":[]}`
	if err := os.WriteFile(filepath.Join(dir, "demo.json"), []byte(demo), 0o600); err != nil {
		t.Fatal(err)
	}
	st := approval.NewStore(rs.Client(), approval.Options{})
	ctx := context.Background()
	mk := func(path string, body string) approval.Approval {
		ap, _, err := st.Create(ctx, approval.Request{Tenant: "acme", AgentID: "agt_deployer", AgentName: "deployer-1",
			Method: "POST", Path: path, Body: []byte(body), Action: "deployment.deploy", Resource: "payments",
			Reasons: []string{"approval_required"}, Reason: "deploys to payments need a person"})
		if err != nil {
			t.Fatal(err)
		}
		return ap
	}
	first := mk("/deployments/payments", "{\"version\":\"v2\"}\x1b[2K\rharmless")
	second := mk("/deployments/payments/rollback", `{}`)

	// list --data --json: every pending one, each with an id.
	out, errOut, code := cli(t, nil, "approval", "list", "--data", dir, "--tenant", "acme", "--json")
	var list []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list) != 2 {
		t.Fatalf("list --json: %d %s %s", code, out, errOut)
	}
	for _, item := range list {
		if item["id"] != first.ID && item["id"] != second.ID {
			t.Fatalf("listed %v", item["id"])
		}
	}
	out, _, code = cli(t, nil, "approval", "list", "--data", dir, "--tenant", "acme")
	if code != 0 || !strings.Contains(out, first.ID) || !strings.Contains(out, "POST /deployments/payments") || !strings.Contains(out, "0/1") {
		t.Fatalf("list table: %d\n%s", code, out)
	}

	// show: the exact call, the body with the agent's escape sequences
	// made visible instead of obeyed.
	out, _, code = cli(t, nil, "approval", "show", first.ID, "--data", dir, "--tenant", "acme")
	if code != 0 || !strings.Contains(out, `{"version":"v2"}\x1b[2K\x0dharmless`) || strings.ContainsAny(out, "\x1b\r") ||
		!strings.Contains(out, "deploys to payments need a person") || !strings.Contains(out, first.BodySHA256) {
		t.Fatalf("show: %d\n%q", code, out)
	}

	// approve with the approver's token (environment beats demo.json's
	// admin token): recorded as alice.
	env := map[string]string{"PASSPORT_APPROVER_TOKEN": cliApproverToken}
	out, errOut, code = cli(t, env, "approval", "approve", first.ID, "--data", dir, "--tenant", "acme", "--comment", "go", "--json")
	var got approval.Approval
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || got.State != approval.StateGranted ||
		len(got.Approvers) != 1 || got.Approvers[0].Approver != "alice@example.com" || got.Approvers[0].Comment != "go" {
		t.Fatalf("approve: %d %s %s", code, out, errOut)
	}
	// deny with a token file holding the admin token: recorded as admin.
	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, []byte(cliAdminToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = cli(t, env, "approval", "deny", second.ID, "--authority", authURL, "--token-file", tokFile, "--tenant", "acme")
	if code != 0 || !strings.Contains(out, second.ID+": denied") {
		t.Fatalf("deny: %d %s %s", code, out, errOut)
	}
	if ap, _ := st.Get(ctx, "acme", second.ID); ap.DeniedBy == nil || ap.DeniedBy.Approver != approval.AdminApprover {
		t.Fatalf("denied by %+v", ap.DeniedBy)
	}
	// Deciding again is refused with the state's code and exit 1.
	_, errOut, code = cli(t, env, "approval", "approve", second.ID, "--data", dir, "--tenant", "acme")
	if code != 1 || !strings.Contains(errOut, approval.CodeDenied) {
		t.Fatalf("approve a denied one: %d %s", code, errOut)
	}
	// alice's token is for acme only.
	_, errOut, code = cli(t, env, "approval", "list", "--data", dir, "--tenant", "globex")
	if code != 1 || !strings.Contains(errOut, "403") {
		t.Fatalf("alice lists globex: %d %s", code, errOut)
	}
	// Every state, and a bad one.
	out, _, code = cli(t, nil, "approval", "list", "--data", dir, "--tenant", "acme", "--state", "", "--json")
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list) != 2 {
		t.Fatalf("list every state: %d %s", code, out)
	}
	if _, errOut, code = cli(t, nil, "approval", "list", "--data", dir, "--tenant", "acme", "--state", "open"); code != 1 || !strings.Contains(errOut, "--state") {
		t.Fatalf("bad state: %d %s", code, errOut)
	}
	// No token anywhere.
	if _, errOut, code = cli(t, nil, "approval", "list", "--authority", authURL, "--tenant", "acme"); code != 1 || !strings.Contains(errOut, "no token") {
		t.Fatalf("no token: %d %s", code, errOut)
	}
}

// passport dashboard offers approvals (its actions embed
// dashboard.AdminAgents) and decides them on the authority with its admin
// token, naming the operator.
func TestDashboardCommandApprovals(t *testing.T) {
	rs, url := startApprovalAuthority(t)
	st := approval.NewStore(rs.Client(), approval.Options{})
	ap, _, err := st.Create(context.Background(), approval.Request{Tenant: "acme", AgentID: "agt_deployer", Method: "POST",
		Path: "/deployments/payments", Body: []byte(`{}`), Action: "deployment.deploy", Resource: "payments"})
	if err != nil {
		t.Fatal(err)
	}
	base := startDashboard(t, map[string]string{"PASSPORT_ADMIN_TOKEN": cliAdminToken, "PASSPORT_AUTHORITY_URL": url, "PASSPORT_REDIS_URL": rs.URL()})
	var session struct {
		Approvals bool `json:"approvals"`
	}
	if dashboardCall(t, "GET", base+"/api/session", cliAdminToken, "", &session); !session.Approvals {
		t.Fatal("passport dashboard does not offer approvals")
	}
	var list struct {
		Approvals []struct {
			ID string `json:"id"`
		} `json:"approvals"`
	}
	if dashboardCall(t, "GET", base+"/api/tenants/acme/approvals", cliAdminToken, "", &list); len(list.Approvals) != 1 || list.Approvals[0].ID != ap.ID {
		t.Fatalf("listed %+v", list)
	}
	if resp := dashboardCall(t, "POST", base+"/api/tenants/acme/approvals/"+ap.ID+"/approve", cliAdminToken, `{"comment":"ok"}`, nil); resp.StatusCode != 200 {
		t.Fatalf("approve: %d", resp.StatusCode)
	}
	if got, _ := st.Get(context.Background(), "acme", ap.ID); got.State != approval.StateGranted || got.Approvers[0].Approver != approval.AdminApprover ||
		!strings.HasPrefix(got.Approvers[0].Via, "dashboard:") {
		t.Fatalf("after the dashboard's approve: %+v", got)
	}
}
