package scaleout

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/bcrypt"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/authority"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
	"github.com/agentpassport/passport/policies"
	"github.com/agentpassport/passport/proxy"
)

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func newStream(t testing.TB, rdb redis.UniversalClient, cfg audit.StreamConfig) *audit.Stream {
	t.Helper()
	s, err := audit.NewStream(rdb, cfg, testLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatalf("NewStream: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func decision(tenant string, n int) *audit.Record {
	return &audit.Record{
		Kind:      audit.KindDecision,
		RequestID: fmt.Sprintf("req-%s-%d", tenant, n),
		Tenant:    tenant,
		AgentID:   "agent-1",
		Method:    "POST",
		Path:      "/services/checkout/restart",
		Action:    "service.restart",
		Resource:  "checkout",
		Decision:  audit.DecisionAllow,
		Reasons:   []string{"capability_granted"},
	}
}

// tenantsOnDistinctPrimaries returns n tenant names whose keys live on n
// different primaries of c.
func tenantsOnDistinctPrimaries(t testing.TB, c *redistest.Cluster, n int) []string {
	t.Helper()
	seen := map[*redistest.ClusterNode]bool{}
	var out []string
	for i := 0; len(out) < n && i < 1000; i++ {
		tenant := fmt.Sprintf("tenant%d", i)
		p := c.PrimaryOf(audit.StreamKey(tenant))
		if !seen[p] {
			seen[p] = true
			out = append(out, tenant)
		}
	}
	if len(out) < n {
		t.Fatalf("found tenants on %d primaries, want %d", len(out), n)
	}
	return out
}

// requestIDs reads the request ids of the decision records in a tenant's
// stream.
func requestIDs(t testing.TB, rdb redis.UniversalClient, tenant string) map[string]bool {
	t.Helper()
	ids := map[string]bool{}
	err := audit.ScanStream(context.Background(), rdb, audit.StreamKey(tenant), "-", 1000, func(m redis.XMessage) error {
		rec, _, err := audit.ParseMessage(m)
		if err == nil && rec.Kind == audit.KindDecision {
			ids[rec.RequestID] = true
		}
		return nil
	})
	if err != nil {
		t.Fatalf("read %s: %v", tenant, err)
	}
	return ids
}

func mustVerify(t testing.TB, rdb redis.UniversalClient, tenant string) *audit.Report {
	t.Helper()
	rep, err := audit.VerifyStream(context.Background(), rdb, tenant, audit.VerifyOptions{})
	if err != nil {
		t.Fatalf("verify %s: %v", tenant, err)
	}
	if !rep.OK() {
		for i, p := range rep.Problems {
			if i > 5 {
				break
			}
			t.Errorf("verify %s: %s", tenant, p)
		}
		t.FailNow()
	}
	return rep
}

// retry runs f until it succeeds or d passes, returning the last error.
func retry(d time.Duration, f func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond) // the failing side has no event to wait on
	}
}

// startAuthority runs an authority on rdb, writing to w, until the test
// ends, and returns its URL. Its issuer is issuer, or its own URL when
// issuer is "" (replicas share the first one's).
func startAuthority(t *testing.T, rdb redis.UniversalClient, issuer string, w *audit.Stream) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(nil)
	cfg := authority.DefaultConfig()
	cfg.AdminToken = adminToken
	cfg.Clients.BcryptCost = bcrypt.MinCost
	cfg.Issuer = issuer
	if cfg.Issuer == "" {
		cfg.Issuer = "http://" + srv.Listener.Addr().String()
	}
	cfg.Passport.IssueBurst = 1000
	a, err := authority.New(cfg, authority.Deps{Redis: rdb, Logger: testLogger(t), Registry: prometheus.NewRegistry(), Audit: w})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = a.Handler()
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL
}

// startProxy runs a proxy with the fleet's routes in front of upURL on
// rdb, writing to w, until the test ends, and returns its agent port's
// URL once ready. It accepts passports of issuer and asks authURL for
// keys and denial reports.
func startProxy(t *testing.T, rdb redis.UniversalClient, upURL, issuer, authURL string, w *audit.Stream) string {
	t.Helper()
	return startProxyWithRegistry(t, rdb, upURL, issuer, authURL, w, prometheus.NewRegistry())
}

// startProxyWithRegistry is startProxy with the proxy's metrics on reg.
func startProxyWithRegistry(t *testing.T, rdb redis.UniversalClient, upURL, issuer, authURL string, w *audit.Stream, reg *prometheus.Registry) string {
	t.Helper()
	cfg := proxy.FleetConfig(upURL)
	cfg.Issuer, cfg.AuthorityURL = issuer, authURL
	cfg.JWKSURL = authURL + "/.well-known/jwks.json"
	px, err := proxy.New(cfg, proxy.Deps{Redis: rdb, Audit: w, Logger: testLogger(t), Registry: reg,
		Policies: policies.FS})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	aln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- px.Serve(ctx, ln, aln) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("proxy %s: %v", ln.Addr(), err)
		}
	})
	waitReady(t, "http://"+aln.Addr().String()+"/readyz")
	return "http://" + ln.Addr().String()
}

// revoke revokes passport raw at the authority, as an admin does.
func revoke(t *testing.T, ctx context.Context, authURL, raw string) {
	t.Helper()
	form := url.Values{"token": {raw}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, authURL+"/oauth2/revoke", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "Bearer "+adminToken)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("revoke: %v", err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("revoke: %s", res.Status)
	}
}

// healerPassport registers a HIGH-trust healer named name in tenant
// through admin and returns its agent id and a passport scoped to
// service.get from the authority at authURL.
func healerPassport(t *testing.T, ctx context.Context, admin *client.Admin, authURL, tenant, name string) (agentID, raw string) {
	t.Helper()
	reg, err := admin.RegisterAgent(ctx, tenant, client.AgentSpec{Name: name, Type: passport.TypeHealer, TrustLevel: passport.TrustHigh})
	if err != nil {
		t.Fatal(err)
	}
	ac, err := client.New(authURL, reg.ClientID, passport.Secret(reg.ClientSecret), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := ac.Token(ctx, client.TokenRequest{Scope: []string{"service.get"}})
	if err != nil {
		t.Fatal(err)
	}
	return reg.ID, tok.Raw
}
