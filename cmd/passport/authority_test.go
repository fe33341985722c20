package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/authority"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/internal/stack"
	"github.com/agentpassport/passport/passport"
	"golang.org/x/crypto/bcrypt"
)

const cliAdminToken = "cli-test-admin-token-0123456789"

// startAuthority serves an authority on a private Redis for CLI tests.
func startAuthority(t *testing.T) string {
	t.Helper()
	rs := redistest.Start(t)
	srv := httptest.NewUnstartedServer(nil)
	cfg := authority.DefaultConfig()
	cfg.AdminToken = cliAdminToken
	cfg.Clients.BcryptCost = bcrypt.MinCost
	cfg.Issuer = "http://" + srv.Listener.Addr().String()
	a, err := authority.New(cfg, authority.Deps{Audit: audit.Discard, Redis: rs.Client(), Logger: slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = a.Handler()
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL
}

// cli runs the passport binary's root command in-process.
func cli(t *testing.T, env map[string]string, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, func(k string) string { return env[k] }, &out, &errb)
	return out.String(), errb.String(), code
}

func TestAgentAndTokenCommands(t *testing.T) {
	url := startAuthority(t)
	env := map[string]string{"PASSPORT_ADMIN_TOKEN": cliAdminToken, "PASSPORT_AUTHORITY_URL": url}

	out, errOut, code := cli(t, env, "agent", "register", "--tenant", "acme", "--name", "healer-1", "--type", "healer", "--trust", "HIGH", "--json")
	if code != 0 {
		t.Fatalf("register: %d %s", code, errOut)
	}
	var reg client.Registration
	if err := json.Unmarshal([]byte(out), &reg); err != nil || reg.ClientSecret == "" || reg.TrustLevel != passport.TrustHigh {
		t.Fatalf("register output %q: %v", out, err)
	}

	// Plain output, capabilities and a token file instead of the env.
	tokFile := filepath.Join(t.TempDir(), "admin-token")
	if err := os.WriteFile(tokFile, []byte(cliAdminToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, _, code = cli(t, map[string]string{}, "agent", "register", "--authority", url, "--admin-token-file", tokFile,
		"--tenant", "acme", "--name", "obs", "--type", "observer", "--trust", "low", "--capability", "service.list",
		"--owner", "observability-team")
	if code != 0 || !strings.Contains(out, "client_secret: cs_") || !strings.Contains(out, "capabilities: service.list\n") ||
		!strings.Contains(out, "owner:        observability-team\n") {
		t.Fatalf("plain register: %d %q", code, out)
	}

	out, _, code = cli(t, env, "agent", "list", "--tenant", "acme")
	if code != 0 || !strings.Contains(out, "healer-1") || !strings.Contains(out, "obs") || strings.Contains(out, "cs_") {
		t.Fatalf("list: %d %q", code, out)
	}
	out, _, code = cli(t, env, "agent", "show", reg.ID, "--tenant", "acme", "--json")
	var shown client.Agent
	if code != 0 || json.Unmarshal([]byte(out), &shown) != nil || shown.ID != reg.ID || shown.Reputation != 90 {
		t.Fatalf("show: %d %q", code, out)
	}

	// A passport, from a secret file, narrowed, with a task, decoded.
	secFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secFile, []byte(reg.ClientSecret), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = cli(t, env, "token", "--client-id", reg.ClientID, "--client-secret-file", secFile,
		"--scope", "service.restart", "--task", `{"id":"inc-7","target":"checkout"}`, "--decode")
	if code != 0 {
		t.Fatalf("token: %d %s", code, errOut)
	}
	lines := strings.SplitN(out, "\n", 2)
	if strings.Count(lines[0], ".") != 2 || !strings.HasPrefix(lines[0], "ey") {
		t.Fatalf("first line is not a JWS: %q", lines[0])
	}
	var dec struct {
		Header map[string]any  `json:"header"`
		Claims passport.Claims `json:"claims"`
	}
	if err := json.Unmarshal([]byte(lines[1]), &dec); err != nil {
		t.Fatalf("decoded: %v %q", err, lines[1])
	}
	if dec.Header["typ"] != "at+jwt" || dec.Header["alg"] != "EdDSA" || dec.Claims.Task == nil || dec.Claims.Task.ID != "inc-7" ||
		dec.Claims.Scope != "service.restart" || dec.Claims.Tenant != "acme" {
		t.Fatalf("decoded passport %+v", dec)
	}
	// Secret from the environment; a wrong one fails with a non-zero exit.
	env2 := map[string]string{"PASSPORT_AUTHORITY_URL": url, "PASSPORT_CLIENT_SECRET": "cs_wrong"}
	if _, errOut, code = cli(t, env2, "token", "--client-id", reg.ClientID); code == 0 || !strings.Contains(errOut, "invalid_client") {
		t.Fatalf("wrong secret: %d %q", code, errOut)
	}

	out, _, code = cli(t, env, "agent", "block", reg.ID, "--tenant", "acme", "--reason", "testing")
	if code != 0 || !strings.Contains(out, "blocked:      true (testing)") {
		t.Fatalf("block: %d %q", code, out)
	}
	if _, errOut, code = cli(t, env, "token", "--client-id", reg.ClientID, "--client-secret-file", secFile); code == 0 || !strings.Contains(errOut, "blocked") {
		t.Fatalf("token while blocked: %d %q", code, errOut)
	}
	if out, _, code = cli(t, env, "agent", "unblock", reg.ID, "--tenant", "acme"); code != 0 || !strings.Contains(out, "blocked:      false") {
		t.Fatalf("unblock: %d %q", code, out)
	}
	if out, _, code = cli(t, env, "authority", "rotate-keys"); code != 0 || !strings.Contains(out, "rotated: current kid") {
		t.Fatalf("rotate-keys: %d %q", code, out)
	}
	if out, _, code = cli(t, env, "agent", "delete", reg.ID, "--tenant", "acme"); code != 0 || !strings.Contains(out, "deleted") {
		t.Fatalf("delete: %d %q", code, out)
	}
	if _, errOut, code = cli(t, env, "agent", "show", reg.ID, "--tenant", "acme"); code == 0 || !strings.Contains(errOut, "404") {
		t.Fatalf("show deleted: %d %q", code, errOut)
	}
	// No admin token at all: a clear error.
	if _, errOut, code = cli(t, map[string]string{"PASSPORT_AUTHORITY_URL": url}, "agent", "list", "--tenant", "acme"); code == 0 || !strings.Contains(errOut, "PASSPORT_ADMIN_TOKEN") {
		t.Fatalf("no token: %d %q", code, errOut)
	}
	// Missing required flags.
	if _, errOut, code = cli(t, env, "agent", "register", "--tenant", "acme"); code == 0 || !strings.Contains(errOut, "required") {
		t.Fatalf("missing flags: %d %q", code, errOut)
	}
}

func TestAuthorityCommandBrokenConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.yaml")
	if err := os.WriteFile(path, []byte("listen: 127.0.0.1:0\nkeys:\n  algoritm: EdDSA\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := cli(t, map[string]string{}, "authority", "--config", path)
	if code == 0 || !strings.Contains(errOut, path) || !strings.Contains(errOut, "line 3") || !strings.Contains(errOut, "algoritm") {
		t.Fatalf("broken config: %d %q", code, errOut)
	}
	if err := os.WriteFile(path, []byte("passport:\n  lifetime: 2h\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code = cli(t, map[string]string{}, "authority", "--config", path); code == 0 || !strings.Contains(errOut, "passport.lifetime") {
		t.Fatalf("invalid config: %d %q", code, errOut)
	}
}

// passport authority serves until its context ends, then stops cleanly.
func TestAuthorityCommandServes(t *testing.T) {
	rs := redistest.Start(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	var out, errb bytes.Buffer
	a := &app{getenv: func(k string) string {
		return map[string]string{"PASSPORT_REDIS_URL": rs.URL(), "PASSPORT_ADMIN_TOKEN": cliAdminToken}[k]
	}, stdout: &out, stderr: &errb}
	root := a.rootCmd()
	root.SetArgs([]string{"authority", "--listen", addr, "--issuer", "http://" + addr, "--log-level", "warn"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("authority not ready: %v %s", err, errb.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	adm, _ := client.NewAdmin("http://"+addr, cliAdminToken, client.Options{})
	if _, err := adm.RegisterAgent(ctx, "acme", client.AgentSpec{Name: "h", Type: "healer", TrustLevel: "HIGH"}); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("authority: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("authority did not stop")
	}
}

// TestAuthorityCommandRecordsBlocks runs `passport authority` as compose
// and Kubernetes run it (no demo stack around it) and blocks an agent: the
// block must be in the tenant's audit stream, written by the authority's
// own writer. Before the authority was assembled in one place, the
// command gave it no writer and blocks went unrecorded.
func TestAuthorityCommandRecordsBlocks(t *testing.T) {
	rs := redistest.Start(t)
	addr := freeAddr(t)
	url := "http://" + addr
	env := map[string]string{"PASSPORT_ADMIN_TOKEN": cliAdminToken, "PASSPORT_REDIS_URL": rs.URL()}
	var errb bytes.Buffer
	a := &app{getenv: func(k string) string { return env[k] }, stdout: io.Discard, stderr: &syncWriter{w: &errb}}
	root := a.rootCmd()
	root.SetArgs([]string{"authority", "--listen", addr, "--issuer", url, "--log-level", "warn"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("authority: %v\n%s", err, errb.String())
		}
	}()
	pollUntil(t, 10*time.Second, "authority ready", func() bool {
		resp, err := http.Get(url + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	adm, err := client.NewAdmin(url, passport.Secret(cliAdminToken), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := adm.RegisterAgent(context.Background(), "acme", client.AgentSpec{Name: "deployer-1", Type: "deployer", TrustLevel: passport.TrustMedium})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := adm.Block(context.Background(), "acme", reg.ID, "recorded?"); err != nil {
		t.Fatal(err)
	}
	// The block's record is written before the admin API answers.
	msgs, err := rs.Client().XRange(context.Background(), audit.StreamKey("acme"), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	var found *audit.Record
	for _, m := range msgs {
		rec, _, err := audit.ParseMessage(m)
		if err == nil && rec.Kind == audit.KindAgentBlocked && rec.AgentID == reg.ID {
			found = rec
		}
	}
	if found == nil {
		t.Fatalf("no agent_blocked record for %s among %d records of acme's stream", reg.ID, len(msgs))
	}
	if !strings.HasPrefix(found.Writer, "authority-") {
		t.Errorf("agent_blocked written by %q, want the authority's writer", found.Writer)
	}
}

// TestAgentAndTokenWithData: with --data DIR (or PASSPORT_DATA) of a
// running passport up, `agent` and `token` read the authority's URL, the
// admin token and the demo agents' credentials from DIR/demo.json, with
// nothing in the environment.
func TestAgentAndTokenWithData(t *testing.T) {
	url := startAuthority(t)
	env := map[string]string{"PASSPORT_ADMIN_TOKEN": cliAdminToken, "PASSPORT_AUTHORITY_URL": url}
	out, errOut, code := cli(t, env, "agent", "register", "--tenant", "acme", "--name", "observer-acme", "--type", "observer", "--trust", "LOW", "--json")
	if code != 0 {
		t.Fatalf("register: %d %s", code, errOut)
	}
	var reg client.Registration
	if err := json.Unmarshal([]byte(out), &reg); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	demo := stack.Demo{URLs: stack.URLs{Authority: url}, AdminToken: cliAdminToken, Tenants: []string{"acme", "globex"},
		Agents: []stack.DemoAgent{{Name: reg.Name, Type: "observer", Tenant: "acme", TrustLevel: "LOW", ID: reg.ID,
			ClientID: reg.ClientID, ClientSecret: reg.ClientSecret, Role: "observer"}}}
	b, _ := json.Marshal(demo)
	if err := os.WriteFile(filepath.Join(dir, "demo.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	// A different authority in the environment: --data wins.
	none := map[string]string{"PASSPORT_AUTHORITY_URL": "http://127.0.0.1:1"}
	if out, errOut, code = cli(t, none, "agent", "list", "--data", dir, "--tenant", "acme"); code != 0 || !strings.Contains(out, "observer-acme") {
		t.Fatalf("agent list --data: %d %q %q", code, out, errOut)
	}
	if out, errOut, code = cli(t, none, "token", "--data", dir, "--tenant", "acme", "--role", "observer", "--decode"); code != 0 ||
		!strings.Contains(out, `"sub": "`+reg.ID+`"`) {
		t.Fatalf("token --data: %d %q %q", code, out, errOut)
	}
	// The same through PASSPORT_DATA, as the line passport up prints sets it.
	withData := map[string]string{"PASSPORT_DATA": dir}
	if out, errOut, code = cli(t, withData, "agent", "show", reg.ID, "--tenant", "acme"); code != 0 || !strings.Contains(out, "reputation:   60.0") {
		t.Fatalf("agent show with PASSPORT_DATA: %d %q %q", code, out, errOut)
	}
	if out, errOut, code = cli(t, withData, "token"); code != 0 || strings.Count(out, ".") != 2 {
		t.Fatalf("token with PASSPORT_DATA (default role observer, first tenant): %d %q %q", code, out, errOut)
	}
	if _, errOut, code = cli(t, withData, "token", "--tenant", "globex", "--role", "healer"); code == 0 ||
		!strings.Contains(errOut, `no healer agent in tenant "globex"`) {
		t.Fatalf("unknown demo agent: %d %q", code, errOut)
	}
	if errOut != "" && strings.Contains(errOut, "level=INFO") {
		t.Fatalf("one-shot command logged INFO: %q", errOut)
	}
}
