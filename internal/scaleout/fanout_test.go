package scaleout

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/bcrypt"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/authority"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
)

// TestRevocationFanOutAcrossThreeProxies: three proxies on one Redis
// Cluster, each having served a passport (so it sits verified in every
// proxy's cache); the authority revokes it, or blocks its agent; every
// proxy must refuse it within one second of the authority's answer. The
// latencies (answer to first refusal, per proxy) are logged as p50, p99
// and max: the figures docs/scale-out.md quotes.
func TestRevocationFanOutAcrossThreeProxies(t *testing.T) {
	if testing.Short() {
		t.Skip("a Redis Cluster and three proxies: not in -short")
	}
	c := redistest.StartCluster(t)
	cc := c.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// The authority, the upstream and three proxies in front of it.
	authURL := startAuthority(t, cc, "", newStream(t, cc, audit.StreamConfig{WriterID: "authority-1"}))
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	t.Cleanup(up.Close)
	var proxies []string
	for i := range 3 {
		proxies = append(proxies, startProxy(t, cc, up.URL, authURL, authURL,
			newStream(t, cc, audit.StreamConfig{WriterID: fmt.Sprintf("proxy-%d", i)})))
	}

	admin, err := client.NewAdmin(authURL, adminToken, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	get := func(base, tok string) int {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/services/checkout", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("call %s: %v", base, err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	// refusedBy waits until every proxy refuses tok and returns how long
	// each took from since.
	refusedBy := func(tok string, since time.Time) []time.Duration {
		out := make([]time.Duration, len(proxies))
		var wg sync.WaitGroup
		for i, base := range proxies {
			wg.Go(func() {
				for {
					if get(base, tok) == http.StatusUnauthorized {
						out[i] = time.Since(since)
						return
					}
					if time.Since(since) > 5*time.Second {
						out[i] = time.Since(since)
						return
					}
				}
			})
		}
		wg.Wait()
		return out
	}

	const rounds = 100
	var lat []time.Duration
	for n := range rounds {
		tenant := "acme"
		agentID, tok := healerPassport(t, ctx, admin, authURL, tenant, fmt.Sprintf("healer-%d", n))
		for _, base := range proxies {
			if s := get(base, tok); s != http.StatusOK {
				t.Fatalf("round %d: before the revocation %s answered %d", n, base, s)
			}
		}
		// Every tenth round blocks the agent instead of revoking one passport.
		if n%10 == 9 {
			if _, err := admin.Block(ctx, tenant, agentID, "fan-out test"); err != nil {
				t.Fatal(err)
			}
		} else {
			revoke(t, ctx, authURL, tok)
		}
		answered := time.Now()
		lat = append(lat, refusedBy(tok, answered)...)
	}
	slices.Sort(lat)
	p := func(q float64) time.Duration { return lat[int(q*float64(len(lat)-1))] }
	t.Logf("revocation fan-out over %d revocations and blocks x %d proxies: p50 %v, p99 %v, max %v",
		rounds, len(proxies), p(0.5), p(0.99), lat[len(lat)-1])
	if lat[len(lat)-1] > time.Second {
		t.Fatalf("a proxy still served a revoked passport %v after the authority's answer (promise: 1 s)", lat[len(lat)-1])
	}
}

func waitReady(t *testing.T, u string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := http.Get(u)
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready: %v", u, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLimitsAreSharedAcrossAuthorityReplicas: two authorities on one Redis
// Cluster share the failure throttle and the issuance limit (both are
// Redis counters): an attacker who spreads wrong secrets over the two
// replicas gets no more tries than against one, and an agent that spreads
// its passport requests gets no more passports.
func TestLimitsAreSharedAcrossAuthorityReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("a Redis Cluster: not in -short")
	}
	c := redistest.StartCluster(t)
	cc := c.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var urls []string
	for i := range 2 {
		srv := httptest.NewUnstartedServer(nil)
		cfg := authority.DefaultConfig()
		cfg.AdminToken = adminToken
		cfg.Clients.BcryptCost = bcrypt.MinCost
		cfg.Clients.SourceFailureLimit = 8
		cfg.Passport.IssueBurst, cfg.Passport.IssueInterval = 3, time.Hour
		cfg.Issuer = "http://authority.test" // one issuer for both replicas
		a, err := authority.New(cfg, authority.Deps{Redis: cc, Logger: testLogger(t), Registry: prometheus.NewRegistry(),
			Audit: newStream(t, cc, audit.StreamConfig{WriterID: fmt.Sprintf("authority-%d", i)})})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Init(ctx); err != nil {
			t.Fatal(err)
		}
		srv.Config.Handler = a.Handler()
		srv.Start()
		t.Cleanup(srv.Close)
		urls = append(urls, srv.URL)
	}
	admin, err := client.NewAdmin(urls[0], adminToken, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := admin.RegisterAgent(ctx, "acme", client.AgentSpec{Name: "healer-1", Type: passport.TypeHealer, TrustLevel: passport.TrustHigh})
	if err != nil {
		t.Fatal(err)
	}
	token := func(base, secret string) int {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/oauth2/token", strings.NewReader("grant_type=client_credentials"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth(url.QueryEscape(reg.ClientID), url.QueryEscape(secret))
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}

	// Issuance: three passports in all, whichever replica is asked.
	codes := map[int]int{}
	for i := range 8 {
		codes[token(urls[i%2], reg.ClientSecret)]++
	}
	if codes[http.StatusOK] != 3 || codes[http.StatusTooManyRequests] != 5 {
		t.Fatalf("8 passport requests over two replicas with a burst of 3: %v", codes)
	}

	// Wrong secrets from one source, alternating replicas: 8 tries in all.
	codes = map[int]int{}
	for i := range 20 {
		codes[token(urls[i%2], "cs_wrong_guess")]++
	}
	if codes[http.StatusUnauthorized] != 8 || codes[http.StatusTooManyRequests] != 12 {
		t.Fatalf("20 wrong secrets over two replicas with a source limit of 8: %v", codes)
	}
}
