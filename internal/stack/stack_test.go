package stack_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/approval"
	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/stack"
	"github.com/agentpassport/passport/internal/tlsx"
	"github.com/agentpassport/passport/passport"
)

// running is a stack started for one test.
type running struct {
	demo    stack.Demo
	dataDir string
	rdb     redis.UniversalClient
	admin   *client.Admin
	// hc calls the stack: it trusts demo.json's ca_file alone when the
	// stack runs TLS, as curl --cacert does.
	hc *http.Client

	mu        sync.Mutex
	observers map[string]string // tenant -> an observer's passport, for reading the fleet
}

// startStack runs the whole demo on free loopback ports against a private
// redis-server (a private Redis Cluster with -tags cluster: testRedis),
// and stops it when the test ends.
func startStack(t *testing.T, cfg stack.Config) *running {
	t.Helper()
	rdb := testRedis(t, &cfg)
	cfg.DataDir = t.TempDir()
	cfg.ProxyPort, cfg.ProxyAdminPort, cfg.AuthorityPort, cfg.FleetPort, cfg.DashboardPort, cfg.HealerPort = -1, -1, -1, -1, -1, -1
	cfg.BcryptCost = 4
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan stack.Demo, 1)
	done := make(chan error, 1)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	go func() { done <- stack.Run(ctx, cfg, log, func(d stack.Demo) { ready <- d }) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("stack stopped with error: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("stack did not stop within 30s of cancel")
		}
	})
	var d stack.Demo
	select {
	case d = <-ready:
	case err := <-done:
		t.Fatalf("stack failed to start: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("stack not ready within 60s")
	}
	// demo.json is the contract scripts rely on.
	onDisk, err := stack.ReadDemo(cfg.DataDir)
	if err != nil {
		t.Fatalf("read demo.json: %v", err)
	}
	if onDisk.URLs.Proxy != d.URLs.Proxy || onDisk.AdminToken == "" || len(onDisk.Agents) == 0 {
		t.Fatalf("demo.json incomplete: %+v", onDisk.URLs)
	}
	// It names the Redis the test gave, which the stack used instead of
	// starting its own: one server's URL, or the Cluster's seeds.
	if onDisk.RedisURL != cfg.RedisURL || !slices.Equal(onDisk.RedisAddrs, cfg.RedisAddrs) {
		t.Fatalf("demo.json names Redis %q %v, want %q %v", onDisk.RedisURL, onDisk.RedisAddrs, cfg.RedisURL, cfg.RedisAddrs)
	}
	hc, err := tlsx.HTTPClient(onDisk.CAFile, 10*time.Second)
	if err != nil {
		t.Fatalf("demo.json's ca_file: %v", err)
	}
	admin, err := client.NewAdmin(d.URLs.Authority, passport.Secret(d.AdminToken), client.Options{HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	return &running{demo: d, dataDir: cfg.DataDir, rdb: rdb, admin: admin, hc: hc, observers: map[string]string{}}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// eventually polls cond every 50ms until it holds or the bound passes.
func eventually(t *testing.T, bound time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(bound)
	last := ""
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s (last: %s)", what, bound, last)
		}
		time.Sleep(50 * time.Millisecond) // polling an external system: there is no event to wait on
	}
}

func (r *running) records(t *testing.T, tenant string) []*audit.Record {
	t.Helper()
	var out []*audit.Record
	err := audit.ScanStream(context.Background(), r.rdb, audit.StreamKey(tenant), "-", 500, func(m redis.XMessage) error {
		rec, _, err := audit.ParseMessage(m)
		if err != nil {
			return err
		}
		out = append(out, rec)
		return nil
	})
	if err != nil {
		t.Fatalf("read audit stream %s: %v", tenant, err)
	}
	return out
}

type incidentDetails struct {
	ID           string `json:"id"`
	Type         string `json:"type"`
	Target       string `json:"target"`
	State        string `json:"state"`
	ResolutionMS int64  `json:"resolution_ms"`
	Action       string `json:"action"`
	// InjectedAt comes from the fleet's announcement of the fault.
	InjectedAt      *time.Time `json:"injected_at"`
	TimeToResolveMS int64      `json:"time_to_resolve_ms"`
}

func (r *running) incidents(t *testing.T, tenant string) map[string]incidentDetails {
	out := map[string]incidentDetails{}
	for _, rec := range r.records(t, tenant) {
		if rec.Kind != audit.KindIncident {
			continue
		}
		var d incidentDetails
		if err := json.Unmarshal(rec.Details, &d); err != nil {
			t.Fatalf("incident details: %v", err)
		}
		out[d.ID] = d // later records carry the later state
	}
	return out
}

func (r *running) agent(t *testing.T, tenant, role string) stack.DemoAgent {
	t.Helper()
	for _, a := range r.demo.Agents {
		if a.Tenant == tenant && a.Role == role {
			return a
		}
	}
	t.Fatalf("no %s agent for %s in demo.json", role, tenant)
	return stack.DemoAgent{}
}

func (r *running) passport(t *testing.T, a stack.DemoAgent, req client.TokenRequest) string {
	t.Helper()
	c, err := client.New(r.demo.URLs.Authority, a.ClientID, passport.Secret(a.ClientSecret), client.Options{HTTPClient: r.hc})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Token(context.Background(), req)
	if err != nil {
		t.Fatalf("passport for %s: %v", a.Name, err)
	}
	return tok.Raw
}

func call(t *testing.T, method, url, token string) (int, string) {
	t.Helper()
	return callWith(t, http.DefaultClient, method, url, token)
}

// call is call with the stack's client.
func (r *running) call(t *testing.T, method, url, token string) (int, string) {
	t.Helper()
	return callWith(t, r.hc, method, url, token)
}

func callWith(t *testing.T, hc *http.Client, method, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

type serviceStatus struct {
	Name          string  `json:"name"`
	Tenant        string  `json:"tenant"`
	Status        string  `json:"status"`
	Up            bool    `json:"up"`
	Fault         string  `json:"fault"`
	UptimeSeconds float64 `json:"uptime_seconds"`
}

// fleetServices reads the fleet through the proxy, as each tenant's
// observer agent: the fleet takes no call that bypasses the proxy.
func (r *running) fleetServices(t *testing.T) map[string]serviceStatus {
	t.Helper()
	out := map[string]serviceStatus{}
	for _, tenant := range []string{"acme", "globex"} {
		r.mu.Lock()
		tok, ok := r.observers[tenant]
		r.mu.Unlock()
		if !ok {
			tok = r.passport(t, r.agent(t, tenant, "observer"), client.TokenRequest{Scope: []string{"service.list"}})
			r.mu.Lock()
			r.observers[tenant] = tok
			r.mu.Unlock()
		}
		code, body := r.call(t, http.MethodGet, r.demo.URLs.Proxy+"/services", tok)
		if code != http.StatusOK {
			t.Fatalf("fleet /services through the proxy as %s's observer: %d %s", tenant, code, body)
		}
		var list struct {
			Services []serviceStatus `json:"services"`
		}
		if err := json.Unmarshal([]byte(body), &list); err != nil {
			t.Fatalf("fleet /services: %v", err)
		}
		for _, s := range list.Services {
			out[s.Name] = s
		}
	}
	return out
}

func (r *running) fireChaos(t *testing.T, tenant, typ, target string) {
	t.Helper()
	tok := r.passport(t, r.agent(t, tenant, "chaos"), client.TokenRequest{Scope: []string{"chaos.inject"}})
	req, _ := http.NewRequest(http.MethodPost, r.demo.URLs.Proxy+"/faults/"+target, strings.NewReader(fmt.Sprintf(`{"type":%q}`, typ)))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("chaos %s on %s through the proxy: %d %s", typ, target, resp.StatusCode, b)
	}
}

// TestEndToEndChaosIsHealedThroughTheProxy fires each of the four faults and
// follows it to RESOLVED, checking that the repair went through the proxy
// with a passport bound to the incident.
func TestEndToEndChaosIsHealedThroughTheProxy(t *testing.T) {
	r := startStack(t, stack.Config{ChaosInterval: -1, NoRogue: true})
	cases := []struct {
		typ, target, tenant, action string
	}{
		{"service_down", "checkout", "acme", "service.restart"},
		{"bad_deploy", "payments", "acme", "deployment.rollback"},
		{"memory_leak", "search", "globex", "service.restart"},
		{"cache_miss", "inventory", "globex", "cache.warm"},
	}
	var resolutions []time.Duration
	for _, tc := range cases {
		t.Run(tc.typ, func(t *testing.T) {
			fired := time.Now()
			r.fireChaos(t, tc.tenant, tc.typ, tc.target)
			var inc incidentDetails
			eventually(t, 15*time.Second, tc.typ+" incident RESOLVED", func() (bool, string) {
				for _, d := range r.incidents(t, tc.tenant) {
					if d.Target == tc.target && d.Type == tc.typ {
						inc = d
						return d.State == "RESOLVED", d.State
					}
				}
				return false, "no incident yet"
			})
			elapsed := time.Since(fired)
			resolutions = append(resolutions, elapsed)
			t.Logf("%s on %s: chaos to RESOLVED %v (healer's resolution %dms, %dms from injection)", tc.typ, tc.target,
				elapsed.Round(time.Millisecond), inc.ResolutionMS, inc.TimeToResolveMS)
			// The fleet announced the fault, so the incident is dated from
			// its injection, not from its detection.
			if inc.InjectedAt == nil || inc.InjectedAt.Before(fired) || inc.TimeToResolveMS < inc.ResolutionMS {
				t.Errorf("incident injected_at %v (fired at %v), time_to_resolve_ms %d, resolution_ms %d",
					inc.InjectedAt, fired, inc.TimeToResolveMS, inc.ResolutionMS)
			}

			// The repair went through the proxy: its allow record names
			// the incident, and the upstream answered.
			// Its passport named who is accountable for the healer
			// (oversight.owner), which the record's policy input keeps.
			var allowed bool
			ir := audit.NewInputResolver(r.rdb, tc.tenant)
			for _, rec := range r.records(t, tc.tenant) {
				if rec.Kind == audit.KindDecision && rec.Decision == audit.DecisionAllow &&
					rec.TaskID == inc.ID && rec.Action == tc.action && rec.Resource == tc.target {
					allowed = true
					var in struct {
						Passport struct {
							Oversight struct{ Owner string }
							Cnf       struct{ JKT string } // the healer's passports are DPoP-bound
						}
					}
					full, err := ir.Input(context.Background(), rec) // the claims sit in the passport record
					if err == nil {
						err = json.Unmarshal(full, &in)
					}
					if err != nil || in.Passport.Oversight.Owner != "sre-oncall" {
						t.Errorf("allow record's input: oversight owner %q (%v), want sre-oncall", in.Passport.Oversight.Owner, err)
					}
					if !passport.ValidThumbprint(in.Passport.Cnf.JKT) {
						t.Errorf("the healer's repair went through with a passport not bound to its key: cnf %+v", in.Passport.Cnf)
					}
				}
			}
			if !allowed {
				t.Errorf("no allow record for %s on %s with task %s in the audit stream", tc.action, tc.target, inc.ID)
			}
			eventually(t, 5*time.Second, tc.target+" healthy", func() (bool, string) {
				s := r.fleetServices(t)[tc.target]
				return s.Status == "ok" && s.Up && s.Fault == "", fmt.Sprintf("%+v", s)
			})
		})
	}
	sort.Slice(resolutions, func(i, j int) bool { return resolutions[i] < resolutions[j] })
	t.Logf("chaos to RESOLVED: %v", resolutions)

	// The fleet is healthy afterwards and the audit streams verify.
	for name, s := range r.fleetServices(t) {
		if s.Status != "ok" || !s.Up {
			t.Errorf("service %s not healthy after the run: %+v", name, s)
		}
	}
	for _, tenant := range stack.DefaultTenants {
		rep, err := audit.VerifyStream(context.Background(), r.rdb, tenant, audit.VerifyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !rep.OK() {
			t.Errorf("audit stream of %s does not verify: %+v", tenant, rep.First())
		}
	}
}

// TestEndToEndRogueIsBlocked lets the rogue agents run until the authority
// blocks them and checks that nothing they tried reached the fleet.
func TestEndToEndRogueIsBlocked(t *testing.T) {
	r := startStack(t, stack.Config{ChaosInterval: -1})
	before := r.fleetServices(t)
	start := time.Now()
	rogue := r.agent(t, "acme", "rogue")
	eventually(t, 30*time.Second, "rogue blocked", func() (bool, string) {
		a, err := r.admin.GetAgent(context.Background(), "acme", rogue.ID)
		if err != nil {
			return false, err.Error()
		}
		return a.Blocked, fmt.Sprintf("reputation %.1f", a.Reputation)
	})

	// Its credentials no longer buy a passport.
	c, err := client.New(r.demo.URLs.Authority, rogue.ClientID, passport.Secret(rogue.ClientSecret), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Token(context.Background(), client.TokenRequest{}); !errors.Is(err, client.ErrBlocked) {
		t.Fatalf("token for a blocked agent: err = %v, want ErrBlocked", err)
	}

	// Every attempt is on record, none was allowed, and the denials are what
	// brought it down.
	var denied int
	for _, rec := range r.records(t, "acme") {
		if rec.AgentID != rogue.ID || rec.Kind != audit.KindDecision {
			continue
		}
		if rec.Decision == audit.DecisionAllow {
			t.Errorf("rogue call allowed: %s %s", rec.Method, rec.Path)
		}
		if rec.Decision == audit.DecisionDeny {
			denied++
		}
	}
	if denied == 0 {
		t.Error("no denied rogue call in the audit stream")
	}
	var blockedRecord bool
	for _, rec := range r.records(t, "acme") {
		if rec.Kind == audit.KindAgentBlocked && strings.Contains(string(rec.Details), rogue.ID) {
			blockedRecord = true
		}
	}
	if !blockedRecord {
		t.Error("no agent_blocked record for the rogue")
	}

	// No restart reached the fleet: a restart resets a service's uptime.
	elapsed := time.Since(start).Seconds()
	for name, s := range r.fleetServices(t) {
		if s.UptimeSeconds+0.5 < before[name].UptimeSeconds+elapsed {
			t.Errorf("service %s was restarted while only the rogue acted (uptime %.1fs, before %.1fs, %.1fs later)", name, s.UptimeSeconds, before[name].UptimeSeconds, elapsed)
		}
	}
}

// TestEndToEndIncidentPassportIsScoped checks that a passport bound to one
// incident's target cannot act on another service.
func TestEndToEndIncidentPassportIsScoped(t *testing.T) {
	r := startStack(t, stack.Config{ChaosInterval: -1, NoRogue: true})
	healer := r.agent(t, "acme", "healer")
	tok := r.passport(t, healer, client.TokenRequest{
		Scope: []string{"service.restart"},
		Task:  &passport.Task{ID: "inc-test-1", Purpose: "restart checkout", Target: "checkout", Actions: []string{"service.restart"}},
	})
	code, body := call(t, http.MethodPost, r.demo.URLs.Proxy+"/services/payments/restart", tok)
	if code != http.StatusForbidden || !strings.Contains(body, "task_target_mismatch") {
		t.Fatalf("restart payments with a checkout incident passport: %d %s; want 403 task_target_mismatch", code, body)
	}
	code, body = call(t, http.MethodPost, r.demo.URLs.Proxy+"/services/checkout/restart", tok)
	if code != http.StatusOK {
		t.Fatalf("restart checkout with its incident passport: %d %s; want 200", code, body)
	}
	// And it cannot widen itself to another action on its own target.
	code, body = call(t, http.MethodPost, r.demo.URLs.Proxy+"/deployments/checkout/rollback", tok)
	if code != http.StatusForbidden {
		t.Fatalf("rollback with a restart-only incident passport: %d %s; want 403", code, body)
	}
}

// TestEndToEndRandomChaos runs chaos in run mode (random faults at an
// interval, as `passport up` does): each fault it records is repaired by the
// healer through the proxy.
func TestEndToEndRandomChaos(t *testing.T) {
	r := startStack(t, stack.Config{ChaosInterval: 300 * time.Millisecond, ChaosSeed: 7, NoRogue: true})
	type chaosDetails struct {
		Type, Target, Action string
	}
	var fault chaosDetails
	eventually(t, 15*time.Second, "a random fault injected through the proxy", func() (bool, string) {
		for _, rec := range r.records(t, "acme") {
			if rec.Kind != audit.KindChaos {
				continue
			}
			if err := json.Unmarshal(rec.Details, &fault); err != nil {
				t.Fatalf("chaos details: %v", err)
			}
			if fault.Action == "inject" {
				return true, ""
			}
		}
		return false, "no chaos record yet"
	})
	if fault.Target != "checkout" && fault.Target != "payments" {
		t.Fatalf("acme's chaos hit %q, not an acme service", fault.Target)
	}
	eventually(t, 15*time.Second, "the random fault RESOLVED", func() (bool, string) {
		for _, d := range r.incidents(t, "acme") {
			if d.Target == fault.Target && d.Type == fault.Type {
				return d.State == "RESOLVED", d.State
			}
		}
		return false, "no incident yet"
	})
	// The chaos agent's own call was allowed and recorded like any other.
	var allowed bool
	for _, rec := range r.records(t, "acme") {
		if rec.Kind == audit.KindDecision && rec.Action == "chaos.inject" && rec.Resource == fault.Target && rec.Decision == audit.DecisionAllow {
			allowed = true
		}
	}
	if !allowed {
		t.Errorf("no allow record for chaos.inject on %s", fault.Target)
	}
}

// passport up offers approvals on its dashboard: a call waiting for a
// person is listed, approved from the dashboard's API with the stack's
// admin credential, and the decision lands in the tenant's audit stream
// with the approver (what the feed shows).
func TestUpOffersApprovals(t *testing.T) {
	r := startStack(t, stack.Config{ChaosInterval: -1, NoRogue: true})
	st := approval.NewStore(r.rdb, approval.Options{})
	ap, _, err := st.Create(context.Background(), approval.Request{Tenant: "acme", AgentID: "agt_deployer", AgentName: "deployer-acme",
		Method: "POST", Path: "/deployments/payments", Body: []byte(`{"version":"v2"}`), Action: "deployment.deploy", Resource: "payments",
		Reasons: []string{"approval_required"}})
	if err != nil {
		t.Fatal(err)
	}
	code, body := call(t, http.MethodGet, r.demo.URLs.Dashboard+"/api/session", r.demo.AdminToken)
	if code != http.StatusOK || !strings.Contains(body, `"approvals":true`) {
		t.Fatalf("session: %d %s", code, body)
	}
	code, body = call(t, http.MethodGet, r.demo.URLs.Dashboard+"/api/tenants/acme/approvals", r.demo.AdminToken)
	if code != http.StatusOK || !strings.Contains(body, ap.ID) {
		t.Fatalf("dashboard approvals: %d %s", code, body)
	}
	code, body = call(t, http.MethodPost, r.demo.URLs.Dashboard+"/api/tenants/acme/approvals/"+ap.ID+"/approve", r.demo.AdminToken)
	if code != http.StatusOK || !strings.Contains(body, `"state":"granted"`) {
		t.Fatalf("approve from the dashboard: %d %s", code, body)
	}
	eventually(t, 10*time.Second, "approval_approved in the audit stream", func() (bool, string) {
		for _, rec := range r.records(t, "acme") {
			if rec.Kind == audit.KindApprovalApproved && strings.Contains(string(rec.Details), ap.ID) &&
				strings.Contains(string(rec.Details), `"approver":"admin"`) && rec.AgentID == "agt_deployer" {
				return true, ""
			}
		}
		return false, "not yet"
	})
}

// TestUpServesTheMetricsOfADeployment: every service of `passport up`
// serves on its /metrics what the same service serves when deployed alone
// (both are built by internal/assemble): its audit writer's metrics, the
// feed's and the chaos simulator's on the dashboard, the Go and process
// collectors and passport_panics_total. cmd/passport's
// TestDeploymentEndToEnd compares the whole name sets.
func TestUpServesTheMetricsOfADeployment(t *testing.T) {
	r := startStack(t, stack.Config{ChaosInterval: -1, NoRogue: true})
	common := []string{"go_goroutines", "process_cpu_seconds_total", "passport_panics_total{"}
	writer := []string{"passport_audit_durability_status", "passport_audit_batches_total"}
	for _, tc := range []struct {
		name, url string
		want      []string
	}{
		{"authority", r.demo.URLs.Authority + "/metrics", writer},
		{"proxy", r.demo.URLs.ProxyAdmin + "/metrics", append([]string{"passport_proxy_revocation_subscription_up"}, writer...)},
		{"fleet", r.demo.URLs.Fleet + "/metrics", nil},
		{"healer", r.demo.HealerAPIs["acme"] + "/metrics", append([]string{"passport_healer_announcements_connected"}, writer...)},
		{"dashboard", r.demo.URLs.Dashboard + "/metrics", append([]string{"passport_feed_clients", "passport_feed_events_sent_total", "passport_chaos_clears_total"}, writer...)},
	} {
		resp, err := http.Get(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: GET /metrics = %d", tc.name, resp.StatusCode)
			continue
		}
		for _, want := range append(tc.want, common...) {
			if !strings.Contains(string(b), want) {
				t.Errorf("%s /metrics lacks %s", tc.name, want)
			}
		}
	}
}

// TestFleetTakesOnlyProxiedCalls: the demo fleet's control API refuses a
// call that bypasses the proxy, even one that carries the fleet's own API
// key (read from the data directory, as an attacker on the host might);
// through the proxy the same call works, and the agent never held the
// key: it is in no audit record.
func TestFleetTakesOnlyProxiedCalls(t *testing.T) {
	r := startStack(t, stack.Config{})
	key, err := os.ReadFile(filepath.Join(r.dataDir, stack.FleetAPIKeyFile))
	if err != nil || len(strings.TrimSpace(string(key))) < 32 {
		t.Fatalf("fleet api key: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(r.dataDir, stack.FleetAPIKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("fleet api key file mode: %v %v", fi.Mode(), err)
	}
	for _, hdr := range []map[string]string{nil, {"X-Api-Key": strings.TrimSpace(string(key))}} {
		req, _ := http.NewRequest(http.MethodPost, r.demo.URLs.Fleet+"/services/checkout/restart", nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusUnauthorized {
			t.Fatalf("a call bypassing the proxy (headers %v): %d", len(hdr), res.StatusCode)
		}
	}
	tok := r.passport(t, r.agent(t, "acme", "healer"), client.TokenRequest{Scope: []string{"service.restart"}})
	if code, body := call(t, http.MethodPost, r.demo.URLs.Proxy+"/services/checkout/restart", tok); code != http.StatusOK {
		t.Fatalf("through the proxy: %d %s", code, body)
	}
	for _, tenant := range []string{"acme", "globex", "unattributed"} {
		for _, rec := range r.records(t, tenant) {
			b, _ := json.Marshal(rec)
			if strings.Contains(string(b), strings.TrimSpace(string(key))) {
				t.Fatalf("the fleet's key is in an audit record: %s", b)
			}
		}
	}
}

// TestUpKeepsItsWritersAcrossRestarts: a restart of `passport up` on the
// same data directory writes as the same writers (keys in
// DATA/audit-keys), resuming their chains, and the trail verifies.
func TestUpKeepsItsWritersAcrossRestarts(t *testing.T) {
	cfg := stack.Config{DataDir: t.TempDir(), ChaosInterval: -1, NoRogue: true, BcryptCost: 4, Witness: "none"}
	rdb := testRedis(t, &cfg)
	cfg.ProxyPort, cfg.ProxyAdminPort, cfg.AuthorityPort, cfg.FleetPort, cfg.DashboardPort, cfg.HealerPort = -1, -1, -1, -1, -1, -1
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	writers := func() []string {
		var out []string
		for w := range rdb.HGetAll(context.Background(), audit.WritersKey).Val() {
			out = append(out, w)
		}
		sort.Strings(out)
		return out
	}
	var first []string
	for run := range 2 {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		ready := make(chan stack.Demo, 1)
		go func() { done <- stack.Run(ctx, cfg, log, func(d stack.Demo) { ready <- d }) }()
		select {
		case d := <-ready:
			// Something to record: a block by the authority.
			admin, err := client.NewAdmin(d.URLs.Authority, passport.Secret(d.AdminToken), client.Options{})
			if err != nil {
				t.Fatal(err)
			}
			a := d.Agents[0]
			if _, err := admin.Block(context.Background(), a.Tenant, a.ID, fmt.Sprintf("run %d", run)); err != nil {
				t.Fatal(err)
			}
		case err := <-done:
			t.Fatalf("run %d: %v", run, err)
		case <-time.After(60 * time.Second):
			t.Fatalf("run %d not ready", run)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("run %d stopped with %v", run, err)
		}
		if run == 0 {
			first = writers()
		}
	}
	if got := writers(); strings.Join(got, ",") != strings.Join(first, ",") || len(got) == 0 {
		t.Fatalf("writers after a restart %v, want the same as before %v", got, first)
	}
	for _, tenant := range stack.DefaultTenants {
		rep, err := audit.VerifyStream(context.Background(), rdb, tenant, audit.VerifyOptions{})
		if err != nil || !rep.OK() {
			t.Fatalf("verify %s after a restart: %v %+v", tenant, err, rep)
		}
	}
}
