package chaos

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/examples/fleet"
	"github.com/agentpassport/passport/internal/agentcall"
	"github.com/agentpassport/passport/internal/alert"
	"github.com/agentpassport/passport/passport"
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// memSink is an in-memory audit.Sink for unit tests of chaos's logic.
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

// fakePassports mints unsigned look-alike passports and remembers the tasks.
type fakePassports struct {
	mu    sync.Mutex
	tasks []*passport.Task
	err   error
}

func (p *fakePassports) Passport(_ context.Context, task *passport.Task, scope []string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return "", p.err
	}
	p.tasks = append(p.tasks, task)
	c := passport.Claims{Tenant: "acme", Scope: strings.Join(scope, " "), Task: task,
		Agent: passport.Agent{ID: "chaos-agent-1", Name: "chaos-acme", Type: "chaos", TrustLevel: passport.TrustHigh}}
	b, _ := json.Marshal(c)
	return "e30." + base64.RawURLEncoding.EncodeToString(b) + ".sig", nil
}

type recorder struct {
	mu     sync.Mutex
	alerts []alert.Alert
}

func (r *recorder) Notify(a alert.Alert) { r.mu.Lock(); r.alerts = append(r.alerts, a); r.mu.Unlock() }

// setup runs a real fleet behind a stand-in proxy that requires a Bearer
// passport and forwards to the fleet (or answers deny when told to).
func setup(t *testing.T, deny bool) (*fleet.Fleet, *httptest.Server, *[]string) {
	t.Helper()
	f, err := fleet.New(fleet.Config{Listen: "127.0.0.1:0", LeakStepBytes: 1 << 20, LeakMaxBytes: 4 << 20}, fleet.Deps{Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = f.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	u, _ := url.Parse(f.URL())
	rp := httputil.NewSingleHostReverseProxy(u)
	var mu sync.Mutex
	var seen []string
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.Path)
		mu.Unlock()
		if deny && r.Method != http.MethodGet {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(`{"error":"forbidden","reasons":["route_not_in_production"]}`))
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(proxy.Close)
	return f, proxy, &seen
}

func TestFireInjectsThroughProxyRecordsAndAlerts(t *testing.T) {
	f, proxy, seen := setup(t, false)
	sink, pp, rec := &memSink{}, &fakePassports{}, &recorder{}
	c, err := New(Config{ProxyURL: proxy.URL, Targets: []string{"checkout", "payments"}}, Deps{Logger: discard(), Passports: pp, Sink: sink, Alerts: rec})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := c.Fire(context.Background(), ServiceDown, "checkout")
	if err != nil {
		t.Fatal(err)
	}
	st, _ := f.Service("checkout")
	if st.Up || st.Fault != ServiceDown || st.InjectedAt == nil {
		t.Fatalf("fleet after fire: %+v", st)
	}
	if ev.InjectedAt == nil || !ev.InjectedAt.Equal(*st.InjectedAt) {
		t.Errorf("event injected_at %v, the fleet says %v", ev.InjectedAt, st.InjectedAt)
	}
	if len(*seen) != 1 || (*seen)[0] != "POST /faults/checkout" {
		t.Errorf("proxy saw %v", *seen)
	}
	if len(pp.tasks) != 1 || pp.tasks[0].ID != ev.ID || pp.tasks[0].Target != "checkout" || pp.tasks[0].Actions[0] != ActionInject {
		t.Errorf("passport task = %+v", pp.tasks)
	}
	if len(sink.recs) != 1 {
		t.Fatalf("records = %d", len(sink.recs))
	}
	r := sink.recs[0]
	var d map[string]string
	_ = json.Unmarshal(r.Details, &d)
	if r.Kind != audit.KindChaos || r.Tenant != "acme" || r.AgentID != "chaos-agent-1" || r.TaskID != ev.ID ||
		d["id"] != ev.ID || d["type"] != ServiceDown || d["target"] != "checkout" || d["action"] != "inject" ||
		d["injected_at"] != st.InjectedAt.Format(time.RFC3339Nano) {
		t.Errorf("record = %+v details %v", r, d)
	}
	if got := testutil.ToFloat64(c.events.WithLabelValues(ServiceDown)); got != 1 {
		t.Errorf("events = %v", got)
	}
	if len(rec.alerts) != 1 || rec.alerts[0].Kind != alert.KindChaosCritical {
		t.Errorf("alerts = %+v", rec.alerts)
	}
	// cache_miss is not critical: no alert.
	if _, err := c.Fire(context.Background(), CacheMiss, "payments"); err != nil {
		t.Fatal(err)
	}
	if len(rec.alerts) != 1 {
		t.Errorf("alerts after cache_miss = %d", len(rec.alerts))
	}
	// Clear goes through the proxy too and repairs.
	if _, err := c.Clear(context.Background(), "checkout"); err != nil {
		t.Fatal(err)
	}
	if st, _ := f.Service("checkout"); !st.Up || st.Fault != "" {
		t.Errorf("after clear: %+v", st)
	}
}

// TestFireUnknownTarget: a target that is not chaos's is refused before
// any passport for a fault is asked for, so the policy never sees (and
// never denies) a typo. With configured targets nothing at all is asked;
// without, the services are read through the proxy.
func TestFireUnknownTarget(t *testing.T) {
	_, proxy, seen := setup(t, false)
	for _, tc := range []struct {
		name    string
		targets []string
		want    []string // calls the proxy sees
	}{
		{"configured targets", []string{"checkout", "payments"}, nil},
		{"the tenant's services", nil, []string{"GET /services"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			*seen = nil
			sink, pp := &memSink{}, &fakePassports{}
			c, err := New(Config{ProxyURL: proxy.URL, Targets: tc.targets}, Deps{Logger: discard(), Passports: pp, Sink: sink})
			if err != nil {
				t.Fatal(err)
			}
			for _, target := range []string{"chekout", "search"} { // a typo; another tenant's service
				_, err = c.Fire(context.Background(), ServiceDown, target)
				if !errors.Is(err, ErrUnknownTarget) || !strings.Contains(err.Error(), "checkout, payments") {
					t.Fatalf("Fire(%s) = %v, want ErrUnknownTarget naming the targets", target, err)
				}
				if _, err := c.Clear(context.Background(), target); !errors.Is(err, ErrUnknownTarget) {
					t.Fatalf("Clear(%s) = %v, want ErrUnknownTarget", target, err)
				}
			}
			for _, task := range pp.tasks {
				if task != nil {
					t.Errorf("a passport for a fault was asked for: %+v", task)
				}
			}
			for _, call := range *seen {
				if !slices.Contains(tc.want, call) {
					t.Errorf("the proxy saw %s", call)
				}
			}
			if len(sink.recs) != 0 {
				t.Errorf("recorded %d events", len(sink.recs))
			}
		})
	}
}

func TestFireDeniedByProxyIsNotRecorded(t *testing.T) {
	f, proxy, _ := setup(t, true)
	sink := &memSink{}
	c, err := New(Config{ProxyURL: proxy.URL}, Deps{Logger: discard(), Passports: &fakePassports{}, Sink: sink})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Fire(context.Background(), BadDeploy, "checkout")
	var ae *agentcall.Error
	if !errors.Is(err, agentcall.ErrDenied) || !errors.As(err, &ae) || ae.Resp.Reasons[0] != "route_not_in_production" {
		t.Fatalf("err = %v, want denied with reasons", err)
	}
	if st, _ := f.Service("checkout"); st.Fault != "" {
		t.Errorf("fault applied despite deny: %+v", st)
	}
	if len(sink.recs) != 0 || testutil.ToFloat64(c.errs.WithLabelValues("denied")) != 1 {
		t.Errorf("records %d, denied count %v", len(sink.recs), testutil.ToFloat64(c.errs.WithLabelValues("denied")))
	}
}

func TestNoPassportNoCall(t *testing.T) {
	_, proxy, seen := setup(t, false)
	c, err := New(Config{ProxyURL: proxy.URL}, Deps{Logger: discard(), Passports: &fakePassports{err: errors.New("agent blocked")}, Sink: audit.Discard})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Fire(context.Background(), CacheMiss, "checkout"); err == nil {
		t.Fatal("fired without a passport")
	}
	if len(*seen) != 0 {
		t.Errorf("proxy was called: %v", *seen)
	}
}

// ticks runs n run-mode ticks with the given seed against a fresh fleet and
// returns the events fired ("type@target") and the number of skips.
func ticks(t *testing.T, seed uint64, maxActive, n int) ([]string, int, *fleet.Fleet) {
	f, proxy, _ := setup(t, false)
	c, err := New(Config{ProxyURL: proxy.URL, Seed: seed, MaxActive: maxActive, Targets: []string{"checkout", "payments", "search", "inventory"}},
		Deps{Logger: discard(), Passports: &fakePassports{}, Sink: &memSink{}})
	if err != nil {
		t.Fatal(err)
	}
	var fired []string
	skips := 0
	for range n {
		ev, err := c.Tick(context.Background())
		switch {
		case errors.Is(err, ErrBlastRadius):
			skips++
		case err != nil:
			t.Fatal(err)
		default:
			fired = append(fired, ev.Type+"@"+ev.Target)
		}
	}
	return fired, skips, f
}

func TestRunModeBlastRadiusWithSeed(t *testing.T) {
	for _, k := range []int{1, 2, 3} {
		fired, skips, f := ticks(t, 42, k, 6)
		if len(fired) != k || skips != 6-k {
			t.Fatalf("K=%d: fired %v, skips %d", k, fired, skips)
		}
		active := map[string]bool{}
		for _, st := range f.Services() {
			if st.Fault != "" {
				active[st.Name] = true
			}
		}
		if len(active) != k {
			t.Errorf("K=%d: active faults on %v, want %d distinct services", k, active, k)
		}
		// The same seed fires the same events.
		again, _, _ := ticks(t, 42, k, 6)
		if strings.Join(again, ",") != strings.Join(fired, ",") {
			t.Errorf("K=%d: seed 42 gave %v then %v", k, fired, again)
		}
	}
}

func TestTenantTargetsByDefault(t *testing.T) {
	_, proxy, _ := setup(t, false)
	c, err := New(Config{ProxyURL: proxy.URL, Tenant: "globex", MaxActive: 4, Seed: 7},
		Deps{Logger: discard(), Passports: &fakePassports{}, Sink: audit.Discard})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for range 3 {
		ev, err := c.Tick(context.Background())
		if errors.Is(err, ErrNoTarget) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[ev.Target] = true
	}
	if len(got) != 2 || !got["search"] || !got["inventory"] {
		t.Errorf("globex chaos hit %v, want search and inventory only", got)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := (Config{Types: []string{"meteor"}}).Validate(); err == nil {
		t.Error("unknown type accepted")
	}
	if err := (Config{}).Validate(); err != nil {
		t.Error(err)
	}
}
