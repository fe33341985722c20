package proxy

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/agentpassport/passport/internal/netfault"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/internal/redisx"
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
	recs := h.sink.byRequest(r.header.Get("X-Request-Id"))
	if len(recs) != 1 || recs[0].Reasons[0] != "keys_unavailable" || recs[0].Status != 503 {
		t.Fatalf("refusal record: %+v", recs)
	}
}
