// Package fleet is the demo infrastructure that Agent Passport protects: a
// control API (the kind of API agents call to restart services, roll back
// deploys and warm caches) and several services, each a real HTTP server on
// its own loopback port with a GET /healthz that reports its vital signs.
//
// Faults are real, not flags: service_down closes the service's listener
// (connection refused), bad_deploy deploys a version whose handler answers
// 5xx, memory_leak makes the process hold ever more memory up to a cap, and
// cache_miss empties the cache so the hit ratio falls and requests slow
// down. The matching repairs (restart, rollback, cache warm) undo them.
//
// The fleet announces every change on GET /events (server-sent events,
// see Change), with the time a fault hit, so a watcher such as the healer
// learns of a fault when it happens rather than at its next health check.
//
// The control API has no authentication of its own on purpose: it stands
// for an existing API that the proxy fronts, and it listens on loopback.
package fleet

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/agentpassport/passport/internal/tlsx"
)

// Config is the fleet's YAML configuration. Zero fields take the defaults
// documented on each field (see Default).
type Config struct {
	// Listen is the control API address. Default 127.0.0.1:9000; port 0
	// picks a free port (Fleet.Addr reports it).
	Listen string `yaml:"listen"`
	// Services are the services to run. Default: checkout and payments
	// (tenant acme), search and inventory (tenant globex), each on
	// 127.0.0.1:0.
	Services []ServiceConfig `yaml:"services"`
	// CacheKeys is the size of each service's key space and cache. Default 1000.
	CacheKeys int `yaml:"cache_keys"`
	// MissLatency is what a cache miss adds to a request. Default 25ms.
	MissLatency time.Duration `yaml:"miss_latency"`
	// BaselineMemoryBytes is the memory a healthy service reports. Default 32 MiB.
	BaselineMemoryBytes int64 `yaml:"baseline_memory_bytes"`
	// LeakStepBytes is how much a leaking service allocates per
	// LeakInterval. Default 16 MiB.
	LeakStepBytes int64 `yaml:"leak_step_bytes"`
	// LeakInterval is how often a leak grows. Default 100ms.
	LeakInterval time.Duration `yaml:"leak_interval"`
	// LeakMaxBytes bounds what one leak holds. Default 128 MiB.
	LeakMaxBytes int64 `yaml:"leak_max_bytes"`
	// MaxReplicas bounds POST /services/{name}/scale. Default 20.
	MaxReplicas int `yaml:"max_replicas"`
	// MaxWatchers bounds the open GET /events streams; more are refused
	// with 503. Default 64.
	MaxWatchers int `yaml:"max_watchers"`
	// EventsHeartbeat is how often an idle GET /events stream carries a
	// comment line, so a watcher can tell a quiet fleet from a dead
	// connection. Default 15s.
	EventsHeartbeat time.Duration `yaml:"events_heartbeat"`
	// TLS serves the control API and every service over TLS (one
	// certificate for all: it must name the hosts they listen on) when
	// cert_file and key_file are set. Env PASSPORT_TLS_CERT_FILE,
	// PASSPORT_TLS_KEY_FILE. Default: plain HTTP.
	TLS tlsx.Server `yaml:"tls"`
	// Caller checks who calls the control API (caller.go): the API key
	// only the proxy holds and the proxy's signed assertion. /healthz,
	// /metrics and /events stay open. Default: no check.
	Caller CallerConfig `yaml:"caller"`
}

// ServiceConfig describes one service.
type ServiceConfig struct {
	// Name is the service name used in every route. Required.
	Name string `yaml:"name"`
	// Tenant owns the service. Required.
	Tenant string `yaml:"tenant"`
	// Listen is the service's own address. Default 127.0.0.1:0.
	Listen string `yaml:"listen"`
	// Version is the version deployed at start. Default v1.
	Version string `yaml:"version"`
	// Replicas at start. Default 2.
	Replicas int `yaml:"replicas"`
}

// DefaultListen is the control API's default address.
const DefaultListen = "127.0.0.1:9000"

// Default returns the default configuration.
func Default() Config {
	return Config{
		Listen: DefaultListen,
		Services: []ServiceConfig{
			{Name: "checkout", Tenant: "acme"},
			{Name: "payments", Tenant: "acme"},
			{Name: "search", Tenant: "globex"},
			{Name: "inventory", Tenant: "globex"},
		},
	}
}

// withDefaults fills zero fields.
func (c Config) withDefaults() Config {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if len(c.Services) == 0 {
		c.Services = Default().Services
	}
	c.Services = slices.Clone(c.Services)
	for i := range c.Services {
		s := &c.Services[i]
		if s.Listen == "" {
			s.Listen = "127.0.0.1:0"
		}
		if s.Version == "" {
			s.Version = "v1"
		}
		if s.Replicas == 0 {
			s.Replicas = 2
		}
	}
	def := func(p *int64, v int64) {
		if *p == 0 {
			*p = v
		}
	}
	if c.CacheKeys == 0 {
		c.CacheKeys = 1000
	}
	if c.MissLatency == 0 {
		c.MissLatency = 25 * time.Millisecond
	}
	def(&c.BaselineMemoryBytes, 32<<20)
	def(&c.LeakStepBytes, 16<<20)
	def(&c.LeakMaxBytes, 128<<20)
	if c.LeakInterval == 0 {
		c.LeakInterval = 100 * time.Millisecond
	}
	if c.MaxReplicas == 0 {
		c.MaxReplicas = 20
	}
	if c.MaxWatchers == 0 {
		c.MaxWatchers = 64
	}
	if c.EventsHeartbeat == 0 {
		c.EventsHeartbeat = 15 * time.Second
	}
	return c
}

// Validate reports every problem in the configuration.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	seen := map[string]bool{}
	for i, s := range c.Services {
		if s.Name == "" {
			errs = append(errs, fmt.Errorf("services[%d]: name is required", i))
		}
		if s.Tenant == "" {
			errs = append(errs, fmt.Errorf("services[%d] %s: tenant is required", i, s.Name))
		}
		if seen[s.Name] {
			errs = append(errs, fmt.Errorf("services[%d]: duplicate name %q", i, s.Name))
		}
		seen[s.Name] = true
		if s.Replicas < 1 || s.Replicas > c.MaxReplicas {
			errs = append(errs, fmt.Errorf("services[%d] %s: replicas %d not in 1..%d", i, s.Name, s.Replicas, c.MaxReplicas))
		}
	}
	if c.CacheKeys < 1 {
		errs = append(errs, errors.New("cache_keys must be positive"))
	}
	if c.LeakStepBytes < 0 || c.LeakMaxBytes < 0 || c.LeakStepBytes > c.LeakMaxBytes {
		errs = append(errs, errors.New("leak_step_bytes must be positive and at most leak_max_bytes"))
	}
	if c.LeakMaxBytes > 1<<30 {
		errs = append(errs, errors.New("leak_max_bytes above 1 GiB: refused to protect the host"))
	}
	if err := c.TLS.Validate("tls"); err != nil {
		errs = append(errs, err)
	}
	if c.MaxWatchers < 1 || c.EventsHeartbeat < 10*time.Millisecond {
		errs = append(errs, errors.New("max_watchers must be positive and events_heartbeat at least 10ms"))
	}
	return errors.Join(errs...)
}

// Deps are the fleet's collaborators.
type Deps struct {
	// Logger is required.
	Logger *slog.Logger
	// Registry receives the fleet's metrics; nil keeps them private.
	Registry *prometheus.Registry
}

// Fleet is the running demo fleet.
type Fleet struct {
	cfg      Config
	log      *slog.Logger
	ln       net.Listener
	tls      *tls.Config // nil: plain HTTP
	caller   *caller     // nil: callers are not checked
	services map[string]*service
	order    []string

	reg     *prometheus.Registry
	faults  *prometheus.CounterVec
	actions *prometheus.CounterVec

	watch watchers // GET /events subscribers

	runOnce  sync.Once
	closeMu  sync.Mutex
	closed   bool
	leakCtx  context.Context
	stopLeak context.CancelFunc
}

// New validates cfg, binds the control API and every service listener (so
// that Addr and Services report real addresses before Run), and returns
// the fleet. Call Run to serve, or Close to release the listeners.
func New(cfg Config, deps Deps) (*Fleet, error) {
	if deps.Logger == nil {
		return nil, errors.New("fleet: logger is required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("fleet config: %w", err)
	}
	cfg = cfg.withDefaults()
	reg := deps.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	f := &Fleet{
		cfg: cfg, log: deps.Logger, services: map[string]*service{}, reg: deps.Registry,
		faults: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_fleet_faults_injected_total", Help: "Faults injected into the demo fleet, by type.",
		}, []string{"type"}),
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_fleet_actions_total", Help: "Control API actions performed, by action and result.",
		}, []string{"action", "result"}),
	}
	if err := reg.Register(f.faults); err != nil {
		return nil, fmt.Errorf("register fleet metrics: %w", err)
	}
	if err := reg.Register(f.actions); err != nil {
		return nil, fmt.Errorf("register fleet metrics: %w", err)
	}
	var err error
	if f.tls, err = cfg.TLS.Config(tlsx.Options{Name: "fleet", Logger: deps.Logger, Metrics: tlsx.NewMetrics(reg)}); err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	if cfg.Caller.enabled() {
		if f.caller, err = newCaller(cfg.Caller); err != nil {
			return nil, fmt.Errorf("fleet: %w", err)
		}
	}
	f.leakCtx, f.stopLeak = context.WithCancel(context.Background())
	for _, sc := range cfg.Services {
		s := newService(sc, &f.cfg, f.tls, f.log)
		s.mu.Lock()
		err := s.startLocked()
		s.mu.Unlock()
		if err != nil {
			f.Close()
			return nil, err
		}
		f.services[sc.Name] = s
		f.order = append(f.order, sc.Name)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("listen control api %s: %w", cfg.Listen, err)
	}
	f.ln = ln
	return f, nil
}

// Addr is the control API's address (host:port).
func (f *Fleet) Addr() string { return f.ln.Addr().String() }

// URL is the control API's base URL.
func (f *Fleet) URL() string { return f.cfg.TLS.Scheme() + "://" + f.Addr() }

// Services reports every service, in configuration order.
func (f *Fleet) Services() []Status {
	out := make([]Status, 0, len(f.order))
	for _, n := range f.order {
		out = append(out, f.services[n].status())
	}
	return out
}

// TenantHeader is the identity header the proxy sets from the verified
// passport (after stripping any the client sent). Behind the proxy, the
// fleet lists only the calling tenant's services; a call without it (the
// fleet's own operators, on its unpublished port) sees them all.
const TenantHeader = "X-Passport-Tenant"

// servicesFor reports the services of tenant, or all when tenant is "".
func (f *Fleet) servicesFor(tenant string) []Status {
	out := make([]Status, 0, len(f.order))
	for _, st := range f.Services() {
		if tenant == "" || st.Tenant == tenant {
			out = append(out, st)
		}
	}
	return out
}

// Service reports one service.
func (f *Fleet) Service(name string) (Status, error) {
	s, ok := f.services[name]
	if !ok {
		return Status{}, fmt.Errorf("%w %q", ErrUnknownService, name)
	}
	return s.status(), nil
}

// HealthURL is the GET /healthz URL of a service, "" when unknown.
func (f *Fleet) HealthURL(name string) string {
	st, err := f.Service(name)
	if err != nil {
		return ""
	}
	return st.HealthURL
}

// Inject applies a fault to a service. One fault per service at a time:
// injecting into a service that already has one is refused (ErrBusy).
func (f *Fleet) Inject(typ, name string) error {
	s, ok := f.services[name]
	if !ok {
		return fmt.Errorf("%w %q", ErrUnknownService, name)
	}
	if !slices.Contains(FaultTypes, typ) {
		return fmt.Errorf("%w %q", ErrUnknownFault, typ)
	}
	s.mu.Lock()
	busy := s.fault
	s.mu.Unlock()
	if busy != "" {
		return fmt.Errorf("%w: %s has %s", ErrBusy, name, busy)
	}
	if err := s.inject(f.leakCtx, typ); err != nil {
		return err
	}
	f.announce(s, CauseInject)
	f.faults.WithLabelValues(typ).Inc()
	f.log.Info("fault injected", "service", name, "type", typ)
	return nil
}

// ErrBusy is returned when a service already has an active fault.
var ErrBusy = errors.New("service already has an active fault")

// ClearFault undoes a service's active fault, if any.
func (f *Fleet) ClearFault(name string) error {
	return f.do(name, CauseClear, (*service).clearFault)
}

// Restart restarts a service: listener back, memory freed.
func (f *Fleet) Restart(name string) error { return f.do(name, CauseRestart, (*service).restart) }

// Rollback restores a service's previous version.
func (f *Fleet) Rollback(name string) error { return f.do(name, CauseRollback, (*service).rollback) }

// Warm fills a service's cache.
func (f *Fleet) Warm(name string) error {
	return f.do(name, CauseWarm, func(s *service) error { s.warm(); return nil })
}

// Deploy rolls out a (working) version.
func (f *Fleet) Deploy(name, version string) error {
	if version == "" || len(version) > 64 {
		return ErrBadVersion
	}
	return f.do(name, CauseDeploy, func(s *service) error { s.deploy(version, false); return nil })
}

// Scale sets a service's replica count.
func (f *Fleet) Scale(name string, n int) error {
	return f.do(name, CauseScale, func(s *service) error { return s.scale(n) })
}

// do runs one operation on a service and announces its new state.
func (f *Fleet) do(name, cause string, fn func(*service) error) error {
	s, ok := f.services[name]
	if !ok {
		return fmt.Errorf("%w %q", ErrUnknownService, name)
	}
	if err := fn(s); err != nil {
		return err
	}
	f.announce(s, cause)
	return nil
}

// Run serves the control API until ctx is done, then shuts everything
// down. It may be called once.
func (f *Fleet) Run(ctx context.Context) error {
	err := errors.New("fleet: Run called twice")
	f.runOnce.Do(func() { err = f.run(ctx) })
	return err
}

func (f *Fleet) run(ctx context.Context) error {
	srv := &http.Server{Handler: f.Handler(), ReadHeaderTimeout: 5 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	f.log.Info("fleet control api listening", "addr", f.Addr())
	for _, st := range f.Services() {
		f.log.Info("fleet service listening", "service", st.Name, "tenant", st.Tenant, "url", st.URL)
	}
	errc := make(chan error, 1)
	go func() { errc <- tlsx.Serve(srv, f.ln, f.tls) }()
	select {
	case err := <-errc:
		f.Close()
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("serve fleet control api: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	err := srv.Shutdown(sctx)
	f.Close()
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("shutdown fleet control api: %w", err)
	}
	return nil
}

// shutdownGrace bounds the control API's drain at shutdown. It is longer
// than the 5 s net/http's Shutdown waits for an accepted connection that
// has not sent its first request yet, so such a connection never turns a
// clean stop into a timeout.
const shutdownGrace = 10 * time.Second

// Close stops every service and the control API listener and frees
// leaked memory. It is safe to call more than once.
func (f *Fleet) Close() {
	f.closeMu.Lock()
	defer f.closeMu.Unlock()
	if f.closed {
		return
	}
	f.closed = true
	f.stopLeak()
	for _, s := range f.services {
		s.mu.Lock()
		s.stopLocked()
		s.stopLeakLocked()
		s.mu.Unlock()
	}
	if f.ln != nil {
		_ = f.ln.Close()
	}
}

// Handler is the control API (see the package doc for routes).
func (f *Fleet) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	if f.reg != nil {
		// Not a control route: the proxy does not front it, Prometheus
		// scrapes the fleet directly.
		mux.Handle("GET /metrics", promhttp.HandlerFor(f.reg, promhttp.HandlerOpts{}))
	}
	// Not a control route either: watchers (the healer) read the fleet's
	// announcements directly, the way they probe health URLs; every
	// change they lead to still goes through the proxy.
	mux.HandleFunc("GET /events", f.serveEvents)
	mux.HandleFunc("GET /services", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"services": f.servicesFor(r.Header.Get(TenantHeader))})
	})
	mux.HandleFunc("GET /services/{name}", func(w http.ResponseWriter, r *http.Request) {
		st, err := f.Service(r.PathValue("name"))
		if err != nil {
			f.fail(w, "service.get", err)
			return
		}
		writeJSON(w, http.StatusOK, st)
	})
	mux.HandleFunc("POST /services/{name}/restart", f.action("service.restart", func(name string, _ *http.Request) error {
		return f.Restart(name)
	}))
	mux.HandleFunc("POST /services/{name}/scale", f.action("service.scale", func(name string, r *http.Request) error {
		var body ScaleRequest
		if err := decodeBody(r, &body); err != nil || body.Replicas == nil {
			return fmt.Errorf("%w: body must be {\"replicas\": n}", errBadRequest)
		}
		return f.Scale(name, *body.Replicas)
	}))
	mux.HandleFunc("POST /deployments/{name}", f.action("deployment.deploy", func(name string, r *http.Request) error {
		var body DeployRequest
		if err := decodeBody(r, &body); err != nil || body.Version == "" {
			return fmt.Errorf("%w: body must be {\"version\": \"v2\"}", errBadRequest)
		}
		return f.Deploy(name, body.Version)
	}))
	mux.HandleFunc("POST /deployments/{name}/rollback", f.action("deployment.rollback", func(name string, _ *http.Request) error {
		return f.Rollback(name)
	}))
	mux.HandleFunc("POST /caches/{name}/warm", f.action("cache.warm", func(name string, _ *http.Request) error {
		return f.Warm(name)
	}))
	mux.HandleFunc("POST /faults/{name}", f.action("chaos.inject", func(name string, r *http.Request) error {
		var body FaultRequest
		if err := decodeBody(r, &body); err != nil || body.Type == "" {
			return fmt.Errorf("%w: body must be {\"type\": \"service_down|bad_deploy|memory_leak|cache_miss\"}", errBadRequest)
		}
		return f.Inject(body.Type, name)
	}))
	mux.HandleFunc("DELETE /faults/{name}", f.action("chaos.clear", func(name string, _ *http.Request) error {
		return f.ClearFault(name)
	}))
	if f.caller == nil {
		return mux
	}
	guarded := f.caller.guard(mux)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/healthz", "/metrics", "/events":
			mux.ServeHTTP(w, r)
		default:
			guarded.ServeHTTP(w, r)
		}
	})
}

var errBadRequest = errors.New("bad request")

// The request bodies of the control API. They are decoded with
// encoding/json, which matches member names case-insensitively: the
// proxy's differential test (proxy/body_test.go) decodes bodies into these
// types to check that the policy sees what the fleet would apply.
type (
	// ScaleRequest is the body of POST /services/{name}/scale.
	ScaleRequest struct {
		Replicas *int `json:"replicas"`
	}
	// DeployRequest is the body of POST /deployments/{name}.
	DeployRequest struct {
		Version string `json:"version"`
	}
	// FaultRequest is the body of POST /faults/{name}.
	FaultRequest struct {
		Type string `json:"type"`
	}
)

func decodeBody(r *http.Request, dst any) error { return DecodeRequest(r.Body, dst) }

// DecodeRequest decodes a request body into dst as the fleet does:
// encoding/json, at most 64 KiB, unknown fields refused.
func DecodeRequest(body io.Reader, dst any) error {
	dec := json.NewDecoder(io.LimitReader(body, 64<<10))
	dec.DisallowUnknownFields()
	return dec.Decode(dst)
}

// action wraps a control operation: it answers the service's status after
// the operation, or an error with a stable code.
func (f *Fleet) action(name string, fn func(string, *http.Request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		svc := r.PathValue("name")
		if err := fn(svc, r); err != nil {
			f.fail(w, name, err)
			return
		}
		f.actions.WithLabelValues(name, "ok").Inc()
		f.log.Info("fleet action", "action", name, "service", svc)
		st, _ := f.Service(svc)
		writeJSON(w, http.StatusOK, st)
	}
}

func (f *Fleet) fail(w http.ResponseWriter, action string, err error) {
	code, msg := http.StatusInternalServerError, "internal error"
	switch {
	case errors.Is(err, ErrUnknownService):
		code, msg = http.StatusNotFound, "unknown service"
	case errors.Is(err, ErrUnknownFault):
		code, msg = http.StatusBadRequest, "unknown fault type: want service_down, bad_deploy, memory_leak or cache_miss"
	case errors.Is(err, errBadRequest), errors.Is(err, ErrBadReplicas), errors.Is(err, ErrBadVersion):
		code, msg = http.StatusBadRequest, err.Error()
	case errors.Is(err, ErrBusy), errors.Is(err, ErrNoPrevious):
		code, msg = http.StatusConflict, err.Error()
	}
	f.actions.WithLabelValues(action, "error").Inc()
	if code == http.StatusInternalServerError {
		f.log.Error("fleet action failed", "action", action, "err", err)
	}
	writeJSON(w, code, map[string]string{"error": msg})
}
