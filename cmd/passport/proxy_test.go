package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/authority"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func pollUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestProxyCommandEndToEnd runs the real authority and `passport proxy`
// (built-in policy library, real audit stream) on one redis-server in
// front of a stand-in control API: passports from the authority are
// accepted, the library allows a HIGH healer and denies a LOW observer,
// the denial reaches the authority's reputation, a block is enforced
// within a second, and cancelling the command drains and returns nil.
func TestProxyCommandEndToEnd(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{AOF: true})

	// Authority on the shared Redis.
	asrv := httptest.NewUnstartedServer(nil)
	acfg := authority.DefaultConfig()
	acfg.AdminToken = cliAdminToken
	acfg.Clients.BcryptCost = bcrypt.MinCost
	acfg.Issuer = "http://" + asrv.Listener.Addr().String()
	auth, err := authority.New(acfg, authority.Deps{Audit: audit.Discard, Redis: rs.Client(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	asrv.Config.Handler = auth.Handler()
	asrv.Start()
	defer asrv.Close()

	// The control API the proxy protects.
	var mu sync.Mutex
	var seen []*http.Request
	fleet := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	defer fleet.Close()

	listen, admin := freeAddr(t), freeAddr(t)
	var errb bytes.Buffer
	a := &app{getenv: func(k string) string {
		return map[string]string{"PASSPORT_REDIS_URL": rs.URL(), "PASSPORT_ADMIN_TOKEN": cliAdminToken}[k]
	}, stdout: io.Discard, stderr: &syncWriter{w: &errb}}
	root := a.rootCmd()
	root.SetArgs([]string{"proxy", "--listen", listen, "--admin-listen", admin, "--issuer", acfg.Issuer,
		"--upstream", fleet.URL, "--log-level", "warn"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	pollUntil(t, 20*time.Second, "proxy ready", func() bool {
		resp, err := http.Get("http://" + admin + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})

	adm, err := client.NewAdmin(acfg.Issuer, cliAdminToken, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	token := func(name, typ, trust string) (string, string) {
		reg, err := adm.RegisterAgent(ctx, "acme", client.AgentSpec{Name: name, Type: typ, TrustLevel: passport.TrustLevel(trust)})
		if err != nil {
			t.Fatal(err)
		}
		c, err := client.New(acfg.Issuer, reg.ClientID, passport.Secret(reg.ClientSecret), client.Options{})
		if err != nil {
			t.Fatal(err)
		}
		tok, err := c.Token(ctx, client.TokenRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return reg.ID, tok.Raw
	}
	call := func(tok string) int {
		req, _ := http.NewRequest("POST", "http://"+listen+"/services/checkout/restart", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("X-Passport-Agent", "forged")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	healerID, healer := token("healer-1", "healer", "HIGH")
	if s := call(healer); s != 200 {
		t.Fatalf("healer restart: %d; log: %s", s, errb.String())
	}
	mu.Lock()
	got := seen[len(seen)-1]
	mu.Unlock()
	if got.Header.Get("X-Passport-Agent") != healerID || got.Header.Get("Authorization") != "" {
		t.Fatalf("upstream identity %q, authorization %q", got.Header.Get("X-Passport-Agent"), got.Header.Get("Authorization"))
	}

	rogueID, rogue := token("rogue-1", "observer", "LOW")
	before, err := adm.GetAgent(ctx, "acme", rogueID)
	if err != nil {
		t.Fatal(err)
	}
	if s := call(rogue); s != 403 {
		t.Fatalf("rogue restart: %d", s)
	}
	pollUntil(t, 5*time.Second, "the denial to lower the rogue's reputation", func() bool {
		a, err := adm.GetAgent(ctx, "acme", rogueID)
		return err == nil && a.Reputation < before.Reputation
	})

	if _, err := adm.Block(ctx, "acme", healerID, "test"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	pollUntil(t, time.Second, "the block to be enforced", func() bool { return call(healer) == 401 })
	t.Logf("block enforced after %s", time.Since(start))

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("proxy command: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("proxy did not stop")
	}
	if strings.Contains(errb.String(), healer) {
		t.Fatal("a passport was logged")
	}
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}

// The proxy reports denials with the reporter token when there is one,
// else with the admin token.
func TestProxyReportToken(t *testing.T) {
	cases := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{}, ""},
		{map[string]string{"PASSPORT_ADMIN_TOKEN": "admin-token-0123456789"}, "admin-token-0123456789"},
		{map[string]string{"PASSPORT_ADMIN_TOKEN": "admin-token-0123456789", "PASSPORT_REPORTER_TOKEN": "reporter-token-0123456789"}, "reporter-token-0123456789"},
		{map[string]string{"PASSPORT_REPORTER_TOKEN": "reporter-token-0123456789"}, "reporter-token-0123456789"},
	}
	for _, tc := range cases {
		a := &app{getenv: func(k string) string { return tc.env[k] }, stdout: io.Discard, stderr: io.Discard}
		cfg, err := a.loadProxyConfigFor("")
		if err != nil || string(cfg.ReportToken) != tc.want {
			t.Errorf("env %v: report token %q (%v), want %q", tc.env, cfg.ReportToken, err, tc.want)
		}
	}
}
