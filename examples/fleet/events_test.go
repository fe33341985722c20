package fleet

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// sse reads Change events from a GET /events stream.
type sse struct {
	t    *testing.T
	resp *http.Response
	ch   chan Change
}

func watch(t *testing.T, url string) *sse {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		cancel()
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	s := &sse{t: t, resp: resp, ch: make(chan Change, 100)}
	go func() {
		defer close(s.ch)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var c Change
				if err := json.Unmarshal([]byte(data), &c); err != nil {
					t.Errorf("bad event %q: %v", data, err)
					return
				}
				s.ch <- c
			}
		}
	}()
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	return s
}

func (s *sse) next(what string) Change {
	s.t.Helper()
	select {
	case c, ok := <-s.ch:
		if !ok {
			s.t.Fatalf("%s: stream ended", what)
		}
		return c
	case <-time.After(5 * time.Second):
		s.t.Fatalf("%s: no event", what)
	}
	return Change{}
}

// The fleet announces every change the moment it happens, with the time
// the fault hit, after a snapshot of the watched tenant's services.
func TestEventsAnnounceChanges(t *testing.T) {
	f := startFleet(t)
	w := watch(t, f.URL()+"/events?tenant=acme")
	got := map[string]bool{}
	for range 2 {
		c := w.next("snapshot")
		if c.Cause != CauseSnapshot || c.Tenant != "acme" || !c.Up || c.Fault != "" {
			t.Fatalf("snapshot %+v", c)
		}
		got[c.Service] = true
	}
	if !got["checkout"] || !got["payments"] {
		t.Fatalf("snapshot services %v", got)
	}

	// Another tenant's change is not sent to an acme watcher.
	if err := f.Inject(FaultCacheMiss, "search"); err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	if err := f.Inject(FaultServiceDown, "checkout"); err != nil {
		t.Fatal(err)
	}
	c := w.next("inject")
	if c.Cause != CauseInject || c.Service != "checkout" || c.Up || c.Fault != FaultServiceDown || c.InjectedAt == nil ||
		c.InjectedAt.Before(before.Add(-time.Millisecond)) || !c.At.Equal(*c.InjectedAt) || c.Seq == 0 {
		t.Fatalf("inject announcement %+v", c)
	}
	st, _ := f.Service("checkout")
	if st.InjectedAt == nil || !st.InjectedAt.Equal(*c.InjectedAt) {
		t.Fatalf("status injected_at %v, announced %v", st.InjectedAt, c.InjectedAt)
	}
	if err := f.Restart("checkout"); err != nil {
		t.Fatal(err)
	}
	c2 := w.next("restart")
	if c2.Cause != CauseRestart || !c2.Up || c2.Fault != "" || c2.InjectedAt != nil || c2.Seq <= c.Seq {
		t.Fatalf("restart announcement %+v", c2)
	}
	if st, _ := f.Service("checkout"); st.InjectedAt != nil {
		t.Fatalf("injected_at %v after the repair", st.InjectedAt)
	}

	// A watcher that connects while a fault is active learns of it from
	// the snapshot, with the time it hit.
	if err := f.Inject(FaultBadDeploy, "payments"); err != nil {
		t.Fatal(err)
	}
	w2 := watch(t, f.URL()+"/events")
	n, faulty := 0, 0
	for range 4 {
		c := w2.next("snapshot of all")
		n++
		if c.Fault != "" {
			faulty++
			if c.InjectedAt == nil {
				t.Errorf("snapshot of a faulty service without injected_at: %+v", c)
			}
		}
	}
	if n != 4 || faulty != 2 { // payments (bad_deploy) and search (cache_miss)
		t.Fatalf("snapshot of all: %d services, %d faulty", n, faulty)
	}
}

// Watchers are bounded, and an open stream does not hold the fleet's
// shutdown.
func TestEventsBoundedAndStopWithTheFleet(t *testing.T) {
	f, err := New(Config{Listen: "127.0.0.1:0", MaxWatchers: 1, EventsHeartbeat: 20 * time.Millisecond}, Deps{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	defer cancel()
	w := watch(t, f.URL()+"/events?tenant=acme")
	w.next("snapshot")
	resp, err := http.Get(f.URL() + "/events")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("second watcher: %d, want 503", resp.StatusCode)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(shutdownGrace / 2):
		t.Fatal("Run did not stop while a watcher was connected")
	}
}

// A watcher that does not keep up is cut off (it reconnects and gets a
// snapshot) instead of slowing down the operation that announces.
func TestSlowWatcherIsDropped(t *testing.T) {
	var ws watchers
	w, _ := ws.add("", 10)
	fast, _ := ws.add("", 10)
	for i := range watcherBuffer + 1 {
		ws.send(Change{Seq: uint64(i)})
		<-fast.ch
	}
	n := 0
	for range w.ch {
		n++
	}
	if n != watcherBuffer {
		t.Fatalf("slow watcher got %d before being closed, want %d", n, watcherBuffer)
	}
	ws.remove(w) // no double close
	if _, ok := ws.set[fast]; !ok {
		t.Fatal("the watcher that kept up was dropped")
	}
}
