package authority

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
)

// One agent cannot mint passports without bound: a token bucket per agent,
// shared by every replica, answers 429 with Retry-After.
func TestIssuanceRateLimited(t *testing.T) {
	rs := redistest.Start(t)
	clock := newClock()
	limit := func(c *Config) { c.Passport.IssueBurst, c.Passport.IssueInterval = 3, time.Hour }
	e := newEnv(t, limit, rs, clock)
	replica := newEnv(t, limit, rs, clock)
	healer := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	other := e.register("acme", "healer-2", "healer", passport.TrustHigh)
	form := url.Values{"grant_type": {"client_credentials"}}
	e.token(healer, nil)
	replica.token(healer, nil)
	e.token(healer, nil)
	for _, env := range []*env{e, replica} {
		resp, body := env.postForm("/oauth2/token", form, healer.ClientID, healer.ClientSecret)
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "3600" {
			t.Fatalf("fourth passport in the burst: %d %s (Retry-After %q), want 429 after 3600s", resp.StatusCode, body, resp.Header.Get("Retry-After"))
		}
	}
	c, _ := client.New(e.srv.URL, healer.ClientID, passport.Secret(healer.ClientSecret), client.Options{})
	if _, err := c.Token(context.Background(), client.TokenRequest{}); err == nil {
		t.Fatal("client got a passport over the limit")
	}
	e.token(other, nil) // every agent has its own bucket
	clock.Advance(time.Hour)
	e.token(healer, nil) // one refilled
	if resp, _ := e.postForm("/oauth2/token", form, healer.ClientID, healer.ClientSecret); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("only one passport refills per interval: %d", resp.StatusCode)
	}
	if counter(t, e.reg, "passport_authority_passports_refused_total", "reason", "slow_down") != 3 {
		t.Fatal("refusals not counted")
	}
}

// Concurrent requests cannot slip past the bucket; and an agent asking
// many times at once with its (recently verified) secret is limited by
// the bucket only, never by the failure limits.
func TestConcurrentIssuanceWithinBurst(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Passport.IssueBurst, c.Passport.IssueInterval = 5, time.Hour }, nil, nil)
	healer := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	e.token(healer, nil) // the first of the burst
	form := url.Values{"grant_type": {"client_credentials"}}
	var mu sync.Mutex
	codes := map[string]int{}
	var wg sync.WaitGroup
	for range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, body := e.postForm("/oauth2/token", form, healer.ClientID, healer.ClientSecret)
			var oe oauthErr
			_ = json.Unmarshal(body, &oe)
			mu.Lock()
			codes[strconv.Itoa(resp.StatusCode)+oe.Error]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if codes["200"] != 4 || codes["429slow_down"] != 26 {
		t.Fatalf("30 concurrent requests for the last 4 of a burst of 5: %v", codes)
	}
	if n, _ := e.rdb.ZCard(context.Background(), issuedKey("acme", healer.ID)).Result(); n != 5 {
		t.Fatalf("%d passports recorded, want 5", n)
	}
}

// recordPassports records n live passports for an agent, as issue does.
func recordPassports(t testing.TB, rdb redis.UniversalClient, tenant, agentID string, exp time.Time, n int) {
	t.Helper()
	ctx := context.Background()
	for start := 0; start < n; start += 5000 {
		zs := make([]redis.Z, 0, 5000)
		for i := start; i < min(start+5000, n); i++ {
			zs = append(zs, redis.Z{Score: float64(exp.Unix()), Member: fmt.Sprintf("jti-%s-%d", agentID, i)})
		}
		if err := rdb.ZAdd(ctx, issuedKey(tenant, agentID), zs...).Err(); err != nil {
			t.Fatal(err)
		}
	}
}

// Blocking an agent that holds 20,000 live passports writes nothing per
// passport: the block refuses them all by itself. Before the fix every
// one was revoked and published, one round trip each (seconds).
func TestBlockDoesNotEnumeratePassports(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	ctx := context.Background()
	rogue := e.register("acme", "rogue", "observer", passport.TrustLow)
	healer := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	raw := e.token(rogue, nil)
	recordPassports(t, e.rdb, "acme", rogue.ID, e.clock.Now().Add(5*time.Minute), 20000)
	events := e.subscribe()
	if _, err := e.admin.Block(ctx, "acme", rogue.ID, "minted too much"); err != nil {
		t.Fatal(err)
	}
	awaitEvent(t, events, time.Second, func(ev passport.RevocationEvent) bool { return ev.Type == passport.EventBlock })
	// A marker published after the block: nothing may come between.
	e.rdb.Publish(ctx, passport.RevocationChannel, passport.RevocationEvent{Type: "marker"}.Marshal())
	if ev := awaitEvent(t, events, time.Second, func(passport.RevocationEvent) bool { return true }); ev.Type != "marker" {
		t.Fatalf("event after the block: %+v", ev)
	}
	if n, _ := e.rdb.ZCard(ctx, passport.RevokedKey).Result(); n != 0 {
		t.Fatalf("the block wrote %d revocations", n)
	}
	if m := e.introspect(raw, basicAuthOf(healer)); m["active"] != false {
		t.Fatal("a blocked agent's passport introspects active")
	}
}

// Unblocking must not bring back what the block refused: passports from
// before the block that are still alive are revoked (and announced before
// the unblock), at the authority and at a real proxy, while new passports
// work. Passports that expired during the block cost nothing.
func TestUnblockDoesNotResurrect(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	ctx := context.Background()
	healer := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	px := startProxy(t, e)
	before := e.token(healer, nil)
	if !px.call(t, before) {
		t.Fatal("live passport refused before the block")
	}
	if _, err := e.admin.Block(ctx, "acme", healer.ID, "investigating"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the proxy to refuse the blocked agent", func() bool { return !px.call(t, before) })
	if _, err := e.admin.Unblock(ctx, "acme", healer.ID); err != nil {
		t.Fatal(err)
	}
	after := e.token(healer, nil)
	waitFor(t, 5*time.Second, "the proxy to accept a new passport", func() bool { return px.call(t, after) })
	if px.call(t, before) {
		t.Fatal("the proxy accepts a passport from before the block after the unblock")
	}
	if m := e.introspect(before, adminAuth(testAdminToken)); m["active"] != false {
		t.Fatal("introspection: a passport from before the block is active after the unblock")
	}

	// A block longer than the passports live: nothing left to revoke.
	if _, err := e.admin.Block(ctx, "acme", healer.ID, "again"); err != nil {
		t.Fatal(err)
	}
	n, _ := e.rdb.ZCard(ctx, passport.RevokedKey).Result()
	e.clock.Advance(passport.DefaultLifetime + passport.MaxLeeway + time.Second)
	if _, err := e.admin.Unblock(ctx, "acme", healer.ID); err != nil {
		t.Fatal(err)
	}
	if m, _ := e.rdb.ZCard(ctx, passport.RevokedKey).Result(); m > n {
		t.Fatalf("an unblock after every passport expired wrote %d revocations", m-n)
	}
	// Unblocking an agent that is not blocked revokes nothing.
	live := e.token(healer, nil)
	if _, err := e.admin.Unblock(ctx, "acme", healer.ID); err != nil {
		t.Fatal(err)
	}
	if m := e.introspect(live, adminAuth(testAdminToken)); m["active"] != true {
		t.Fatal("unblocking an unblocked agent revoked its passport")
	}
}

// Passports issued while a block lands are either refused or revoked by
// the unblock: none handed out before the block is alive afterwards.
func TestBlockDuringIssuance(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Passport.IssueBurst = 100000 }, nil, nil)
	ctx := context.Background()
	healer := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	var mu sync.Mutex
	var handed []string
	refused := 0
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, body := e.postForm("/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, healer.ClientID, healer.ClientSecret)
				mu.Lock()
				if resp.StatusCode == http.StatusOK {
					handed = append(handed, string(body))
				} else {
					refused++
				}
				mu.Unlock()
			}
		}()
	}
	count := func() (int, int) { mu.Lock(); defer mu.Unlock(); return len(handed), refused }
	waitFor(t, 10*time.Second, "passports before the block", func() bool { n, _ := count(); return n >= 20 })
	if _, err := e.admin.Block(ctx, "acme", healer.ID, "mid-flight"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "refusals after the block", func() bool { _, r := count(); return r >= 20 })
	close(stop)
	wg.Wait()
	if _, err := e.admin.Unblock(ctx, "acme", healer.ID); err != nil {
		t.Fatal(err)
	}
	for _, body := range handed {
		var tr client.TokenResponse
		if err := json.Unmarshal([]byte(body), &tr); err != nil {
			t.Fatal(err)
		}
		if m := e.introspect(tr.AccessToken, adminAuth(testAdminToken)); m["active"] != false {
			t.Fatal("a passport handed out around the block is alive after the unblock")
		}
	}
	if n := len(e.token(healer, nil)); n == 0 {
		t.Fatal("no passport after the unblock")
	}
}

// Expired revocations leave the set, but not before every verifier's
// leeway (up to passport.MaxLeeway) has passed, whatever this authority's
// own leeway: a proxy allowing 30 s of skew still needs them.
func TestRevocationsPruned(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Passport.Leeway = 5 * time.Second }, nil, nil)
	ctx := context.Background()
	now := e.clock.Now().Unix()
	e.rdb.ZAdd(ctx, passport.RevokedKey,
		redis.Z{Score: float64(now - 60), Member: "long-expired"},
		redis.Z{Score: float64(now - 10), Member: "within-max-leeway"},
		redis.Z{Score: float64(now + 100), Member: "live"})
	e.a.tick(ctx)
	got, _ := e.rdb.ZRange(ctx, passport.RevokedKey, 0, -1).Result()
	if fmt.Sprint(got) != "[within-max-leeway live]" {
		t.Fatalf("after the key loop's prune: %v", got)
	}
	// Every revocation prunes too, so the set stays bounded without the loop.
	e.clock.Advance(time.Minute)
	healer := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	resp, _ := e.post("/oauth2/revoke", "application/x-www-form-urlencoded", url.Values{"token": {e.token(healer, nil)}}.Encode(), basicAuthOf(healer))
	if resp.StatusCode != http.StatusOK {
		t.Fatal(resp.StatusCode)
	}
	if _, err := e.rdb.ZScore(ctx, passport.RevokedKey, "within-max-leeway").Result(); err == nil {
		t.Fatal("a revocation did not prune the expired entries")
	}
	if n, _ := e.rdb.ZCard(ctx, passport.RevokedKey).Result(); n != 2 {
		t.Fatalf("%d entries, want the live one and the new one", n)
	}
}

// BenchmarkBlockAgent blocks an agent holding 20,000 live passports
// through the admin API (issue 13: at most 100 ms).
func BenchmarkBlockAgent(b *testing.B) {
	e := newBenchEnv(b)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		reg := e.registerB(b, "rogue-"+strconv.Itoa(i))
		recordPassports(b, e.rdb, "acme", reg.ID, e.clock.Now().Add(5*time.Minute), 20000)
		b.StartTimer()
		if _, err := e.admin.Block(ctx, "acme", reg.ID, "bench"); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/block")
}

// BenchmarkUnblockAgent lifts the block of an agent holding 20,000 live
// passports from before the block: every one is revoked, in batches.
// (The issuance limit keeps real agents far below 20,000.)
func BenchmarkUnblockAgent(b *testing.B) {
	e := newBenchEnv(b)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		reg := e.registerB(b, "rogue-"+strconv.Itoa(i))
		recordPassports(b, e.rdb, "acme", reg.ID, e.clock.Now().Add(5*time.Minute), 20000)
		if _, err := e.admin.Block(ctx, "acme", reg.ID, "bench"); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, err := e.admin.Unblock(ctx, "acme", reg.ID); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		e.rdb.Del(ctx, passport.RevokedKey)
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/unblock")
}

// benchEnv is an authority on a private Redis for benchmarks.
type benchEnv struct {
	rdb   redis.UniversalClient
	clock *fakeClock
	admin *client.Admin
}

func newBenchEnv(b *testing.B) *benchEnv {
	b.Helper()
	rs := redistest.Start(b)
	e := &benchEnv{rdb: rs.Client(), clock: newClock()}
	srv := httptest.NewUnstartedServer(nil)
	cfg := testConfig()
	cfg.Issuer = "http://" + srv.Listener.Addr().String()
	a, err := New(cfg, Deps{Audit: audit.Discard, Redis: e.rdb, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Clock: e.clock.Now})
	if err != nil {
		b.Fatal(err)
	}
	if err := a.Init(context.Background()); err != nil {
		b.Fatal(err)
	}
	srv.Config.Handler = a.Handler()
	srv.Start()
	b.Cleanup(srv.Close)
	if e.admin, err = client.NewAdmin(srv.URL, testAdminToken, client.Options{}); err != nil {
		b.Fatal(err)
	}
	return e
}

func (e *benchEnv) registerB(b *testing.B, name string) client.Registration {
	reg, err := e.admin.RegisterAgent(context.Background(), "acme", client.AgentSpec{Name: name, Type: "observer", TrustLevel: passport.TrustLow})
	if err != nil {
		b.Fatal(err)
	}
	return reg
}
