package healer

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/examples/fleet"
	"github.com/agentpassport/passport/internal/alert"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestHysteresis(t *testing.T) {
	tests := []struct {
		name       string
		rise, fall int
		seq        string // p = pass, f = fail
		want       string // state after each step: H or U
	}{
		{"single failure is ignored", 1, 2, "pfpfp", "HHHHH"},
		{"two failures trip", 1, 2, "pff", "HHU"},
		{"one pass recovers with rise 1", 1, 2, "ffp", "HUH"},
		{"rise 2 needs two passes", 2, 2, "ffpfpp", "HUUUUH"},
		{"fall 3", 1, 3, "ffpfff", "HHHHHU"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := hysteresis{rise: tc.rise, fall: tc.fall, healthy: true}
			var got strings.Builder
			for _, c := range tc.seq {
				h.observe(c == 'p')
				if h.healthy {
					got.WriteByte('H')
				} else {
					got.WriteByte('U')
				}
			}
			if got.String() != tc.want {
				t.Errorf("states = %s, want %s", got.String(), tc.want)
			}
		})
	}
}

func TestProbeClassifies(t *testing.T) {
	th := Thresholds{ErrorRate: 0.5, MemoryBytes: 64 << 20, CacheHitRatio: 0.5}
	serve := func(code int, body string) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(code)
			_, _ = w.Write([]byte(body))
		}))
		t.Cleanup(srv.Close)
		return srv.URL
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := "http://" + ln.Addr().String()
	ln.Close()
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	t.Cleanup(slow.Close)
	tests := []struct {
		name, url, typ string
	}{
		{"plain 200", serve(200, "ok"), ""},
		{"healthy vitals", serve(200, `{"error_rate":0,"memory_bytes":1000,"cache_hit_ratio":1}`), ""},
		{"connection refused", closed, TypeServiceDown},
		{"timeout", slow.URL, TypeServiceDown},
		{"503", serve(503, `{}`), TypeBadDeploy},
		{"error rate", serve(200, `{"error_rate":0.9}`), TypeBadDeploy},
		{"memory", serve(200, `{"memory_bytes":99999999999}`), TypeMemoryLeak},
		{"cache", serve(200, `{"cache_hit_ratio":0.1}`), TypeCacheMiss},
		{"404", serve(404, ``), TypeUnhealthy},
	}
	hc := &http.Client{}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := probe(context.Background(), hc, tc.url, 200*time.Millisecond, th)
			if r.OK != (tc.typ == "") || r.Type != tc.typ {
				t.Errorf("probe = %+v, want type %q", r, tc.typ)
			}
		})
	}
}

// --- fakes implementing the real interfaces ---

type memSink struct {
	mu   sync.Mutex
	recs []*audit.Record
}

func (s *memSink) Append(_ context.Context, r *audit.Record) (audit.Receipt, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recs = append(s.recs, r)
	return audit.ReceiptForTest("1-0", r), nil
}
func (s *memSink) Enqueue(r *audit.Record) { _, _ = s.Append(context.Background(), r) }

func (s *memSink) states(id string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, r := range s.recs {
		var in Incident
		_ = json.Unmarshal(r.Details, &in)
		if r.Kind == audit.KindIncident && in.ID == id && (len(out) == 0 || out[len(out)-1] != in.State) {
			out = append(out, in.State)
		}
	}
	return out
}

type fakePassports struct {
	mu    sync.Mutex
	tasks []passport.Task
	err   error
}

func (p *fakePassports) Passport(_ context.Context, task *passport.Task, scope []string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return "", p.err
	}
	p.tasks = append(p.tasks, *task)
	b, _ := json.Marshal(passport.Claims{Tenant: "acme", Task: task, Scope: strings.Join(scope, " ")})
	return "e30." + base64.RawURLEncoding.EncodeToString(b) + ".sig", nil
}

func (p *fakePassports) taskFor(id string) (passport.Task, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, t := range p.tasks {
		if t.ID == id {
			return t, true
		}
	}
	return passport.Task{}, false
}

type fakeReputation struct {
	mu       sync.Mutex
	outcomes []string
}

func (r *fakeReputation) Report(_ context.Context, outcome string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.outcomes = append(r.outcomes, outcome)
	return nil
}

func (r *fakeReputation) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.outcomes)
}

type alerts struct {
	mu sync.Mutex
	a  []alert.Alert
}

func (r *alerts) Notify(a alert.Alert) { r.mu.Lock(); r.a = append(r.a, a); r.mu.Unlock() }
func (r *alerts) kinds() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var k []string
	for _, a := range r.a {
		k = append(k, a.Kind)
	}
	return k
}

// stack is a real fleet behind a stand-in proxy, a real Redis store and a
// healer monitoring the acme services.
type stack struct {
	fleet *fleet.Fleet
	store *Store
	sink  *memSink
	pp    *fakePassports
	rep   *fakeReputation
	al    *alerts
	reg   *prometheus.Registry
	h     *Healer
	calls func() []string // what the proxy forwarded: "METHOD path task-id"
}

func startStack(t testing.TB, deny bool, mutate func(*Config)) *stack {
	t.Helper()
	f, err := fleet.New(fleet.Config{Listen: "127.0.0.1:0", LeakStepBytes: 2 << 20, LeakMaxBytes: 8 << 20, LeakInterval: 20 * time.Millisecond},
		fleet.Deps{Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	fctx, fcancel := context.WithCancel(context.Background())
	fdone := make(chan struct{})
	go func() { _ = f.Run(fctx); close(fdone) }()
	t.Cleanup(func() { fcancel(); <-fdone })

	u, _ := url.Parse(f.URL())
	rp := httputil.NewSingleHostReverseProxy(u)
	var mu sync.Mutex
	var calls []string
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		parts := strings.Split(tok, ".")
		if !ok || len(parts) != 3 {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		raw, _ := base64.RawURLEncoding.DecodeString(parts[1])
		var c passport.Claims
		_ = json.Unmarshal(raw, &c)
		task := ""
		if c.Task != nil {
			task = c.Task.ID
		}
		mu.Lock()
		calls = append(calls, r.Method+" "+r.URL.Path+" "+task)
		mu.Unlock()
		if deny {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(`{"error":"forbidden","reasons":["reputation_too_low"]}`))
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(proxy.Close)

	srv := redistest.Start(t)
	s := &stack{fleet: f, store: NewStore(srv.Client(), 0), sink: &memSink{}, pp: &fakePassports{}, rep: &fakeReputation{}, al: &alerts{}, reg: prometheus.NewRegistry()}
	s.calls = func() []string { mu.Lock(); defer mu.Unlock(); return slices.Clone(calls) }
	cfg := Config{Tenant: "acme", ProxyURL: proxy.URL, Thresholds: Thresholds{MemoryBytes: (32 << 20) + (4 << 20)},
		Announcements: Announcements{URL: f.URL() + "/events?tenant=acme"}}
	for _, name := range []string{"checkout", "payments"} {
		cfg.Checks = append(cfg.Checks, CheckConfig{Target: name, URL: f.HealthURL(name)})
	}
	if mutate != nil {
		mutate(&cfg)
	}
	h, err := New(cfg, Deps{Logger: discard(), Passports: s.pp, Store: s.store, Reputation: s.rep, Sink: s.sink, Alerts: s.al, Registry: s.reg})
	if err != nil {
		t.Fatal(err)
	}
	s.h = h
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("healer run: %v", err)
		}
	})
	return s
}

// awaitIncident waits for the target's latest incident to reach state.
func (s *stack) awaitIncident(t testing.TB, target, state string, within time.Duration) *Incident {
	t.Helper()
	var got *Incident
	eventually(t, within, target+" incident "+state, func() bool {
		list, err := s.store.List(context.Background(), "acme", 10)
		if err != nil {
			t.Fatal(err)
		}
		for _, in := range list {
			if in.Target == target {
				got = in
				return in.State == state
			}
		}
		return false
	})
	return got
}

func TestIncidentLifecycleForEachFault(t *testing.T) {
	s := startStack(t, false, nil)
	tests := []struct {
		fault, target, action, path string
	}{
		{fleet.FaultServiceDown, "checkout", "service.restart", "POST /services/checkout/restart"},
		{fleet.FaultBadDeploy, "payments", "deployment.rollback", "POST /deployments/payments/rollback"},
		{fleet.FaultMemoryLeak, "checkout", "service.restart", "POST /services/checkout/restart"},
		{fleet.FaultCacheMiss, "payments", "cache.warm", "POST /caches/payments/warm"},
	}
	for _, tc := range tests {
		t.Run(tc.fault, func(t *testing.T) {
			before := len(s.rep.list())
			if err := s.fleet.Inject(tc.fault, tc.target); err != nil {
				t.Fatal(err)
			}
			var in *Incident
			eventually(t, 10*time.Second, "incident resolved", func() bool {
				list, _ := s.store.List(context.Background(), "acme", 1)
				if len(list) == 1 && list[0].Type == tc.fault && list[0].State == StateResolved {
					in = list[0]
					return true
				}
				return false
			})
			t.Logf("%s on %s: RESOLVED in %d ms", tc.fault, tc.target, in.ResolutionMS)
			if in.Target != tc.target || in.Action != tc.action || in.Attempts != 1 || in.DispatchedAt == nil || in.ResolvedAt == nil ||
				in.ResolutionMS != in.ResolvedAt.Sub(in.DetectedAt).Milliseconds() {
				t.Errorf("incident = %+v", in)
			}
			if got := s.sink.states(in.ID); strings.Join(got, ">") != "DETECTED>DISPATCHED>RESOLVED" {
				t.Errorf("audited states = %v", got)
			}
			task, ok := s.pp.taskFor(in.ID)
			if !ok || task.Target != tc.target || len(task.Actions) != 1 || task.Actions[0] != tc.action {
				t.Errorf("passport task = %+v", task)
			}
			if !slices.Contains(s.calls(), tc.path+" "+in.ID) {
				t.Errorf("proxy calls %v lack %q with the incident id", s.calls(), tc.path)
			}
			if got := s.rep.list()[before:]; len(got) != 1 || got[0] != OutcomeSuccess {
				t.Errorf("reputation outcomes = %v", got)
			}
			if st, _ := s.fleet.Service(tc.target); st.Fault != "" || !st.Up {
				t.Errorf("fleet after resolve: %+v", st)
			}
		})
	}
	if got := testutil.ToFloat64(s.h.incidentsTotal.WithLabelValues(TypeServiceDown, StateResolved)); got != 1 {
		t.Errorf("incidents_total{service_down,RESOLVED} = %v", got)
	}
	if n := testutil.CollectAndCount(s.h.resolution); n != 4 {
		t.Errorf("resolution histogram series = %d, want 4", n)
	}
}

func TestDeniedRemediationEscalates(t *testing.T) {
	s := startStack(t, true, func(c *Config) {
		c.Backoff = time.Millisecond
		c.MaxBackoff = 5 * time.Millisecond
		c.ReportDenied = true
	})
	if err := s.fleet.Inject(fleet.FaultServiceDown, "checkout"); err != nil {
		t.Fatal(err)
	}
	in := s.awaitIncident(t, "checkout", StateEscalated, 10*time.Second)
	if in.Attempts != 3 || in.EscalatedAt == nil || in.ResolvedAt != nil {
		t.Errorf("incident = %+v", in)
	}
	if got := s.rep.list(); len(got) != 3 || got[0] != OutcomeDenied || got[2] != OutcomeDenied {
		t.Errorf("reputation = %v, want 3 denied", got)
	}
	if got := s.sink.states(in.ID); strings.Join(got, ">") != "DETECTED>DISPATCHED>ESCALATED" {
		t.Errorf("audited states = %v", got)
	}
	notes := ""
	for _, e := range in.Timeline {
		notes += e.Note + "|"
	}
	if !strings.Contains(notes, "reputation_too_low") {
		t.Errorf("timeline lacks the deny reason: %s", notes)
	}
	eventually(t, 2*time.Second, "escalation alert", func() bool { return slices.Contains(s.al.kinds(), alert.KindIncidentEscalated) })
	// Still down, but no new incident per probe: wait several probes.
	n := testutil.ToFloat64(s.h.checks.WithLabelValues(TypeServiceDown))
	eventually(t, 5*time.Second, "more probes", func() bool {
		return testutil.ToFloat64(s.h.checks.WithLabelValues(TypeServiceDown)) >= n+5
	})
	list, _ := s.store.List(context.Background(), "acme", 10)
	if len(list) != 1 {
		t.Errorf("incidents = %d, want 1 (no incident storm after escalation)", len(list))
	}
}

func TestNoPassportEscalatesWithoutCalling(t *testing.T) {
	s := startStack(t, false, func(c *Config) { c.Backoff = time.Millisecond; c.MaxBackoff = time.Millisecond })
	s.pp.err = errors.New("agent blocked")
	if err := s.fleet.Inject(fleet.FaultCacheMiss, "payments"); err != nil {
		t.Fatal(err)
	}
	in := s.awaitIncident(t, "payments", StateEscalated, 10*time.Second)
	if in.DispatchedAt != nil {
		t.Errorf("dispatched without a passport: %+v", in)
	}
	for _, c := range s.calls() {
		if strings.HasPrefix(c, "POST") {
			t.Errorf("proxy called without a passport: %s", c)
		}
	}
}

func TestSingleFailedCheckOpensNoIncident(t *testing.T) {
	var n atomic.Int64
	flaky := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Every third probe fails, never two in a row.
		if n.Add(1)%3 == 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte(`{"error_rate":0}`))
	}))
	defer flaky.Close()
	s := startStack(t, false, func(c *Config) {
		c.Checks = []CheckConfig{{Target: "checkout", URL: flaky.URL, Interval: 20 * time.Millisecond}}
	})
	eventually(t, 5*time.Second, "12 probes", func() bool { return n.Load() >= 12 })
	list, _ := s.store.List(context.Background(), "acme", 10)
	if len(list) != 0 || testutil.ToFloat64(s.h.checks.WithLabelValues(TypeBadDeploy)) < 3 {
		t.Errorf("incidents = %d (want 0), failed probes = %v", len(list), testutil.ToFloat64(s.h.checks.WithLabelValues(TypeBadDeploy)))
	}
}

func TestSlowResolutionAlerts(t *testing.T) {
	s := startStack(t, false, func(c *Config) { c.SlowResolution = time.Nanosecond })
	if err := s.fleet.Inject(fleet.FaultCacheMiss, "checkout"); err != nil {
		t.Fatal(err)
	}
	s.awaitIncident(t, "checkout", StateResolved, 10*time.Second)
	eventually(t, 2*time.Second, "slow alert", func() bool { return slices.Contains(s.al.kinds(), alert.KindSlowResolution) })
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"defaults", Config{}, ""},
		{"bad url", Config{Checks: []CheckConfig{{Target: "a", URL: "ftp://x"}}}, "url"},
		{"no target", Config{Checks: []CheckConfig{{URL: "http://x"}}}, "target"},
		{"custom action without path", Config{Playbooks: map[string]Playbook{"x": {Action: "thing.do"}}}, "playbooks.x"},
		{"bad tenant", Config{Tenant: "a}b"}, "tenant"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("Validate() = %v, want %q", err, tc.want)
			}
		})
	}
	d := Default()
	if d.Defaults.Interval != 200*time.Millisecond || d.Defaults.Fall != 2 || d.Defaults.Rise != 1 || d.Playbooks[TypeBadDeploy].Path != "/deployments/{target}/rollback" {
		t.Errorf("defaults = %+v", d)
	}
}

func TestHealerServesIncidentsAPI(t *testing.T) {
	srv := redistest.Start(t)
	reg := prometheus.NewRegistry()
	h, err := New(Config{Listen: "127.0.0.1:0"}, Deps{Logger: discard(), Passports: &fakePassports{}, Store: NewStore(srv.Client(), 0), AdminToken: "tok", Registry: reg, Sink: audit.Discard})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	base := "http://" + h.APIAddr()
	req, _ := http.NewRequest("GET", base+"/v1/tenants/acme/incidents", nil)
	req.Header.Set("Authorization", "Bearer tok")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("list: %v %v", resp, err)
	}
	resp.Body.Close()
	resp, err = http.Get(base + "/metrics")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("metrics: %v %v", resp, err)
	}
	resp.Body.Close()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not stop")
	}
}

func FuzzClassify(f *testing.F) {
	f.Add(200, []byte(`{"error_rate":0.1,"memory_bytes":1,"cache_hit_ratio":0.9}`))
	f.Add(503, []byte(`{}`))
	f.Add(200, []byte(`{"memory_bytes":-1}`))
	f.Add(204, []byte(`not json`))
	th := Default().Thresholds
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		r := classify(status, body, th)
		if r.OK == (r.Type != "") {
			t.Fatalf("inconsistent verdict %+v", r)
		}
		if status >= 500 && r.OK {
			t.Fatal("5xx passed")
		}
	})
}

func TestDeniedRepairNotReportedTwice(t *testing.T) {
	s := startStack(t, true, func(c *Config) { c.Backoff = time.Millisecond; c.MaxBackoff = 5 * time.Millisecond })
	if err := s.fleet.Inject(fleet.FaultServiceDown, "checkout"); err != nil {
		t.Fatal(err)
	}
	s.awaitIncident(t, "checkout", StateEscalated, 10*time.Second)
	if got := s.rep.list(); len(got) != 0 {
		t.Errorf("reputation reports = %v, want none: the proxy reports denials itself", got)
	}
}
