package proxy

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/netfault"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/internal/redisx"
	"github.com/agentpassport/passport/passport"
)

// newRelayHarness is a harness whose proxy reaches Redis through a relay
// the test controls; the test's own client (h.rdb) goes direct.
func newRelayHarness(t *testing.T, mod ...func(*Config)) (*harness, *netfault.Relay) {
	t.Helper()
	srv := redistest.Start(t)
	relay := netfault.Start(t, srv.Addr)
	rdb, err := redisx.New(redisx.Config{URL: "redis://" + relay.Addr() + "/0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	return newHarnessFull(t, srv, nil, rdb, mod...), relay
}

// TestHungRedisDeadlines: with Redis silent (every byte to and from it
// black-holed, as with SIGSTOP), /readyz answers 503 within 1s and a call
// is refused within its own deadline, not go-redis's 2s read timeout.
func TestHungRedisDeadlines(t *testing.T) {
	h, relay := newRelayHarness(t)
	_, tok := h.healer()
	if r := h.do("GET", "/services/checkout", tok, nil, ""); r.status != 200 {
		t.Fatalf("before: %d", r.status)
	}
	relay.BlackHole(netfault.Both)

	start := time.Now()
	res, err := http.Get(h.admin + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	took := time.Since(start)
	if res.StatusCode != 503 {
		t.Fatalf("/readyz with Redis hung: %d, want 503", res.StatusCode)
	}
	if took > time.Second {
		t.Fatalf("/readyz took %s with Redis hung, want <= 1s", took)
	}
	t.Logf("/readyz answered 503 after %s", took)

	// The subscription goes stale; each call then asks Redis itself, and
	// that check is bounded by its 500ms deadline.
	waitFor(t, "a refusal", func() bool {
		start := time.Now()
		r := h.do("GET", "/services/checkout", tok, nil, "")
		took := time.Since(start)
		if r.status == 200 {
			return false
		}
		if r.status != 503 {
			t.Fatalf("with Redis hung: %d, want 503", r.status)
		}
		if took > time.Second {
			t.Fatalf("a call took %s with Redis hung, want <= its 500ms deadline (+ slack)", took)
		}
		t.Logf("call refused 503 after %s", took)
		return true
	})
}

// TestKeysUnavailable: a proxy that has never fetched the authority's keys
// cannot judge a passport, so a valid-looking one gets 503
// keys_unavailable (retry later), never a 401 verdict, and nothing is
// forwarded. A passport that is malformed on its face is still a 401.
func TestKeysUnavailable(t *testing.T) {
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "authority starting", http.StatusServiceUnavailable)
	}))
	defer down.Close()
	h := newHarness(t, func(c *Config) { c.JWKSURL = down.URL + "/.well-known/jwks.json" })
	_, tok := h.healer()
	r := h.do("GET", "/services/checkout", tok, nil, "")
	if r.status != 503 || !strings.Contains(r.body, `"code":"keys_unavailable"`) || r.header.Get("Retry-After") == "" {
		t.Fatalf("valid-looking passport, no keys: %d %s (Retry-After %q), want 503 keys_unavailable", r.status, r.body, r.header.Get("Retry-After"))
	}
	if r := h.do("GET", "/services/checkout", "not.a-passport.x", nil, ""); r.status != 401 {
		t.Fatalf("malformed passport, no keys: %d, want 401", r.status)
	}
	if n := h.up.hits.Load(); n != 0 {
		t.Fatalf("upstream hits: %d, want 0", n)
	}
	// An outage refusal: counted in a summary, not a record per call.
	if rec, sum := h.summaryOf(r.header.Get("X-Request-Id")); rec == nil || sum.Reason != "keys_unavailable" || rec.Status != 503 || sum.Count != 1 {
		t.Fatalf("refusal summary: %+v %+v", rec, sum)
	}
}

// TestRevocationSilentNetwork measures, call by call, how long a revoked
// passport keeps being forwarded when the proxy's subscription connection
// fails in each way a network fails: reset, silent drop (both directions
// black-holed), half-open (Redis's answers never arrive) and a link that
// delivers two seconds late. The promise: no call is forwarded later than
// one second after the revocation's answer. The revocation is written
// straight to Redis, as the authority does (ZADD, then PUBLISH), and the
// proxy's other Redis connections stay healthy, so a proxy that notices
// it cannot trust its subscription can still ask Redis.
func TestRevocationSilentNetwork(t *testing.T) {
	faults := []struct {
		name  string
		apply func(c *netfault.Conn)
	}{
		{"reset", func(c *netfault.Conn) { c.Reset() }},
		{"silent drop", func(c *netfault.Conn) { c.BlackHole(netfault.Both) }},
		{"half-open", func(c *netfault.Conn) { c.BlackHole(netfault.Down) }},
		{"delayed 2s", func(c *netfault.Conn) { c.Delay(2 * time.Second) }},
	}
	for _, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			h, relay := newRelayHarness(t)
			ctx := context.Background()
			cl, tok := h.healer()
			if r := h.do("GET", "/services/checkout", tok, nil, ""); r.status != 200 {
				t.Fatalf("before: %d", r.status)
			}
			var sub *netfault.Conn
			for _, c := range relay.Open() {
				if c.Saw("subscribe") {
					sub = c
				}
			}
			if sub == nil {
				t.Fatal("no subscription connection through the relay")
			}

			// Calls, one after another from two agents' worth of
			// goroutines, each with the time its answer arrived.
			type result struct {
				status int
				at     time.Time
			}
			var mu sync.Mutex
			var results []result
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						req, _ := http.NewRequest("GET", h.url+"/services/checkout", nil)
						req.Header.Set("Authorization", "Bearer "+tok)
						res, err := http.DefaultClient.Do(req)
						if err != nil {
							t.Error(err)
							return
						}
						_, _ = io.Copy(io.Discard, res.Body)
						res.Body.Close()
						mu.Lock()
						results = append(results, result{res.StatusCode, time.Now()})
						mu.Unlock()
					}
				}()
			}
			waitFor(t, "calls flowing", func() bool { mu.Lock(); defer mu.Unlock(); return len(results) > 20 })

			f.apply(sub)
			// Let the fault sit a moment, as a real one would before the
			// revocation comes: the proxy must not be lucky with timing.
			time.Sleep(100 * time.Millisecond)
			if err := h.rdb.ZAdd(ctx, passport.RevokedKey, redisZ(cl.ExpiresAt.Unix(), cl.ID)).Err(); err != nil {
				t.Fatal(err)
			}
			ev := passport.RevocationEvent{Type: passport.EventRevoke, JTI: cl.ID, Exp: cl.ExpiresAt.Unix()}
			if err := h.rdb.Publish(ctx, passport.RevocationChannel, ev.Marshal()).Err(); err != nil {
				t.Fatal(err)
			}
			answered := time.Now()
			waitFor(t, "1.5s of calls after the revocation", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(results) > 0 && results[len(results)-1].at.After(answered.Add(1500*time.Millisecond))
			})
			close(stop)
			wg.Wait()

			var lastForward time.Time
			forwardedAfter, refusedAfter := 0, 0
			for _, r := range results {
				if r.at.Before(answered) {
					continue
				}
				if r.status == 200 {
					forwardedAfter++
					lastForward = r.at
				} else {
					refusedAfter++
				}
			}
			lag := time.Duration(0)
			if !lastForward.IsZero() {
				lag = lastForward.Sub(answered)
			}
			t.Logf("%s: %d calls forwarded after the revocation's answer, the last one answered %s after it; %d refused",
				f.name, forwardedAfter, lag, refusedAfter)
			if lag > time.Second {
				t.Fatalf("a revoked passport was forwarded %s after the revocation's answer, want <= 1s", lag)
			}
			if refusedAfter == 0 {
				t.Fatal("no call was refused after the revocation")
			}
		})
	}
}

// summaryOf flushes the refusal summaries and returns the one that counts
// the call with request id id (as its first or last call), and its summary.
func (h *harness) summaryOf(id string) (*audit.Record, *audit.RefusalSummary) {
	h.t.Helper()
	h.p.refusals.Flush()
	for _, r := range h.sink.all() {
		if r.Kind != audit.KindRefusals {
			continue
		}
		var s audit.RefusalSummary
		if err := json.Unmarshal(r.Details, &s); err != nil {
			h.t.Fatal(err)
		}
		if s.FirstRequestID == id || s.LastRequestID == id {
			return r, &s
		}
	}
	return nil, nil
}

// TestSlowLoadDoesNotLoop: on a slow link (400ms each way) the reload
// after a reconnect takes longer than the resubscribe bound; the proxy
// must still settle on the new subscription (and check Redis per call
// meanwhile), not tear it down and reload again and again.
func TestSlowLoadDoesNotLoop(t *testing.T) {
	h, relay := newRelayHarness(t)
	loads := func() float64 { return testutil.ToFloat64(h.p.m.revocationLoads) }
	relay.Delay(400 * time.Millisecond)
	before := loads()
	for _, c := range relay.Open() {
		if c.Saw("subscribe") {
			c.Reset()
		}
	}
	waitFor(t, "the reload after the reset", func() bool { return loads() > before })
	settled := loads()
	// Several resubscribe bounds: a looping proxy would reload each time.
	time.Sleep(2 * resubscribeAfter)
	if n := loads() - settled; n > 0 {
		t.Fatalf("%v more full loads on a slow but working link: the subscription is torn down after each load", n)
	}
	if !h.p.revoked.live.Load() {
		t.Fatal("subscription not live on a slow but working link")
	}
}

// refusalFor is how the refusal of the call with request id id was
// recorded: its own decision record (a refusal that came with a valid
// passport), or its count in a refusals summary (one without).
func (h *harness) refusalFor(id string) (reason, agentID string, ok bool) {
	h.t.Helper()
	if recs := h.sink.byRequest(id); len(recs) > 0 {
		if len(recs) != 1 || recs[0].Decision != audit.DecisionDeny || len(recs[0].Reasons) != 1 {
			h.t.Fatalf("want one refusal record for %s: %+v", id, recs)
		}
		return recs[0].Reasons[0], recs[0].AgentID, true
	}
	if rec, sum := h.summaryOf(id); rec != nil {
		return sum.Reason, "", true
	}
	return "", "", false
}
