package proxy

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
	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
)

// TestWriteAheadWithRealStream runs the proxy on the real audit stream and
// a real redis-server: when the upstream receives a call, the tenant's
// stream already holds its decision record; the outcome follows; and with
// Redis gone nothing is forwarded.
func TestWriteAheadWithRealStream(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	rdb := srv.Client()
	stream := runStream(t, rdb, audit.StreamConfig{WriteTimeout: 500 * time.Millisecond})

	key := passport.AuditStreamKey("acme")
	var seenAtUpstream atomic.Int64
	seenAtUpstream.Store(-1)
	var hits atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		n, _ := rdb.XLen(r.Context(), key).Result()
		seenAtUpstream.Store(n)
		w.WriteHeader(200)
	}))
	defer up.Close()

	h := newHarnessWithSink(t, srv, stream, func(c *Config) {
		c.Upstreams = map[string]Upstream{"fleet": {URL: up.URL}}
		c.fill()
	})
	_, tok := h.healer()
	r := h.do("POST", "/services/checkout/restart", tok, nil, "")
	if r.status != 200 {
		t.Fatalf("status %d %s", r.status, r.body)
	}
	if n := seenAtUpstream.Load(); n < 1 {
		t.Fatalf("the upstream saw the call before its decision record was in the stream (XLEN %d)", n)
	}
	var recs []*audit.Record
	waitFor(t, "decision and outcome records", func() bool {
		msgs, err := rdb.XRange(context.Background(), key, "-", "+").Result()
		if err != nil {
			return false
		}
		recs = recs[:0]
		for _, m := range msgs {
			rec, _, err := audit.ParseMessage(m)
			if err == nil && rec.RequestID == r.header.Get("X-Request-Id") {
				recs = append(recs, rec)
			}
		}
		return len(recs) == 2
	})
	if recs[0].Kind != audit.KindDecision || recs[0].Decision != audit.DecisionAllow || recs[1].Kind != audit.KindOutcome || recs[1].Status != 200 {
		t.Fatalf("records %+v %+v", recs[0], recs[1])
	}

	srv.Kill()
	before := hits.Load()
	r = h.do("POST", "/services/checkout/restart", tok, nil, "")
	if r.status != 503 || hits.Load() != before {
		t.Fatalf("with Redis down: status %d, forwarded %v", r.status, hits.Load() != before)
	}
}

// TestAuditOutageOutcomeRecord: a call refused because the audit store is
// down gets an outcome record once the store is back (503, reason
// audit_unavailable), since its decision write may still have landed. The
// proxy's state (revocations, reputations) lives in another Redis here, so
// the call gets as far as the audit write.
func TestAuditOutageOutcomeRecord(t *testing.T) {
	state := redistest.Start(t)
	store := redistest.Start(t, redistest.Options{AOF: true})
	rdb := store.Client()
	stream := runStream(t, rdb, audit.StreamConfig{WriteTimeout: 500 * time.Millisecond, RetryMax: 200 * time.Millisecond})

	var hits atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	defer up.Close()
	h := newHarnessWithSink(t, state, stream, func(c *Config) {
		c.Upstreams = map[string]Upstream{"fleet": {URL: up.URL}}
		c.fill()
	})
	_, tok := h.healer()

	store.Kill()
	r := h.do("POST", "/services/checkout/restart", tok, nil, "")
	if r.status != 503 || !strings.Contains(r.body, "audit_unavailable") || hits.Load() != 0 {
		t.Fatalf("with the audit store down: status %d %s, forwarded %v", r.status, r.body, hits.Load() != 0)
	}
	store.Restart()
	refused := r.header.Get("X-Request-Id")
	var out *audit.Record
	waitFor(t, "the refused call's outcome record", func() bool {
		msgs, err := rdb.XRange(context.Background(), passport.AuditStreamKey("acme"), "-", "+").Result()
		if err != nil {
			return false
		}
		for _, m := range msgs {
			if rec, _, err := audit.ParseMessage(m); err == nil && rec.RequestID == refused && rec.Kind == audit.KindOutcome {
				out = rec
				return true
			}
		}
		return false
	})
	if out.Status != 503 || out.Decision != audit.DecisionError || len(out.Reasons) != 1 || out.Reasons[0] != "audit_unavailable" ||
		out.Action != "service.restart" || out.Resource != "checkout" {
		t.Fatalf("outcome of the refused call %+v", out)
	}
}

// runStream starts a real audit stream writer on rdb until the test ends.
func runStream(t *testing.T, rdb *redis.Client, cfg audit.StreamConfig) *audit.Stream {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	stream, err := audit.NewStream(rdb, cfg, log, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = stream.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; _ = stream.Close() })
	return stream
}
