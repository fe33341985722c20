package alert

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// receiver is a local webhook that fails the first `fail` requests with 503.
type receiver struct {
	mu     sync.Mutex
	fail   int
	calls  int
	bodies []map[string]string
	got    chan map[string]string
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	var m map[string]string
	_ = json.NewDecoder(req.Body).Decode(&m)
	r.mu.Lock()
	r.calls++
	failing := r.calls <= r.fail
	r.mu.Unlock()
	if failing {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	r.got <- m
}

func run(t *testing.T, a *Alerter) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestDeliveryRetriesThenSucceeds(t *testing.T) {
	tests := []struct {
		name, format, key string
	}{
		{"slack", FormatSlack, "text"},
		{"discord", FormatDiscord, "content"},
		{"auto is slack", FormatAuto, "text"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rc := &receiver{fail: 2, got: make(chan map[string]string, 1)}
			srv := httptest.NewServer(rc)
			defer srv.Close()
			reg := prometheus.NewRegistry()
			a, err := New(Config{Webhooks: []Webhook{{URL: srv.URL + "/hook/secret", Format: tc.format}}, Backoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond},
				Deps{Logger: discard(), Registry: reg})
			if err != nil {
				t.Fatal(err)
			}
			run(t, a)
			a.Notify(Alert{Kind: KindIncidentEscalated, Severity: "critical", Tenant: "acme", Text: "incident inc-1 escalated"})
			select {
			case m := <-rc.got:
				if !strings.Contains(m[tc.key], "incident inc-1 escalated") || !strings.Contains(m[tc.key], "acme") || len(m) != 1 {
					t.Errorf("body = %v, want only %q with the text", m, tc.key)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("alert not delivered")
			}
			if got := testutil.ToFloat64(a.deliveries.WithLabelValues("retry")); got != 2 {
				t.Errorf("retries = %v, want 2", got)
			}
		})
	}
}

func TestAutoFormatDetectsDiscord(t *testing.T) {
	b := Body(FormatAuto, "https://discord.com/api/webhooks/1/x", Alert{Severity: "warning", Text: "hi"})
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil || m["content"] == "" {
		t.Errorf("body = %s", b)
	}
}

func TestGivesUpAfterMaxAttemptsAndOnPermanentErrors(t *testing.T) {
	var mu sync.Mutex
	calls := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls[r.URL.Path]++
		mu.Unlock()
		if r.URL.Path == "/gone" {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		w.WriteHeader(http.StatusBadGateway)
	}))
	defer srv.Close()
	a, err := New(Config{Webhooks: []Webhook{{URL: srv.URL + "/gone"}, {URL: srv.URL + "/flaky"}}, MaxAttempts: 3, Backoff: time.Millisecond, MaxBackoff: time.Millisecond},
		Deps{Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	run(t, a)
	a.Notify(Alert{Kind: KindSlowResolution, Severity: "warning", Text: "slow"})
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(a.deliveries.WithLabelValues("failed")) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("deliveries did not fail in time")
		}
		time.Sleep(5 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if calls["/gone"] != 1 || calls["/flaky"] != 3 {
		t.Errorf("calls = %v, want /gone once (404 is permanent) and /flaky 3 times", calls)
	}
}

func TestNotifyNeverBlocksAndCountsDrops(t *testing.T) {
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-block }))
	defer srv.Close()
	defer close(block)
	a, err := New(Config{Webhooks: []Webhook{{URL: srv.URL}}, QueueSize: 2}, Deps{Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	// Not running: the queue holds 2, the rest are dropped at once.
	done := make(chan struct{})
	go func() {
		for range 10 {
			a.Notify(Alert{Kind: KindAgentBlocked, Text: "x"})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Notify blocked")
	}
	if got := testutil.ToFloat64(a.dropped); got != 8 {
		t.Errorf("dropped = %v, want 8", got)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"empty", Config{}, true},
		{"good", Config{Webhooks: []Webhook{{URL: "https://hooks.slack.com/services/x"}}}, true},
		{"relative", Config{Webhooks: []Webhook{{URL: "/x"}}}, false},
		{"bad format", Config{Webhooks: []Webhook{{URL: "http://x", Format: "teams"}}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.cfg.Validate(); (err == nil) != tc.ok {
				t.Errorf("Validate() = %v", err)
			}
		})
	}
}

type recorder struct{ ch chan Alert }

func (r recorder) Notify(a Alert) { r.ch <- a }

func TestWatchBlocksAlertsOnBlockEvents(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	rec := recorder{ch: make(chan Alert, 4)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- WatchBlocks(ctx, rdb, rec, discard()) }()
	defer func() { cancel(); <-done }()
	// Publish until the subscription is in place (PUBLISH returns the
	// number of receivers).
	deadline := time.Now().Add(5 * time.Second)
	for {
		ev := passport.RevocationEvent{Type: passport.EventRevoke, JTI: "j1"}
		n, err := rdb.Publish(ctx, passport.RevocationChannel, ev.Marshal()).Result()
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no subscriber")
		}
		time.Sleep(5 * time.Millisecond)
	}
	ev := passport.RevocationEvent{Type: passport.EventBlock, Tenant: "acme", AgentID: "rogue-1", Reason: "reputation below threshold"}
	if err := rdb.Publish(ctx, passport.RevocationChannel, ev.Marshal()).Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case a := <-rec.ch:
		if a.Kind != KindAgentBlocked || a.Tenant != "acme" || !strings.Contains(a.Text, "rogue-1") {
			t.Errorf("alert = %+v", a)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no alert for block event")
	}
}
