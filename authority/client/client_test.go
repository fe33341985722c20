package client_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/authority"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
	"golang.org/x/crypto/bcrypt"
)

const adminToken = "client-test-admin-token-0123456789"

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type fixture struct {
	url        string
	admin      *client.Admin
	clock      *clock
	tokenCalls atomic.Int64
}

func start(t *testing.T) *fixture { t.Helper(); return startWith(t, nil) }

// startWith serves an authority on a private Redis, its config changed by
// mut.
func startWith(t *testing.T, mut func(*authority.Config)) *fixture {
	t.Helper()
	rs := redistest.Start(t)
	f := &fixture{clock: &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}}
	srv := httptest.NewUnstartedServer(nil)
	cfg := authority.DefaultConfig()
	cfg.AdminToken = adminToken
	cfg.Clients.BcryptCost = bcrypt.MinCost
	cfg.Issuer = "http://" + srv.Listener.Addr().String()
	if mut != nil {
		mut(&cfg)
	}
	a, err := authority.New(cfg, authority.Deps{Audit: audit.Discard,
		Redis: rs.Client(), Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelError})),
		Clock: f.clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	h := a.Handler()
	srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/oauth2/token" {
			f.tokenCalls.Add(1)
		}
		h.ServeHTTP(w, r)
	})
	srv.Start()
	t.Cleanup(srv.Close)
	f.url = srv.URL
	if f.admin, err = client.NewAdmin(srv.URL, adminToken, client.Options{}); err != nil {
		t.Fatal(err)
	}
	return f
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

func TestTokenCaching(t *testing.T) {
	f := start(t)
	ctx := context.Background()
	reg, err := f.admin.RegisterAgent(ctx, "acme", client.AgentSpec{Name: "healer-1", Type: "healer", TrustLevel: passport.TrustHigh})
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(f.url, reg.ClientID, passport.Secret(reg.ClientSecret), client.Options{Clock: f.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	req := client.TokenRequest{Scope: []string{"service.restart", "service.get"}, Task: &passport.Task{ID: "inc-1", Target: "checkout"}}
	t1, err := c.Token(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if !t1.ExpiresAt.Equal(f.clock.Now().Add(passport.DefaultLifetime)) || t1.Scope != "service.get service.restart" {
		t.Fatalf("token %+v", t1)
	}
	// Identical request (scope order does not matter): cached.
	t2, _ := c.Token(ctx, client.TokenRequest{Scope: []string{"service.get", "service.restart"}, Task: &passport.Task{ID: "inc-1", Target: "checkout"}})
	if t2.Raw != t1.Raw || f.tokenCalls.Load() != 1 {
		t.Fatalf("identical request not served from cache (%d calls)", f.tokenCalls.Load())
	}
	// Different task: a new passport.
	t3, _ := c.Token(ctx, client.TokenRequest{Scope: req.Scope, Task: &passport.Task{ID: "inc-2"}})
	if t3.Raw == t1.Raw || f.tokenCalls.Load() != 2 {
		t.Fatal("different request served from cache")
	}
	// Within 30s of expiry: refreshed.
	f.clock.Advance(passport.DefaultLifetime - 31*time.Second)
	if t4, _ := c.Token(ctx, req); t4.Raw != t1.Raw {
		t.Fatal("refreshed too early")
	}
	f.clock.Advance(2 * time.Second)
	if t5, _ := c.Token(ctx, req); t5.Raw == t1.Raw || f.tokenCalls.Load() != 3 {
		t.Fatal("not refreshed near expiry")
	}
	c.Invalidate()
	if _, err := c.Token(ctx, req); err != nil || f.tokenCalls.Load() != 4 {
		t.Fatal("Invalidate did not drop the cache")
	}
	// The token never appears in logs.
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "token", t1)
	if strings.Contains(buf.String(), t1.Raw[:20]) || !strings.Contains(buf.String(), "REDACTED") {
		t.Fatalf("token logged: %s", buf.String())
	}
}

func TestClientErrorsAndPrivateKey(t *testing.T) {
	f := start(t)
	ctx := context.Background()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(pub)
	reg, err := f.admin.RegisterAgent(ctx, "acme", client.AgentSpec{Name: "obs", Type: "observer", TrustLevel: "LOW",
		PublicKey: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))})
	if err != nil {
		t.Fatal(err)
	}
	pk, err := client.New(f.url, reg.ClientID, "", client.Options{PrivateKey: priv, Clock: f.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pk.Token(ctx, client.TokenRequest{}); err != nil {
		t.Fatalf("private_key_jwt: %v", err)
	}
	pk.Invalidate()
	if _, err := pk.Token(ctx, client.TokenRequest{}); err != nil {
		t.Fatalf("second private_key_jwt (fresh jti): %v", err)
	}
	c, _ := client.New(f.url, reg.ClientID, passport.Secret(reg.ClientSecret), client.Options{Clock: f.clock.Now})
	if _, err := c.Token(ctx, client.TokenRequest{Scope: []string{"service.restart"}}); !errors.Is(err, client.ErrInvalidScope) {
		t.Fatalf("wider scope: %v", err)
	}
	bad, _ := client.New(f.url, reg.ClientID, "cs_wrong", client.Options{})
	if _, err := bad.Token(ctx, client.TokenRequest{}); !errors.Is(err, client.ErrInvalidClient) {
		t.Fatalf("wrong secret: %v", err)
	}
	for range 10 {
		_, _ = bad.Token(ctx, client.TokenRequest{})
	}
	if _, err := bad.Token(ctx, client.TokenRequest{}); !errors.Is(err, client.ErrRateLimited) {
		t.Fatalf("after many failures: %v", err)
	}
	if _, err := client.New("not a url", "x", "y", client.Options{}); err == nil {
		t.Fatal("bad URL accepted")
	}
	if _, err := client.New(f.url, "x", "", client.Options{}); err == nil {
		t.Fatal("no credentials accepted")
	}
}

func TestTransport(t *testing.T) {
	f := start(t)
	ctx := context.Background()
	reg, _ := f.admin.RegisterAgent(ctx, "acme", client.AgentSpec{Name: "h", Type: "healer", TrustLevel: "HIGH"})
	c, _ := client.New(f.url, reg.ClientID, passport.Secret(reg.ClientSecret), client.Options{Clock: f.clock.Now})
	var status atomic.Int64
	status.Store(200)
	var seen atomic.Value
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.Header.Get("Authorization"))
		w.WriteHeader(int(status.Load()))
	}))
	defer up.Close()
	hc := &http.Client{Transport: c.Transport(nil, client.TokenRequest{Scope: []string{"service.list"}})}
	resp, err := hc.Get(up.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	first, _ := seen.Load().(string)
	if !strings.HasPrefix(first, "Bearer ey") {
		t.Fatalf("Authorization %q", first)
	}
	status.Store(401)
	resp, _ = hc.Get(up.URL)
	resp.Body.Close()
	calls := f.tokenCalls.Load()
	status.Store(200)
	resp, _ = hc.Get(up.URL)
	resp.Body.Close()
	if f.tokenCalls.Load() != calls+1 {
		t.Fatal("a 401 did not make the transport fetch a new passport")
	}
}

func TestAdminClient(t *testing.T) {
	f := start(t)
	ctx := context.Background()
	reg, err := f.admin.RegisterAgent(ctx, "acme", client.AgentSpec{Name: "rogue", Type: "observer", TrustLevel: "LOW"})
	if err != nil || reg.ClientSecret == "" || reg.ClientID != reg.ID || reg.Reputation != 60 || reg.Blocked {
		t.Fatalf("register: %+v %v", reg, err)
	}
	got, err := f.admin.GetAgent(ctx, "acme", reg.ID)
	if err != nil || got.Name != "rogue" || got.Tenant != "acme" {
		t.Fatalf("get: %+v %v", got, err)
	}
	list, err := f.admin.ListAgents(ctx, "acme")
	if err != nil || len(list) != 1 {
		t.Fatalf("list: %v %v", list, err)
	}
	if empty, err := f.admin.ListAgents(ctx, "globex"); err != nil || len(empty) != 0 {
		t.Fatalf("empty tenant: %v %v", empty, err)
	}
	res, err := f.admin.ReportOutcome(ctx, "acme", reg.ID, client.OutcomeDenied)
	if err != nil || res.Reputation != 50 || res.Previous != 60 {
		t.Fatalf("outcome: %+v %v", res, err)
	}
	if _, err := f.admin.ReportOutcome(ctx, "acme", reg.ID, "exploded"); err == nil {
		t.Fatal("unknown outcome accepted")
	}
	b, err := f.admin.Block(ctx, "acme", reg.ID, "manual")
	if err != nil || !b.Blocked {
		t.Fatalf("block: %+v %v", b, err)
	}
	u, err := f.admin.Unblock(ctx, "acme", reg.ID)
	if err != nil || u.Blocked || u.Reputation != 60 {
		t.Fatalf("unblock: %+v %v", u, err)
	}
	rot, err := f.admin.RotateKeys(ctx)
	if err != nil || rot.CurrentKID == "" || rot.NextKID == "" {
		t.Fatalf("rotate: %+v %v", rot, err)
	}
	if err := f.admin.DeleteAgent(ctx, "acme", reg.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := f.admin.GetAgent(ctx, "acme", reg.ID); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	if _, err := client.NewAdmin(f.url, "", client.Options{}); err == nil {
		t.Fatal("admin without token")
	}
}
