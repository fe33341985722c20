package proxy

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/approval"
	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/budget"
	"github.com/agentpassport/passport/internal/redistest"
)

// TestProxyACLCoversApprovalsAndBudgets: the Redis user of
// audit.ProxyACLRules can do what the proxy does with approvals (create,
// read, consume) and budgets (reserve, release), and still cannot write an
// agent's hash or delete an approval.
func TestProxyACLCoversApprovalsAndBudgets(t *testing.T) {
	srv := redistest.Start(t)
	admin := srv.Client()
	ctx := context.Background()
	args := []any{"ACL", "SETUSER", "passport-proxy", "on", ">proxy-secret"}
	for _, r := range strings.Fields(audit.ProxyACLRules) {
		args = append(args, r)
	}
	if err := admin.Do(ctx, args...).Err(); err != nil {
		t.Fatalf("ACL SETUSER: %v", err)
	}
	acl := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "passport-proxy", Password: "proxy-secret"})
	t.Cleanup(func() { _ = acl.Close() })

	store := approval.NewStore(acl, approval.Options{})
	body := []byte(`{"version":"v2"}`)
	ap, created, err := store.Create(ctx, approval.Request{Tenant: "acme", AgentID: "deployer-1", JTI: "j1", RequestID: "r1",
		Method: "POST", Path: "/deployments/payments", Body: body, Action: "deployment.deploy", Resource: "payments", TTL: time.Minute})
	if err != nil || !created {
		t.Fatalf("create an approval as the proxy user: %v (created %v)", err, created)
	}
	if _, err := approval.NewStore(admin, approval.Options{}).Approve(ctx, "acme", ap.ID, approval.Vote{Approver: "alice"}); err != nil {
		t.Fatalf("approve (as the authority): %v", err)
	}
	if _, err := store.Get(ctx, "acme", ap.ID); err != nil {
		t.Fatalf("read an approval as the proxy user: %v", err)
	}
	if _, err := store.Consume(ctx, ap.ID, approval.Call{Tenant: "acme", AgentID: "deployer-1", Method: "POST",
		Path: "/deployments/payments", Body: body, RequestID: "r2"}); err != nil {
		t.Fatalf("consume an approval as the proxy user: %v", err)
	}

	b := budget.Budget{Name: "restarts", Per: budget.PerAgent, Limit: 2, Window: time.Minute}
	k := budgetKey("acme", b, "healer-1", "checkout")
	res, err := reserveScript.Run(ctx, acl, []string{k}, "req-1", b.Limit, b.Window.Milliseconds()).Int64Slice()
	if err != nil || len(res) != 4 || res[0] != 1 {
		t.Fatalf("reserve a budget unit as the proxy user: %v %v", res, err)
	}
	if err := releaseScript.Run(ctx, acl, []string{k}, "req-1").Err(); err != nil {
		t.Fatalf("release a budget unit as the proxy user: %v", err)
	}

	for name, cmd := range map[string][]any{
		"delete an approval":  {"DEL", approval.Key("acme", ap.ID)},
		"write an agent hash": {"HSET", "passport:{t:acme}:agent:a1", "blocked", "0"},
		"zadd elsewhere":      {"ZADD", "passport:revoked", "1", "x"},
	} {
		if err := acl.Do(ctx, cmd...).Err(); err == nil || !strings.Contains(err.Error(), "NOPERM") {
			t.Errorf("%s as the proxy user: %v, want NOPERM", name, err)
		}
	}
}
