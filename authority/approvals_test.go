package authority

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/agentpassport/passport/approval"
	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/passport"
)

const (
	aliceToken    = "alice-approver-token-0123456789"
	bobToken      = "bob-approver-token-0123456789"
	reporterToken = "reporter-token-0123456789abcdef"
)

// approvalEnv is an authority with approvers: alice decides for acme only,
// bob for every tenant.
func approvalEnv(t *testing.T) (*env, *approval.Store) {
	t.Helper()
	e := newEnv(t, func(c *Config) {
		c.ReporterTokens = []string{reporterToken}
		c.ApproverTokens = []ApproverToken{
			{Approver: "alice@example.com", Token: aliceToken, Tenants: []string{"acme"}},
			{Approver: "bob", Token: bobToken},
		}
	}, nil, nil)
	// The proxy's side of the store: same Redis, same clock.
	return e, approval.NewStore(e.rdb, approval.Options{Clock: e.clock.Now})
}

// pending stores an approval as the proxy would when the policy asks for
// a person.
func pending(t *testing.T, st *approval.Store, tenant, agentID string, mod ...func(*approval.Request)) approval.Approval {
	t.Helper()
	r := approval.Request{
		Tenant: tenant, AgentID: agentID, AgentName: "deployer-1", AgentType: "deployer", RequestID: "req-1",
		Method: "POST", Path: "/deployments/payments", Body: []byte(`{"version":"v2"}`),
		Action: "deployment.deploy", Resource: "payments", Reasons: []string{"approval_required"},
	}
	for _, m := range mod {
		m(&r)
	}
	a, _, err := st.Create(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func (e *env) as(token string) *client.Admin {
	e.t.Helper()
	c, err := client.NewAdmin(e.srv.URL, passport.Secret(token), client.Options{})
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

func code(err error) string {
	var ce *client.Error
	if errors.As(err, &ce) {
		return ce.Code
	}
	return ""
}

// The whole API: the pending list (each with id), one approval, an
// approver's approval that grants it, a denial; each decision audited with
// the approver's identity and the call, and counted.
func TestApprovalsAPI(t *testing.T) {
	e, st := approvalEnv(t)
	ctx := context.Background()
	a := pending(t, st, "acme", "agt_deployer")
	b := pending(t, st, "acme", "agt_deployer", func(r *approval.Request) { r.Path = "/deployments/checkout" })

	resp, body := e.get("/v1/tenants/acme/approvals?state=pending", aliceToken)
	var list struct {
		Approvals []map[string]any `json:"approvals"`
	}
	if err := json.Unmarshal(body, &list); resp.StatusCode != http.StatusOK || err != nil || len(list.Approvals) != 2 {
		t.Fatalf("list: %d %s", resp.StatusCode, body)
	}
	for _, item := range list.Approvals {
		if id, _ := item["id"].(string); id != a.ID && id != b.ID {
			t.Fatalf("listed id %v", item["id"])
		}
	}
	got, err := e.as(aliceToken).GetApproval(ctx, "acme", a.ID)
	if err != nil || got.ID != a.ID || got.State != approval.StatePending || got.Body != `{"version":"v2"}` || got.BodySHA256 != approval.Digest([]byte(`{"version":"v2"}`)) {
		t.Fatalf("get: %+v %v", got, err)
	}

	got, err = e.as(aliceToken).Approve(ctx, "acme", a.ID, approval.DecisionRequest{Comment: "release window, go"})
	if err != nil || got.State != approval.StateGranted || len(got.Approvers) != 1 || got.Approvers[0].Approver != "alice@example.com" ||
		got.Approvers[0].Comment != "release window, go" {
		t.Fatalf("approve: %+v %v", got, err)
	}
	got, err = e.as(bobToken).Deny(ctx, "acme", b.ID, approval.DecisionRequest{Comment: "not during the freeze"})
	if err != nil || got.State != approval.StateDenied || got.DeniedBy == nil || got.DeniedBy.Approver != "bob" {
		t.Fatalf("deny: %+v %v", got, err)
	}
	if left, err := e.admin.ListApprovals(ctx, "acme", approval.StatePending); err != nil || len(left) != 0 {
		t.Fatalf("pending after both: %v %v", left, err)
	}
	if all, err := e.admin.ListApprovals(ctx, "acme", ""); err != nil || len(all) != 2 {
		t.Fatalf("all: %v %v", all, err)
	}

	for _, tc := range []struct {
		kind              audit.Kind
		id, who, state    string
		comment, resource string
	}{
		{audit.KindApprovalApproved, a.ID, "alice@example.com", "granted", "release window, go", "payments"},
		{audit.KindApprovalDenied, b.ID, "bob", "denied", "not during the freeze", "payments"},
	} {
		recs := e.sink.kinds(tc.kind)
		if len(recs) != 1 {
			t.Fatalf("%s records: %d", tc.kind, len(recs))
		}
		r := recs[0]
		var d map[string]any
		_ = json.Unmarshal(r.Details, &d)
		if r.Tenant != "acme" || r.AgentID != "agt_deployer" || r.AgentName != "deployer-1" || r.Method != "POST" ||
			r.Action != "deployment.deploy" || r.Resource != tc.resource ||
			d["approval_id"] != tc.id || d["approver"] != tc.who || d["state"] != tc.state || d["comment"] != tc.comment {
			t.Fatalf("%s record %+v details %v", tc.kind, r, d)
		}
	}
	if n := counter(t, e.reg, "passport_authority_approval_decisions_total", "decision", "approve", "result", "ok"); n != 1 {
		t.Fatalf("approve ok counted %v", n)
	}
}

// Who may call what: approver tokens within their tenants, admin tokens
// (recorded as "admin") within theirs, reporters nowhere, and approver
// tokens nowhere else in the admin API.
func TestApprovalsAPIAuthorization(t *testing.T) {
	e, st := approvalEnv(t)
	ctx := context.Background()
	acme := pending(t, st, "acme", "agt_deployer")
	globex := pending(t, st, "globex", "agt_deployer")

	for _, tc := range []struct {
		name, token, tenant, id string
		status                  int
	}{
		{"no token", "", "acme", acme.ID, http.StatusUnauthorized},
		{"wrong token", "not-a-token-0123456789", "acme", acme.ID, http.StatusUnauthorized},
		{"reporter", reporterToken, "acme", acme.ID, http.StatusForbidden},
		{"alice on globex", aliceToken, "globex", globex.ID, http.StatusForbidden},
		{"acme admin on globex", acmeAdminToken, "globex", globex.ID, http.StatusForbidden},
		{"bad tenant", bobToken, "Acme", acme.ID, http.StatusBadRequest},
		{"acme's id under globex", bobToken, "globex", acme.ID, http.StatusNotFound},
		{"malformed id", bobToken, "acme", "apr_../x", http.StatusNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, path := range []string{"", "/" + tc.id} {
				resp, body := e.get("/v1/tenants/"+tc.tenant+"/approvals"+path, tc.token)
				if path == "" && tc.status == http.StatusNotFound {
					continue // the list of another tenant is that tenant's to see
				}
				if resp.StatusCode != tc.status {
					t.Fatalf("GET %s: %d %s, want %d", path, resp.StatusCode, body, tc.status)
				}
			}
			resp, body := e.post("/v1/tenants/"+tc.tenant+"/approvals/"+tc.id+"/approve", "application/json", "", func(r *http.Request) {
				if tc.token != "" {
					r.Header.Set("Authorization", "Bearer "+tc.token)
				}
			})
			if resp.StatusCode != tc.status {
				t.Fatalf("approve: %d %s, want %d", resp.StatusCode, body, tc.status)
			}
		})
	}
	if got, _ := st.Get(ctx, "globex", globex.ID); got.State != approval.StatePending || len(got.Approvers) != 0 {
		t.Fatalf("globex's approval changed by refused calls: %+v", got)
	}

	// An approver token is refused by the rest of the admin API.
	for _, path := range []string{"/v1/tenants/acme/agents", "/v1/tenants/acme/agents/agt_x"} {
		if resp, body := e.get(path, aliceToken); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("approver token on %s: %d %s", path, resp.StatusCode, body)
		}
	}
	if _, err := e.as(bobToken).RotateKeys(ctx); code(err) != "forbidden" {
		t.Fatalf("approver token rotates keys: %v", err)
	}

	// The tenant's admin decides, as "admin", and may say for whom.
	got, err := e.as(acmeAdminToken).Approve(ctx, "acme", acme.ID, approval.DecisionRequest{Via: "dashboard:op-1"})
	if err != nil || got.Approvers[0].Approver != approval.AdminApprover || got.Approvers[0].Via != "dashboard:op-1" {
		t.Fatalf("tenant admin approves: %+v %v", got, err)
	}
	// bob decides for every tenant.
	if got, err := e.as(bobToken).Approve(ctx, "globex", globex.ID, approval.DecisionRequest{}); err != nil || got.State != approval.StateGranted {
		t.Fatalf("bob on globex: %+v %v", got, err)
	}
}

// Two distinct approvers for a call that needs two; an approver counts
// once; the registered owner is excluded when the approval says so; a
// decided approval refuses further decisions with its state's code.
func TestApprovalsAPINOfMAndRefusals(t *testing.T) {
	e, st := approvalEnv(t)
	ctx := context.Background()
	owned := e.register("acme", "deployer-1", "deployer", passport.TrustMedium, func(s *client.AgentSpec) { s.Owner = "alice@example.com" })
	a := pending(t, st, "acme", owned.ID, func(r *approval.Request) { r.Approvers = 2; r.ExcludeOwner = true })

	if _, err := e.as(aliceToken).Approve(ctx, "acme", a.ID, approval.DecisionRequest{}); code(err) != approval.CodeOwnerExcluded || !errors.Is(err, client.ErrForbidden) {
		t.Fatalf("owner approves: %v", err)
	}
	if got, err := e.as(bobToken).Approve(ctx, "acme", a.ID, approval.DecisionRequest{}); err != nil || got.State != approval.StatePending {
		t.Fatalf("bob: %+v %v", got, err)
	}
	if _, err := e.as(bobToken).Approve(ctx, "acme", a.ID, approval.DecisionRequest{}); code(err) != approval.CodeAlreadyApproved {
		t.Fatalf("bob twice: %v", err)
	}
	got, err := e.admin.Approve(ctx, "acme", a.ID, approval.DecisionRequest{Comment: "second pair of eyes"})
	if err != nil || got.State != approval.StateGranted || len(got.Approvers) != 2 {
		t.Fatalf("admin second: %+v %v", got, err)
	}
	if _, err := e.as(aliceToken).Approve(ctx, "acme", a.ID, approval.DecisionRequest{}); code(err) != approval.CodeGranted {
		t.Fatalf("owner after the grant: %v", err)
	}
	b := pending(t, st, "acme", "agt_other")
	if _, err := e.as(bobToken).Approve(ctx, "acme", b.ID, approval.DecisionRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.as(aliceToken).Approve(ctx, "acme", b.ID, approval.DecisionRequest{}); code(err) != approval.CodeGranted {
		t.Fatalf("approve a granted one: %v", err)
	}
	if _, err := st.Consume(ctx, b.ID, approval.Call{Tenant: "acme", AgentID: "agt_other", Method: "POST",
		Path: "/deployments/payments", Body: []byte(`{"version":"v2"}`)}); err != nil {
		t.Fatal(err)
	}
	for _, deny := range []bool{false, true} {
		call := e.as(aliceToken).Approve
		if deny {
			call = e.as(aliceToken).Deny
		}
		if _, err := call(ctx, "acme", b.ID, approval.DecisionRequest{}); code(err) != approval.CodeUsed || !strings.Contains(err.Error(), "409") {
			t.Fatalf("decide a used one (deny %v): %v", deny, err)
		}
	}
	if _, err := e.admin.GetApproval(ctx, "acme", "apr_"+strings.Repeat("z", 27)); code(err) != approval.CodeUnknown || !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("unknown: %v", err)
	}
	if n := counter(t, e.reg, "passport_authority_approval_decisions_total", "result", approval.CodeAlreadyApproved); n != 1 {
		t.Fatalf("already approved counted %v", n)
	}
}

func TestApprovalsAPIRefusesBadRequests(t *testing.T) {
	e, st := approvalEnv(t)
	a := pending(t, st, "acme", "agt_deployer")
	auth := func(tok string) func(*http.Request) {
		return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) }
	}
	for _, tc := range []struct {
		name, token, body string
		status            int
		code              string
	}{
		{"unknown field", bobToken, `{"comment":"x","approver":"carol"}`, http.StatusBadRequest, "invalid_json"},
		{"not an object", bobToken, `"yes"`, http.StatusBadRequest, "invalid_json"},
		{"trailing data", bobToken, `{"comment":"x"} {}`, http.StatusBadRequest, "invalid_json"},
		{"control character", bobToken, `{"comment":"a\u0000b"}`, http.StatusBadRequest, "invalid_comment"},
		{"escape sequence", bobToken, `{"comment":"\u001b[31mred"}`, http.StatusBadRequest, "invalid_comment"},
		{"long comment", bobToken, `{"comment":"` + strings.Repeat("c", approval.MaxCommentLen+1) + `"}`, http.StatusBadRequest, "invalid_comment"},
		{"via from an approver", bobToken, `{"via":"dashboard:someone-else"}`, http.StatusBadRequest, "invalid_via"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := e.post("/v1/tenants/acme/approvals/"+a.ID+"/approve", "application/json", tc.body, auth(tc.token))
			if resp.StatusCode != tc.status || !strings.Contains(string(body), `"code":"`+tc.code+`"`) {
				t.Fatalf("%d %s, want %d %s", resp.StatusCode, body, tc.status, tc.code)
			}
		})
	}
	if got, _ := st.Get(context.Background(), "acme", a.ID); got.State != approval.StatePending || len(got.Approvers) != 0 {
		t.Fatalf("refused requests changed the approval: %+v", got)
	}
	for _, q := range []string{"state=open", "limit=0", "limit=1001", "limit=x"} {
		if resp, body := e.get("/v1/tenants/acme/approvals?"+q, bobToken); resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("list ?%s: %d %s", q, resp.StatusCode, body)
		}
	}
}

func TestParseApproverTokens(t *testing.T) {
	got, err := ParseApproverTokens(" alice@example.com=tok-aaaaaaaaaaaaaaaa, acme+globex:bob=tok-b=padded== ,,acme:carol=tok-c")
	if err != nil || len(got) != 3 ||
		got[0].Approver != "alice@example.com" || got[0].Token != "tok-aaaaaaaaaaaaaaaa" || got[0].Tenants != nil ||
		got[1].Approver != "bob" || got[1].Token != "tok-b=padded==" || strings.Join(got[1].Tenants, ",") != "acme,globex" ||
		got[2].Approver != "carol" || strings.Join(got[2].Tenants, ",") != "acme" {
		t.Fatalf("%+v %v", got, err)
	}
	if _, err := ParseApproverTokens("alice=ok-token-0123456789,secret-without-a-name"); err == nil || strings.Contains(err.Error(), "secret") {
		t.Fatalf("malformed entry: %v (must not echo it)", err)
	}
}

func TestApproverTokensConfig(t *testing.T) {
	cfg := testConfig()
	cfg.ReporterTokens = []string{reporterToken}
	cfg.ApplyEnv(func(k string) string {
		if k == "PASSPORT_APPROVER_TOKENS" {
			return "acme:alice=" + aliceToken + ",broken-entry-secret"
		}
		return ""
	})
	cfg.ApproverTokens = append(cfg.ApproverTokens,
		ApproverToken{Approver: "admin", Token: "another-token-0123456789"},
		ApproverToken{Approver: "carol", Token: "tiny"},
		ApproverToken{Approver: "dave", Token: testAdminToken},
		ApproverToken{Approver: "erin", Token: reporterToken},
		ApproverToken{Approver: "frank", Token: aliceToken},
		ApproverToken{Approver: "bad name", Token: "bad-name-token-0123456789"},
		ApproverToken{Approver: "gina", Token: "gina-token-0123456789", Tenants: []string{"Acme"}},
	)
	err := cfg.Validate()
	if err == nil {
		t.Fatal("Validate accepted bad approver tokens")
	}
	msg := err.Error()
	for _, want := range []string{"PASSPORT_APPROVER_TOKENS entry 2", `approver "admin"`, "(carol): token shorter",
		"(dave): token is also an admin", "(erin): token is also an admin or reporter", "(frank): token also names approver alice",
		`approver "bad name"`, `(gina): tenant "Acme"`} {
		if !strings.Contains(msg, want) {
			t.Errorf("Validate: %v\nmissing %q", msg, want)
		}
	}
	for _, secret := range []string{aliceToken, testAdminToken, reporterToken, "broken-entry-secret", "tiny"} {
		if strings.Contains(msg, secret) {
			t.Errorf("Validate echoes a token: %q", secret)
		}
	}
	// The same approver may hold two tokens (rotation).
	ok := testConfig()
	ok.ApproverTokens = []ApproverToken{{Approver: "alice", Token: aliceToken}, {Approver: "Alice", Token: bobToken}}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
}

// With Redis gone the approvals API answers 503 and says nothing else:
// no decision is reported as made.
func TestApprovalsAPIWithoutRedis(t *testing.T) {
	e, st := approvalEnv(t)
	a := pending(t, st, "acme", "agt_deployer")
	e.rs.Kill()
	for _, path := range []string{"/v1/tenants/acme/approvals?state=pending", "/v1/tenants/acme/approvals/" + a.ID} {
		if resp, body := e.get(path, bobToken); resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("GET %s: %d %s", path, resp.StatusCode, body)
		}
	}
	resp, body := e.post("/v1/tenants/acme/approvals/"+a.ID+"/approve", "application/json", `{"comment":"x"}`, func(r *http.Request) {
		r.Header.Set("Authorization", "Bearer "+bobToken)
	})
	if resp.StatusCode != http.StatusServiceUnavailable || strings.Contains(string(body), "granted") {
		t.Fatalf("approve without Redis: %d %s", resp.StatusCode, body)
	}
	if n := len(e.sink.kinds(audit.KindApprovalApproved)); n != 0 {
		t.Fatalf("%d approval records for a decision that was not made", n)
	}
}
