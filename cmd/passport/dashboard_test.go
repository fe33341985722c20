package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
)

// startDashboard runs `passport dashboard args...` in-process on a loopback
// port and returns its base URL; the command is stopped at cleanup and
// must then return nil.
func startDashboard(t *testing.T, env map[string]string, args ...string) string {
	t.Helper()
	a := &app{getenv: func(k string) string { return env[k] }, stdout: io.Discard, stderr: io.Discard, logLevel: "error", logFormat: "text"}
	addrc := make(chan net.Addr, 1)
	cmd := a.dashboardCmdWith(func(addr net.Addr) { addrc <- addr })
	cmd.SetArgs(append([]string{"--listen", "127.0.0.1:0"}, args...))
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("dashboard returned %v after its context ended", err)
		}
	})
	select {
	case addr := <-addrc:
		return "http://" + addr.String()
	case err := <-done:
		done <- err // for the cleanup
		t.Fatalf("dashboard did not start: %v", err)
		return ""
	}
}

// dashboardCall sends one request and decodes a JSON answer into out (when not nil).
func dashboardCall(t *testing.T, method, url, token, body string, out any) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: %d %q: %v", method, url, resp.StatusCode, data, err)
		}
	}
	return resp
}

func TestDashboardCommand(t *testing.T) {
	authURL := startAuthority(t)
	rs := redistest.Start(t)
	env := map[string]string{"PASSPORT_ADMIN_TOKEN": cliAdminToken, "PASSPORT_AUTHORITY_URL": authURL, "PASSPORT_REDIS_URL": rs.URL()}
	admin, err := client.NewAdmin(authURL, passport.Secret(cliAdminToken), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	reg, err := admin.RegisterAgent(ctx, "acme", client.AgentSpec{Name: "deployer-1", Type: "deployer", TrustLevel: passport.TrustMedium})
	if err != nil {
		t.Fatal(err)
	}
	base := startDashboard(t, env)

	// The page, /healthz and /metrics.
	resp := dashboardCall(t, http.MethodGet, base+"/", "", "", nil)
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET / = %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if resp := dashboardCall(t, http.MethodGet, base+"/healthz", "", "", nil); resp.StatusCode != http.StatusOK {
		t.Errorf("GET /healthz = %d", resp.StatusCode)
	}

	// Sign-in: the admin token works, another is refused.
	var session struct {
		AllTenants   bool   `json:"all_tenants"`
		AuthorityURL string `json:"authority_url"`
	}
	if resp := dashboardCall(t, http.MethodGet, base+"/api/session", cliAdminToken, "", &session); resp.StatusCode != http.StatusOK || !session.AllTenants {
		t.Fatalf("session with the admin token = %d %+v", resp.StatusCode, session)
	}
	if session.AuthorityURL != authURL {
		t.Errorf("session authority_url = %q, want %q (PASSPORT_AUTHORITY_URL)", session.AuthorityURL, authURL)
	}
	if resp := dashboardCall(t, http.MethodGet, base+"/api/session", "not-the-admin-token-0123456789", "", nil); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("session with a wrong token = %d, want 401", resp.StatusCode)
	}
	if resp := dashboardCall(t, http.MethodGet, base+"/api/tenants/acme/agents", "", "", nil); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("agents without a token = %d, want 401", resp.StatusCode)
	}

	// Agents come from the authority; block and unblock reach it.
	var list struct {
		Agents []struct {
			ID      string `json:"id"`
			Name    string `json:"name"`
			Blocked bool   `json:"blocked"`
		} `json:"agents"`
	}
	dashboardCall(t, http.MethodGet, base+"/api/tenants/acme/agents", cliAdminToken, "", &list)
	if len(list.Agents) != 1 || list.Agents[0].ID != reg.ID || list.Agents[0].Name != "deployer-1" {
		t.Fatalf("agents = %+v, want deployer-1 (%s)", list.Agents, reg.ID)
	}
	agentURL := base + "/api/tenants/acme/agents/" + reg.ID
	if resp := dashboardCall(t, http.MethodPost, agentURL+"/block", cliAdminToken, `{"reason":"dashboard test"}`, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("block = %d", resp.StatusCode)
	}
	if ag, err := admin.GetAgent(ctx, "acme", reg.ID); err != nil || !ag.Blocked {
		t.Fatalf("after block the authority says blocked=%v (%v)", ag.Blocked, err)
	}
	if resp := dashboardCall(t, http.MethodPost, agentURL+"/unblock", cliAdminToken, "", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("unblock = %d", resp.StatusCode)
	}
	if ag, err := admin.GetAgent(ctx, "acme", reg.ID); err != nil || ag.Blocked {
		t.Fatalf("after unblock the authority says blocked=%v (%v)", ag.Blocked, err)
	}
	if resp := dashboardCall(t, http.MethodPost, base+"/api/tenants/acme/agents/no-such-agent/block", cliAdminToken, "", nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("block an unknown agent = %d, want 404", resp.StatusCode)
	}

	// Without --chaos-config there is nothing to aim at, and firing is a
	// client error with a problem document, not a 5xx.
	var targets struct {
		Targets []string `json:"targets"`
	}
	dashboardCall(t, http.MethodGet, base+"/api/tenants/acme/targets", cliAdminToken, "", &targets)
	if len(targets.Targets) != 0 {
		t.Errorf("targets without chaos = %v, want none", targets.Targets)
	}
	var problem struct {
		Status int    `json:"status"`
		Detail string `json:"detail"`
	}
	resp = dashboardCall(t, http.MethodPost, base+"/api/tenants/acme/chaos", cliAdminToken, `{"type":"service_down","target":"checkout"}`, &problem)
	if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Content-Type") != "application/problem+json" || problem.Detail == "" {
		t.Errorf("chaos without --chaos-config = %d %s %+v, want a 400 problem", resp.StatusCode, resp.Header.Get("Content-Type"), problem)
	}

	// The actions are counted on /metrics.
	resp, err = http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(metrics), `passport_dashboard_actions_total{action="block",result="ok"} 1`) {
		t.Errorf("GET /metrics = %d, no block counted:\n%s", resp.StatusCode, metrics)
	}
}

func TestDashboardCommandChaos(t *testing.T) {
	authURL := startAuthority(t)
	rs := redistest.Start(t)
	env := map[string]string{"PASSPORT_ADMIN_TOKEN": cliAdminToken, "PASSPORT_AUTHORITY_URL": authURL, "PASSPORT_REDIS_URL": rs.URL()}
	dir := t.TempDir()
	writeFile := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	// A chaos config without targets is refused before any agent is
	// registered.
	_, errOut, code := cli(t, env, "dashboard", "--listen", "127.0.0.1:0", "--chaos-config", writeFile("none.yaml", "tenant: acme\n"))
	if code == 0 || !strings.Contains(errOut, "lists no targets") {
		t.Errorf("chaos config without targets: exit %d, %q", code, errOut)
	}
	admin, err := client.NewAdmin(authURL, passport.Secret(cliAdminToken), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if ags, err := admin.ListAgents(context.Background(), "globex"); err != nil || len(ags) != 0 {
		t.Fatalf("agents of globex before = %v (%v)", ags, err)
	}

	// With targets: the chaos agent registers itself (tenant from --tenant,
	// over the file's), and the page is offered the targets for that tenant
	// only. The proxy is a closed port here, so firing fails as a 502
	// problem without the internal error.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadProxy := "http://" + ln.Addr().String()
	ln.Close()
	cfg := writeFile("chaos.yaml", "tenant: acme\nproxy_url: "+deadProxy+"\ntargets: [search, inventory]\n")
	base := startDashboard(t, env, "--chaos-config", cfg, "--tenant", "globex")
	ags, err := admin.ListAgents(context.Background(), "globex")
	if err != nil || len(ags) != 1 || ags[0].Type != passport.TypeChaos {
		t.Fatalf("agents of globex = %+v (%v), want the dashboard's chaos agent", ags, err)
	}
	for tenant, want := range map[string]string{"globex": "inventory,search", "acme": ""} {
		var targets struct {
			Targets []string `json:"targets"`
		}
		dashboardCall(t, http.MethodGet, base+"/api/tenants/"+tenant+"/targets", cliAdminToken, "", &targets)
		if got := strings.Join(targets.Targets, ","); got != want {
			t.Errorf("targets of %s = %q, want %q", tenant, got, want)
		}
	}
	var problem struct {
		Detail string `json:"detail"`
	}
	resp := dashboardCall(t, http.MethodPost, base+"/api/tenants/globex/chaos", cliAdminToken, `{"type":"cache_miss","target":"search"}`, &problem)
	if resp.StatusCode != http.StatusBadGateway || problem.Detail != "chaos failed" {
		t.Errorf("chaos with the proxy down = %d %+v, want 502 \"chaos failed\"", resp.StatusCode, problem)
	}

	// /metrics gathers the simulator's registry with the dashboard's.
	resp, err = http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`passport_chaos_errors_total{reason="error"} 1`, `passport_dashboard_actions_total{action="chaos",result="error"} 1`} {
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(metrics), want) {
			t.Errorf("GET /metrics = %d, lacks %s", resp.StatusCode, want)
		}
	}
}

func TestDashboardCommandNeedsAdminToken(t *testing.T) {
	for _, tc := range []struct {
		name, token, want string
	}{
		{"missing", "", "no admin token: set PASSPORT_ADMIN_TOKEN"},
		{"short", "short", "shorter than 16 characters"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, errOut, code := cli(t, map[string]string{"PASSPORT_ADMIN_TOKEN": tc.token}, "dashboard", "--listen", "127.0.0.1:0")
			if code == 0 || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d, stderr %q; want a failure saying %q", code, errOut, tc.want)
			}
		})
	}
}

func TestDashboardCommandConfigIsStrict(t *testing.T) {
	p := filepath.Join(t.TempDir(), "dashboard.yaml")
	if err := os.WriteFile(p, []byte("listen: 127.0.0.1:0\nallowed_orgins: [http://x]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := cli(t, map[string]string{"PASSPORT_ADMIN_TOKEN": cliAdminToken}, "dashboard", "--config", p)
	if code == 0 || !strings.Contains(errOut, "line 2: unknown field allowed_orgins") {
		t.Errorf("exit %d, stderr %q; want the misspelt key named with its line", code, errOut)
	}
}
