package stack_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/agentpassport/passport/approval"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/browsertest"
	"github.com/agentpassport/passport/internal/stack"
)

// TestBrowserApproveTheProxysApproval follows the demo's approval flow in
// headless Chromium: the deployer's deploy to payments is held by the real
// proxy, its approval_url opens the real dashboard on that approval, Approve
// grants it, and the identical call then goes through, once.
func TestBrowserApproveTheProxysApproval(t *testing.T) {
	r := startStack(t, stack.Config{ChaosInterval: -1, NoRogue: true})
	tok := r.passport(t, r.agent(t, "acme", "deployer"), client.TokenRequest{Scope: []string{"deployment.deploy"}})
	url, body := r.demo.URLs.Proxy+"/deployments/payments", `{"version": "v2.4.1"}`
	code, _, answer := send(t, http.MethodPost, url, tok, body, nil)
	var p struct {
		Code        string `json:"code"`
		ApprovalID  string `json:"approval_id"`
		ApprovalURL string `json:"approval_url"`
	}
	if err := json.Unmarshal([]byte(answer), &p); err != nil || code != http.StatusForbidden || p.Code != "approval_required" {
		t.Fatalf("deploy to payments: %d %s", code, answer)
	}

	ctx := browsertest.New(t)
	do := func(what string, timeout time.Duration, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		c, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		if err := chromedp.Do(c, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	row := `li[data-testid="approval"][data-approval-id="` + p.ApprovalID + `"]`
	do("open the approval_url signed in", 30*time.Second,
		chromedp.Navigate(strings.Replace(p.ApprovalURL, "#", "#token="+r.demo.AdminToken+"&", 1)),
		chromedp.WaitVisible(chromedp.CSS(`#feed-status[data-state="live"]`)),
		chromedp.WaitVisible(chromedp.CSS(row+`.focus`)),
	)
	do("approve it", 20*time.Second,
		chromedp.Click(chromedp.CSS(row+` [data-testid=approval-approve]`)),
		chromedp.WaitNotPresent(chromedp.CSS(row)),
		chromedp.WaitVisible(chromedp.CSS(`li[data-testid="activity-approval_approved"]`)),
	)

	// A new request reaches the open page through the feed at once: the
	// activity log says so and the list shows it, without a reload.
	code, _, answer = send(t, http.MethodPost, url, tok, `{"version": "v2.4.2"}`, nil)
	var q struct {
		ApprovalID string `json:"approval_id"`
	}
	if err := json.Unmarshal([]byte(answer), &q); err != nil || code != http.StatusForbidden || q.ApprovalID == p.ApprovalID {
		t.Fatalf("second deploy: %d %s", code, answer)
	}
	do("the new approval appears through the feed", 20*time.Second,
		chromedp.WaitVisible(chromedp.CSS(`li[data-testid="activity-approval_requested"]`)),
		chromedp.WaitVisible(chromedp.CSS(`li[data-testid="approval"][data-approval-id="`+q.ApprovalID+`"]`)),
	)

	hdr := map[string]string{approval.Header: p.ApprovalID}
	if code, _, answer := send(t, http.MethodPost, url, tok, body, hdr); code != http.StatusOK {
		t.Fatalf("deploy approved on the dashboard: %d %s", code, answer)
	}
	if code, _, answer := send(t, http.MethodPost, url, tok, body, hdr); code != http.StatusForbidden || !strings.Contains(answer, approval.CodeUsed) {
		t.Fatalf("replay: %d %s", code, answer)
	}
	ap, err := approval.NewStore(r.rdb, approval.Options{}).Get(context.Background(), "acme", p.ApprovalID)
	if err != nil || ap.State != approval.StateUsed || len(ap.Approvers) != 1 || ap.Approvers[0].Approver != "admin" {
		t.Fatalf("after use: %+v %v", ap, err)
	}
}
