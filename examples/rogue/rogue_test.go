package rogue

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentpassport/passport/passport"
)

// authority stands in for the passport authority: it blocks the agent
// once the proxy has reported `limit` denials.
type fakeAuthority struct {
	mu      sync.Mutex
	denials int
	limit   int
	asks    []time.Time
}

func (a *fakeAuthority) Passport(context.Context, *passport.Task, []string) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.asks = append(a.asks, time.Now())
	if a.denials >= a.limit {
		return "", errors.New("invalid_client: agent blocked")
	}
	return "e30.e30.sig", nil
}

func (a *fakeAuthority) reportDenied() { a.mu.Lock(); a.denials++; a.mu.Unlock() }

func TestRogueIsDeniedBlockedAndBacksOff(t *testing.T) {
	auth := &fakeAuthority{limit: 3}
	var upstream atomic.Int64
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The policy denies a LOW observer's restart and reports it.
		if r.Method == http.MethodPost {
			auth.reportDenied()
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(`{"reasons":["action_not_granted","trust_level_too_low"]}`))
			return
		}
		upstream.Add(1)
	}))
	defer proxy.Close()
	r, err := New(Config{ProxyURL: proxy.URL, Interval: 2 * time.Millisecond, MaxInterval: 16 * time.Millisecond, MaxAttempts: 10},
		Deps{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Passports: auth})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("rogue did not stop after MaxAttempts")
	}
	s := r.Stats()
	if s.Attempts != 10 || s.Denied != 3 || s.Refused != 7 || s.Allowed != 0 || upstream.Load() != 0 {
		t.Errorf("stats = %+v, upstream %d", s, upstream.Load())
	}
	// Once refused, the gaps between its tries grow (doubling, capped).
	auth.mu.Lock()
	defer auth.mu.Unlock()
	g1 := auth.asks[5].Sub(auth.asks[4])
	g2 := auth.asks[9].Sub(auth.asks[8])
	if g2 < 16*time.Millisecond || g2 < g1 {
		t.Errorf("gaps after block: %v then %v, want growing to the 16ms cap", g1, g2)
	}
}

func TestRogueStopsOnContext(t *testing.T) {
	r, err := New(Config{ProxyURL: "http://127.0.0.1:1", Interval: time.Hour, MaxInterval: time.Hour},
		Deps{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Passports: &fakeAuthority{limit: 0}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return on cancel")
	}
}
