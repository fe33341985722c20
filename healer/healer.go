// Package healer is the auto-healer: a health monitor with Caddy-style
// pass/fail hysteresis, an incident lifecycle, and YAML playbooks that it
// carries out as an agent through the proxy.
//
// Besides its periodic checks, the healer may follow the monitored
// system's change announcements (see Announcements): an announced fault
// is probed at once, so it is confirmed within milliseconds of its
// injection, and the incident carries the injection time.
//
// For each failing target the healer opens an incident (DETECTED), picks
// the playbook for the incident type, obtains a passport bound to that
// incident (task {id, target, actions}) — DISPATCHED — and calls the
// control API through the proxy. When the health check passes again the
// incident is RESOLVED with its resolution time. A denied or failing
// remediation is retried with backoff and then ESCALATED. Every outcome is
// reported to the authority's reputation API, every state change is saved
// in Redis and written to the tenant's audit stream (kind incident), so
// the live feed shows it.
//
// The healer holds no standing privilege: each repair uses a passport that
// names one incident, one target and one action, so a healer that is
// confused or compromised cannot reuse it against another service.
package healer

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/agentcall"
	"github.com/agentpassport/passport/internal/alert"
	"github.com/agentpassport/passport/internal/backoff"
	"github.com/agentpassport/passport/internal/run"
	"github.com/agentpassport/passport/internal/tlsx"
	"github.com/agentpassport/passport/passport"
)

// Passports hands out the healer agent's passports (see agentcall).
type Passports = agentcall.Passports

// Reputation receives the outcome of each remediation the healer made:
// "success", "failure" or "denied" (the authority's outcomes API for the
// healer's own agent).
type Reputation interface {
	Report(ctx context.Context, outcome string) error
}

// Outcomes reported to Reputation.
const (
	OutcomeSuccess = "success"
	OutcomeFailure = "failure"
	OutcomeDenied  = "denied"
)

// CheckConfig is one monitored health URL. Zero durations and counts take
// the values of Config.Defaults.
type CheckConfig struct {
	// Target names the service; it is the incident target and the
	// {name} of the control API route. Required.
	Target string `yaml:"target"`
	// URL is any HTTP(S) URL; 2xx passes, and a JSON body with
	// error_rate, memory_bytes or cache_hit_ratio is judged too. Required.
	URL      string        `yaml:"url"`
	Interval time.Duration `yaml:"interval"`
	Timeout  time.Duration `yaml:"timeout"`
	// Rise is how many consecutive passes make an unhealthy target healthy.
	Rise int `yaml:"rise"`
	// Fall is how many consecutive failures make a healthy target unhealthy.
	Fall int `yaml:"fall"`
}

// Playbook is what the healer does about one incident type.
type Playbook struct {
	// Action is the capability used, e.g. service.restart. Required.
	Action string `yaml:"action"`
	// Method and Path override the control API call; Path may use
	// {target}. Default: the route of Action in the fleet's API.
	Method string `yaml:"method"`
	Path   string `yaml:"path"`
	// Body is sent as JSON when set, e.g. {"replicas": 3}.
	Body map[string]any `yaml:"body"`
}

// Config configures the healer. Zero fields take the documented defaults
// (see Default).
type Config struct {
	// Tenant is the healer agent's tenant. Default acme.
	Tenant string `yaml:"tenant"`
	// Listen serves the incidents API (NewAPI) and /metrics; "" serves
	// nothing. New binds it (port 0 allowed, see APIAddr); Run serves it.
	// Default "" in the package; `passport healer` defaults it to
	// 127.0.0.1:9100.
	Listen string `yaml:"listen"`
	// TLS serves the incidents API over TLS when cert_file and key_file
	// are set (env PASSPORT_TLS_CERT_FILE, PASSPORT_TLS_KEY_FILE).
	// Default: plain HTTP.
	TLS tlsx.Server `yaml:"tls"`
	// ProxyURL is where the control API is called: the proxy, never the
	// fleet directly. Default http://127.0.0.1:8080.
	ProxyURL string `yaml:"proxy_url"`
	// Defaults apply to every check that leaves a field zero. Defaults:
	// interval 200ms, timeout 500ms, rise 1, fall 2 — tuned so that a
	// fault is RESOLVED well within 2 seconds while a single lost probe
	// still opens nothing.
	Defaults CheckConfig `yaml:"defaults"`
	// Checks are the monitored URLs.
	Checks []CheckConfig `yaml:"checks"`
	// Announcements subscribes to the monitored system's own change
	// announcements, so a fault is confirmed in milliseconds rather than at
	// the next check. Default: none (health checks only).
	Announcements Announcements `yaml:"announcements"`
	// Thresholds judge health answers' vital signs.
	Thresholds Thresholds `yaml:"thresholds"`
	// Playbooks map incident type to action. Default: service_down and
	// memory_leak → service.restart, bad_deploy → deployment.rollback,
	// cache_miss → cache.warm, unhealthy → service.restart.
	Playbooks map[string]Playbook `yaml:"playbooks"`
	// MaxAttempts per incident before ESCALATED. Default 3.
	MaxAttempts int `yaml:"max_attempts"`
	// ReportDenied reports policy denials of its own repairs to the
	// reputation API. Default false: the proxy already reports every deny
	// it makes, and a denied repair must not cost the healer twice. Set it
	// when the proxy in front does not report denials.
	ReportDenied bool `yaml:"report_denied"`
	// Backoff before the second attempt; doubles up to MaxBackoff.
	// Defaults 250ms and 2s.
	Backoff    time.Duration `yaml:"backoff"`
	MaxBackoff time.Duration `yaml:"max_backoff"`
	// RecoverTimeout is how long an attempt waits for the check to pass
	// again before it counts as failed. Default 5s.
	RecoverTimeout time.Duration `yaml:"recover_timeout"`
	// SlowResolution raises an alert when an incident takes longer.
	// Default 10s.
	SlowResolution time.Duration `yaml:"slow_resolution"`
	// CallTimeout bounds one control API call. Default 5s.
	CallTimeout time.Duration `yaml:"call_timeout"`
	// MaxIncidents per tenant kept in Redis. Default 10000.
	MaxIncidents int `yaml:"max_incidents"`
	// Alerts configures the webhooks. The command builds Deps.Alerts from
	// it; New itself only validates it.
	Alerts alert.Config `yaml:"alerts"`
	// Audit configures the writer of the incident records (writer id and
	// signing key file, checkpoints, retention, wait_replicas;
	// audit.WriterConfig). The assembly builds Deps.Sink from it.
	Audit audit.WriterConfig `yaml:"audit"`
}

// Defaults.
const (
	DefaultTenant   = "acme"
	DefaultListen   = "127.0.0.1:9100"
	DefaultProxyURL = "http://127.0.0.1:8080"
)

// DefaultPlaybooks returns the built-in playbooks.
func DefaultPlaybooks() map[string]Playbook {
	return map[string]Playbook{
		TypeServiceDown: {Action: "service.restart"},
		TypeBadDeploy:   {Action: "deployment.rollback"},
		TypeMemoryLeak:  {Action: "service.restart"},
		TypeCacheMiss:   {Action: "cache.warm"},
		TypeUnhealthy:   {Action: "service.restart"},
	}
}

// Default returns the default configuration (no checks).
func Default() Config { return Config{}.withDefaults() }

// actionRoutes are the control API routes of the built-in actions.
var actionRoutes = map[string][2]string{
	"service.restart":     {http.MethodPost, "/services/{target}/restart"},
	"service.scale":       {http.MethodPost, "/services/{target}/scale"},
	"deployment.rollback": {http.MethodPost, "/deployments/{target}/rollback"},
	"deployment.deploy":   {http.MethodPost, "/deployments/{target}"},
	"cache.warm":          {http.MethodPost, "/caches/{target}/warm"},
}

func (c Config) withDefaults() Config {
	if c.Tenant == "" {
		c.Tenant = DefaultTenant
	}
	if c.ProxyURL == "" {
		c.ProxyURL = DefaultProxyURL
	}
	d := &c.Defaults
	if d.Interval == 0 {
		d.Interval = 200 * time.Millisecond
	}
	if d.Timeout == 0 {
		d.Timeout = 500 * time.Millisecond
	}
	if d.Rise == 0 {
		d.Rise = 1
	}
	if d.Fall == 0 {
		d.Fall = 2
	}
	c.Checks = slices.Clone(c.Checks)
	for i := range c.Checks {
		ck := &c.Checks[i]
		if ck.Interval == 0 {
			ck.Interval = d.Interval
		}
		if ck.Timeout == 0 {
			ck.Timeout = d.Timeout
		}
		if ck.Rise == 0 {
			ck.Rise = d.Rise
		}
		if ck.Fall == 0 {
			ck.Fall = d.Fall
		}
	}
	th := &c.Thresholds
	if th.ErrorRate == 0 {
		th.ErrorRate = 0.5
	}
	if th.MemoryBytes == 0 {
		th.MemoryBytes = 64 << 20
	}
	if th.CacheHitRatio == 0 {
		th.CacheHitRatio = 0.5
	}
	pb := DefaultPlaybooks()
	for k, v := range c.Playbooks {
		pb[k] = v
	}
	for k, v := range pb {
		if r, ok := actionRoutes[v.Action]; ok {
			if v.Method == "" {
				v.Method = r[0]
			}
			if v.Path == "" {
				v.Path = r[1]
			}
		}
		pb[k] = v
	}
	c.Playbooks = pb
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 3
	}
	if c.Backoff == 0 {
		c.Backoff = 250 * time.Millisecond
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = 2 * time.Second
	}
	if c.RecoverTimeout == 0 {
		c.RecoverTimeout = 5 * time.Second
	}
	if c.SlowResolution == 0 {
		c.SlowResolution = 10 * time.Second
	}
	if c.CallTimeout == 0 {
		c.CallTimeout = 5 * time.Second
	}
	c.Announcements = c.Announcements.withDefaults()
	return c
}

// Validate reports every problem in the configuration.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	if !ValidTenant(c.Tenant) {
		errs = append(errs, fmt.Errorf("tenant %q: want a lowercase identifier", c.Tenant))
	}
	seen := map[string]bool{}
	for i, ck := range c.Checks {
		if ck.Target == "" {
			errs = append(errs, fmt.Errorf("checks[%d]: target is required", i))
		}
		if seen[ck.Target] {
			errs = append(errs, fmt.Errorf("checks[%d]: duplicate target %q", i, ck.Target))
		}
		seen[ck.Target] = true
		if !strings.HasPrefix(ck.URL, "http://") && !strings.HasPrefix(ck.URL, "https://") {
			errs = append(errs, fmt.Errorf("checks[%d] %s: url must be http(s)", i, ck.Target))
		}
		if ck.Interval < 10*time.Millisecond || ck.Timeout <= 0 || ck.Rise < 1 || ck.Fall < 1 {
			errs = append(errs, fmt.Errorf("checks[%d] %s: interval ≥ 10ms, timeout > 0, rise and fall ≥ 1", i, ck.Target))
		}
	}
	for typ, pb := range c.Playbooks {
		if pb.Action == "" || pb.Method == "" || !strings.HasPrefix(pb.Path, "/") {
			errs = append(errs, fmt.Errorf("playbooks.%s: action required, and method and path unless the action is built in", typ))
		}
	}
	if c.MaxAttempts < 1 || c.Backoff < 0 || c.MaxBackoff < c.Backoff || c.RecoverTimeout <= 0 {
		errs = append(errs, errors.New("max_attempts ≥ 1, backoff ≤ max_backoff, recover_timeout > 0"))
	}
	if err := c.Alerts.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("alerts: %w", err))
	}
	if err := c.Announcements.validate(); err != nil {
		errs = append(errs, fmt.Errorf("announcements: %w", err))
	}
	if err := c.TLS.Validate("tls"); err != nil {
		errs = append(errs, err)
	}
	if err := c.Audit.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Deps are the healer's collaborators.
type Deps struct {
	Logger    *slog.Logger // required
	Passports Passports    // required: the healer agent's passports
	Store     *Store       // required: where incidents live
	// Reputation receives outcomes; nil reports nothing.
	Reputation Reputation
	// Sink receives the incident audit records. Required (tests pass
	// audit.Discard).
	Sink audit.Sink
	// Registry receives the metrics; nil keeps them private. Two healers
	// sharing one registry must each get a wrapped registerer, e.g.
	// prometheus.WrapRegistererWith(prometheus.Labels{"tenant": t}, reg).
	// When it is also a prometheus.Gatherer, the API serves it at /metrics.
	Registry prometheus.Registerer
	Alerts   alert.Notifier // nil: no alerts
	// HTTP is used for the control API calls; nil: a client with
	// CallTimeout. Health checks use their own client with no keep-alive
	// pooling surprises.
	HTTP *http.Client
	// TLS verifies https:// servers the healer calls with its own
	// clients: the proxy (when HTTP is nil), health checks and
	// announcements. Default nil: the system's roots.
	TLS *tls.Config
	// AdminToken protects the incidents API when Listen is set.
	AdminToken string
	Now        func() time.Time // nil: time.Now
}

// Healer is the running auto-healer.
type Healer struct {
	cfg    Config
	deps   Deps
	log    *slog.Logger
	now    func() time.Time
	client *agentcall.Client
	probeC *http.Client
	annC   *http.Client // the announcement stream: no overall timeout

	targets map[string]*target
	ln      net.Listener // incidents API, bound by New when Listen is set
	tls     *tls.Config  // the incidents API's; nil: plain HTTP

	mu        sync.Mutex
	incidents map[string]*Incident // open incidents by id

	incidentsTotal *prometheus.CounterVec
	resolution     *prometheus.HistogramVec
	timeToResolve  *prometheus.HistogramVec
	remediations   *prometheus.CounterVec
	checks         *prometheus.CounterVec
	recordErrs     prometheus.Counter
	announced      *prometheus.CounterVec
	annConnected   prometheus.Gauge
}

// target is one check's live state.
type target struct {
	cfg  CheckConfig
	kick chan struct{} // probe now

	mu   sync.Mutex
	h    hysteresis
	last probeResult
	open *Incident // the open incident, if any
	// escalated is set when an incident escalated while the target was
	// unhealthy: no new incident opens until it has been healthy again,
	// so a target nobody can fix does not open one incident per probe.
	escalated bool
	healthyC  chan struct{} // closed when the target turns healthy
	// After an announcement the target is probed every
	// Announcements.ProbeInterval until fastUntil, or until the checks
	// agree with what was announced (expectHealthy).
	fastUntil     time.Time
	expectHealthy bool
	// hint is the last announced fault, kept until fastUntil: the
	// incident it leads to carries its injection time.
	hint *announcement
}

func (t *target) healthyChan() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.healthyC
}

// New builds a healer.
func New(cfg Config, deps Deps) (*Healer, error) {
	if deps.Logger == nil || deps.Passports == nil || deps.Store == nil || deps.Sink == nil {
		return nil, errors.New("healer: logger, passports, store and audit sink are required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("healer config: %w", err)
	}
	cfg = cfg.withDefaults()
	if deps.Alerts == nil {
		deps.Alerts = alert.Nop{}
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	hc := deps.HTTP
	if hc == nil {
		hc = agentcall.HTTPClient(cfg.CallTimeout, deps.TLS)
	}
	h := &Healer{
		cfg: cfg, deps: deps, now: deps.Now,
		log:       deps.Logger.With("component", "healer", "tenant", cfg.Tenant),
		client:    &agentcall.Client{BaseURL: cfg.ProxyURL, HTTP: hc, UserAgent: "passport-healer", Proofs: proverOf(deps.Passports)},
		probeC:    &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil, TLSClientConfig: deps.TLS}},
		annC:      &http.Client{Transport: &http.Transport{Proxy: nil, ResponseHeaderTimeout: 10 * time.Second, TLSClientConfig: deps.TLS}},
		targets:   map[string]*target{},
		incidents: map[string]*Incident{},
		incidentsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_healer_incidents_total", Help: "Incident state changes, by incident type and new state.",
		}, []string{"type", "state"}),
		resolution: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "passport_healer_resolution_seconds", Help: "Time from DETECTED to RESOLVED, by incident type.",
			Buckets: []float64{0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60},
		}, []string{"type"}),
		timeToResolve: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "passport_healer_time_to_resolve_seconds", Help: "Time from the fault (its announced injection, else its detection) to RESOLVED, by incident type.",
			Buckets: []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60},
		}, []string{"type"}),
		announced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_healer_announcements_total", Help: "Announcements read from the announcement stream, by result (applied, ignored, malformed).",
		}, []string{"result"}),
		annConnected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "passport_healer_announcements_connected", Help: "1 while the announcement stream is connected.",
		}),
		remediations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_healer_remediations_total", Help: "Remediation attempts, by action and outcome (success, failure, denied, no_passport).",
		}, []string{"action", "outcome"}),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_healer_checks_total", Help: "Health checks, by result (pass or an incident type).",
		}, []string{"result"}),
		recordErrs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "passport_healer_record_errors_total", Help: "Incident changes that could not be saved or audited.",
		}),
	}
	var reg prometheus.Registerer = prometheus.NewRegistry()
	if deps.Registry != nil {
		reg = deps.Registry
	}
	for _, c := range []prometheus.Collector{h.incidentsTotal, h.resolution, h.timeToResolve, h.remediations, h.checks, h.recordErrs, h.announced, h.annConnected} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register healer metrics: %w", err)
		}
	}
	if cfg.Listen != "" {
		var err error
		if h.tls, err = cfg.TLS.Config(tlsx.Options{Name: "healer", Logger: h.log, Metrics: tlsx.NewMetrics(reg)}); err != nil {
			return nil, fmt.Errorf("healer: %w", err)
		}
		// Bound here, not in Run, so APIAddr reports a port-0 choice
		// before Run starts.
		ln, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("listen incidents api %s: %w", cfg.Listen, err)
		}
		h.ln = ln
	}
	for _, ck := range cfg.Checks {
		// Targets start healthy, as Caddy's do: a fleet that is already
		// broken at start is detected after Fall failures.
		h.targets[ck.Target] = &target{cfg: ck, kick: make(chan struct{}, 1),
			h: hysteresis{rise: ck.Rise, fall: ck.Fall, healthy: true}, healthyC: closedChan()}
	}
	return h, nil
}

func closedChan() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// APIAddr is the incidents API's address, "" when Listen is not set.
func (h *Healer) APIAddr() string {
	if h.ln == nil {
		return ""
	}
	return h.ln.Addr().String()
}

// Run monitors every check and handles incidents until ctx is done. When
// Config.Listen is set it also serves the incidents API.
func (h *Healer) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	for _, t := range h.targets {
		g.Go(run.Guarded(ctx, "healer.monitor", func() error { h.monitor(ctx, g, t); return nil }))
	}
	g.Go(func() error { <-ctx.Done(); return nil }) // run until cancelled, even with no checks
	if h.cfg.Announcements.URL != "" {
		g.Go(run.Guarded(ctx, "healer.announcements", func() error { h.followAnnouncements(ctx); return nil }))
	}
	if h.ln != nil {
		if h.deps.AdminToken == "" {
			h.log.Warn("incidents api has no admin token: it will refuse every request")
		}
		srv := &http.Server{Handler: NewAPI(h.deps.Store, h.deps.AdminToken, gathererOf(h.deps.Registry), h.log), ReadHeaderTimeout: 5 * time.Second}
		ln := h.ln
		g.Go(run.Guarded(ctx, "healer.api", func() error {
			if err := tlsx.Serve(srv, ln, h.tls); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serve incidents api: %w", err)
			}
			return nil
		}))
		g.Go(func() error {
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // > net/http's 5 s wait for a connection that sent nothing yet
			defer cancel()
			return srv.Shutdown(sctx)
		})
		h.log.Info("incidents api listening", "addr", ln.Addr().String(), "tls", h.tls != nil)
	}
	h.log.Info("healer running", "checks", len(h.targets), "proxy", h.cfg.ProxyURL)
	return g.Wait()
}

// monitor probes one target at its interval (or at once when kicked, and
// every Announcements.ProbeInterval after an announcement) and opens an
// incident when the hysteresis turns it unhealthy.
func (h *Healer) monitor(ctx context.Context, g *errgroup.Group, t *target) {
	timer := time.NewTimer(t.cfg.Interval)
	defer timer.Stop()
	for {
		res := probe(ctx, h.probeC, t.cfg.URL, t.cfg.Timeout, h.cfg.Thresholds)
		if ctx.Err() != nil {
			return
		}
		if res.OK {
			h.checks.WithLabelValues("pass").Inc()
		} else {
			h.checks.WithLabelValues(res.Type).Inc()
		}
		t.mu.Lock()
		changed := t.h.observe(res.OK)
		t.last = res
		var opened *Incident
		if changed && t.h.healthy {
			close(t.healthyC)
			t.escalated = false
		}
		if changed && !t.h.healthy {
			t.healthyC = make(chan struct{})
		}
		now := h.now()
		if !res.OK && !t.h.healthy && t.open == nil && !t.escalated {
			opened = &Incident{ID: newIncidentID(), Tenant: h.cfg.Tenant, Type: res.Type, Target: t.cfg.Target,
				State: StateDetected, DetectedAt: now.UTC()}
			// The incident is dated from the announced fault when one was
			// announced for this target shortly before: that is when
			// the fault hit, not when the checks confirmed it.
			if a := t.hint; a != nil && a.InjectedAt != nil && !a.InjectedAt.After(now) {
				at := a.InjectedAt.UTC()
				opened.InjectedAt = &at
				opened.Timeline = append(opened.Timeline, Event{State: StepInjected, At: at, Note: "announced: " + a.Fault})
				t.hint = nil
			}
			opened.note(opened.DetectedAt, res.Detail)
			t.open = opened
		}
		wait := t.cfg.Interval
		if now.Before(t.fastUntil) {
			if t.h.healthy == t.expectHealthy && res.OK == t.expectHealthy {
				t.fastUntil = time.Time{} // the checks agree with the announcement
			} else {
				wait = h.cfg.Announcements.ProbeInterval
			}
		} else {
			t.hint = nil
		}
		t.mu.Unlock()
		if opened != nil {
			h.log.Info("incident detected", "id", opened.ID, "type", opened.Type, "target", opened.Target, "detail", res.Detail)
			h.record(ctx, opened)
			g.Go(run.Guarded(ctx, "healer.remediate", func() error { h.remediate(ctx, t, opened); return nil }))
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-t.kick:
		}
	}
}

// remediate carries out the playbook for one incident until it is
// RESOLVED or ESCALATED.
func (h *Healer) remediate(ctx context.Context, t *target, in *Incident) {
	defer func() {
		t.mu.Lock()
		if t.open == in {
			t.open = nil
		}
		if in.State == StateEscalated && !t.h.healthy {
			t.escalated = true
		}
		t.mu.Unlock()
	}()
	pb, ok := h.cfg.Playbooks[in.Type]
	if !ok {
		h.escalate(ctx, in, "no playbook for "+in.Type)
		return
	}
	in.Action = pb.Action
	path := strings.ReplaceAll(pb.Path, "{target}", in.Target)
	var body any
	if pb.Body != nil {
		body = pb.Body
	}
	retry := backoff.Backoff{Min: h.cfg.Backoff, Max: h.cfg.MaxBackoff}
	for attempt := 1; attempt <= h.cfg.MaxAttempts; attempt++ {
		if attempt > 1 {
			if !h.wait(ctx, t, retry.Next()) {
				if ctx.Err() != nil {
					return
				}
				h.resolve(ctx, in, "recovered during backoff")
				return
			}
		}
		select {
		case <-t.healthyChan():
			h.resolve(ctx, in, "recovered before remediation")
			return
		default:
		}
		in.Attempts = attempt
		task := &passport.Task{ID: in.ID, Purpose: fmt.Sprintf("remediate %s on %s", in.Type, in.Target), Target: in.Target, Actions: []string{pb.Action}}
		tok, err := h.deps.Passports.Passport(ctx, task, []string{pb.Action})
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			h.remediations.WithLabelValues(pb.Action, "no_passport").Inc()
			h.log.Warn("no passport for remediation", "id", in.ID, "attempt", attempt, "err", err)
			in.note(h.now().UTC(), fmt.Sprintf("attempt %d: no passport", attempt))
			h.record(ctx, in)
			continue
		}
		if in.State == StateDetected {
			in.transition(StateDispatched, h.now(), fmt.Sprintf("%s via proxy (attempt %d)", pb.Action, attempt))
		} else {
			in.note(h.now().UTC(), fmt.Sprintf("%s via proxy (attempt %d)", pb.Action, attempt))
		}
		h.record(ctx, in)
		resp, err := h.client.Do(ctx, tok, pb.Method, path, body)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			outcome, note := OutcomeFailure, fmt.Sprintf("attempt %d failed: %v", attempt, err)
			if errors.Is(err, agentcall.ErrDenied) {
				outcome = OutcomeDenied
				note = fmt.Sprintf("attempt %d denied by policy", attempt)
				var ae *agentcall.Error
				if errors.As(err, &ae) && len(ae.Resp.Reasons) > 0 {
					note += ": " + strings.Join(ae.Resp.Reasons, ", ")
				}
			}
			if errors.Is(err, agentcall.ErrUnauthorized) {
				// The passport was refused (revoked, rotated key): never
				// retry with the same one.
				if inv, ok := h.deps.Passports.(interface{ Invalidate() }); ok {
					inv.Invalidate()
				}
			}
			h.outcome(ctx, pb.Action, outcome)
			h.log.Warn("remediation failed", "id", in.ID, "attempt", attempt, "err", err)
			in.note(h.now().UTC(), note)
			h.record(ctx, in)
			if why := needsPerson(err); why != "" {
				// A budget ran out or the policy wants a person: retrying
				// cannot help, a person must look now.
				h.escalate(ctx, in, why)
				return
			}
			continue
		}
		h.log.Info("remediation applied", "id", in.ID, "action", pb.Action, "target", in.Target, "request_id", resp.RequestID)
		// Probe now instead of waiting for the next tick.
		select {
		case t.kick <- struct{}{}:
		default:
		}
		if h.wait(ctx, t, h.cfg.RecoverTimeout) {
			if ctx.Err() != nil {
				return
			}
			h.outcome(ctx, pb.Action, OutcomeFailure)
			in.note(h.now().UTC(), fmt.Sprintf("attempt %d: not healthy after %v", attempt, h.cfg.RecoverTimeout))
			h.record(ctx, in)
			continue
		}
		h.outcome(ctx, pb.Action, OutcomeSuccess)
		h.resolve(ctx, in, "health check passing")
		return
	}
	h.escalate(ctx, in, fmt.Sprintf("gave up after %d attempts", in.Attempts))
}

// wait waits up to d; it returns false early when the target turns
// healthy (or ctx ends), true when d passed with the target unhealthy.
func (h *Healer) wait(ctx context.Context, t *target, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.healthyChan():
		return false
	case <-timer.C:
		return true
	}
}

func (h *Healer) outcome(ctx context.Context, action, outcome string) {
	h.remediations.WithLabelValues(action, outcome).Inc()
	if h.deps.Reputation == nil || (outcome == OutcomeDenied && !h.cfg.ReportDenied) {
		return
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := h.deps.Reputation.Report(rctx, outcome); err != nil {
		h.log.Warn("reputation report failed", "outcome", outcome, "err", err)
	}
}

func (h *Healer) resolve(ctx context.Context, in *Incident, note string) {
	in.transition(StateResolved, h.now(), note)
	d := time.Duration(in.ResolutionMS) * time.Millisecond
	h.resolution.WithLabelValues(in.Type).Observe(d.Seconds())
	h.timeToResolve.WithLabelValues(in.Type).Observe((time.Duration(in.TimeToResolveMS) * time.Millisecond).Seconds())
	h.log.Info("incident resolved", "id", in.ID, "type", in.Type, "target", in.Target, "resolution_ms", in.ResolutionMS,
		"time_to_resolve_ms", in.TimeToResolveMS)
	h.record(ctx, in)
	if d > h.cfg.SlowResolution {
		h.deps.Alerts.Notify(alert.Alert{Kind: alert.KindSlowResolution, Severity: "warning", Tenant: in.Tenant,
			Text: fmt.Sprintf("incident %s (%s on %s) resolved slowly in %v", in.ID, in.Type, in.Target, d.Round(time.Millisecond))})
	}
}

func (h *Healer) escalate(ctx context.Context, in *Incident, note string) {
	in.transition(StateEscalated, h.now(), note)
	h.log.Warn("incident escalated", "id", in.ID, "type", in.Type, "target", in.Target, "note", note)
	h.record(ctx, in)
	h.deps.Alerts.Notify(alert.Alert{Kind: alert.KindIncidentEscalated, Severity: "critical", Tenant: in.Tenant,
		Text: fmt.Sprintf("incident %s (%s on %s) escalated: %s", in.ID, in.Type, in.Target, note)})
}

// record saves the incident and writes its audit record. Both are bounded
// in time; failures are logged and counted but never stop the repair:
// the proxy records every remediation call itself, fail closed.
func (h *Healer) record(ctx context.Context, in *Incident) {
	snap := in.clone()
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	h.mu.Lock()
	prev, seen := h.incidents[in.ID]
	stateChanged := !seen || prev.State != snap.State
	if snap.Open() {
		h.incidents[in.ID] = snap
	} else {
		delete(h.incidents, in.ID)
	}
	h.mu.Unlock()
	if stateChanged {
		h.incidentsTotal.WithLabelValues(snap.Type, snap.State).Inc()
	}
	// The audit record first, then the store: whoever sees a state in the
	// store can rely on it being in the audit stream already.
	details, _ := json.Marshal(snap) // plain struct: cannot fail
	rec := &audit.Record{V: audit.Version, Kind: audit.KindIncident, Time: h.now().UTC(), Tenant: snap.Tenant,
		AgentType: passport.TypeHealer, TaskID: snap.ID, Action: snap.Action, Resource: snap.Target, Details: details}
	if _, err := h.deps.Sink.Append(rctx, rec); err != nil {
		h.recordErrs.Inc()
		h.log.Error("incident not audited", "id", in.ID, "err", err)
	}
	if err := h.deps.Store.Save(rctx, snap); err != nil {
		h.recordErrs.Inc()
		h.log.Error("incident not saved", "id", in.ID, "err", err)
	}
}

// gathererOf returns r as a Gatherer when it is one, else nil.
func gathererOf(r prometheus.Registerer) prometheus.Gatherer {
	if g, ok := r.(prometheus.Gatherer); ok {
		return g
	}
	return nil
}

// Open returns copies of the incidents being handled now.
func (h *Healer) Open() []*Incident {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*Incident, 0, len(h.incidents))
	for _, in := range h.incidents {
		out = append(out, in.clone())
	}
	return out
}

// needsPerson says why a refused remediation needs a person (the proxy
// answered approval_required, or a budget ran out), "" when it does not.
func needsPerson(err error) string {
	var ae *agentcall.Error
	if !errors.As(err, &ae) {
		return ""
	}
	switch {
	case ae.Resp.Code == "approval_required" && ae.Resp.ApprovalID != "":
		return "needs a person: the policy asks for approval " + ae.Resp.ApprovalID
	case ae.Resp.Code == "approval_required", ae.Resp.Code == "budget_exhausted":
		return "needs a person: " + strings.Join(ae.Resp.Reasons, ", ")
	}
	return ""
}

// proverOf is the passports' DPoP prover, when they make proofs: a healer
// whose passports are bound to a key shows them with a proof.
func proverOf(p Passports) agentcall.Prover {
	if pr, ok := p.(agentcall.Prover); ok {
		return pr
	}
	return nil
}
