package rogue

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/bcrypt"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/authority"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/agentcall"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
)

const adminToken = "rogue-test-admin-token-0123456789"

// TestRogueEndsBlockedByTheRealAuthority runs the rogue against the real
// authority (real Redis). The stand-in proxy denies every restart and
// reports the deny to the authority's outcomes API, as the real proxy
// does, and answers 401 once the agent is blocked. The rogue must end
// blocked, its passport requests refused, and nothing reach the fleet.
func TestRogueEndsBlockedByTheRealAuthority(t *testing.T) {
	rs := redistest.Start(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	authSrv := httptest.NewUnstartedServer(nil)
	cfg := authority.DefaultConfig()
	cfg.AdminToken = adminToken
	cfg.Clients.BcryptCost = bcrypt.MinCost
	cfg.Issuer = "http://" + authSrv.Listener.Addr().String()
	a, err := authority.New(cfg, authority.Deps{Audit: audit.Discard, Redis: rs.Client(), Logger: log, Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	authSrv.Config.Handler = a.Handler()
	authSrv.Start()
	defer authSrv.Close()
	ctx := context.Background()
	admin, err := client.NewAdmin(authSrv.URL, adminToken, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := admin.RegisterAgent(ctx, "acme", client.AgentSpec{Name: "rogue-acme", Type: passport.TypeObserver, TrustLevel: passport.TrustLow})
	if err != nil {
		t.Fatal(err)
	}
	var upstream atomic.Int64
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		id, ok := agentcall.PeekIdentity(tok)
		if !ok {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if ag, err := admin.GetAgent(r.Context(), id.Tenant, id.AgentID); err != nil || ag.Blocked {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if r.Method == http.MethodPost { // observer: service.restart is not granted
			if _, err := admin.ReportOutcome(r.Context(), id.Tenant, id.AgentID, client.OutcomeDenied); err != nil {
				t.Errorf("report denied: %v", err)
			}
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(`{"reasons":["action_not_granted"]}`))
			return
		}
		upstream.Add(1)
	}))
	defer proxy.Close()

	c, err := client.New(authSrv.URL, reg.ClientID, passport.Secret(reg.ClientSecret), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(Config{ProxyURL: proxy.URL, Interval: time.Millisecond, MaxInterval: 4 * time.Millisecond, MaxAttempts: 12},
		Deps{Logger: log, Passports: agentcall.AuthorityPassports{Client: c}})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Run(ctx); err != nil {
		t.Fatal(err)
	}
	s := r.Stats()
	ag, err := admin.GetAgent(ctx, "acme", reg.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !ag.Blocked || s.Denied < 1 || s.Refused < 1 || s.Allowed != 0 || upstream.Load() != 0 {
		t.Fatalf("agent blocked=%v reputation=%.1f, stats %+v, upstream %d", ag.Blocked, ag.Reputation, s, upstream.Load())
	}
	t.Logf("rogue: %+v; reputation %.1f, blocked", s, ag.Reputation)
	if _, err := c.Token(ctx, client.TokenRequest{}); err == nil {
		t.Error("blocked agent still gets passports")
	}
}
