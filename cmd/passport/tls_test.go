package main

import (
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/internal/tlstest"
)

// serveCmd runs a server subcommand with env until the test ends.
func serveCmd(t *testing.T, env map[string]string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a := &app{getenv: func(k string) string { return env[k] }, stdout: io.Discard, stderr: io.Discard, logLevel: "warn", logFormat: "text"}
	done := make(chan error, 1)
	go func() {
		root := a.rootCmd()
		root.SetArgs(args)
		done <- root.ExecuteContext(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: %v", args[0], err)
		}
	})
}

// waitHealthy polls `passport healthcheck url` with env until it passes.
func waitHealthy(t *testing.T, env map[string]string, url string, extra ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, _, errOut := auditRun(t, env, append([]string{"healthcheck", url}, extra...)...)
		if code == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not healthy: %s", url, errOut)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestWitnessServesTLSFromTheEnvironment(t *testing.T) {
	srv := redistest.Start(t)
	ca := tlstest.NewCA(t, "witness CA")
	leaf := ca.Server("127.0.0.1")
	addr := freeAddr(t)
	const token = "witness-token-0123456789"
	serveCmd(t, map[string]string{"PASSPORT_TLS_CERT_FILE": leaf.CertFile, "PASSPORT_TLS_KEY_FILE": leaf.KeyFile,
		"PASSPORT_WITNESS_TOKEN": token}, "witness", "--listen", addr, "--dir", t.TempDir())
	url := "https://" + addr

	withCA := map[string]string{"PASSPORT_REDIS_URL": srv.URL(), "PASSPORT_WITNESS_TOKEN": token, "PASSPORT_CA_FILE": ca.File}
	waitHealthy(t, withCA, url+"/healthz")
	if code, _, _ := auditRun(t, nil, "healthcheck", url+"/healthz"); code == 0 {
		t.Fatal("healthcheck trusted a private CA it was not given")
	}
	if code, _, errOut := auditRun(t, nil, "healthcheck", "--ca-file", ca.File, "--server-name", "witness.internal", url+"/healthz"); code == 0 ||
		!strings.Contains(errOut, "witness.internal") {
		t.Fatalf("healthcheck with a server name the certificate lacks: %d %s", code, errOut)
	}

	a := &app{getenv: func(k string) string { return withCA[k] }}
	ws, err := a.openWitnesses([]string{url})
	if err != nil {
		t.Fatal(err)
	}
	writeWitnessed(t, srv.Client(), ws...)
	if code, out, errOut := auditRun(t, withCA, "audit", "verify", "--witness", url); code != 0 || !strings.Contains(out, "1 closed cleanly") {
		t.Fatalf("verify through an https witness: %d\n%s%s", code, out, errOut)
	}
	noCA := map[string]string{"PASSPORT_REDIS_URL": srv.URL(), "PASSPORT_WITNESS_TOKEN": token}
	if code, _, errOut := auditRun(t, noCA, "audit", "verify", "--witness", url); code != 1 || !strings.Contains(errOut, "certificate") {
		t.Fatalf("verify without the CA: %d %s", code, errOut)
	}
	if code, out, errOut := auditRun(t, noCA, "--ca-file", ca.File, "audit", "verify", "--witness", url); code != 0 {
		t.Fatalf("verify with --ca-file: %d\n%s%s", code, out, errOut)
	}
}

func TestAuthorityFlagsAndTheCLIOverTLS(t *testing.T) {
	srv := redistest.Start(t)
	ca := tlstest.NewCA(t, "authority CA")
	leaf := ca.Server("127.0.0.1")
	addr := freeAddr(t)
	const admin = "cli-tls-admin-token-0123456789"
	serveCmd(t, map[string]string{"PASSPORT_REDIS_URL": srv.URL(), "PASSPORT_ADMIN_TOKEN": admin},
		"authority", "--listen", addr, "--tls-cert", leaf.CertFile, "--tls-key", leaf.KeyFile)
	url := "https://" + addr
	env := map[string]string{"PASSPORT_ADMIN_TOKEN": admin, "PASSPORT_AUTHORITY_URL": url}
	waitHealthy(t, nil, url+"/readyz", "--ca-file", ca.File)

	code, out, errOut := auditRun(t, env, "--ca-file", ca.File, "agent", "register", "--tenant", "acme",
		"--name", "healer-1", "--type", "healer", "--trust", "HIGH", "--json")
	if code != 0 {
		t.Fatalf("register over TLS: %d %s", code, errOut)
	}
	var reg struct {
		ClientID     string `json:"client_id"`
		ClientSecret string `json:"client_secret"`
	}
	if err := json.Unmarshal([]byte(out), &reg); err != nil || reg.ClientSecret == "" {
		t.Fatalf("register output %q: %v", out, err)
	}
	env["PASSPORT_CLIENT_ID"], env["PASSPORT_CLIENT_SECRET"] = reg.ClientID, reg.ClientSecret
	if code, _, errOut := auditRun(t, env, "token"); code == 0 || !strings.Contains(errOut, "certificate") {
		t.Fatalf("token without the CA: %d %s", code, errOut)
	}
	env["PASSPORT_CA_FILE"] = ca.File
	code, out, errOut = auditRun(t, env, "token", "--decode")
	if code != 0 || !strings.Contains(out, `"iss": "https://127.0.0.1:8081"`) {
		t.Fatalf("token with PASSPORT_CA_FILE: %d\n%s%s", code, out, errOut)
	}
}
