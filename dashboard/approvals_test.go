package dashboard

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"golang.org/x/crypto/bcrypt"

	"github.com/agentpassport/passport/approval"
	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/authority"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/feed"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
)

// approvalHost is the fake host with the approvals of a real authority
// (dashboard.AdminAgents on the authority's API), as passport up and
// passport dashboard wire it.
type approvalHost struct {
	*fakeActions
	admin AdminAgents
}

func (h approvalHost) PendingApprovals(ctx context.Context, tenant string) ([]Approval, error) {
	return h.admin.PendingApprovals(ctx, tenant)
}

func (h approvalHost) DecideApproval(ctx context.Context, tenant, id string, approve bool, comment, via string) (Approval, error) {
	return h.admin.DecideApproval(ctx, tenant, id, approve, comment, via)
}

type approvalStack struct {
	url   string
	store *approval.Store
}

// startApprovalStack runs a real redis-server, the audit stream writer, a
// real authority writing its records there, and the dashboard whose
// approvals go to that authority with the admin token.
func startApprovalStack(t *testing.T) *approvalStack {
	t.Helper()
	rs := redistest.Start(t)
	rdb := rs.Client()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	sink, err := audit.NewStream(rdb, audit.StreamConfig{}, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sinkDone := make(chan error, 1)
	go func() { sinkDone <- sink.Run(ctx) }()

	asrv := httptest.NewUnstartedServer(nil)
	acfg := authority.DefaultConfig()
	acfg.AdminToken = adminToken
	acfg.TenantAdminTokens = map[string][]string{"acme": {acmeToken}}
	acfg.Clients.BcryptCost = bcrypt.MinCost
	acfg.Issuer = "http://" + asrv.Listener.Addr().String()
	auth, err := authority.New(acfg, authority.Deps{Redis: rdb, Logger: log, Audit: sink})
	if err != nil {
		t.Fatal(err)
	}
	asrv.Config.Handler = auth.Handler()
	asrv.Start()
	admin, err := client.NewAdmin(asrv.URL, passport.Secret(adminToken), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	host := approvalHost{fakeActions: newFakeActions(sink), admin: AdminAgents{Admin: admin}}
	srv, err := New(Config{Tenants: []string{"acme", "globex"}, Feed: feed.Config{Block: 200 * time.Millisecond}}, Deps{
		Redis: rdb, Logger: log, Actions: host,
		Auth: feed.NewStaticAuth(feed.Token{Secret: adminToken}, feed.Token{Secret: acmeToken, Tenants: []string{"acme"}}),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Serve: %v", err)
		}
		asrv.Close()
		<-sinkDone
	})
	return &approvalStack{url: "http://" + ln.Addr().String(), store: approval.NewStore(rdb, approval.Options{})}
}

// ask stores a pending approval as the proxy does when the policy asks
// for a person.
func (s *approvalStack) ask(t *testing.T, path, body string) approval.Approval {
	t.Helper()
	a, _, err := s.store.Create(context.Background(), approval.Request{
		Tenant: "acme", AgentID: "agt_deployer", AgentName: "deployer-acme", AgentType: "deployer", RequestID: "req-1",
		Method: "POST", Path: path, Body: []byte(body), Action: "deployment.deploy", Resource: "payments",
		Reasons: []string{"approval_required"}, Reason: "deploys to payments need a person",
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// The dashboard API on a real authority: pending approvals with the
// exact call (the agent's escape sequences made visible), decisions made
// with the dashboard's credential and recorded as admin via the operator,
// refusals passed through with their code, tenants kept apart.
func TestApprovalsThroughTheAuthority(t *testing.T) {
	st := startApprovalStack(t)
	a := st.ask(t, "/deployments/payments", "{\"version\":\"v2\"}\u202e\x1b[2K")
	code, body, _ := call(t, "GET", st.url+"/api/tenants/acme/approvals", acmeToken, "")
	list, _ := body["approvals"].([]any)
	if code != 200 || len(list) != 1 {
		t.Fatalf("list: %d %v", code, body)
	}
	item := list[0].(map[string]any)
	if item["id"] != a.ID || item["agent"] != "deployer-acme" || item["path"] != "/deployments/payments" || item["action"] != "deployment.deploy" ||
		item["body"] != `{"version":"v2"}\u202e\x1b[2K` || item["body_sha256"] != a.BodySHA256 || item["reason"] != "deploys to payments need a person" {
		t.Fatalf("listed %v", item)
	}
	if code, _, _ := call(t, "GET", st.url+"/api/tenants/globex/approvals", acmeToken, ""); code != http.StatusForbidden {
		t.Fatalf("acme's operator lists globex: %d", code)
	}
	if code, _, _ := call(t, "POST", st.url+"/api/tenants/globex/approvals/"+a.ID+"/approve", acmeToken, `{}`); code != http.StatusForbidden {
		t.Fatalf("acme's operator approves in globex: %d", code)
	}
	if code, _, _ := call(t, "POST", st.url+"/api/tenants/acme/approvals/"+a.ID+"/approve", acmeToken, `{"comment":"a\u0007b"}`); code != http.StatusBadRequest {
		t.Fatalf("comment with a control character: %d", code)
	}

	code, body, _ = call(t, "POST", st.url+"/api/tenants/acme/approvals/"+a.ID+"/approve", acmeToken, `{"comment":"looks right"}`)
	if got, _ := body["approval"].(map[string]any); code != 200 || got["state"] != "granted" {
		t.Fatalf("approve: %d %v", code, body)
	}
	ap, err := st.store.Get(context.Background(), "acme", a.ID)
	if err != nil || ap.State != approval.StateGranted || len(ap.Approvers) != 1 || ap.Approvers[0].Approver != approval.AdminApprover ||
		ap.Approvers[0].Via != "dashboard:"+feed.Fingerprint(acmeToken) || ap.Approvers[0].Comment != "looks right" {
		t.Fatalf("recorded %+v %v", ap.Approvers, err)
	}
	// Granted: it leaves the pending list; approving again is refused with
	// the authority's code.
	if _, body, _ := call(t, "GET", st.url+"/api/tenants/acme/approvals", acmeToken, ""); len(body["approvals"].([]any)) != 0 {
		t.Fatalf("still pending: %v", body)
	}
	code, body, _ = call(t, "POST", st.url+"/api/tenants/acme/approvals/"+a.ID+"/approve", acmeToken, ``)
	if code != http.StatusConflict || body["code"] != approval.CodeGranted {
		t.Fatalf("approve twice: %d %v", code, body)
	}
	if code, _, _ := call(t, "POST", st.url+"/api/tenants/acme/approvals/apr_"+strings.Repeat("n", 27)+"/deny", acmeToken, ``); code != http.StatusNotFound {
		t.Fatalf("unknown: %d", code)
	}
}

// TestBrowserApproveFromTheDashboard: a person opens the approval_url in
// headless Chromium, sees the exact call (method, path, body, agent,
// reasons) and approves it; another is denied; a decision the authority
// refuses shows its code. The authority records each decision, and the
// feed shows it on the page.
func TestBrowserApproveFromTheDashboard(t *testing.T) {
	st := startApprovalStack(t)
	deploy := st.ask(t, "/deployments/payments", "{\"version\":\"v2.4.1\"}\n\u202eevil")
	rollback := st.ask(t, "/deployments/payments/rollback", `{"to":"v2.3.0"}`)
	p := newPage(t)
	// The approval_url: the dashboard showing this approval.
	url := approval.PageURL(st.url, "acme", deploy.ID)
	p.do("open the approval_url signed in", 30*time.Second,
		chromedp.Navigate(strings.Replace(url, "#", "#token="+adminToken+"&", 1)),
		chromedp.WaitVisible(css(`#feed-status[data-state="live"]`)),
		chromedp.WaitVisible(css(`li[data-testid="approval"][data-approval-id="`+deploy.ID+`"].focus`)),
		chromedp.WaitVisible(css(`li[data-testid="approval"][data-approval-id="`+rollback.ID+`"]`)),
	)
	row := `document.querySelector('li[data-approval-id="` + deploy.ID + `"] `
	if got := p.eval(row + `[data-testid=approval-call]').textContent`); got != "/deployments/payments · deployer-acme" {
		t.Fatalf("call shown as %q", got)
	}
	if got := p.eval(row + `[data-testid=approval-body]').textContent`); got != "{\"version\":\"v2.4.1\"}\n\\u202eevil" {
		t.Fatalf("body shown as %q, want the override escaped", got)
	}
	if got := p.eval(row + `[data-testid=approval-meta]').textContent`); got != "deployment.deploy · on payments · approval_required · 0 of 1 approver" {
		t.Fatalf("meta shown as %q", got)
	}
	if got := p.eval(`document.querySelector('li[data-approval-id="` + deploy.ID + `"] .pill').textContent`); got != "POST" {
		t.Fatalf("method shown as %q", got)
	}

	p.do("approve with a comment", 20*time.Second,
		chromedp.SendKeys(css(`li[data-approval-id="`+deploy.ID+`"] [data-testid=approval-comment]`), "release window"),
		chromedp.Click(css(`li[data-approval-id="`+deploy.ID+`"] [data-testid=approval-approve]`)),
		chromedp.WaitNotPresent(css(`li[data-approval-id="`+deploy.ID+`"]`)),
		chromedp.WaitVisible(css(`li[data-testid="activity-approval_approved"]`)),
	)
	if got := p.eval(`document.querySelector('li[data-testid="activity-approval_approved"]').textContent`); !strings.Contains(got, "approved by admin") ||
		!strings.Contains(got, "/deployments/payments") || !strings.Contains(got, "granted") {
		t.Fatalf("activity %q", got)
	}
	ap, err := st.store.Get(context.Background(), "acme", deploy.ID)
	if err != nil || ap.State != approval.StateGranted || ap.Approvers[0].Comment != "release window" ||
		ap.Approvers[0].Via != "dashboard:"+feed.Fingerprint(adminToken) {
		t.Fatalf("after Approve: %+v %v", ap, err)
	}
	// The approval opens the call, once.
	if _, err := st.store.Consume(context.Background(), deploy.ID, approval.Call{Tenant: "acme", AgentID: "agt_deployer",
		Method: "POST", Path: "/deployments/payments", Body: []byte("{\"version\":\"v2.4.1\"}\n\u202eevil")}); err != nil {
		t.Fatalf("consume what the dashboard approved: %v", err)
	}

	// Someone denies the rollback elsewhere first (straight in the store:
	// no feed event) and the page has not polled since: its Approve is
	// refused with the authority's code.
	p.eval(`(clearInterval(state.approvalsTimer), "stopped")`)
	if _, err := st.store.Deny(context.Background(), "acme", rollback.ID, approval.Vote{Approver: "bob"}); err != nil {
		t.Fatal(err)
	}
	p.do("approve a denied one", 20*time.Second,
		chromedp.Click(css(`li[data-approval-id="`+rollback.ID+`"] [data-testid=approval-approve]`)),
		chromedp.WaitVisible(css(`[data-testid=approval-error]`)),
	)
	if got := p.eval(`document.querySelector('[data-testid=approval-error]').textContent`); !strings.Contains(got, approval.CodeDenied) {
		t.Fatalf("refusal shown as %q", got)
	}

	// Deny from the page.
	third := st.ask(t, "/deployments/checkout", `{}`)
	p.eval(`(setupApprovals(), "polling")`)
	p.do("deny", 20*time.Second,
		chromedp.WaitVisible(css(`li[data-approval-id="`+third.ID+`"]`)),
		chromedp.Click(css(`li[data-approval-id="`+third.ID+`"] [data-testid=approval-deny]`)),
		chromedp.WaitNotPresent(css(`li[data-approval-id="`+third.ID+`"]`)),
		chromedp.WaitVisible(css(`li[data-testid="activity-approval_denied"]`)),
	)
	if ap, _ := st.store.Get(context.Background(), "acme", third.ID); ap.State != approval.StateDenied || ap.DeniedBy.Approver != approval.AdminApprover {
		t.Fatalf("after Deny: %+v", ap)
	}
}
