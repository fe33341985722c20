package proxy

import (
	"net/http"
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
