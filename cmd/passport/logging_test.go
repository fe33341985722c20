package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentpassport/passport/internal/stack"
)

// TestUpLogsToFile: `passport up`'s logger writes every line to
// DIR/passport.log and only incidents, blocks and errors to the terminal,
// one short line each.
func TestUpLogsToFile(t *testing.T) {
	dir := t.TempDir()
	var term bytes.Buffer
	a := &app{getenv: func(string) string { return "" }, stderr: &term}
	log, path, closeLog, err := a.fileLogger(dir)
	if err != nil {
		t.Fatal(err)
	}
	healer := log.With("component", "healer", "tenant", "acme")
	healer.Info("health check passed", "target", "checkout")
	healer.Info("incident detected", "id", "inc-1", "type", "service_down", "target", "checkout")
	healer.Info("incident resolved", "id", "inc-1", "type", "service_down", "target", "checkout", "resolution_ms", 312)
	log.Warn("agent blocked", "tenant", "acme", "agent_id", "agt_x", "reason", "reputation below 25")
	log.Error("proxy stopped", "err", "listen tcp: address in use")
	closeLog()

	if path != filepath.Join(dir, LogFile) {
		t.Fatalf("log path %s", path)
	}
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"health check passed", "incident detected", "incident resolved", "agent blocked", "proxy stopped"} {
		if !strings.Contains(string(file), want) {
			t.Errorf("log file lacks %q:\n%s", want, file)
		}
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("log file mode: %v %v", fi.Mode(), err)
	}
	lines := strings.Split(strings.TrimSpace(term.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("terminal got %d lines, want 3 (resolved, blocked, error):\n%s", len(lines), term.String())
	}
	for i, want := range []string{
		"incident resolved tenant=acme id=inc-1 type=service_down target=checkout resolution_ms=312",
		"agent blocked tenant=acme agent_id=agt_x reason=\"reputation below 25\"",
		"error: proxy stopped err=\"listen tcp: address in use\"",
	} {
		if !strings.HasSuffix(lines[i], want) {
			t.Errorf("terminal line %d = %q, want it to end with %q", i, lines[i], want)
		}
	}
}

// TestOneShotCommandsLogWarningsOnly: without --log-level, a one-shot
// command logs warnings and errors, a server logs info too; PASSPORT_DATA
// gives --data its default.
func TestOneShotCommandsLogWarningsOnly(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		oneShot  bool
		logLevel string
		wantInfo bool
	}{
		{args: []string{"incidents"}, oneShot: true},
		{args: []string{"chaos", "fire"}, oneShot: true},
		{args: []string{"audit", "tail"}, oneShot: true}, // --data is a persistent flag of audit
		{args: []string{"chaos", "run"}, wantInfo: true},
		{args: []string{"dashboard"}, wantInfo: true},
		{args: []string{"incidents"}, oneShot: true, logLevel: "info", wantInfo: true},
	} {
		t.Run(strings.Join(tc.args, " ")+" "+tc.logLevel, func(t *testing.T) {
			var errBuf bytes.Buffer
			a := &app{getenv: func(k string) string {
				if k == "PASSPORT_DATA" {
					return "/tmp/somewhere"
				}
				return ""
			}, stderr: &errBuf}
			root := a.rootCmd()
			a.logLevel = tc.logLevel // as --log-level would
			cmd, _, err := root.Find(tc.args)
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.ParseFlags(nil); err != nil {
				t.Fatal(err)
			}
			if err := a.beforeCommand(cmd, nil); err != nil {
				t.Fatal(err)
			}
			if a.oneShot != tc.oneShot {
				t.Fatalf("oneShot = %v, want %v", a.oneShot, tc.oneShot)
			}
			f := cmd.Flags().Lookup("data")
			if f == nil {
				t.Fatalf("%s has no --data", cmd.CommandPath())
			}
			if f.Value.String() != "/tmp/somewhere" {
				t.Fatalf("--data = %q, want PASSPORT_DATA's", f.Value.String())
			}
			log, err := a.logger()
			if err != nil {
				t.Fatal(err)
			}
			log.Info("something routine")
			log.Warn("something odd")
			if got := strings.Contains(errBuf.String(), "something routine"); got != tc.wantInfo {
				t.Fatalf("info logged = %v, want %v:\n%s", got, tc.wantInfo, errBuf.String())
			}
			if !strings.Contains(errBuf.String(), "something odd") {
				t.Fatalf("warning not logged:\n%s", errBuf.String())
			}
		})
	}
}

// TestTourExportLine: the banner prints one export line that points a
// shell at the stack, and what a restart restored.
func TestTourExportLine(t *testing.T) {
	var b strings.Builder
	d := stack.Demo{URLs: stack.URLs{Proxy: "http://10.0.0.5:8080", Authority: "http://10.0.0.5:8081"},
		Restored: []string{"observer-acme-x (observer, acme): reputation 20.0 -> 60.0, unblocked"}}
	printTour(&b, "/srv/my demo", "/srv/my demo/passport.log", d)
	out := b.String()
	for _, want := range []string{
		"export PASSPORT_DATA='/srv/my demo' PASSPORT_AUTHORITY_URL=http://10.0.0.5:8081 PASSPORT_PROXY_URL=http://10.0.0.5:8080\n",
		"logs        /srv/my demo/passport.log",
		"restored    observer-acme-x (observer, acme): reputation 20.0 -> 60.0, unblocked",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("banner lacks %q:\n%s", want, out)
		}
	}
}
