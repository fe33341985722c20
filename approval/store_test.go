package approval_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/approval"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// newClock starts at the real time (to the millisecond, as stored): keys
// still expire by Redis's own clock.
func newClock() *clock { return &clock{t: time.Now().UTC().Truncate(time.Millisecond)} }

type env struct {
	rdb   redis.UniversalClient
	clock *clock
	store *approval.Store
}

func start(t *testing.T, opts ...approval.Options) *env {
	t.Helper()
	rs := redistest.Start(t)
	rdb := rs.Client()
	t.Cleanup(func() { rdb.Close() })
	return newEnv(rdb, opts...)
}

func newEnv(rdb redis.UniversalClient, opts ...approval.Options) *env {
	c := newClock()
	var o approval.Options
	if len(opts) > 0 {
		o = opts[0]
	}
	o.Clock = c.Now
	return &env{rdb: rdb, clock: c, store: approval.NewStore(rdb, o)}
}

// deploy is the call of the demo: a deployer deploys payments.
func deploy() approval.Request {
	return approval.Request{
		Tenant: "acme", AgentID: "agt_deployer", AgentName: "deployer-1", AgentType: "deployer",
		JTI: "jti-1", RequestID: "req-1",
		Method: "POST", Path: "/deployments/payments", Query: "dry_run=false",
		Body:   []byte(`{"version":"v2.4.1"}`),
		Action: "deployment.deploy", Resource: "payments",
		Reasons: []string{"approval_required"}, Reason: "deploys to payments need a person",
	}
}

// callOf is the identical call repeated by the same agent.
func callOf(r approval.Request) approval.Call {
	return approval.Call{Tenant: r.Tenant, AgentID: r.AgentID, Method: r.Method, Path: r.Path, Query: r.Query,
		Body: r.Body, RequestID: "req-2"}
}

func (e *env) create(t *testing.T, r approval.Request) approval.Approval {
	t.Helper()
	a, created, err := e.store.Create(context.Background(), r)
	if err != nil || !created {
		t.Fatalf("create: created %v, %v", created, err)
	}
	return a
}

func (e *env) approve(t *testing.T, a approval.Approval, who string) approval.Approval {
	t.Helper()
	got, err := e.store.Approve(context.Background(), a.Tenant, a.ID, approval.Vote{Approver: who, Comment: "ok by " + who})
	if err != nil {
		t.Fatalf("approve by %s: %v", who, err)
	}
	return got
}

func TestKeysShareTheTenantSlot(t *testing.T) {
	for _, k := range []string{approval.Key("acme", "apr_x"), approval.IndexKey("acme"), approval.CallKey("acme", "ab12"),
		passport.AgentKey("acme", "agt_1")} {
		if !strings.HasPrefix(k, "passport:{t:acme}:") {
			t.Errorf("key %q is not in the tenant's hash slot", k)
		}
		if redistest.Slot(k) != redistest.Slot(approval.IndexKey("acme")) {
			t.Errorf("key %q: slot %d, the index's %d", k, redistest.Slot(k), redistest.Slot(approval.IndexKey("acme")))
		}
	}
	if got := approval.Key("acme", "apr_x"); got != "passport:{t:acme}:approval:apr_x" {
		t.Errorf("Key = %q", got)
	}
}

func TestCreateGetAndList(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	r := deploy()
	r.Approvers = 2
	r.ExcludeOwner = true
	a := e.create(t, r)
	if !approval.ValidID(a.ID) || a.State != approval.StatePending || a.Tenant != "acme" || a.AgentID != "agt_deployer" ||
		a.Method != "POST" || a.Path != "/deployments/payments" || a.Query != "dry_run=false" ||
		a.BodySHA256 != approval.Digest(r.Body) || a.Body != `{"version":"v2.4.1"}` || a.BodyBytes != len(r.Body) || a.BodyTruncated ||
		a.Action != "deployment.deploy" || a.Resource != "payments" || a.RequiredApprovers != 2 || !a.ExcludeOwner ||
		len(a.Reasons) != 1 || a.Reasons[0] != "approval_required" || a.Reason != r.Reason ||
		!a.CreatedAt.Equal(e.clock.Now()) || !a.ExpiresAt.Equal(e.clock.Now().Add(approval.DefaultTTL)) ||
		len(a.Approvers) != 0 || a.GrantedAt != nil || a.JTI != "jti-1" || a.RequestID != "req-1" {
		t.Fatalf("created %+v", a)
	}
	got, err := e.store.Get(ctx, "acme", a.ID)
	if err != nil || got.ID != a.ID || got.BodySHA256 != a.BodySHA256 {
		t.Fatalf("get: %+v %v", got, err)
	}
	// Another tenant does not see it, whatever the id.
	if _, err := e.store.Get(ctx, "globex", a.ID); !errors.Is(err, approval.ErrUnknown) {
		t.Fatalf("get from globex: %v, want unknown", err)
	}
	for _, id := range []string{"", "apr_", "apr_short", "apr_" + strings.Repeat("a", 20) + "}", "x" + a.ID[1:]} {
		if _, err := e.store.Get(ctx, "acme", id); !errors.Is(err, approval.ErrUnknown) {
			t.Errorf("get %q: %v, want unknown", id, err)
		}
	}
	e.clock.Advance(time.Second)
	other := deploy()
	other.Path = "/deployments/checkout"
	b := e.create(t, other)
	list, err := e.store.List(ctx, "acme", approval.StatePending, 0)
	if err != nil || len(list) != 2 || list[0].ID != b.ID || list[1].ID != a.ID {
		t.Fatalf("pending list (newest first): %v %v", ids(list), err)
	}
	if list, _ := e.store.List(ctx, "globex", "", 0); len(list) != 0 {
		t.Fatalf("globex lists %v", ids(list))
	}
	if list, _ := e.store.List(ctx, "acme", approval.StatePending, 1); len(list) != 1 || list[0].ID != b.ID {
		t.Fatalf("limit 1: %v", ids(list))
	}
}

func ids(list []approval.Approval) []string {
	out := make([]string, len(list))
	for i, a := range list {
		out[i] = a.ID + "/" + string(a.State)
	}
	return out
}

// An agent that repeats a call still waiting for a person gets the same
// approval, not a new one each time; a different call gets its own, and
// once the approval is denied (or used, or expired) the call asks anew.
func TestCreateSameCallKeepsOneApproval(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	a := e.create(t, deploy())
	again, created, err := e.store.Create(ctx, deploy())
	if err != nil || created || again.ID != a.ID {
		t.Fatalf("same call: %s created %v %v, want %s", again.ID, created, err, a.ID)
	}
	for name, mut := range map[string]func(*approval.Request){
		"body":   func(r *approval.Request) { r.Body = []byte(`{"version":"v2.4.2"}`) },
		"query":  func(r *approval.Request) { r.Query = "" },
		"path":   func(r *approval.Request) { r.Path = "/deployments/checkout" },
		"method": func(r *approval.Request) { r.Method = "PUT" },
		"agent":  func(r *approval.Request) { r.AgentID = "agt_other" },
	} {
		r := deploy()
		mut(&r)
		if b := e.create(t, r); b.ID == a.ID {
			t.Errorf("another %s shares approval %s", name, a.ID)
		}
	}
	// Granted and not used: still the same one.
	e.approve(t, a, "alice")
	if again, created, _ := e.store.Create(ctx, deploy()); created || again.ID != a.ID || again.State != approval.StateGranted {
		t.Fatalf("granted call: %s %s created %v", again.ID, again.State, created)
	}
	if _, err := e.store.Deny(ctx, "acme", a.ID, approval.Vote{Approver: "bob"}); err != nil {
		t.Fatal(err)
	}
	if b, created, err := e.store.Create(ctx, deploy()); err != nil || !created || b.ID == a.ID {
		t.Fatalf("after a denial: %s created %v %v", b.ID, created, err)
	}
}

func TestCreateLimitPerTenant(t *testing.T) {
	e := start(t, approval.Options{MaxLive: 3})
	ctx := context.Background()
	for i := range 3 {
		r := deploy()
		r.Query = fmt.Sprint("n=", i)
		e.create(t, r)
	}
	r := deploy()
	r.Query = "n=3"
	if _, _, err := e.store.Create(ctx, r); !errors.Is(err, approval.ErrLimit) {
		t.Fatalf("fourth live approval: %v, want %v", err, approval.ErrLimit)
	}
	// The same call of an existing one is still answered.
	r.Query = "n=0"
	if _, created, err := e.store.Create(ctx, r); err != nil || created {
		t.Fatalf("existing call at the limit: created %v %v", created, err)
	}
	// Another tenant has its own limit.
	g := deploy()
	g.Tenant = "globex"
	e.create(t, g)
	// Once they expire, there is room again.
	e.clock.Advance(approval.DefaultTTL)
	r.Query = "n=3"
	e.create(t, r)
}

// N of M: a policy asks for two approvers; one approver counts once
// (whatever the case of its name), the second distinct one grants it, and
// nobody can approve further.
func TestApproveNOfM(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	r := deploy()
	r.Approvers = 2
	a := e.create(t, r)
	got := e.approve(t, a, "alice@example.com")
	if got.State != approval.StatePending || len(got.Approvers) != 1 || got.Approvers[0].Approver != "alice@example.com" ||
		got.Approvers[0].Comment != "ok by alice@example.com" || !got.Approvers[0].At.Equal(e.clock.Now()) {
		t.Fatalf("after one approver: %+v", got)
	}
	for _, who := range []string{"alice@example.com", "Alice@Example.com"} {
		if _, err := e.store.Approve(ctx, "acme", a.ID, approval.Vote{Approver: who}); !errors.Is(err, approval.ErrAlreadyApproved) {
			t.Fatalf("%s again: %v, want already approved", who, err)
		}
	}
	if _, err := e.store.Consume(ctx, a.ID, callOf(r)); !errors.Is(err, approval.ErrPending) {
		t.Fatalf("consume with one of two: %v, want pending", err)
	}
	e.clock.Advance(time.Second)
	got = e.approve(t, a, "bob")
	if got.State != approval.StateGranted || got.GrantedAt == nil || !got.GrantedAt.Equal(e.clock.Now()) || len(got.Approvers) != 2 ||
		got.Approvers[0].Approver != "alice@example.com" || got.Approvers[1].Approver != "bob" {
		t.Fatalf("after two: %+v", got)
	}
	if _, err := e.store.Approve(ctx, "acme", a.ID, approval.Vote{Approver: "carol"}); !errors.Is(err, approval.ErrGranted) {
		t.Fatalf("third approver: %v, want granted already", err)
	}
	used, err := e.store.Consume(ctx, a.ID, callOf(r))
	if err != nil || used.State != approval.StateUsed || used.UsedAt == nil || used.UsedRequestID != "req-2" || len(used.Approvers) != 2 {
		t.Fatalf("consume: %+v %v", used, err)
	}
}

// Many approvers at once: exactly N are counted, the others are told it
// is granted already; one approver racing itself counts once.
func TestApproveConcurrent(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	r := deploy()
	r.Approvers = 3
	a := e.create(t, r)
	var ok, granted atomic.Int32
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := e.store.Approve(ctx, "acme", a.ID, approval.Vote{Approver: fmt.Sprint("approver-", i)})
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, approval.ErrGranted):
				granted.Add(1)
			default:
				t.Errorf("approve: %v", err)
			}
		}()
	}
	wg.Wait()
	got, _ := e.store.Get(ctx, "acme", a.ID)
	if ok.Load() != 3 || granted.Load() != 17 || got.State != approval.StateGranted || len(got.Approvers) != 3 {
		t.Fatalf("20 approvers for 3: %d counted, %d told granted, state %s with %d approvers", ok.Load(), granted.Load(), got.State, len(got.Approvers))
	}

	b := e.create(t, func() approval.Request { r := deploy(); r.Query = "b"; r.Approvers = 2; return r }())
	ok.Store(0)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := e.store.Approve(ctx, "acme", b.ID, approval.Vote{Approver: "alice"}); err == nil {
				ok.Add(1)
			} else if !errors.Is(err, approval.ErrAlreadyApproved) {
				t.Errorf("approve: %v", err)
			}
		}()
	}
	wg.Wait()
	got, _ = e.store.Get(ctx, "acme", b.ID)
	if ok.Load() != 1 || got.State != approval.StatePending || len(got.Approvers) != 1 {
		t.Fatalf("one approver 20 times: counted %d, state %s, %d approvers", ok.Load(), got.State, len(got.Approvers))
	}
}

// The agent's registered owner may not approve when the approval says so;
// it may when it does not, and may always deny.
func TestApproveOwnerExcluded(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	if err := e.rdb.HSet(ctx, passport.AgentKey("acme", "agt_deployer"), passport.FieldOwner, "Alice@Example.com").Err(); err != nil {
		t.Fatal(err)
	}
	r := deploy()
	r.ExcludeOwner = true
	a := e.create(t, r)
	if _, err := e.store.Approve(ctx, "acme", a.ID, approval.Vote{Approver: "alice@example.com"}); !errors.Is(err, approval.ErrOwnerExcluded) {
		t.Fatalf("owner approves: %v, want owner excluded", err)
	}
	if got := e.approve(t, a, "bob"); got.State != approval.StateGranted {
		t.Fatalf("another approver: %s", got.State)
	}

	r2 := deploy()
	r2.Query = "other"
	b := e.create(t, r2)
	if got := e.approve(t, b, "alice@example.com"); got.State != approval.StateGranted {
		t.Fatalf("owner without exclusion: %s", got.State)
	}
	r3 := deploy()
	r3.Query = "third"
	r3.ExcludeOwner = true
	c := e.create(t, r3)
	if got, err := e.store.Deny(ctx, "acme", c.ID, approval.Vote{Approver: "alice@example.com", Comment: "not now"}); err != nil ||
		got.State != approval.StateDenied || got.DeniedBy == nil || got.DeniedBy.Approver != "alice@example.com" || got.DeniedBy.Comment != "not now" {
		t.Fatalf("owner denies: %+v %v", got, err)
	}
}

func TestDeny(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	r := deploy()
	a := e.create(t, r)
	if _, err := e.store.Deny(ctx, "acme", a.ID, approval.Vote{Approver: "bob", Comment: "no"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.Approve(ctx, "acme", a.ID, approval.Vote{Approver: "alice"}); !errors.Is(err, approval.ErrDenied) {
		t.Fatalf("approve a denied one: %v", err)
	}
	if _, err := e.store.Deny(ctx, "acme", a.ID, approval.Vote{Approver: "alice"}); !errors.Is(err, approval.ErrDenied) {
		t.Fatalf("deny twice: %v", err)
	}
	if _, err := e.store.Consume(ctx, a.ID, callOf(r)); !errors.Is(err, approval.ErrDenied) {
		t.Fatalf("consume a denied one: %v", err)
	}
	// Granted and not used yet: a denial still stops it.
	r.Query = "granted"
	b := e.create(t, r)
	e.approve(t, b, "alice")
	if got, err := e.store.Deny(ctx, "acme", b.ID, approval.Vote{Approver: "bob"}); err != nil || got.State != approval.StateDenied || len(got.Approvers) != 1 {
		t.Fatalf("deny a granted one: %+v %v", got, err)
	}
	if _, err := e.store.Consume(ctx, b.ID, callOf(r)); !errors.Is(err, approval.ErrDenied) {
		t.Fatalf("consume after the denial: %v", err)
	}
	// Used: too late to deny.
	r.Query = "used"
	c := e.create(t, r)
	e.approve(t, c, "alice")
	if _, err := e.store.Consume(ctx, c.ID, callOf(r)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.Deny(ctx, "acme", c.ID, approval.Vote{Approver: "bob"}); !errors.Is(err, approval.ErrUsed) {
		t.Fatalf("deny a used one: %v", err)
	}
	if _, err := e.store.Deny(ctx, "acme", "apr_"+strings.Repeat("x", 27), approval.Vote{Approver: "bob"}); !errors.Is(err, approval.ErrUnknown) {
		t.Fatalf("deny an unknown one: %v", err)
	}
}

// Consume opens exactly the approved call: another agent, tenant, method,
// path, query or body is refused with its own code, and a refusal does not
// use the approval up; a second use, a denied, expired or pending one are
// refused with theirs.
func TestConsumeRefusals(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	r := deploy()
	a := e.create(t, r)
	e.approve(t, a, "alice")
	for _, tc := range []struct {
		name string
		mut  func(*approval.Call)
		want error
	}{
		{"other agent", func(c *approval.Call) { c.AgentID = "agt_rogue" }, &approval.Error{Code: approval.CodeMismatch, Field: "agent"}},
		{"other tenant", func(c *approval.Call) { c.Tenant = "globex" }, approval.ErrUnknown},
		{"other method", func(c *approval.Call) { c.Method = "PUT" }, &approval.Error{Code: approval.CodeMismatch, Field: "method"}},
		{"other path", func(c *approval.Call) { c.Path = "/deployments/checkout" }, &approval.Error{Code: approval.CodeMismatch, Field: "path"}},
		{"path spelt otherwise", func(c *approval.Call) { c.Path = "/deployments/payments/" }, &approval.Error{Code: approval.CodeMismatch, Field: "path"}},
		{"other query", func(c *approval.Call) { c.Query = "dry_run=true" }, &approval.Error{Code: approval.CodeMismatch, Field: "query"}},
		{"no query", func(c *approval.Call) { c.Query = "" }, &approval.Error{Code: approval.CodeMismatch, Field: "query"}},
		{"other body", func(c *approval.Call) { c.Body = []byte(`{"version":"v9"}`) }, &approval.Error{Code: approval.CodeMismatch, Field: "body"}},
		{"body with a space", func(c *approval.Call) { c.Body = []byte(`{"version": "v2.4.1"}`) }, &approval.Error{Code: approval.CodeMismatch, Field: "body"}},
		{"empty body", func(c *approval.Call) { c.Body = nil }, &approval.Error{Code: approval.CodeMismatch, Field: "body"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := callOf(r)
			tc.mut(&c)
			_, err := e.store.Consume(ctx, a.ID, c)
			var ae *approval.Error
			if !errors.As(err, &ae) || !errors.Is(err, tc.want) || (ae.Field != "" && ae.Field != tc.want.(*approval.Error).Field) {
				t.Fatalf("consume: %v, want %v", err, tc.want)
			}
		})
	}
	// None of these used it up.
	if _, err := e.store.Consume(ctx, a.ID, callOf(r)); err != nil {
		t.Fatalf("the exact call after the refusals: %v", err)
	}
	if _, err := e.store.Consume(ctx, a.ID, callOf(r)); !errors.Is(err, approval.ErrUsed) {
		t.Fatalf("replay: %v, want used", err)
	}
	// Another agent learns nothing of the state.
	other := callOf(r)
	other.AgentID = "agt_rogue"
	if _, err := e.store.Consume(ctx, a.ID, other); !errors.Is(err, approval.ErrMismatch) {
		t.Fatalf("another agent on a used approval: %v, want mismatch", err)
	}
	if _, err := e.store.Consume(ctx, "apr_"+strings.Repeat("u", 27), callOf(r)); !errors.Is(err, approval.ErrUnknown) {
		t.Fatalf("unknown id: %v", err)
	}

	// Expired: granted but too late.
	r.Query = "late"
	b := e.create(t, r)
	e.approve(t, b, "alice")
	e.clock.Advance(approval.DefaultTTL)
	if _, err := e.store.Consume(ctx, b.ID, callOf(r)); !errors.Is(err, approval.ErrExpired) {
		t.Fatalf("consume at expiry: %v, want expired", err)
	}
	if got, _ := e.store.Get(ctx, "acme", b.ID); got.State != approval.StateExpired {
		t.Fatalf("state at expiry: %s", got.State)
	}
	if _, err := e.store.Approve(ctx, "acme", b.ID, approval.Vote{Approver: "bob"}); !errors.Is(err, approval.ErrExpired) {
		t.Fatalf("approve at expiry: %v", err)
	}
	if list, _ := e.store.List(ctx, "acme", approval.StatePending, 0); len(list) != 0 {
		t.Fatalf("pending after expiry: %v", ids(list))
	}
	if list, _ := e.store.List(ctx, "acme", approval.StateExpired, 0); len(list) != 1 || list[0].ID != b.ID {
		t.Fatalf("expired list: %v", ids(list))
	}
}

// Fifty identical calls present the same granted approval at once,
// through two clients (two proxies): exactly one goes through.
func TestConsumeConcurrentExactlyOnce(t *testing.T) {
	rs := redistest.Start(t)
	proxies := []*redis.Client{rs.Client(), rs.Client()}
	for _, c := range proxies {
		t.Cleanup(func() { c.Close() })
	}
	e := newEnv(proxies[0])
	second := approval.NewStore(proxies[1], approval.Options{Clock: e.clock.Now})
	ctx := context.Background()
	for round := range 3 {
		r := deploy()
		r.Query = fmt.Sprint("round=", round)
		a := e.create(t, r)
		e.approve(t, a, "alice")
		var ok, used atomic.Int32
		var wg sync.WaitGroup
		gate := make(chan struct{})
		for i := range 50 {
			st := e.store
			if i%2 == 1 {
				st = second
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				_, err := st.Consume(ctx, a.ID, callOf(r))
				switch {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, approval.ErrUsed):
					used.Add(1)
				default:
					t.Errorf("consume: %v", err)
				}
			}()
		}
		close(gate)
		wg.Wait()
		if ok.Load() != 1 || used.Load() != 49 {
			t.Fatalf("round %d: %d consumed, %d told used; want 1 and 49", round, ok.Load(), used.Load())
		}
	}
}

// Records live Retention past their expiry, then Redis drops them; the
// call key lives until the expiry.
func TestExpiryTimes(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	r := deploy()
	r.TTL = time.Minute
	a := e.create(t, r)
	// Lifetimes are relative, counted by Redis's clock.
	ttl, err := e.rdb.PTTL(ctx, approval.Key("acme", a.ID)).Result()
	if want := time.Minute + approval.Retention; err != nil || ttl > want || ttl < want-time.Minute {
		t.Fatalf("hash lives %v (%v), want about %v", ttl, err, want)
	}
	keys, err := e.rdb.Keys(ctx, "passport:{t:acme}:approval-call:*").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("call keys %v %v", keys, err)
	}
	if ttl, _ := e.rdb.PTTL(ctx, keys[0]).Result(); ttl > time.Minute || ttl < 30*time.Second {
		t.Fatalf("call key lives %v, want about 1m", ttl)
	}
	if score, _ := e.rdb.ZScore(ctx, approval.IndexKey("acme"), a.ID).Result(); int64(score) != a.ExpiresAt.UnixMilli() {
		t.Fatalf("index score %v", score)
	}
	// Past the retention the index entry is pruned at the next create.
	e.clock.Advance(time.Minute + approval.Retention + time.Second)
	r.Query = "later"
	e.create(t, r)
	if n, _ := e.rdb.ZCard(ctx, approval.IndexKey("acme")).Result(); n != 1 {
		t.Fatalf("index holds %d entries, want the new one only", n)
	}
}

func TestCreateRefusesMalformedRequests(t *testing.T) {
	e := start(t)
	for name, mut := range map[string]func(*approval.Request){
		"tenant":        func(r *approval.Request) { r.Tenant = "acme}:x" },
		"no agent":      func(r *approval.Request) { r.AgentID = "" },
		"method":        func(r *approval.Request) { r.Method = "post" },
		"path":          func(r *approval.Request) { r.Path = "deployments" },
		"path control":  func(r *approval.Request) { r.Path = "/a\nb" },
		"action":        func(r *approval.Request) { r.Action = "Deploy" },
		"no resource":   func(r *approval.Request) { r.Resource = "" },
		"reason code":   func(r *approval.Request) { r.Reasons = []string{"Approval Required"} },
		"approvers":     func(r *approval.Request) { r.Approvers = approval.MaxApprovers + 1 },
		"ttl":           func(r *approval.Request) { r.TTL = approval.MaxTTL + time.Second },
		"agent name":    func(r *approval.Request) { r.AgentName = strings.Repeat("n", 129) },
		"reason prose":  func(r *approval.Request) { r.Reason = "a\x00b" },
		"query control": func(r *approval.Request) { r.Query = "a=\x7f" },
	} {
		r := deploy()
		mut(&r)
		if _, _, err := e.store.Create(context.Background(), r); !errors.Is(err, approval.ErrInvalid) {
			t.Errorf("%s: %v, want invalid", name, err)
		}
	}
	if n, _ := e.rdb.DBSize(context.Background()).Result(); n != 0 {
		t.Fatalf("%d keys written by refused requests", n)
	}
}

func TestBodyPreview(t *testing.T) {
	e := start(t)
	r := deploy()
	r.Body = []byte(strings.Repeat("é", approval.MaxBodyPreview)) // 2 bytes each
	a := e.create(t, r)
	if !a.BodyTruncated || a.BodyBytes != 2*approval.MaxBodyPreview || len(a.Body) != approval.MaxBodyPreview || a.BodyEncoding != "" {
		t.Fatalf("long text body: truncated %v, %d bytes, preview %d, encoding %q", a.BodyTruncated, a.BodyBytes, len(a.Body), a.BodyEncoding)
	}
	r.Body = append([]byte(strings.Repeat("a", approval.MaxBodyPreview-1)), "é"...) // é cut in half
	a = e.create(t, r)
	if len(a.Body) != approval.MaxBodyPreview-1 || a.BodyEncoding != "" {
		t.Fatalf("cut character: preview %d bytes, encoding %q", len(a.Body), a.BodyEncoding)
	}
	r.Body = []byte{0xff, 0xfe, 0x00}
	a = e.create(t, r)
	if a.Body != "//4A" || a.BodyEncoding != "base64" || a.BodySHA256 != approval.Digest([]byte{0xff, 0xfe, 0x00}) {
		t.Fatalf("binary body: %q %q", a.Body, a.BodyEncoding)
	}
}

// In Redis Cluster every script touches one slot: create, approve (which
// reads the agent's owner), deny, consume and list all work.
func TestCluster(t *testing.T) {
	c := redistest.StartCluster(t)
	rdb := c.Client()
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	for _, tenant := range []string{"acme", "globex", "initech"} {
		e := newEnv(rdb)
		if err := rdb.HSet(ctx, passport.AgentKey(tenant, "agt_deployer"), passport.FieldOwner, "carol").Err(); err != nil {
			t.Fatal(err)
		}
		r := deploy()
		r.Tenant, r.Approvers, r.ExcludeOwner = tenant, 2, true
		a := e.create(t, r)
		if _, err := e.store.Approve(ctx, tenant, a.ID, approval.Vote{Approver: "carol"}); !errors.Is(err, approval.ErrOwnerExcluded) {
			t.Fatalf("%s: owner: %v", tenant, err)
		}
		e.approve(t, a, "alice")
		e.approve(t, a, "bob")
		if _, err := e.store.Consume(ctx, a.ID, callOf(r)); err != nil {
			t.Fatalf("%s: consume: %v", tenant, err)
		}
		r.Query = "deny"
		b := e.create(t, r)
		if _, err := e.store.Deny(ctx, tenant, b.ID, approval.Vote{Approver: "alice"}); err != nil {
			t.Fatalf("%s: deny: %v", tenant, err)
		}
		if list, err := e.store.List(ctx, tenant, "", 0); err != nil || len(list) != 2 {
			t.Fatalf("%s: list %v %v", tenant, ids(list), err)
		}
	}
}

// What a person is shown cannot be disguised: control characters, bidi
// overrides and zero-width characters are written as escapes.
func TestVisible(t *testing.T) {
	for in, want := range map[string]string{
		"plain text\n\tindented":    "plain text\n\tindented",
		"ok\x1b[2K\rrm -rf /":       `ok\x1b[2K\x0drm -rf /`,
		"safe\u202e/ferh/":          `safe\u202e/ferh/`,
		"zero\u200bwidth\ufeff":     `zero\u200bwidth\ufeff`,
		"bad \xff byte":             `bad \xff byte`,
		"c1 \u0085 next line":       `c1 \u0085 next line`,
		"line\u2028separator":       `line\u2028separator`,
		`{"version":"v2.4.1"} é 日本`: `{"version":"v2.4.1"} é 日本`,
	} {
		if got := approval.Visible(in); got != want {
			t.Errorf("Visible(%q) = %q, want %q", in, got, want)
		}
	}
	e := start(t)
	r := deploy()
	r.Path = "/deployments/pay\u202ements"
	if _, _, err := e.store.Create(context.Background(), r); !errors.Is(err, approval.ErrInvalid) {
		t.Fatalf("a path with a bidi override: %v, want invalid", err)
	}
}

// An agent retrying the same call many times at once still makes one
// approval: every caller gets its id.
func TestCreateConcurrentSameCall(t *testing.T) {
	e := start(t)
	var created atomic.Int32
	ids := make([]string, 30)
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			a, c, err := e.store.Create(context.Background(), deploy())
			if err != nil {
				t.Errorf("create: %v", err)
				return
			}
			if c {
				created.Add(1)
			}
			ids[i] = a.ID
		}()
	}
	close(gate)
	wg.Wait()
	for _, id := range ids {
		if id != ids[0] {
			t.Fatalf("ids differ: %v", ids)
		}
	}
	if created.Load() != 1 {
		t.Fatalf("%d created, want 1", created.Load())
	}
	if n, _ := e.rdb.ZCard(context.Background(), approval.IndexKey("acme")).Result(); n != 1 {
		t.Fatalf("index holds %d approvals", n)
	}
}

// The refusal codes are reason codes: the proxy answers agents with them.
func TestCodesAreReasonCodes(t *testing.T) {
	re := regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	for _, c := range []string{approval.CodeUnknown, approval.CodePending, approval.CodeGranted, approval.CodeDenied, approval.CodeUsed,
		approval.CodeExpired, approval.CodeMismatch, approval.CodeAlreadyApproved, approval.CodeOwnerExcluded, approval.CodeLimit} {
		if !re.MatchString(c) {
			t.Errorf("%q is not a reason code", c)
		}
	}
}
