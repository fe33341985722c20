package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
)

func auditRun(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, func(k string) string { return env[k] }, &out, &errb)
	return code, out.String(), errb.String()
}

func auditFixture(t *testing.T) (*redistest.Server, *redis.Client, *audit.Stream) {
	t.Helper()
	srv := redistest.Start(t)
	rdb := srv.Client()
	s, err := audit.NewStream(rdb, audit.StreamConfig{WriterID: "proxy-a", CheckpointEvery: 4}, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	for i := range 10 {
		for _, tenant := range []string{"acme", "globex"} {
			_, err := s.Append(context.Background(), &audit.Record{
				Kind: audit.KindDecision, Tenant: tenant, RequestID: fmt.Sprintf("r-%d", i),
				AgentName: "healer-1", Method: "POST", Path: "/services/checkout/restart",
				Action: "service.restart", Resource: "checkout", Decision: audit.DecisionAllow,
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	return srv, rdb, s
}

func TestAuditVerifyCommand(t *testing.T) {
	srv, rdb, s := auditFixture(t)
	env := map[string]string{"PASSPORT_REDIS_URL": srv.URL()}

	code, out, errOut := auditRun(t, env, "audit", "verify")
	if code != 0 || !strings.Contains(out, "OK passport:{t:acme}:audit") || !strings.Contains(out, "OK passport:{t:globex}:audit") {
		t.Fatalf("verify clean: code %d\n%s%s", code, out, errOut)
	}
	// The fixture's allow decisions have no outcome records: said, not failed.
	if !strings.Contains(out, "10 allowed calls have no outcome record (first: ") {
		t.Fatalf("verify does not report the allows without outcome:\n%s", out)
	}

	// Pinned keys from "audit writers" verify too; a wrong pin fails.
	_, keys, _ := auditRun(t, env, "audit", "writers")
	_ = keys
	code, keysOut, _ := auditRun(t, env, "audit", "writers")
	if code != 0 || !strings.Contains(keysOut, "proxy-a ") {
		t.Fatalf("writers: %d %s", code, keysOut)
	}
	dir := t.TempDir()
	good := filepath.Join(dir, "good.keys")
	os.WriteFile(good, []byte(keysOut), 0o600)
	if code, out, errOut := auditRun(t, env, "audit", "verify", "--tenant", "acme", "--trusted-keys", good); code != 0 {
		t.Fatalf("verify with pinned keys: %d\n%s%s", code, out, errOut)
	}
	bad := filepath.Join(dir, "bad.keys")
	os.WriteFile(bad, []byte("proxy-a AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"), 0o600)
	if code, _, errOut := auditRun(t, env, "audit", "verify", "--tenant", "acme", "--trusted-keys", bad); code != 2 || !strings.Contains(errOut, "bad_checkpoint") {
		t.Fatalf("verify with wrong pinned key: code %d, %s", code, errOut)
	}

	// Tamper with globex: delete its 5th record.
	msgs, _ := rdb.XRange(context.Background(), audit.StreamKey("globex"), "-", "+").Result()
	rdb.XDel(context.Background(), audit.StreamKey("globex"), msgs[4].ID)
	code, out, errOut = auditRun(t, env, "audit", "verify", "--redis", srv.URL())
	if code != 2 {
		t.Fatalf("verify after XDEL: code %d, want 2\n%s%s", code, out, errOut)
	}
	if !strings.Contains(errOut, "deleted at passport:{t:globex}:audit "+msgs[5].ID) {
		t.Errorf("verify does not name the place: %s", errOut)
	}
	if !strings.Contains(out, "OK passport:{t:acme}:audit") || !strings.Contains(out, "FAILED passport:{t:globex}:audit") {
		t.Errorf("report:\n%s", out)
	}
	_ = s
}

func TestAuditTailAndExportCommands(t *testing.T) {
	srv, rdb, _ := auditFixture(t)
	// A forged record trying to fake a second line and an escape sequence.
	forged := `{"v":1,"kind":"decision","tenant":"acme","writer":"x","seq":1,"path":"/a\r\n2026-01-01 acme decision allow \u001b[31m","decision":"allow"}`
	rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: audit.StreamKey("acme"), Values: []any{audit.FieldRecord, forged}})

	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "demo.json"), fmt.Appendf(nil, `{"redis_url": %q}`, srv.URL()), 0o644)
	code, out, errOut := auditRun(t, nil, "audit", "tail", "--data", dir, "-n", "5")
	if code != 0 {
		t.Fatalf("tail: %d %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 5 {
		t.Fatalf("tail -n 5 printed %d lines:\n%s", len(lines), out)
	}
	forgedLine := ""
	for _, l := range lines {
		if strings.Contains(l, "writer=x") {
			forgedLine = l
		}
	}
	if strings.ContainsAny(out, "\r\x1b") || !strings.Contains(forgedLine, `\r\n`) || !strings.Contains(forgedLine, `\x1b`) {
		t.Errorf("tail did not escape the forged path:\n%q", out)
	}
	if !strings.Contains(out, " acme decision allow POST /services/checkout/restart action=service.restart resource=checkout agent=healer-1 req=r-9 writer=proxy-a seq=") {
		t.Errorf("readable lines:\n%s", out)
	}

	code, out, _ = auditRun(t, map[string]string{"PASSPORT_REDIS_URL": srv.URL()}, "audit", "export", "--tenant", "acme", "--since", "1h")
	if code != 0 {
		t.Fatal(code)
	}
	n := 0
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var line struct {
			Stream string          `json:"stream"`
			ID     string          `json:"id"`
			Record json.RawMessage `json:"record"`
		}
		if err := json.Unmarshal([]byte(l), &line); err != nil || line.Stream != audit.StreamKey("acme") || line.ID == "" {
			t.Fatalf("export line %q: %v", l, err)
		}
		if rec, err := audit.DecodeRecord(line.Record); err == nil && rec.Writer == "proxy-a" {
			if h, _ := audit.HashRaw(line.Record); h != rec.Hash {
				t.Errorf("exported record does not re-hash: %s", l)
			}
		}
		n++
	}
	if n != 10+2+1 { // 10 decisions, 2 checkpoints (every 4), 1 forged
		t.Errorf("exported %d lines", n)
	}
	code, out, _ = auditRun(t, map[string]string{"PASSPORT_REDIS_URL": srv.URL()}, "audit", "export", "--tenant", "acme",
		"--since", time.Now().Add(time.Hour).Format(time.RFC3339))
	if code != 0 || out != "" {
		t.Errorf("export --since future: %d %q", code, out)
	}
}

func TestAuditTailFollow(t *testing.T) {
	srv, _, s := auditFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	a := &app{getenv: func(k string) string { return map[string]string{"PASSPORT_REDIS_URL": srv.URL()}[k] }, stdout: pw, stderr: io.Discard}
	done := make(chan error, 1)
	go func() {
		root := a.rootCmd()
		root.SetArgs([]string{"audit", "tail", "--follow", "--tenant", "acme", "-n", "0", "--json"})
		done <- root.ExecuteContext(ctx)
		pw.Close()
	}()
	go func() {
		// Records keep arriving while tail runs: whenever it has started,
		// follow must print the ones appended after that. (Appending once
		// after a fixed pause would race with the start of tail.)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				s.Append(ctx, &audit.Record{Kind: audit.KindDecision, Tenant: "acme", RequestID: fmt.Sprintf("followed-%d", i)})
			}
		}
	}()
	buf := make([]byte, 64<<10)
	got := ""
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(got, `"request_id":"followed-`) {
		if time.Now().After(deadline) {
			t.Fatalf("follow did not print the new record: %q", got)
		}
		n, err := pr.Read(buf)
		if err != nil {
			t.Fatalf("%v (tail returned %v)", err, <-done)
		}
		got += string(buf[:n])
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("tail --follow: %v", err)
	}
}

func TestAuditKeygenPinsAWriter(t *testing.T) {
	srv := redistest.Start(t)
	keyFile := filepath.Join(t.TempDir(), "proxy-a.pem")
	code, line, errOut := auditRun(t, nil, "audit", "keygen", "--writer", "proxy-a", "--out", keyFile)
	if code != 0 {
		t.Fatalf("keygen: %d %s", code, errOut)
	}
	key, err := audit.LoadSigningKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	s, err := audit.NewStream(srv.Client(), audit.StreamConfig{WriterID: "proxy-a", SigningKey: key}, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Append(context.Background(), &audit.Record{Kind: audit.KindDecision, Tenant: "acme", RequestID: "x"})
	s.Checkpoint(context.Background(), audit.CheckpointPeriodic)
	s.Close()
	trusted := filepath.Join(t.TempDir(), "trusted.keys")
	os.WriteFile(trusted, []byte(line), 0o600)
	if code, out, errOut := auditRun(t, nil, "audit", "verify", "--redis", srv.URL(), "--trusted-keys", trusted); code != 0 {
		t.Fatalf("verify with the keygen line: %d\n%s%s", code, out, errOut)
	}
	if code, _, _ := auditRun(t, nil, "audit", "keygen", "--writer", "proxy-a", "--out", keyFile); code == 0 {
		t.Error("keygen overwrote an existing key file")
	}
}

// TestAuditLineOnBehalfOf: a delegated call's line reads "agent B on
// behalf of A" (the chain from the acting agent back to the root), and a
// hostile name in the chain is quoted like every other value.
func TestAuditLineOnBehalfOf(t *testing.T) {
	rec := &audit.Record{V: 1, Kind: audit.KindDecision, Tenant: "acme", Decision: "allow", AgentID: "agt_c", AgentName: "sub-1",
		Chain: []audit.ChainLink{{ID: "agt_a", Name: "commander-1"}, {ID: "agt_b"}, {ID: "agt_c", Name: "sub-1"}}, Subject: "agt_a"}
	line := audit.Line(redis.XMessage{ID: "1-0", Values: map[string]any{audit.FieldRecord: string(mustRecordJSON(t, rec))}})
	if !strings.Contains(line, " agent=sub-1 agent_id=agt_c on_behalf_of=agt_b<commander-1 ") {
		t.Fatalf("line: %s", line)
	}
	rec.Chain[0].Name = "evil\nwriter=x"
	line = audit.Line(redis.XMessage{ID: "1-0", Values: map[string]any{audit.FieldRecord: string(mustRecordJSON(t, rec))}})
	if strings.Contains(line, "\n") || !strings.Contains(line, `on_behalf_of="agt_b<evil\nwriter=x"`) {
		t.Fatalf("hostile chain: %s", line)
	}
	rec.Chain = nil
	line = audit.Line(redis.XMessage{ID: "1-0", Values: map[string]any{audit.FieldRecord: string(mustRecordJSON(t, rec))}})
	if strings.Contains(line, "on_behalf_of") {
		t.Fatalf("undelegated: %s", line)
	}
}

func mustRecordJSON(t *testing.T, rec *audit.Record) []byte {
	t.Helper()
	b, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// With --archive, export prints every record once and in order, from the
// archive and then from Redis, and verify checks the one history; a
// segment deleted is a verdict (exit 2) and fails export (exit 1).
func TestAuditArchiveCommands(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	w, err := audit.NewStream(rdb, audit.StreamConfig{WriterID: "proxy-a", CheckpointEvery: 10}, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	var ids []string
	for i := range 260 {
		rc, err := w.Append(ctx, &audit.Record{Kind: audit.KindDecision, Tenant: "acme", RequestID: fmt.Sprintf("r-%d", i), Decision: audit.DecisionAllow})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, rc.ID())
	}
	arch, err := audit.NewStream(rdb, audit.StreamConfig{WriterID: "archiver"}, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = arch.Close() })
	dir := t.TempDir()
	ar, err := audit.NewArchiver(rdb, arch, audit.ArchiveConfig{Dir: dir, MaxBytes: 1, SegmentRecords: 100}, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ar.Archive(ctx); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"PASSPORT_REDIS_URL": srv.URL()}
	code, out, errOut := auditRun(t, env, "audit", "export", "--tenant", "acme", "--archive", dir)
	if code != 0 {
		t.Fatalf("export: %d %s", code, errOut)
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var line struct {
			ID     string          `json:"id"`
			Record json.RawMessage `json:"record"`
		}
		if err := json.Unmarshal([]byte(l), &line); err != nil {
			t.Fatal(err)
		}
		if rec, err := audit.DecodeRecord(line.Record); err == nil && rec.Kind == audit.KindDecision {
			got = append(got, line.ID)
		}
	}
	if strings.Join(got, " ") != strings.Join(ids, " ") {
		t.Fatalf("export --archive printed %d decisions, want the %d written, once and in order", len(got), len(ids))
	}
	code, out, _ = auditRun(t, env, "audit", "export", "--tenant", "acme")
	if code != 0 || strings.Count(out, `"kind":"decision"`) >= len(ids) {
		t.Fatalf("export without --archive: %d, %d decisions (the archived ones are not in Redis)", code, strings.Count(out, `"kind":"decision"`))
	}
	if code, out, _ = auditRun(t, env, "audit", "verify", "--tenant", "acme", "--archive", dir); code != 0 {
		t.Fatalf("verify --archive: %d\n%s", code, out)
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "acme", "*.jsonl.zst"))
	if len(segs) < 2 {
		t.Fatalf("segments %v", segs)
	}
	if err := os.Remove(segs[1]); err != nil {
		t.Fatal(err)
	}
	if code, out, _ = auditRun(t, env, "audit", "verify", "--tenant", "acme", "--archive", dir); code != 2 || !strings.Contains(out, "segment_missing") {
		t.Fatalf("verify --archive with a segment deleted: %d\n%s", code, out)
	}
	if code, _, errOut = auditRun(t, env, "audit", "export", "--tenant", "acme", "--archive", dir); code != 1 || !strings.Contains(errOut, "segment") {
		t.Fatalf("export --archive with a segment deleted: %d %s", code, errOut)
	}
}
