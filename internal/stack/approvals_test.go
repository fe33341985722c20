package stack_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/agentpassport/passport/approval"
	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/stack"
)

// send makes one call with a body and extra headers.
func send(t *testing.T, method, url, token, body string, hdr map[string]string) (int, http.Header, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, bytes.NewReader([]byte(body)))
	req.Header.Set("Authorization", "Bearer "+token)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// The demo's approval flow: the deployer's deploy to payments waits for a
// person; the pending approval is listed by the authority (what the CLI and
// the dashboard show), approved there, and the identical call then goes
// through once.
func TestEndToEndDeployToPaymentsNeedsAPerson(t *testing.T) {
	r := startStack(t, stack.Config{ChaosInterval: -1, NoRogue: true})
	deployer := r.agent(t, "acme", "deployer")
	tok := r.passport(t, deployer, client.TokenRequest{Scope: []string{"deployment.deploy"}})
	url, body := r.demo.URLs.Proxy+"/deployments/payments", `{"version": "v2.4.1"}`

	code, _, answer := send(t, http.MethodPost, url, tok, body, nil)
	var p struct {
		Code, ApprovalID, ApprovalURL string
	}
	var raw map[string]any
	_ = json.Unmarshal([]byte(answer), &raw)
	p.Code, _ = raw["code"].(string)
	p.ApprovalID, _ = raw["approval_id"].(string)
	p.ApprovalURL, _ = raw["approval_url"].(string)
	if code != http.StatusForbidden || p.Code != "approval_required" || !approval.ValidID(p.ApprovalID) ||
		!strings.HasPrefix(p.ApprovalURL, r.demo.URLs.Dashboard+"/#") {
		t.Fatalf("deploy to payments: %d %s", code, answer)
	}

	// Listed as pending by the authority, with the exact call.
	code, list := call(t, http.MethodGet, r.demo.URLs.Authority+"/v1/tenants/acme/approvals?state=pending", r.demo.AdminToken)
	if code != http.StatusOK || !strings.Contains(list, p.ApprovalID) || !strings.Contains(list, `"path":"/deployments/payments"`) {
		t.Fatalf("pending approvals: %d %s", code, list)
	}
	// The dashboard lists it too.
	code, list = call(t, http.MethodGet, r.demo.URLs.Dashboard+"/api/tenants/acme/approvals", r.demo.AdminToken)
	if code != http.StatusOK || !strings.Contains(list, p.ApprovalID) {
		t.Fatalf("dashboard approvals: %d %s", code, list)
	}
	code, _, answer = send(t, http.MethodPost, r.demo.URLs.Authority+"/v1/tenants/acme/approvals/"+p.ApprovalID+"/approve",
		r.demo.AdminToken, `{"comment": "release window"}`, nil)
	if code != http.StatusOK || !strings.Contains(answer, `"state":"granted"`) {
		t.Fatalf("approve: %d %s", code, answer)
	}

	hdr := map[string]string{approval.Header: p.ApprovalID}
	if code, _, answer := send(t, http.MethodPost, url, tok, body, hdr); code != http.StatusOK {
		t.Fatalf("approved deploy: %d %s", code, answer)
	}
	if code, _, answer := send(t, http.MethodPost, url, tok, body, hdr); code != http.StatusForbidden || !strings.Contains(answer, approval.CodeUsed) {
		t.Fatalf("replayed deploy: %d %s", code, answer)
	}
	eventually(t, 10*time.Second, "approval_requested and the approved decision in the audit stream", func() (bool, string) {
		var requested, allowed bool
		for _, rec := range r.records(t, "acme") {
			requested = requested || rec.Kind == audit.KindApprovalRequested && strings.Contains(string(rec.Details), p.ApprovalID)
			allowed = allowed || rec.Kind == audit.KindDecision && rec.Decision == audit.DecisionAllow &&
				strings.Contains(string(rec.Details), p.ApprovalID) && strings.Contains(string(rec.Details), `"approvers":["admin"]`)
		}
		return requested && allowed, "not yet"
	})
}

// The demo's restart budget: the fourth restart of one service in ten
// minutes is stopped and asks a person; another service is not affected.
func TestEndToEndRestartBudgetAsksAPerson(t *testing.T) {
	r := startStack(t, stack.Config{ChaosInterval: -1, NoRogue: true, RestartBudget: 3})
	tok := r.passport(t, r.agent(t, "acme", "healer"), client.TokenRequest{Scope: []string{"service.restart"}})
	restart := func(svc string) (int, http.Header, string) {
		return send(t, http.MethodPost, r.demo.URLs.Proxy+"/services/"+svc+"/restart", tok, "", nil)
	}
	for i := range 3 {
		if code, _, answer := restart("checkout"); code != http.StatusOK {
			t.Fatalf("restart %d: %d %s", i, code, answer)
		}
	}
	code, _, answer := restart("checkout")
	if code != http.StatusForbidden || !strings.Contains(answer, `"code":"approval_required"`) ||
		!strings.Contains(answer, `"reasons":["approval_required","budget_exhausted"]`) {
		t.Fatalf("fourth restart: %d %s", code, answer)
	}
	if code, _, answer := restart("payments"); code != http.StatusOK {
		t.Fatalf("restart of another service: %d %s", code, answer)
	}
}

// A healer caught in a restart loop is stopped by the demo's budget and
// its incident escalates to a person at once, with the approval that
// would let the restart through.
func TestEndToEndRestartLoopEscalates(t *testing.T) {
	r := startStack(t, stack.Config{ChaosInterval: -1, NoRogue: true, RestartBudget: 1})
	r.fireChaos(t, "acme", "service_down", "checkout")
	eventually(t, 30*time.Second, "the first service_down on checkout RESOLVED by a restart", func() (bool, string) {
		for _, d := range r.incidents(t, "acme") {
			if d.Target == "checkout" && d.State == "RESOLVED" {
				return true, ""
			}
		}
		return false, "not yet"
	})
	r.fireChaos(t, "acme", "service_down", "checkout")
	eventually(t, 30*time.Second, "the second one ESCALATED, needing a person", func() (bool, string) {
		for _, rec := range r.records(t, "acme") {
			if rec.Kind == audit.KindIncident && strings.Contains(string(rec.Details), `"state":"ESCALATED"`) &&
				strings.Contains(string(rec.Details), "needs a person: the policy asks for approval apr_") {
				return true, ""
			}
		}
		return false, "not yet"
	})
	code, list := call(t, http.MethodGet, r.demo.URLs.Authority+"/v1/tenants/acme/approvals?state=pending", r.demo.AdminToken)
	if code != http.StatusOK || !strings.Contains(list, `"path":"/services/checkout/restart"`) || !strings.Contains(list, "budget_exhausted") {
		t.Fatalf("pending approvals: %d %s", code, list)
	}
}
