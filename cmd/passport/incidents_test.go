package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentpassport/passport/healer"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
)

func TestIncidentsCommandReadsDemoRedis(t *testing.T) {
	srv := redistest.Start(t)
	store := healer.NewStore(srv.Client(), 0)
	t0 := time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC)
	for i, tenant := range []string{"acme", "globex"} {
		at := t0.Add(time.Duration(i) * time.Second)
		res := at.Add(400 * time.Millisecond)
		in := &healer.Incident{ID: "inc-" + tenant, Tenant: tenant, Type: "cache_miss", Target: "svc-" + tenant,
			State: healer.StateResolved, DetectedAt: at, DispatchedAt: &at, ResolvedAt: &res, ResolutionMS: 400}
		if err := store.Save(context.Background(), in); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	demo := `{"urls":{"proxy":"http://127.0.0.1:1"},"redis_url":"` + srv.URL() + `","admin_token":"x","agents":[]}`
	if err := os.WriteFile(filepath.Join(dir, "demo.json"), []byte(demo), 0o600); err != nil {
		t.Fatal(err)
	}
	runCmd := func(args ...string) string {
		var out, errb bytes.Buffer
		if code := run(args, func(string) string { return "" }, &out, &errb); code != 0 {
			t.Fatalf("passport %v: exit %d: %s", args, code, errb.String())
		}
		return out.String()
	}
	var list []map[string]any
	if err := json.Unmarshal([]byte(runCmd("incidents", "--data", dir, "--json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0]["id"] != "inc-globex" || list[1]["id"] != "inc-acme" {
		t.Fatalf("list = %v", list)
	}
	for _, k := range []string{"id", "type", "target", "state", "detected_at", "dispatched_at", "resolved_at"} {
		if _, ok := list[0][k]; !ok {
			t.Errorf("json lacks %q", k)
		}
	}
	table := runCmd("incidents", "--data", dir, "--tenant", "acme")
	if !strings.Contains(table, "inc-acme") || strings.Contains(table, "inc-globex") || !strings.Contains(table, "RESOLVED") || !strings.Contains(table, "DETECTED_AT") {
		t.Errorf("table:\n%s", table)
	}
}

func TestAgentEnvPicksDemoAgent(t *testing.T) {
	dir := t.TempDir()
	demo := `{"urls":{"proxy":"http://127.0.0.1:18080","authority":"http://127.0.0.1:18081"},"redis_url":"redis://127.0.0.1:1/0",
	"agents":[{"name":"healer-acme","type":"healer","tenant":"acme","client_id":"h-acme","client_secret":"s1"},
	          {"name":"chaos-globex","type":"chaos","tenant":"globex","client_id":"c-globex","client_secret":"s2"}]}`
	if err := os.WriteFile(filepath.Join(dir, "demo.json"), []byte(demo), 0o600); err != nil {
		t.Fatal(err)
	}
	a := &app{getenv: func(k string) string { return map[string]string{"PASSPORT_PROXY_URL": "http://env:1"}[k] }, stdout: io.Discard, stderr: io.Discard}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	env, err := a.agentEnv(context.Background(), agentOpts{data: dir, tenant: "globex"}, passport.TypeChaos, "", "", log)
	if err != nil {
		t.Fatal(err)
	}
	if env.clientID != "c-globex" || env.tenant != "globex" || env.proxyURL != "http://127.0.0.1:18080" || env.redisURL != "redis://127.0.0.1:1/0" {
		t.Errorf("env = %+v", env)
	}
	if _, err := a.agentEnv(context.Background(), agentOpts{data: dir, tenant: "acme"}, passport.TypeChaos, "", "", log); err == nil {
		t.Error("no chaos agent for acme in demo.json, yet resolved")
	}
	// No credentials at all: a clear error, not a silent default.
	b := &app{getenv: func(string) string { return "" }, stdout: io.Discard, stderr: io.Discard}
	if _, err := b.agentEnv(context.Background(), agentOpts{}, passport.TypeHealer, "", "", log); err == nil || !strings.Contains(err.Error(), "credentials") {
		t.Errorf("err = %v", err)
	}
}
