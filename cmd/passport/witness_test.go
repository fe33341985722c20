package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
)

// writeWitnessed runs a writer with the given witnesses over acme and
// globex, and stops it cleanly.
func writeWitnessed(t *testing.T, rdb *redis.Client, ws ...audit.Witness) {
	t.Helper()
	s, err := audit.NewStream(rdb, audit.StreamConfig{WriterID: "proxy-a", CheckpointEvery: 4, Witnesses: ws},
		slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	for i := range 10 {
		for _, tenant := range []string{"acme", "globex"} {
			if _, err := s.Append(context.Background(), &audit.Record{Kind: audit.KindDecision, Tenant: tenant, RequestID: fmt.Sprint(i)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	s.Close()
}

func TestAuditVerifyWithWitness(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	dir := filepath.Join(t.TempDir(), "witness")
	wit, _ := audit.NewDirWitness(dir, audit.DirWitnessOptions{})
	writeWitnessed(t, rdb, wit)
	env := map[string]string{"PASSPORT_REDIS_URL": srv.URL()}

	code, out, errOut := auditRun(t, env, "audit", "verify", "--witness", dir)
	if code != 0 || !strings.Contains(out, "OK witness dir:"+dir+": 1 writers (1 closed cleanly, 0 running)") {
		t.Fatalf("clean with --witness: %d\n%s%s", code, out, errOut)
	}
	withEnv := map[string]string{"PASSPORT_REDIS_URL": srv.URL(), "PASSPORT_WITNESS": dir}
	if code, out, errOut := auditRun(t, withEnv, "audit", "verify"); code != 0 || !strings.Contains(out, "OK witness") {
		t.Fatalf("clean with PASSPORT_WITNESS: %d\n%s%s", code, out, errOut)
	}
	// --data DIR: the witness of the stack that wrote demo.json.
	data := t.TempDir()
	os.WriteFile(filepath.Join(data, "demo.json"), fmt.Appendf(nil, `{"redis_url": %q, "witness": %q}`, srv.URL(), dir), 0o600)
	if code, out, errOut := auditRun(t, nil, "audit", "verify", "--data", data); code != 0 || !strings.Contains(out, "OK witness") {
		t.Fatalf("clean with --data: %d\n%s%s", code, out, errOut)
	}

	// The whole globex trail deleted, heads and registry entry included:
	// invisible from Redis (issue 14), a named verdict with the witness.
	ctx := context.Background()
	rdb.Del(ctx, audit.StreamKey("globex"), audit.HeadsKey("globex"))
	rdb.SRem(ctx, audit.TenantsKey, "globex")
	if code, out, _ := auditRun(t, env, "audit", "verify"); code != 0 || !strings.Contains(out, "no witness:") {
		t.Fatalf("without a witness the deletion passes, with a note: %d\n%s", code, out)
	}
	code, out, errOut = auditRun(t, withEnv, "audit", "verify", "--json")
	if code != 2 || !strings.Contains(out, `"kind":"stream_missing"`) || !strings.Contains(errOut, "stream_missing at passport:{t:globex}:audit") {
		t.Fatalf("deleted stream with the witness: %d\n%s%s", code, out, errOut)
	}
	code, out, _ = auditRun(t, withEnv, "audit", "verify")
	if code != 2 || !strings.Contains(out, "FAILED passport:{t:globex}:audit: 0 records") || !strings.Contains(out, "stream_missing end-of-stream") {
		t.Fatalf("readable report: %d\n%s", code, out)
	}

	// A corrupt head is a verdict (2), never a parse error (1), with or
	// without a witness.
	rdb.HSet(ctx, audit.HeadsKey("acme"), "proxy-a", "garbage")
	for _, e := range []map[string]string{env, withEnv} {
		if code, _, errOut := auditRun(t, e, "audit", "verify", "--tenant", "acme"); code != 2 || !strings.Contains(errOut, "head_corrupt") {
			t.Fatalf("corrupt head: %d %s", code, errOut)
		}
	}

	// A witness that cannot be read is an error (1), not a pass.
	if code, _, errOut := auditRun(t, env, "audit", "verify", "--witness", filepath.Join(dir, "nope")); code != 1 {
		t.Fatalf("missing witness dir: %d %s", code, errOut)
	}
	if code, _, errOut := auditRun(t, env, "audit", "verify", "--witness", "http://127.0.0.1:1"); code != 1 {
		t.Fatalf("unreachable witness: %d %s", code, errOut)
	}
}

// passport witness serves writers and verify over HTTP.
func TestWitnessCommand(t *testing.T) {
	srv := redistest.Start(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	const token = "witness-token-0123456789"
	env := map[string]string{"PASSPORT_REDIS_URL": srv.URL(), "PASSPORT_WITNESS_TOKEN": token}
	ctx, cancel := context.WithCancel(context.Background())
	a := &app{getenv: func(k string) string { return env[k] }, stdout: io.Discard, stderr: io.Discard, logLevel: "info", logFormat: "text"}
	done := make(chan error, 1)
	go func() {
		root := a.rootCmd()
		root.SetArgs([]string{"witness", "--listen", addr, "--dir", t.TempDir()})
		done <- root.ExecuteContext(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("witness: %v", err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("witness not up: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	w, _ := audit.OpenWitness("http://"+addr, token)
	writeWitnessed(t, srv.Client(), w)
	if code, out, errOut := auditRun(t, env, "audit", "verify", "--witness", "http://"+addr); code != 0 || !strings.Contains(out, "1 closed cleanly") {
		t.Fatalf("verify through passport witness: %d\n%s%s", code, out, errOut)
	}
	noToken := map[string]string{"PASSPORT_REDIS_URL": srv.URL()}
	if code, _, errOut := auditRun(t, noToken, "audit", "verify", "--witness", "http://"+addr); code != 1 || !strings.Contains(errOut, "401") {
		t.Fatalf("verify without the token: %d %s", code, errOut)
	}
}
