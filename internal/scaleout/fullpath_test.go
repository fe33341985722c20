package scaleout

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/feed"
	"github.com/agentpassport/passport/internal/redistest"
)

// TestFullPathOnCluster: the whole path on a Redis Cluster (the demo
// tenant acme, whose services the proxy's fleet routes know): register
// an agent, get a passport, an allowed call (forwarded) and a denied one
// (not), both seen as events on the live feed, a revocation the proxy
// then enforces, and `audit verify` over the tenant's stream.
func TestFullPathOnCluster(t *testing.T) {
	c := redistest.StartCluster(t)
	cc := c.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const tenant = "acme"

	authURL := startAuthority(t, cc, "", runStream(t, newStream(t, cc, audit.StreamConfig{WriterID: "authority-1"})))
	var hits atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	t.Cleanup(up.Close)
	px := startProxy(t, cc, up.URL, authURL, authURL, runStream(t, newStream(t, cc, audit.StreamConfig{WriterID: "proxy-1"})))

	// The live feed, following the tenant from before the calls.
	hub, err := feed.New(feed.Config{}, feed.Deps{Redis: cc, Logger: testLogger(t), Registry: prometheus.NewRegistry(),
		Auth: feed.NewStaticAuth(feed.Token{Secret: adminToken})})
	if err != nil {
		t.Fatal(err)
	}
	hctx, stopHub := context.WithCancel(ctx)
	hubDone := make(chan error, 1)
	go func() { hubDone <- hub.Run(hctx) }()
	t.Cleanup(func() {
		stopHub()
		if err := <-hubDone; err != nil {
			t.Errorf("feed: %v", err)
		}
	})
	fs := httptest.NewServer(hub)
	t.Cleanup(fs.Close)
	var ws *websocket.Conn
	if err := retry(10*time.Second, func() error { // until the hub runs
		var err error
		ws, _, err = websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(fs.URL, "http")+feed.Path+"?"+url.Values{"tenant": {tenant}}.Encode(),
			http.Header{"Authorization": {"Bearer " + adminToken}})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ws.Close() })
	events := make(chan feed.Event, 100)
	go func() {
		for {
			_, msg, err := ws.ReadMessage()
			if err != nil {
				close(events)
				return
			}
			for _, line := range strings.Split(string(msg), "\n") {
				var ev feed.Event
				if json.Unmarshal([]byte(line), &ev) == nil {
					events <- ev
				}
			}
		}
	}()
	if ev := <-events; ev.Type != feed.TypeLive {
		t.Fatalf("first feed message %+v, want live", ev)
	}

	admin, err := client.NewAdmin(authURL, adminToken, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, tok := healerPassport(t, ctx, admin, authURL, tenant, "healer-1")
	call := func(method, path string) (int, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, method, px+path, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode, res.Header.Get("X-Request-Id")
	}
	code, allowedID := call(http.MethodGet, "/services/checkout")
	if code != http.StatusOK || hits.Load() != 1 {
		t.Fatalf("allowed call: %d, %d upstream hits", code, hits.Load())
	}
	code, deniedID := call(http.MethodPost, "/services/checkout/restart") // not in the passport's scope
	if code != http.StatusForbidden || hits.Load() != 1 {
		t.Fatalf("denied call: %d, %d upstream hits", code, hits.Load())
	}

	// Both decisions reach the feed.
	want := map[string]string{allowedID: audit.DecisionAllow, deniedID: audit.DecisionDeny}
	deadline := time.After(20 * time.Second)
	for len(want) > 0 {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatal("feed closed")
			}
			if d, found := want[ev.RequestID]; found && ev.Type == feed.TypeDecision {
				if ev.Decision != d || ev.Tenant != tenant {
					t.Fatalf("feed event %+v, want decision %s", ev, d)
				}
				delete(want, ev.RequestID)
			}
		case <-deadline:
			t.Fatalf("feed events missing for %v", want)
		}
	}

	// A revocation: the proxy refuses the passport from then on.
	revoke(t, ctx, authURL, tok)
	if err := retry(5*time.Second, func() error {
		if code, _ := call(http.MethodGet, "/services/checkout"); code != http.StatusUnauthorized {
			return &statusErr{code}
		}
		return nil
	}); err != nil {
		t.Fatalf("revoked passport: %v", err)
	}
	// Calls answered before the revocation reached the proxy were
	// forwarded, each with its decision record: verify checks the chain.
	mustVerify(t, cc, tenant)
}

type statusErr struct{ code int }

func (e *statusErr) Error() string { return http.StatusText(e.code) }
