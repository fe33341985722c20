package fleet

import (
	"encoding/json"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Causes of a Change.
const (
	CauseSnapshot = "snapshot" // sent on connect: the state as it is now
	CauseInject   = "inject"
	CauseClear    = "clear"
	CauseRestart  = "restart"
	CauseRollback = "rollback"
	CauseWarm     = "warm"
	CauseDeploy   = "deploy"
	CauseScale    = "scale"
)

// Change is one announcement of GET /events: a service's state right
// after something changed it. A watcher learns of a fault the moment it
// is injected instead of at its next health check; it still confirms with
// a health check before acting, so an announcement is a hint, never an
// order.
type Change struct {
	// Seq orders the announcements of one fleet process (snapshots carry
	// the current value and do not advance it).
	Seq     uint64    `json:"seq"`
	At      time.Time `json:"at"`
	Cause   string    `json:"cause"`
	Service string    `json:"service"`
	Tenant  string    `json:"tenant"`
	Up      bool      `json:"up"`
	// Fault and InjectedAt are set while a fault is active.
	Fault      string     `json:"fault,omitempty"`
	InjectedAt *time.Time `json:"injected_at,omitempty"`
}

// watchers fans announcements out to the open GET /events streams.
type watchers struct {
	seq atomic.Uint64
	mu  sync.Mutex
	set map[*watcher]struct{}
}

type watcher struct {
	tenant string // "" watches every tenant
	ch     chan Change
}

// watcherBuffer is how many announcements a slow watcher may fall behind
// before it is cut off. It reconnects and gets a fresh snapshot, so
// cutting it off loses nothing a watcher needs (the current state).
const watcherBuffer = 64

func (ws *watchers) add(tenant string, limit int) (*watcher, bool) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if len(ws.set) >= limit {
		return nil, false
	}
	if ws.set == nil {
		ws.set = map[*watcher]struct{}{}
	}
	w := &watcher{tenant: tenant, ch: make(chan Change, watcherBuffer)}
	ws.set[w] = struct{}{}
	return w, true
}

func (ws *watchers) remove(w *watcher) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if _, ok := ws.set[w]; ok {
		delete(ws.set, w)
		close(w.ch)
	}
}

// send hands c to every watcher of its tenant without ever blocking the
// operation that caused it: a watcher whose buffer is full is dropped.
func (ws *watchers) send(c Change) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for w := range ws.set {
		if w.tenant != "" && w.tenant != c.Tenant {
			continue
		}
		select {
		case w.ch <- c:
		default:
			delete(ws.set, w)
			close(w.ch)
		}
	}
}

// change describes s as it is now.
func (f *Fleet) change(s *service, cause string, seq uint64) Change {
	st := s.status()
	c := Change{Seq: seq, At: time.Now().UTC(), Cause: cause, Service: st.Name, Tenant: st.Tenant, Up: st.Up,
		Fault: st.Fault, InjectedAt: st.InjectedAt}
	if cause == CauseInject && st.InjectedAt != nil {
		c.At = *st.InjectedAt
	}
	return c
}

// announce tells the watchers that s changed.
func (f *Fleet) announce(s *service, cause string) {
	f.watch.send(f.change(s, cause, f.watch.seq.Add(1)))
}

// serveEvents is GET /events[?tenant=T]: a text/event-stream of Change
// objects (event "change"), starting with a snapshot of every service,
// then one per change, with a comment line every EventsHeartbeat while
// nothing happens. There is no resume: a watcher that reconnects gets a
// new snapshot, which is all the state there is.
func (f *Fleet) serveEvents(w http.ResponseWriter, r *http.Request) {
	tenant := r.URL.Query().Get("tenant")
	if len(tenant) > 128 {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "tenant too long"})
		return
	}
	wt, ok := f.watch.add(tenant, f.cfg.MaxWatchers)
	if !ok {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "too many watchers"})
		return
	}
	defer f.watch.remove(wt)
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	// A watcher that stops reading must not hold a goroutine forever.
	write := func(b []byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	event := func(c Change) []byte {
		b, _ := json.Marshal(c) // plain struct: cannot fail
		return append(append([]byte("event: change\ndata: "), b...), '\n', '\n')
	}
	// Registered before the snapshot, so a change made while it is being
	// written is sent after it rather than lost.
	seq := f.watch.seq.Load()
	var snap []byte
	for _, name := range f.order {
		s := f.services[name]
		if tenant == "" || s.tenant == tenant {
			snap = append(snap, event(f.change(s, CauseSnapshot, seq))...)
		}
	}
	if !write(snap) {
		return
	}
	beat := time.NewTicker(f.cfg.EventsHeartbeat)
	defer beat.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case c, ok := <-wt.ch:
			if !ok {
				return // fell behind: reconnecting gets a fresh snapshot
			}
			if !write(event(c)) {
				return
			}
		case <-beat.C:
			if !write([]byte(": ping\n\n")) {
				return
			}
		}
	}
}
