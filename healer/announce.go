package healer

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/agentpassport/passport/internal/backoff"
)

// Announcements configures the subscription to the monitored system's
// change announcements: a server-sent event stream (text/event-stream)
// whose data lines are JSON objects such as the demo fleet's GET /events:
//
//	{"service": "checkout", "fault": "service_down", "up": false,
//	 "injected_at": "2026-01-02T15:04:05.123Z"}
//
// An announcement is a hint, never a verdict: it makes the healer probe
// the named target at once and then every ProbeInterval until the checks
// agree with it or Window passes. Incidents are still opened and closed
// by the checks and their hysteresis only, so a lying or flapping stream
// can cost probes but can neither open nor close an incident. While the
// stream is down the checks go on at their interval (the safety net).
type Announcements struct {
	// URL of the stream, e.g. http://127.0.0.1:9000/events?tenant=acme.
	// Default "": no subscription.
	URL string `yaml:"url"`
	// ProbeInterval between the probes that follow an announcement.
	// Default 10ms.
	ProbeInterval time.Duration `yaml:"probe_interval"`
	// Window is how long those probes go on at most. Default 2s.
	Window time.Duration `yaml:"window"`
	// IdleTimeout drops a stream that sent nothing (not even a comment
	// line) for this long, and reconnects. Default 45s (the fleet sends a
	// comment every 15s).
	IdleTimeout time.Duration `yaml:"idle_timeout"`
}

func (a Announcements) withDefaults() Announcements {
	if a.ProbeInterval == 0 {
		a.ProbeInterval = 10 * time.Millisecond
	}
	if a.Window == 0 {
		a.Window = 2 * time.Second
	}
	if a.IdleTimeout == 0 {
		a.IdleTimeout = 45 * time.Second
	}
	return a
}

func (a Announcements) validate() error {
	var errs []error
	if a.URL != "" {
		if u, err := url.Parse(a.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("url %q: want an http(s) URL", a.URL))
		}
	}
	if a.ProbeInterval < time.Millisecond || a.Window < a.ProbeInterval || a.IdleTimeout < time.Second {
		errs = append(errs, errors.New("probe_interval ≥ 1ms, window ≥ probe_interval, idle_timeout ≥ 1s"))
	}
	return errors.Join(errs...)
}

// announcement is what the healer reads from one event's data.
type announcement struct {
	Service    string     `json:"service"`
	Up         *bool      `json:"up"`
	Fault      string     `json:"fault"`
	InjectedAt *time.Time `json:"injected_at"`
}

// healthy is what the announcement says the checks should find.
func (a *announcement) healthy() bool { return a.Fault == "" && (a.Up == nil || *a.Up) }

// maxAnnouncementLine bounds one line of the stream.
const maxAnnouncementLine = 64 << 10

// followAnnouncements reads the stream until ctx ends, reconnecting with
// a jittered backoff (100ms doubling to 5s) whenever it fails or goes
// silent.
func (h *Healer) followAnnouncements(ctx context.Context) {
	retry := backoff.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}
	failing := false
	for {
		read, err := h.readAnnouncements(ctx)
		if ctx.Err() != nil {
			return
		}
		if read {
			retry.Reset()
			failing = false
		}
		if !failing {
			// Once per outage: the checks go on meanwhile.
			h.log.Warn("announcement stream lost; health checks continue", "url", redactURL(h.cfg.Announcements.URL), "err", err)
			failing = true
		}
		if !retry.Wait(ctx) {
			return
		}
	}
}

// readAnnouncements follows one connection. It reports whether it read
// at least one announcement, and why it ended.
func (h *Healer) readAnnouncements(ctx context.Context) (read bool, err error) {
	cfg := h.cfg.Announcements
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// A connection that goes silent without closing is dropped after
	// IdleTimeout rather than trusted forever.
	idle := time.AfterFunc(cfg.IdleTimeout, cancel)
	defer idle.Stop()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, cfg.URL, nil)
	if err != nil {
		return false, err
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("User-Agent", "passport-healer")
	resp, err := h.annC.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); resp.StatusCode != http.StatusOK || mt != "text/event-stream" {
		return false, fmt.Errorf("status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	h.annConnected.Set(1)
	defer h.annConnected.Set(0)
	h.log.Info("announcement stream connected", "url", redactURL(cfg.URL))
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 4096), maxAnnouncementLine)
	var data strings.Builder
	for sc.Scan() {
		idle.Reset(cfg.IdleTimeout)
		line := sc.Text()
		switch {
		case line == "": // end of one event
			if data.Len() > 0 {
				h.apply(data.String())
				read = true
				data.Reset()
			}
		case strings.HasPrefix(line, "data:"):
			if data.Len() > 0 {
				data.WriteByte('\n')
			}
			data.WriteString(strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
			if data.Len() > maxAnnouncementLine {
				return read, errors.New("announcement too long")
			}
		}
		// "event:", "id:", "retry:" and ":" comments carry nothing the
		// healer needs.
	}
	if err := sc.Err(); err != nil {
		return read, err
	}
	return read, errors.New("stream ended")
}

// apply handles one announcement: for a monitored target it starts the
// fast probes and remembers an announced fault for the incident to come.
func (h *Healer) apply(data string) {
	var a announcement
	if err := json.Unmarshal([]byte(data), &a); err != nil || a.Service == "" {
		h.announced.WithLabelValues("malformed").Inc()
		return
	}
	t, ok := h.targets[a.Service]
	if !ok {
		h.announced.WithLabelValues("ignored").Inc()
		return
	}
	h.announced.WithLabelValues("applied").Inc()
	now := h.now()
	t.mu.Lock()
	t.fastUntil = now.Add(h.cfg.Announcements.Window)
	t.expectHealthy = a.healthy()
	if t.expectHealthy {
		t.hint = nil
	} else {
		t.hint = &a
	}
	t.mu.Unlock()
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

// redactURL drops any userinfo from a URL before it is logged.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(invalid url)"
	}
	u.User = nil
	return u.String()
}
