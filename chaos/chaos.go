// Package chaos is the chaos simulator: it breaks the demo fleet on
// purpose so that the healer, the proxy and the audit trail are exercised
// end to end.
//
// Chaos is itself an agent. It holds a passport of type chaos (scope
// chaos.inject) and injects faults through the proxy with POST
// /faults/{name}, so it is authenticated, governed by policy and audited
// like any other agent: a chaos tool that bypassed the enforcement point
// would be exactly the kind of unaccountable automation the project
// exists to prevent.
//
// In run mode it fires random events at an interval with a blast-radius
// limit: at most one active fault per service and at most MaxActive at
// once across its targets. Every event is written to the tenant's audit
// stream as a record of kind chaos and counted.
package chaos

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/agentcall"
	"github.com/agentpassport/passport/internal/alert"
	"github.com/agentpassport/passport/passport"
)

// Fault types chaos knows (the fleet's fault API vocabulary).
const (
	ServiceDown = "service_down"
	BadDeploy   = "bad_deploy"
	MemoryLeak  = "memory_leak"
	CacheMiss   = "cache_miss"
)

// Types lists every fault type.
var Types = []string{ServiceDown, BadDeploy, MemoryLeak, CacheMiss}

// Actions chaos performs.
const (
	ActionInject = "chaos.inject"
	ActionClear  = "chaos.clear"
	ActionList   = "service.list"
)

// Config configures the simulator. Zero fields take the documented defaults.
type Config struct {
	// Tenant chaos acts in (its passport's tenant). Default acme.
	Tenant string `yaml:"tenant"`
	// ProxyURL is where the control API is reached: the proxy, never the
	// fleet directly. Default http://127.0.0.1:8080.
	ProxyURL string `yaml:"proxy_url"`
	// Interval between random events in run mode. Default 15s.
	Interval time.Duration `yaml:"interval"`
	// Seed makes run mode reproducible; 0 seeds from the clock.
	Seed uint64 `yaml:"seed"`
	// MaxActive bounds active faults across the targets. Default 1.
	MaxActive int `yaml:"max_active"`
	// Targets chaos may break. Default: every service the control API
	// lists for Tenant.
	Targets []string `yaml:"targets"`
	// Types chaos picks from in run mode. Default all four.
	Types []string `yaml:"types"`
	// Critical types raise an alert when injected. Default service_down
	// and bad_deploy.
	Critical []string `yaml:"critical"`
	// Timeout bounds one call through the proxy. Default 5s.
	Timeout time.Duration `yaml:"timeout"`
	// Alerts configures the webhooks. The command builds Deps.Alerts from
	// it; New itself only validates it.
	Alerts alert.Config `yaml:"alerts"`
	// Audit configures the writer of the chaos records (writer id and
	// signing key file, checkpoints, retention, wait_replicas;
	// audit.WriterConfig). The assembly builds Deps.Sink from it.
	Audit audit.WriterConfig `yaml:"audit"`
}

// Default values.
const (
	DefaultTenant   = "acme"
	DefaultProxyURL = "http://127.0.0.1:8080"
	DefaultInterval = 15 * time.Second
)

func (c Config) withDefaults() Config {
	if c.Tenant == "" {
		c.Tenant = DefaultTenant
	}
	if c.ProxyURL == "" {
		c.ProxyURL = DefaultProxyURL
	}
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.MaxActive == 0 {
		c.MaxActive = 1
	}
	if len(c.Types) == 0 {
		c.Types = slices.Clone(Types)
	}
	if c.Critical == nil {
		c.Critical = []string{ServiceDown, BadDeploy}
	}
	if c.Timeout == 0 {
		c.Timeout = 5 * time.Second
	}
	return c
}

// Validate reports every problem in the configuration.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	for _, t := range append(slices.Clone(c.Types), c.Critical...) {
		if !slices.Contains(Types, t) {
			errs = append(errs, fmt.Errorf("unknown fault type %q: want one of %v", t, Types))
		}
	}
	if c.Interval < 10*time.Millisecond {
		errs = append(errs, errors.New("interval must be at least 10ms"))
	}
	if c.MaxActive < 1 {
		errs = append(errs, errors.New("max_active must be at least 1"))
	}
	if err := c.Alerts.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("alerts: %w", err))
	}
	if err := c.Audit.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Deps are the simulator's collaborators.
type Deps struct {
	Logger    *slog.Logger        // required
	Passports agentcall.Passports // required: the chaos agent's passports
	// Sink receives the chaos audit records. Required: every fault is on
	// the record before Fire returns (tests pass audit.Discard).
	Sink audit.Sink
	// Registry receives the metrics; nil keeps them private. Instances
	// sharing a registry need wrapped registerers (WrapRegistererWith).
	Registry prometheus.Registerer
	Alerts   alert.Notifier   // nil: no alerts
	HTTP     *http.Client     // nil: a client with Config.Timeout (verifying with TLS)
	TLS      *tls.Config      // verifies an https:// proxy when HTTP is nil; nil: the system's roots
	Now      func() time.Time // nil: time.Now
}

// Event is one chaos event, as recorded in the audit details.
type Event struct {
	ID     string    `json:"id"`
	Type   string    `json:"type"`
	Target string    `json:"target"`
	Action string    `json:"action"` // "inject" or "clear"
	Time   time.Time `json:"time"`
	// InjectedAt is when the fault hit, as the target's answer says (the
	// demo fleet's injected_at); nil when the answer does not say.
	InjectedAt *time.Time `json:"injected_at,omitempty"`
}

// Chaos is the simulator.
type Chaos struct {
	cfg    Config
	deps   Deps
	log    *slog.Logger
	client *agentcall.Client
	now    func() time.Time

	mu  sync.Mutex
	rng *mrand.Rand

	events  *prometheus.CounterVec
	clears  prometheus.Counter
	skipped *prometheus.CounterVec
	errs    *prometheus.CounterVec
}

// Errors of Tick and Fire.
var (
	ErrBlastRadius = errors.New("blast radius reached")
	ErrNoTarget    = errors.New("no eligible target")
)

// New builds the simulator.
func New(cfg Config, deps Deps) (*Chaos, error) {
	if deps.Logger == nil || deps.Passports == nil || deps.Sink == nil {
		return nil, errors.New("chaos: logger, passports and audit sink are required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("chaos config: %w", err)
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
		hc = agentcall.HTTPClient(cfg.Timeout, deps.TLS)
	}
	seed := cfg.Seed
	if seed == 0 {
		seed = uint64(deps.Now().UnixNano())
	}
	c := &Chaos{
		cfg: cfg, deps: deps, log: deps.Logger.With("component", "chaos", "tenant", cfg.Tenant), now: deps.Now,
		client: &agentcall.Client{BaseURL: cfg.ProxyURL, HTTP: hc, UserAgent: "passport-chaos"},
		rng:    mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_chaos_events_total", Help: "Faults chaos injected, by fault type.",
		}, []string{"type"}),
		clears: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "passport_chaos_clears_total", Help: "Faults chaos cleared itself.",
		}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_chaos_skipped_total", Help: "Run-mode ticks that fired nothing, by reason (blast_radius, no_target).",
		}, []string{"reason"}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_chaos_errors_total", Help: "Chaos calls that failed, by reason (no_passport, unauthorized, denied, conflict, error).",
		}, []string{"reason"}),
	}
	var reg prometheus.Registerer = prometheus.NewRegistry()
	if deps.Registry != nil {
		reg = deps.Registry
	}
	for _, col := range []prometheus.Collector{c.events, c.clears, c.skipped, c.errs} {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("register chaos metrics: %w", err)
		}
	}
	return c, nil
}

// Fire injects one fault of type typ into target through the proxy and
// records it.
func (c *Chaos) Fire(ctx context.Context, typ, target string) (Event, error) {
	if !slices.Contains(Types, typ) {
		return Event{}, fmt.Errorf("fault type %q: want one of %v", typ, Types)
	}
	if err := c.checkTarget(ctx, target); err != nil {
		return Event{}, err
	}
	return c.fire(ctx, typ, target)
}

// ErrUnknownTarget: the target is not one chaos may break. Nothing was
// fired and no passport for a fault was asked for.
var ErrUnknownTarget = errors.New("unknown target")

// checkTarget refuses a target that is not one of Targets (or, without
// Targets, not one of the tenant's services as the control API lists
// them, a read through the proxy). A typo must not reach the proxy as a
// fault: the policy would deny it, and every denial costs the chaos agent
// reputation until its own chaos is denied too.
func (c *Chaos) checkTarget(ctx context.Context, target string) error {
	known := c.cfg.Targets
	if len(known) == 0 {
		list, err := c.services(ctx)
		if err != nil {
			return err
		}
		for _, s := range list {
			if s.Tenant == c.cfg.Tenant {
				known = append(known, s.Name)
			}
		}
	}
	if !slices.Contains(known, target) {
		known = slices.Sorted(slices.Values(known))
		return fmt.Errorf("%w %q: the targets of tenant %s are %s; nothing was fired", ErrUnknownTarget, target, c.cfg.Tenant, strings.Join(known, ", "))
	}
	return nil
}

// services lists the fleet's services through the proxy (a read).
func (c *Chaos) services(ctx context.Context) ([]serviceView, error) {
	tok, err := c.deps.Passports.Passport(ctx, nil, []string{ActionList})
	if err != nil {
		c.errs.WithLabelValues("no_passport").Inc()
		return nil, fmt.Errorf("get chaos passport: %w", err)
	}
	resp, err := c.client.Do(ctx, tok, http.MethodGet, "/services", nil)
	if err != nil {
		c.countErr(err)
		return nil, fmt.Errorf("list services: %w", err)
	}
	var list struct {
		Services []serviceView `json:"services"`
	}
	if err := json.Unmarshal(resp.Body, &list); err != nil {
		return nil, fmt.Errorf("decode services: %w", err)
	}
	return list.Services, nil
}

// fire injects typ into target, a target already known to be one of
// chaos's.
func (c *Chaos) fire(ctx context.Context, typ, target string) (Event, error) {
	ev := Event{ID: newID(), Type: typ, Target: target, Action: "inject"}
	task := &passport.Task{ID: ev.ID, Purpose: "chaos experiment: " + typ, Target: target, Actions: []string{ActionInject}}
	tok, err := c.deps.Passports.Passport(ctx, task, []string{ActionInject})
	if err != nil {
		c.errs.WithLabelValues("no_passport").Inc()
		return ev, fmt.Errorf("get chaos passport: %w", err)
	}
	resp, err := c.client.Do(ctx, tok, http.MethodPost, "/faults/"+target, map[string]string{"type": typ})
	if err != nil {
		c.countErr(err)
		return ev, fmt.Errorf("inject %s into %s: %w", typ, target, err)
	}
	ev.Time = c.now().UTC()
	// The target knows when the fault hit; time to resolve is measured
	// from there, not from when this answer arrived.
	var st struct {
		InjectedAt *time.Time `json:"injected_at"`
	}
	if json.Unmarshal(resp.Body, &st) == nil && st.InjectedAt != nil {
		at := st.InjectedAt.UTC()
		ev.InjectedAt = &at
	}
	c.events.WithLabelValues(typ).Inc()
	c.log.InfoContext(ctx, "chaos injected", "id", ev.ID, "type", typ, "target", target)
	c.record(ctx, tok, ev)
	if slices.Contains(c.cfg.Critical, typ) {
		c.deps.Alerts.Notify(alert.Alert{Kind: alert.KindChaosCritical, Severity: "critical", Tenant: c.cfg.Tenant,
			Text: fmt.Sprintf("chaos started: %s on %s (event %s)", typ, target, ev.ID)})
	}
	return ev, nil
}

// Clear asks the fleet to undo target's active fault through the proxy.
func (c *Chaos) Clear(ctx context.Context, target string) (Event, error) {
	if err := c.checkTarget(ctx, target); err != nil {
		return Event{}, err
	}
	ev := Event{ID: newID(), Target: target, Action: "clear"}
	task := &passport.Task{ID: ev.ID, Purpose: "chaos experiment: clear", Target: target, Actions: []string{ActionClear}}
	tok, err := c.deps.Passports.Passport(ctx, task, []string{ActionClear})
	if err != nil {
		c.errs.WithLabelValues("no_passport").Inc()
		return ev, fmt.Errorf("get chaos passport: %w", err)
	}
	if _, err := c.client.Do(ctx, tok, http.MethodDelete, "/faults/"+target, nil); err != nil {
		c.countErr(err)
		return ev, fmt.Errorf("clear fault on %s: %w", target, err)
	}
	ev.Time = c.now().UTC()
	c.clears.Inc()
	c.record(ctx, tok, ev)
	return ev, nil
}

func (c *Chaos) countErr(err error) {
	reason := "error"
	switch {
	case errors.Is(err, agentcall.ErrUnauthorized):
		reason = "unauthorized"
	case errors.Is(err, agentcall.ErrDenied):
		reason = "denied"
	case errors.Is(err, agentcall.ErrConflict):
		reason = "conflict"
	}
	c.errs.WithLabelValues(reason).Inc()
}

// record writes the event to the audit stream and waits for the ack, so a
// fired event is on the record before Fire returns.
func (c *Chaos) record(ctx context.Context, tok string, ev Event) {
	details, _ := json.Marshal(struct {
		ID         string     `json:"id"`
		Type       string     `json:"type"`
		Target     string     `json:"target"`
		Action     string     `json:"action"`
		InjectedAt *time.Time `json:"injected_at,omitempty"`
	}{ev.ID, ev.Type, ev.Target, ev.Action, ev.InjectedAt})
	rec := &audit.Record{
		V: audit.Version, Kind: audit.KindChaos, Time: ev.Time, Tenant: c.cfg.Tenant,
		TaskID: ev.ID, Resource: ev.Target, Details: details,
		Action: map[string]string{"inject": ActionInject, "clear": ActionClear}[ev.Action],
	}
	if id, ok := agentcall.PeekIdentity(tok); ok {
		rec.AgentID, rec.AgentName, rec.AgentType, rec.TrustLevel, rec.JTI = id.AgentID, id.Name, id.Type, id.Trust, id.JTI
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := c.deps.Sink.Append(actx, rec); err != nil {
		c.errs.WithLabelValues("audit").Inc()
		c.log.ErrorContext(ctx, "chaos event not recorded", "id", ev.ID, "err", err)
	}
}

// serviceView is what chaos reads from GET /services.
type serviceView struct {
	Name   string `json:"name"`
	Tenant string `json:"tenant"`
	Fault  string `json:"fault"`
}

// Tick is one step of run mode: it reads the fleet through the proxy,
// enforces the blast radius and fires one random event. It returns
// ErrBlastRadius or ErrNoTarget when it fires nothing.
func (c *Chaos) Tick(ctx context.Context) (Event, error) {
	services, err := c.services(ctx)
	if err != nil {
		return Event{}, err
	}
	var eligible []string
	active := 0
	for _, s := range services {
		mine := slices.Contains(c.cfg.Targets, s.Name) || (len(c.cfg.Targets) == 0 && s.Tenant == c.cfg.Tenant)
		if !mine {
			continue
		}
		if s.Fault != "" {
			active++ // one active fault per service: this one is taken
			continue
		}
		eligible = append(eligible, s.Name)
	}
	if active >= c.cfg.MaxActive {
		c.skipped.WithLabelValues("blast_radius").Inc()
		return Event{}, ErrBlastRadius
	}
	if len(eligible) == 0 {
		c.skipped.WithLabelValues("no_target").Inc()
		return Event{}, ErrNoTarget
	}
	sort.Strings(eligible)
	c.mu.Lock()
	target := eligible[c.rng.IntN(len(eligible))]
	typ := c.cfg.Types[c.rng.IntN(len(c.cfg.Types))]
	c.mu.Unlock()
	return c.fire(ctx, typ, target)
}

// Run fires a random event every Interval until ctx is done. Failures are
// logged and counted; they do not stop the loop.
func (c *Chaos) Run(ctx context.Context) error {
	c.log.InfoContext(ctx, "chaos running", "interval", c.cfg.Interval, "max_active", c.cfg.MaxActive, "proxy", c.cfg.ProxyURL)
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if _, err := c.Tick(ctx); err != nil && ctx.Err() == nil {
			if errors.Is(err, ErrBlastRadius) || errors.Is(err, ErrNoTarget) {
				c.log.DebugContext(ctx, "chaos tick skipped", "reason", err)
			} else {
				c.log.WarnContext(ctx, "chaos tick failed", "err", err)
			}
		}
	}
}

// newID returns a random event id such as "chaos-1f2e3d4c5b6a".
func newID() string {
	var b [6]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return "chaos-" + hex.EncodeToString(b[:])
}
