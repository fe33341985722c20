package healer

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/agentpassport/passport/examples/fleet"
)

// slowChecks makes the periodic checks too slow to matter in a test, so
// that only the fleet's announcements can explain a fast detection.
func slowChecks(c *Config) { c.Defaults.Interval = time.Hour }

// Each fault is detected from the fleet's announcement (the checks alone
// would not run again for an hour), confirmed by the checks, repaired
// through the proxy, and the incident is dated from the injection.
func TestAnnouncedFaultsResolveFromInjection(t *testing.T) {
	s := startStack(t, false, slowChecks)
	tests := []struct{ fault, target string }{
		{fleet.FaultServiceDown, "checkout"},
		{fleet.FaultBadDeploy, "payments"},
		{fleet.FaultMemoryLeak, "checkout"},
		{fleet.FaultCacheMiss, "payments"},
	}
	eventually(t, 5*time.Second, "announcement stream connected", func() bool {
		return testutil.ToFloat64(s.h.annConnected) == 1
	})
	// The first round of checks runs at start: a fault injected before it
	// is detected by that round, not from its announcement.
	eventually(t, 5*time.Second, "the first round of checks", func() bool {
		return testutil.ToFloat64(s.h.checks.WithLabelValues("pass")) >= 2
	})
	for _, tc := range tests {
		t.Run(tc.fault, func(t *testing.T) {
			if err := s.fleet.Inject(tc.fault, tc.target); err != nil {
				t.Fatal(err)
			}
			st, _ := s.fleet.Service(tc.target)
			if st.InjectedAt == nil {
				t.Fatal("fleet status has no injected_at")
			}
			var in *Incident
			eventually(t, 10*time.Second, tc.fault+" resolved", func() bool {
				list, _ := s.store.List(context.Background(), "acme", 1)
				if len(list) == 1 && list[0].Type == tc.fault && list[0].State == StateResolved {
					in = list[0]
					return true
				}
				return false
			})
			if in.Type != tc.fault || in.InjectedAt == nil || !in.InjectedAt.Equal(*st.InjectedAt) {
				t.Fatalf("incident %+v: want type %s injected at %v", in, tc.fault, st.InjectedAt)
			}
			if want := in.ResolvedAt.Sub(*in.InjectedAt).Milliseconds(); in.TimeToResolveMS != want || in.TimeToResolveMS < in.ResolutionMS {
				t.Errorf("time_to_resolve_ms %d, want %d (≥ resolution_ms %d)", in.TimeToResolveMS, want, in.ResolutionMS)
			}
			if len(in.Timeline) == 0 || in.Timeline[0].State != StepInjected || !in.Timeline[0].At.Equal(*in.InjectedAt) {
				t.Errorf("timeline %+v: want it to start with the injection", in.Timeline)
			}
			if got := s.sink.states(in.ID); strings.Join(got, ">") != "DETECTED>DISPATCHED>RESOLVED" {
				t.Errorf("audited states = %v", got)
			}
			t.Logf("%s: detected %v after injection, resolved %d ms after injection",
				tc.fault, in.DetectedAt.Sub(*in.InjectedAt).Round(time.Millisecond), in.TimeToResolveMS)
		})
	}
	if n := testutil.CollectAndCount(s.h.timeToResolve); n != 4 {
		t.Errorf("time_to_resolve histogram series = %d, want 4", n)
	}
	if got := testutil.ToFloat64(s.h.announced.WithLabelValues("applied")); got < 8 {
		t.Errorf("announcements applied = %v, want at least one per fault and repair", got)
	}
}

// The checks are the safety net: with the announcement stream down, a
// fault is still detected and repaired at the check interval, and the
// incident is dated from its detection.
func TestChecksDetectWithoutAnnouncements(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := "http://" + ln.Addr().String() + "/events"
	ln.Close()
	s := startStack(t, false, func(c *Config) { c.Announcements.URL = dead })
	if err := s.fleet.Inject(fleet.FaultBadDeploy, "payments"); err != nil {
		t.Fatal(err)
	}
	in := s.awaitIncident(t, "payments", StateResolved, 10*time.Second)
	if in.InjectedAt != nil || in.TimeToResolveMS != in.ResolutionMS {
		t.Errorf("incident %+v: want no injected_at and time to resolve = resolution", in)
	}
	if testutil.ToFloat64(s.h.annConnected) != 0 {
		t.Error("announcements_connected = 1 with the stream down")
	}
}

// sseServer serves a text/event-stream built by body, and counts the
// connections.
func sseServer(t *testing.T, body func(w http.ResponseWriter, r *http.Request, n int64)) (*httptest.Server, *atomic.Int64) {
	var conns atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := conns.Add(1)
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		http.NewResponseController(w).Flush()
		body(w, r, n)
	}))
	t.Cleanup(func() { srv.CloseClientConnections(); srv.Close() })
	return srv, &conns
}

// A stream that flaps (fault, healthy, fault, ... for a healthy service)
// costs probes but opens no incident: only the checks and their
// hysteresis open incidents. A real fault under the same flapping opens
// exactly one.
func TestFlappingAnnouncementsOpenNoDuplicateIncidents(t *testing.T) {
	srv, _ := sseServer(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
		rc := http.NewResponseController(w)
		for i := 0; r.Context().Err() == nil; i++ {
			fault := ""
			if i%2 == 0 {
				fault = "service_down"
			}
			fmt.Fprintf(w, "event: change\ndata: {\"service\":\"checkout\",\"up\":%t,\"fault\":%q,\"injected_at\":%q}\n\n",
				fault == "", fault, time.Now().UTC().Format(time.RFC3339Nano))
			if rc.Flush() != nil {
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	})
	s := startStack(t, false, func(c *Config) { c.Announcements.URL = srv.URL })
	eventually(t, 10*time.Second, "200 announcements", func() bool {
		return testutil.ToFloat64(s.h.announced.WithLabelValues("applied")) >= 200
	})
	if list, _ := s.store.List(context.Background(), "acme", 10); len(list) != 0 {
		t.Fatalf("flapping announcements opened %d incidents on a healthy service", len(list))
	}
	if err := s.fleet.Inject(fleet.FaultServiceDown, "checkout"); err != nil {
		t.Fatal(err)
	}
	s.awaitIncident(t, "checkout", StateResolved, 10*time.Second)
	// Let the flapping go on over the repaired service for a while.
	n := testutil.ToFloat64(s.h.announced.WithLabelValues("applied"))
	eventually(t, 10*time.Second, "100 more announcements", func() bool {
		return testutil.ToFloat64(s.h.announced.WithLabelValues("applied")) >= n+100
	})
	if list, _ := s.store.List(context.Background(), "acme", 10); len(list) != 1 {
		t.Fatalf("%d incidents, want exactly 1", len(list))
	}
}

// The other spellings and the silent network: malformed announcements and
// unknown services are counted and ignored, a stream that goes silent is
// dropped after IdleTimeout and reconnected, and so is one that ends.
func TestAnnouncementStreamFaults(t *testing.T) {
	srv, conns := sseServer(t, func(w http.ResponseWriter, r *http.Request, n int64) {
		if n == 1 {
			fmt.Fprint(w, ": hello\n\nevent: change\ndata: {not json\n\ndata: {\"service\":\"nope\"}\n\ndata: {}\n\n")
			http.NewResponseController(w).Flush()
			return // the stream ends
		}
		<-r.Context().Done() // the silent network: headers, then nothing
	})
	s := startStack(t, false, func(c *Config) {
		c.Announcements.URL = srv.URL
		c.Announcements.IdleTimeout = time.Second
	})
	eventually(t, 10*time.Second, "reconnect after silence", func() bool { return conns.Load() >= 3 })
	if got := testutil.ToFloat64(s.h.announced.WithLabelValues("malformed")); got != 2 {
		t.Errorf("malformed = %v, want 2", got)
	}
	if got := testutil.ToFloat64(s.h.announced.WithLabelValues("ignored")); got != 1 {
		t.Errorf("ignored = %v, want 1", got)
	}
}

func TestAnnouncementsConfig(t *testing.T) {
	tests := []struct {
		name string
		a    Announcements
		ok   bool
	}{
		{"none", Announcements{}, true},
		{"fleet", Announcements{URL: "http://127.0.0.1:9000/events?tenant=acme"}, true},
		{"not http", Announcements{URL: "redis://127.0.0.1:6379"}, false},
		{"probe interval too short", Announcements{ProbeInterval: time.Microsecond}, false},
		{"window shorter than the interval", Announcements{ProbeInterval: time.Second, Window: time.Millisecond}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Config{Announcements: tc.a}.Validate()
			if (err == nil) != tc.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}
