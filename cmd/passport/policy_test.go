package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/policies"
)

// policyRun runs the binary's root command with args and an environment.
func policyRun(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(args, func(k string) string { return env[k] }, &out, &errb)
	return code, out.String(), errb.String()
}

// policyDir copies the embedded library (with tests) to a temporary
// directory, applies edits (file -> new content; "" deletes) and returns it.
func policyDir(t *testing.T, edits map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	err := fs.WalkDir(policies.TestFS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(policies.TestFS, p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, p), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range edits {
		p := filepath.Join(dir, name)
		if content == "" {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestPolicyTest(t *testing.T) {
	uncovered := "package passport.authz\n\nimport data.passport.config\n\n" +
		"reasons contains \"never_tested\" if {\n\tinput.action == \"never.used\"\n\tconfig.revision\n}\n"
	failing := "package passport.authz_test\n\nimport data.passport.authz\n\n" +
		"test_fails if {\n\tauthz.decision.allow with input as {}\n}\n"
	cases := []struct {
		name     string
		args     []string
		edits    map[string]string
		code     int
		stdout   []string
		stderr   string
		noStdout string
	}{
		{name: "embedded library", args: []string{"policy", "test"}, code: 0, stdout: []string{"PASS: "}},
		{name: "directory with coverage", args: []string{"policy", "test", "--coverage", "DIR"}, code: 0,
			stdout: []string{"PASS: ", "coverage authz.rego", "coverage: library 100.0%"}},
		{name: "verbose lists every test", args: []string{"policy", "test", "-v", "--run", "test_typical_call_allowed", "DIR"},
			code: 0, stdout: []string{"data.passport.authz_test.test_typical_call_allowed: PASS", "PASS: 1/1"}},
		{name: "failing test exits 2", args: []string{"policy", "test", "DIR"}, edits: map[string]string{"zz_test.rego": failing},
			code: 2, stdout: []string{"test_fails: FAIL"}, stderr: "1 failed"},
		{name: "coverage below threshold exits 2", args: []string{"policy", "test", "--threshold", "100", "DIR"},
			edits: map[string]string{"extra.rego": uncovered}, code: 2,
			stdout: []string{"coverage extra.rego", "not covered: lines"}, stderr: "below the threshold 100.0%"},
		{name: "coverage at threshold passes", args: []string{"policy", "test", "--threshold", "90", "DIR"},
			edits: map[string]string{"extra.rego": uncovered}, code: 0},
		{name: "no tests exits 2", args: []string{"policy", "test", "DIR"}, edits: onlyLibrary(t), code: 2, stderr: "no tests found"},
		{name: "parse error exits 1", args: []string{"policy", "test", "DIR"},
			edits: map[string]string{"authz.rego": "package passport.authz\n\ndecision := {\n"}, code: 1, stderr: "rego_parse_error"},
		{name: "missing directory", args: []string{"policy", "test", "/nonexistent/policies"}, code: 1, stderr: "policy directory"},
		{name: "bad threshold", args: []string{"policy", "test", "--threshold", "101"}, code: 1, stderr: "--threshold"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string(nil), tc.args...)
			for i, a := range args {
				if a == "DIR" {
					args[i] = policyDir(t, tc.edits)
				}
			}
			code, out, errs := policyRun(t, nil, args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, out, errs)
			}
			for _, want := range tc.stdout {
				if !strings.Contains(out, want) {
					t.Errorf("stdout lacks %q:\n%s", want, out)
				}
			}
			if !strings.Contains(errs, tc.stderr) {
				t.Errorf("stderr lacks %q:\n%s", tc.stderr, errs)
			}
		})
	}
}

// onlyLibrary deletes every test file of the library copy.
func onlyLibrary(t *testing.T) map[string]string {
	t.Helper()
	edits := map[string]string{}
	entries, err := fs.ReadDir(policies.TestFS, ".")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if policies.IsTestFile(e.Name()) {
			edits[e.Name()] = ""
		}
	}
	return edits
}

func TestPolicyCheck(t *testing.T) {
	cases := []struct {
		name   string
		args   []string
		edits  map[string]string
		code   int
		stdout string
		stderr string
	}{
		{name: "embedded library", args: []string{"policy", "check"}, code: 0, stdout: "embedded library: ok"},
		{name: "directory with fmt", args: []string{"policy", "check", "--fmt", "DIR"}, code: 0, stdout: ": ok"},
		{name: "unused variable", args: []string{"policy", "check", "DIR"},
			edits: map[string]string{"extra.rego": "package passport.authz\n\nhelper if {\n\tx := 1\n\tinput.a\n}\n"},
			code:  1, stderr: "assigned var x unused"},
		{name: "rule shadows data", args: []string{"policy", "check", "DIR"},
			edits: map[string]string{"extra.rego": "package passport.config\n\nrevision := \"x\"\n"},
			code:  1, stderr: "conflict"},
		{name: "clearances fail", args: []string{"policy", "check", "DIR"},
			edits: map[string]string{"extra.rego": "package passport.authz\n\nclear_calls[\"zz\"][\"a\"][\"b\"][\"c\"] := to_number(\"not a number\")\n"},
			code:  1, stderr: "evaluate data.passport.authz.clearances"},
		{name: "no decision", args: []string{"policy", "check", "DIR"},
			edits: map[string]string{"authz.rego": "package passport.authz\n\nimport data.passport.config\n\naction_config := config.actions[input.action]\n",
				"escalate.rego": "", "mcp.rego": ""}, // they build on authz.rego's rules
			code: 1, stderr: "policies do not define data.passport.authz.decision"},
		{name: "network builtin", args: []string{"policy", "check", "DIR"},
			edits: map[string]string{"extra.rego": "package passport.authz\n\nremote := http.send({\"method\": \"GET\", \"url\": \"http://127.0.0.1:1\"})\n"},
			code:  1, stderr: "http.send"},
		{name: "unformatted with fmt", args: []string{"policy", "check", "--fmt", "DIR"},
			edits: map[string]string{"extra.rego": "package passport.authz\n\nhelper   if input.a\n"},
			code:  1, stderr: "extra.rego"},
		{name: "reason not a code", args: []string{"policy", "check", "DIR"},
			edits: map[string]string{"extra.rego": "package passport.authz\n\nreasons contains \"Token: abc\" if input.x\n"},
			code:  1, stderr: "is not a reason code"},
		{name: "budgets", args: []string{"policy", "check", "DIR"},
			edits: map[string]string{"data.yaml": budgetData("      limit: 3\n")},
			code:  0, stdout: "budget restarts-per-service: service.restart, 3 per 10m0s per resource"},
		{name: "budget without a limit", args: []string{"policy", "check", "DIR"},
			edits: map[string]string{"data.yaml": budgetData("      limit: 0\n")},
			code:  1, stderr: "budgets: data.yaml: budgets[0] (restarts-per-service): limit: 0: want an integer of at least 1"},
		{name: "budget with a bad window and action", args: []string{"policy", "check", "DIR"},
			edits: map[string]string{"data.yaml": strings.NewReplacer("      window: 10m\n", "      window: \"10\"\n", "      actions: [service.restart]\n", "      actions: [Service.Restart]\n").Replace(budgetData("      limit: 3\n"))},
			code:  1, stderr: `actions: "Service.Restart" is not an action (dotted lowercase, like service.restart)
data.yaml: budgets[0] (restarts-per-service): window: "10": want a positive Go duration`},
		{name: "unformatted without fmt", args: []string{"policy", "check", "DIR"},
			edits: map[string]string{"extra.rego": "package passport.authz\n\nhelper   if input.a\n"}, code: 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string(nil), tc.args...)
			for i, a := range args {
				if a == "DIR" {
					args[i] = policyDir(t, tc.edits)
				}
			}
			code, out, errs := policyRun(t, nil, args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, out, errs)
			}
			if !strings.Contains(out, tc.stdout) || !strings.Contains(errs, tc.stderr) {
				t.Errorf("stdout %q (want %q), stderr %q (want %q)", out, tc.stdout, errs, tc.stderr)
			}
		})
	}
}

func TestPolicyReplay(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	// One recorded allow of a restart by a healer at reputation 60, an
	// hour ago, as the proxy records it.
	in := map[string]any{
		"version": 1, "time": time.Now().Add(-time.Hour).UTC().Format(time.RFC3339Nano),
		"tenant": "acme", "action": "service.restart", "resource": "checkout",
		"route":   map[string]any{"name": "restart", "template": "POST /services/{name}/restart", "tenant": "", "production": true},
		"request": map[string]any{"id": "r1", "method": "POST", "path": "/services/checkout/restart", "params": map[string]any{}, "query": map[string]any{}, "headers": map[string]any{}, "body": nil},
		"passport": map[string]any{"tenant": "acme", "agent": map[string]any{"id": "ag-1", "type": "healer"},
			"authorization_details": []any{map[string]any{"type": "agent_action", "actions": []string{"service.restart"}}}},
		"agent": map[string]any{"id": "ag-1", "name": "healer-1", "type": "healer", "trust_level": "HIGH", "reputation": 60, "blocked": false},
	}
	inJSON, _ := json.Marshal(in)
	rec, _ := json.Marshal(audit.Record{V: 1, Kind: audit.KindDecision, Time: time.Now(), Tenant: "acme",
		AgentID: "ag-1", AgentName: "healer-1", AgentType: "healer", Action: "service.restart", Resource: "checkout",
		Decision: audit.DecisionAllow, Input: inJSON})
	if err := srv.Client().XAdd(ctx, &redis.XAddArgs{Stream: audit.StreamKey("acme"),
		ID:     fmt.Sprintf("%d-*", time.Now().Add(-time.Hour).UnixMilli()),
		Values: map[string]any{audit.FieldRecord: string(rec)}}).Err(); err != nil {
		t.Fatal(err)
	}
	data, err := fs.ReadFile(policies.FS, "data.yaml")
	if err != nil {
		t.Fatal(err)
	}
	stricter := strings.Replace(string(data), "trust: HIGH\n        min_reputation: 50", "trust: HIGH\n        min_reputation: 70", 1)
	cand := policyDir(t, map[string]string{"data.yaml": stricter})
	same := policyDir(t, nil)

	demo := t.TempDir()
	if err := os.WriteFile(filepath.Join(demo, "demo.json"), fmt.Appendf(nil, `{"redis_url": %q}`, srv.URL()), 0o644); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"PASSPORT_REDIS_URL": srv.URL()}

	t.Run("text", func(t *testing.T) {
		code, out, errs := policyRun(t, nil, "policy", "replay", "--policy", cand, "--redis", srv.URL(), "--tenant", "acme")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errs)
		}
		for _, want := range []string{"replayed 1 of 1 decisions, tenants acme", "now denied: 1 call",
			"service.restart", "healer-1 (ag-1)", "reputation_too_low×1", "now allowed: 0 calls"} {
			if !strings.Contains(out, want) {
				t.Errorf("stdout lacks %q:\n%s", want, out)
			}
		}
	})
	t.Run("json via env and fail-on-change", func(t *testing.T) {
		code, out, errs := policyRun(t, env, "policy", "replay", "--policy", cand, "--json", "--since", "2h", "--fail-on-change")
		if code != 3 || !strings.Contains(errs, "changes 1 decisions") {
			t.Fatalf("exit %d, want 3: %s", code, errs)
		}
		var rep struct {
			Tenants   []string `json:"tenants"`
			Decisions int      `json:"decisions"`
			NowDenied []struct {
				Action  string         `json:"action"`
				AgentID string         `json:"agent_id"`
				Count   int            `json:"count"`
				Reasons map[string]int `json:"reasons"`
			} `json:"now_denied"`
			NowAllowed []any `json:"now_allowed"`
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("%v:\n%s", err, out)
		}
		if rep.Decisions != 1 || len(rep.NowDenied) != 1 || rep.NowDenied[0].Count != 1 ||
			rep.NowDenied[0].Reasons["reputation_too_low"] != 1 || len(rep.NowAllowed) != 0 {
			t.Errorf("report %+v", rep)
		}
	})
	t.Run("data dir and unchanged policy", func(t *testing.T) {
		code, out, errs := policyRun(t, nil, "policy", "replay", "--policy", same, "--data", demo, "--fail-on-change")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errs)
		}
		if !strings.Contains(out, "now denied: 0 calls") || !strings.Contains(out, "unchanged: 1") {
			t.Errorf("stdout:\n%s", out)
		}
	})
	t.Run("since excludes older records", func(t *testing.T) {
		code, out, errs := policyRun(t, env, "policy", "replay", "--policy", cand, "--since", "30m")
		if code != 0 || !strings.Contains(out, "replayed 0 of 0 decisions") {
			t.Fatalf("exit %d: %s\n%s", code, out, errs)
		}
	})
	errCases := []struct {
		name string
		args []string
		want string
	}{
		{"policy required", []string{"policy", "replay"}, "--policy DIR is required"},
		{"candidate does not compile", []string{"policy", "replay", "--policy", policyDir(t, map[string]string{"authz.rego": "package passport.authz\n\nx := {\n"})}, "rego_parse_error"},
		{"data dir without demo.json", []string{"policy", "replay", "--policy", same, "--data", t.TempDir()}, "demo.json"},
		{"negative since", []string{"policy", "replay", "--policy", same, "--since", "-1h"}, "must not be negative"},
	}
	for _, tc := range errCases {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errs := policyRun(t, env, tc.args...)
			if code != 1 || !strings.Contains(errs, tc.want) {
				t.Fatalf("exit %d, stderr %q, want 1 and %q", code, errs, tc.want)
			}
		})
	}
	t.Run("redis down", func(t *testing.T) {
		srv.Kill()
		code, _, errs := policyRun(t, env, "policy", "replay", "--policy", same)
		if code != 1 || !strings.Contains(errs, "redis") {
			t.Fatalf("exit %d: %s", code, errs)
		}
	})
}

// TestPolicyCommandsRefuseLinksOutside: policy test and check read a
// directory as the proxy does (issue 13, item 7): a data file linked from
// outside is refused, naming the file, and never loaded.
func TestPolicyCommandsRefuseLinksOutside(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret.json")
	if err := os.WriteFile(secret, []byte(`{"leak": {"token": "s3cr3t"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"test", "check"} {
		dir := policyDir(t, nil)
		if err := os.Symlink(secret, filepath.Join(dir, "leak.json")); err != nil {
			t.Fatal(err)
		}
		code, out, errs := policyRun(t, nil, "policy", cmd, dir)
		if code != 1 || !strings.Contains(errs, "leak.json") || !strings.Contains(errs, "a symbolic link") {
			t.Fatalf("policy %s: exit %d\nstdout:\n%s\nstderr:\n%s", cmd, code, out, errs)
		}
		if strings.Contains(out+errs, "s3cr3t") {
			t.Fatalf("policy %s printed the linked file", cmd)
		}
	}
}

// budgetData is the embedded data.yaml declaring one budget with limit.
func budgetData(limit string) string {
	b, err := fs.ReadFile(policies.TestFS, "data.yaml")
	if err != nil {
		panic(err)
	}
	return strings.Replace(string(b), "  budgets: []\n", "  budgets:\n    - name: restarts-per-service\n      actions: [service.restart]\n"+
		"      per: resource\n"+limit+"      window: 10m\n", 1)
}
