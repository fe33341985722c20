package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/stack"
	"github.com/agentpassport/passport/internal/tlstest"
	"github.com/agentpassport/passport/internal/tlsx"
)

// lockedBuffer is written by a running `passport up` and read by the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// upProcess is `passport up` run in-process, as a user runs it.
type upProcess struct {
	stdout, stderr *lockedBuffer
	stop           func()
}

// startUp runs `passport up --data dir` on free loopback ports and waits
// for its banner.
func startUp(t *testing.T, dir string, args ...string) *upProcess {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "up.yaml")
	// Free ports (-1) so that tests never collide; a cheap bcrypt.
	yaml := "proxy_port: -1\nproxy_admin_port: -1\nauthority_port: -1\nfleet_port: -1\nhealer_port: -1\ndashboard_port: -1\nbcrypt_cost: 4\n"
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &upProcess{stdout: &lockedBuffer{}, stderr: &lockedBuffer{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	a := &app{getenv: func(string) string { return "" }, stdout: p.stdout, stderr: p.stderr}
	root := a.rootCmd()
	root.SetArgs(append([]string{"up", "--data", dir, "--config", cfg}, args...))
	root.SetOut(p.stdout)
	root.SetErr(p.stderr)
	go func() { done <- root.ExecuteContext(ctx) }()
	var once sync.Once
	p.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("passport up stopped with error: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("passport up did not stop within 30s")
			}
		})
	}
	t.Cleanup(p.stop)
	deadline := time.Now().Add(90 * time.Second)
	for !strings.Contains(p.stdout.String(), "Ctrl-C stops everything.") {
		select {
		case err := <-done:
			t.Fatalf("passport up exited: %v\nstderr:\n%s", err, p.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no banner within 90s\nstdout:\n%s\nstderr:\n%s", p.stdout.String(), p.stderr.String())
		}
		time.Sleep(50 * time.Millisecond) // a banner on a stream: nothing to wait on but the text
	}
	return p
}

// waitFor polls cond until it holds or 60 s pass.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 60s (last: %s)", what, last)
		}
		time.Sleep(100 * time.Millisecond) // polling a running stack: there is no event to wait on
	}
}

func agentShow(t *testing.T, dir string, ag stack.DemoAgent) client.Agent {
	t.Helper()
	out, errOut, code := cli(t, nil, "agent", "show", ag.ID, "--data", dir, "--tenant", ag.Tenant, "--json")
	var shown client.Agent
	if code != 0 || json.Unmarshal([]byte(out), &shown) != nil {
		t.Fatalf("agent show %s: %d %q %q", ag.Name, code, out, errOut)
	}
	return shown
}

func demoRole(t *testing.T, d stack.Demo, tenant, role string) stack.DemoAgent {
	t.Helper()
	for _, ag := range d.Agents {
		if ag.Tenant == tenant && ag.Role == role {
			return ag
		}
	}
	t.Fatalf("no %s agent in %s", role, tenant)
	return stack.DemoAgent{}
}

// demoHTTPClient trusts what a user of the stack trusts: demo.json's
// ca_file alone when it serves TLS, as curl --cacert "$PASSPORT_CA_FILE".
func demoHTTPClient(t *testing.T, d stack.Demo) *http.Client {
	t.Helper()
	hc, err := tlsx.HTTPClient(d.CAFile, 10*time.Second)
	if err != nil {
		t.Fatalf("demo.json's ca_file: %v", err)
	}
	return hc
}

func httpDo(t *testing.T, hc *http.Client, method, url, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestFirstHour walks the README's tour as a new user would, with the
// mistakes a new user makes (mistyped chaos targets, the observer's denied
// restarts until it is blocked), then restarts `passport up`: the demo
// must still work, nothing a mistake did may outlive the restart, and the
// terminal stays quiet (the banner, then a line per incident and block).
func TestFirstHour(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole demo twice") // make test runs it (no -short)
	}
	dir := filepath.Join(t.TempDir(), "data")
	up := startUp(t, dir, "--no-chaos", "--no-rogue")
	banner := up.stdout.String()
	caFile := filepath.Join(dir, stack.TLSDir, stack.CACertFile)
	for _, want := range []string{"export PASSPORT_DATA=" + dir + " PASSPORT_AUTHORITY_URL=https://127.0.0.1:",
		" PASSPORT_CA_FILE=" + caFile, "curl -i --cacert " + caFile + " https://127.0.0.1:", "logs        " + filepath.Join(dir, "passport.log")} {
		if !strings.Contains(banner, want) {
			t.Fatalf("banner lacks %q:\n%s", want, banner)
		}
	}
	if strings.Contains(banner, "rogue") {
		t.Fatalf("the banner speaks of rogue agents with --no-rogue:\n%s", banner)
	}
	d, err := stack.ReadDemo(dir)
	if err != nil {
		t.Fatal(err)
	}
	chaosAgent, observer := demoRole(t, d, "acme", "chaos"), demoRole(t, d, "acme", "observer")
	// The demo serves TLS: the commands below get no --ca-file and no
	// PASSPORT_CA_FILE, and trust demo.json's ca_file.
	if d.CAFile != caFile || !strings.HasPrefix(d.URLs.Proxy, "https://") {
		t.Fatalf("demo.json: ca_file %q, proxy %s; want %s and https", d.CAFile, d.URLs.Proxy, caFile)
	}
	caBefore := readFile(caFile)
	hc := demoHTTPClient(t, d)

	// 1. Without a passport, nothing gets through.
	if code, _ := httpDo(t, hc, http.MethodGet, d.URLs.Proxy+"/services", ""); code != http.StatusUnauthorized {
		t.Fatalf("no passport: %d, want 401", code)
	}

	// Typos: refused before any passport is used; they cost nothing.
	before := agentShow(t, dir, chaosAgent)
	for _, typo := range []string{"chekout", "search"} {
		_, errOut, code := cli(t, nil, "chaos", "fire", "service_down", "--target", typo, "--data", dir)
		if code == 0 || !strings.Contains(errOut, "unknown target") || !strings.Contains(errOut, "checkout, payments") {
			t.Fatalf("chaos fire --target %s: %d %q, want a clear unknown-target error", typo, code, errOut)
		}
		if strings.Contains(errOut, "level=INFO") {
			t.Fatalf("a one-shot command logged INFO: %q", errOut)
		}
	}
	if after := agentShow(t, dir, chaosAgent); after.Reputation != before.Reputation || after.Blocked {
		t.Fatalf("typos cost the chaos agent: reputation %.1f -> %.1f, blocked %v", before.Reputation, after.Reputation, after.Blocked)
	}

	// 2. Break something; the healer repairs it through the proxy.
	if out, errOut, code := cli(t, nil, "chaos", "fire", "service_down", "--target", "checkout", "--data", dir); code != 0 || strings.Contains(errOut, "level=INFO") || strings.Contains(errOut, "level=WARN") {
		t.Fatalf("chaos fire: %d %q %q", code, out, errOut)
	}
	waitFor(t, "the incident is RESOLVED", func() (bool, string) {
		out, errOut, _ := cli(t, nil, "incidents", "--data", dir, "--tenant", "acme", "--json")
		return strings.Contains(out, `"RESOLVED"`), out + errOut
	})
	waitFor(t, "the terminal shows the incident", func() (bool, string) {
		return strings.Contains(up.stderr.String(), "incident resolved"), up.stderr.String()
	})

	// 3. Which agent did what; the trail is intact.
	if out, errOut, code := cli(t, nil, "audit", "tail", "--data", dir, "--tenant", "acme"); code != 0 || !strings.Contains(out, "chaos") {
		t.Fatalf("audit tail: %d %q", code, errOut)
	}
	if out, errOut, code := cli(t, nil, "audit", "verify", "--data", dir); code != 0 {
		t.Fatalf("audit verify: %d %q %q", code, out, errOut)
	}

	// 4. Agents, with --data and with the exported PASSPORT_DATA.
	if out, errOut, code := cli(t, nil, "agent", "list", "--data", dir, "--tenant", "acme"); code != 0 || !strings.Contains(out, observer.Name) {
		t.Fatalf("agent list --data: %d %q %q", code, out, errOut)
	}
	if out, errOut, code := cli(t, map[string]string{"PASSPORT_DATA": dir}, "agent", "list", "--tenant", "acme"); code != 0 || !strings.Contains(out, observer.Name) {
		t.Fatalf("agent list with PASSPORT_DATA: %d %q %q", code, out, errOut)
	}
	// PASSPORT_CA_FILE and --ca-file come before demo.json's ca_file: a
	// CA that did not sign the demo's certificate is refused.
	other := tlstest.NewCA(t, "another CA").File
	for _, tc := range []struct {
		env  map[string]string
		args []string
	}{
		{map[string]string{"PASSPORT_CA_FILE": other}, nil},
		{nil, []string{"--ca-file", other}},
	} {
		args := append([]string{"approval", "list", "--data", dir, "--tenant", "acme"}, tc.args...)
		if out, errOut, code := cli(t, tc.env, args...); code == 0 || !strings.Contains(errOut, "certificate signed by unknown authority") {
			t.Fatalf("approval list with another CA (%v %v): %d %q %q", tc.env, tc.args, code, out, errOut)
		}
	}
	if out, errOut, code := cli(t, nil, "approval", "list", "--data", dir, "--tenant", "acme"); code != 0 {
		t.Fatalf("approval list --data: %d %q %q", code, out, errOut)
	}

	// 5. The observer's passport: a read passes, a restart is denied with
	// reasons. Denied again and again, the observer ends up blocked.
	out, errOut, code := cli(t, nil, "token", "--data", dir, "--tenant", "acme", "--role", "observer")
	if code != 0 {
		t.Fatalf("token: %d %q", code, errOut)
	}
	tok := strings.TrimSpace(out)
	if code, body := httpDo(t, hc, http.MethodGet, d.URLs.Proxy+"/services", tok); code != http.StatusOK {
		t.Fatalf("observer read: %d %s", code, body)
	}
	code, body := httpDo(t, hc, http.MethodPost, d.URLs.Proxy+"/services/checkout/restart", tok)
	// The README shows these reasons.
	if code != http.StatusForbidden || !strings.Contains(body, `"reasons":["action_not_granted","agent_type_not_permitted","trust_level_too_low"]`) {
		t.Fatalf("observer restart: %d %s, want 403 with the README's reasons", code, body)
	}
	waitFor(t, "the observer is blocked by its denials", func() (bool, string) {
		httpDo(t, hc, http.MethodPost, d.URLs.Proxy+"/services/checkout/restart", tok)
		ag := agentShow(t, dir, observer)
		return ag.Blocked, "reputation " + jsonString(ag.Reputation)
	})
	waitFor(t, "the terminal shows the block", func() (bool, string) {
		return strings.Contains(up.stderr.String(), "agent blocked"), up.stderr.String()
	})
	if _, errOut, code := cli(t, nil, "token", "--data", dir, "--tenant", "acme", "--role", "observer"); code == 0 || !strings.Contains(errOut, "blocked") {
		t.Fatalf("token while blocked: %d %q", code, errOut)
	}

	// A quiet terminal: no routine log lines, and they are all in the file.
	term := up.stderr.String()
	if strings.Contains(term, "level=INFO") || strings.Count(term, "\n") > 10 {
		t.Fatalf("the terminal is not quiet:\n%s", term)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "passport.log")); err != nil || !strings.Contains(string(b), "level=INFO") {
		t.Fatalf("passport.log: %v, %d bytes", err, len(b))
	}

	t.Logf("terminal of the first run:\n%s", term)
	// A restart restores every demo agent, and says so.
	up.stop()
	up = startUp(t, dir, "--no-chaos", "--no-rogue")
	if banner := up.stdout.String(); !strings.Contains(banner, "restored    "+observer.Name) || !strings.Contains(banner, "unblocked") {
		t.Fatalf("the banner of the restart does not say what it restored:\n%s", banner)
	}
	// The CA a user told a browser to trust survives the restart.
	if readFile(caFile) != caBefore {
		t.Fatal("the restart replaced the demo CA")
	}
	t.Logf("banner of the restart:\n%s", up.stdout.String())
	if ag := agentShow(t, dir, observer); ag.Blocked || ag.Reputation != ag.ReputationBaseline {
		t.Fatalf("after the restart the observer is blocked=%v with reputation %.1f", ag.Blocked, ag.Reputation)
	}
	if _, errOut, code := cli(t, nil, "token", "--data", dir, "--tenant", "acme", "--role", "observer"); code != 0 {
		t.Fatalf("token after the restart: %d %q", code, errOut)
	}
	if out, errOut, code := cli(t, nil, "chaos", "fire", "bad_deploy", "--target", "payments", "--data", dir); code != 0 {
		t.Fatalf("chaos fire after the restart: %d %q %q", code, out, errOut)
	}
	waitFor(t, "the second incident is RESOLVED", func() (bool, string) {
		out, _, _ := cli(t, nil, "incidents", "--data", dir, "--tenant", "acme", "--json")
		return strings.Count(out, `"RESOLVED"`) >= 2, out
	})
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
