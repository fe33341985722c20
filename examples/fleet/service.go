package fleet

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/agentpassport/passport/internal/tlsx"
)

// Fault types the fleet can suffer. Each one is real: it changes what the
// service's listener, handler or memory actually do.
const (
	FaultServiceDown = "service_down" // the listener is closed: connection refused
	FaultBadDeploy   = "bad_deploy"   // a version that answers 5xx is deployed
	FaultMemoryLeak  = "memory_leak"  // the process holds ever more memory, up to a cap
	FaultCacheMiss   = "cache_miss"   // the cache is emptied: hit ratio falls, latency rises
)

// FaultTypes lists every fault type.
var FaultTypes = []string{FaultServiceDown, FaultBadDeploy, FaultMemoryLeak, FaultCacheMiss}

// Errors returned by the fleet's operations.
var (
	ErrUnknownService = errors.New("unknown service")
	ErrUnknownFault   = errors.New("unknown fault type")
	ErrNoPrevious     = errors.New("no previous version to roll back to")
	ErrBadReplicas    = errors.New("replicas out of range")
	ErrBadVersion     = errors.New("invalid version")
)

// Health is the JSON a service's GET /healthz answers.
type Health struct {
	Name          string  `json:"name"`
	Tenant        string  `json:"tenant"`
	Status        string  `json:"status"` // "ok" or "failing"
	Version       string  `json:"version"`
	ErrorRate     float64 `json:"error_rate"`      // 5xx share of the recent requests, 0–1
	MemoryBytes   int64   `json:"memory_bytes"`    // baseline plus memory held by a leak
	CacheHitRatio float64 `json:"cache_hit_ratio"` // expected hit ratio: cached keys / key space
	Replicas      int     `json:"replicas"`
	UptimeSeconds float64 `json:"uptime_seconds"`
}

// Status is what the control API says about one service.
type Status struct {
	Health
	Up        bool   `json:"up"`              // false while the listener is closed
	URL       string `json:"url"`             // base URL of the service itself
	HealthURL string `json:"health_url"`      // URL of its GET /healthz
	Fault     string `json:"fault,omitempty"` // the active injected fault, if any
	// InjectedAt is when the active fault hit the service (set with Fault):
	// what time to resolve is measured from.
	InjectedAt *time.Time `json:"injected_at,omitempty"`
	Previous   string     `json:"previous_version,omitempty"`
}

// errWindow is how many recent requests the error rate is computed over.
const errWindow = 50

// service is one simulated service: a real HTTP server on its own port.
type service struct {
	name, tenant string
	cfg          *Config
	tls          *tls.Config // nil: plain HTTP
	log          *slog.Logger

	mu        sync.Mutex
	addr      string // host:port, fixed after the first bind
	ln        net.Listener
	srv       *http.Server
	serveDone chan struct{}
	started   time.Time
	version   string
	broken    bool     // the deployed version answers 5xx
	history   []string // previous versions, most recent last
	replicas  int
	fault     string
	faultAt   time.Time // when fault was injected
	leak      [][]byte
	leakStop  context.CancelFunc
	cache     map[int]struct{}
	results   [errWindow]bool // true = 5xx
	nResults  int
	nextRes   int
	rng       *rand.Rand
}

func newService(sc ServiceConfig, cfg *Config, tc *tls.Config, log *slog.Logger) *service {
	return &service{
		name: sc.Name, tenant: sc.Tenant, cfg: cfg, tls: tc, log: log.With("service", sc.Name),
		addr: sc.Listen, version: sc.Version, replicas: sc.Replicas,
		cache: fullCache(cfg.CacheKeys),
		rng:   rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(len(sc.Name)))),
	}
}

func fullCache(n int) map[int]struct{} {
	m := make(map[int]struct{}, n)
	for i := range n {
		m[i] = struct{}{}
	}
	return m
}

// start binds the listener (on the remembered address after the first
// bind, so the port survives restarts) and serves. Caller holds mu.
func (s *service) startLocked() error {
	if s.ln != nil {
		return nil
	}
	var ln net.Listener
	var err error
	// A restart rebinds the same port; the old socket may take a moment to
	// be released, so try a few times before giving up.
	for i := range 20 {
		ln, err = net.Listen("tcp", s.addr)
		if err == nil {
			break
		}
		time.Sleep(time.Duration(i+1) * 5 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("listen %s for %s: %w", s.addr, s.name, err)
	}
	s.addr = ln.Addr().String()
	s.ln = ln
	s.started = time.Now()
	s.srv = &http.Server{Handler: s.handler(), ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	s.serveDone = done
	srv := s.srv
	go func() {
		defer close(done)
		if err := tlsx.Serve(srv, ln, s.tls); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("service serve", "err", err)
		}
	}()
	return nil
}

// stopLocked closes the listener and every open connection, so new
// connections are refused. Caller holds mu.
func (s *service) stopLocked() {
	if s.srv == nil {
		return
	}
	_ = s.srv.Close() // Close, not Shutdown: a crashed process drops connections
	<-s.serveDone
	s.srv, s.ln, s.serveDone = nil, nil, nil
}

func (s *service) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", s.serveHealth)
	mux.HandleFunc("GET /{$}", s.serveRoot)
	return mux
}

// serveRoot answers like a real service: it looks a key up in the cache
// (a miss costs MissLatency and fills the key) and fails with 500 when the
// deployed version is broken.
func (s *service) serveRoot(w http.ResponseWriter, r *http.Request) {
	code, body, delay := s.work(r.URL.Query().Get("key"))
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	writeJSON(w, code, body)
}

func (s *service) work(key string) (int, any, time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var delay time.Duration
	k, err := strconv.Atoi(key)
	if err != nil || k < 0 || k >= s.cfg.CacheKeys {
		k = s.rng.IntN(max(1, s.cfg.CacheKeys))
	}
	hit := true
	if _, ok := s.cache[k]; !ok {
		hit = false
		delay = s.cfg.MissLatency
		s.cache[k] = struct{}{}
	}
	if s.broken {
		s.recordLocked(true)
		return http.StatusInternalServerError, map[string]any{"error": "internal error", "service": s.name, "version": s.version}, delay
	}
	s.recordLocked(false)
	return http.StatusOK, map[string]any{"service": s.name, "version": s.version, "key": k, "cache": map[bool]string{true: "hit", false: "miss"}[hit]}, delay
}

func (s *service) recordLocked(failed bool) {
	s.results[s.nextRes] = failed
	s.nextRes = (s.nextRes + 1) % errWindow
	s.nResults = min(s.nResults+1, errWindow)
}

func (s *service) errorRateLocked() float64 {
	if s.nResults == 0 {
		return 0
	}
	n := 0
	for i := range s.nResults {
		if s.results[i] {
			n++
		}
	}
	return float64(n) / float64(s.nResults)
}

// serveHealth runs a readiness self-check through the request path (so a
// broken version fails it, as a real readiness probe would) and answers
// the service's vital signs; 503 when the self-check fails.
func (s *service) serveHealth(w http.ResponseWriter, r *http.Request) {
	code, _, _ := s.work("0") // key 0 stays cached unless the cache was emptied
	h := s.health()
	if code >= 500 {
		h.Status = "failing"
		writeJSON(w, http.StatusServiceUnavailable, h)
		return
	}
	writeJSON(w, http.StatusOK, h)
}

func (s *service) health() Health {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.healthLocked()
}

func (s *service) healthLocked() Health {
	var held int64
	for _, b := range s.leak {
		held += int64(len(b))
	}
	ratio := 1.0
	if s.cfg.CacheKeys > 0 {
		ratio = float64(len(s.cache)) / float64(s.cfg.CacheKeys)
	}
	st := "ok"
	if s.broken {
		st = "failing"
	}
	up := 0.0
	if s.ln != nil {
		up = time.Since(s.started).Seconds()
	}
	return Health{
		Name: s.name, Tenant: s.tenant, Status: st, Version: s.version,
		ErrorRate: s.errorRateLocked(), MemoryBytes: s.cfg.BaselineMemoryBytes + held,
		CacheHitRatio: ratio, Replicas: s.replicas, UptimeSeconds: up,
	}
}

func (s *service) status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.healthLocked()
	base := s.cfg.TLS.Scheme() + "://" + s.addr
	st := Status{Health: h, Up: s.ln != nil, URL: base, HealthURL: base + "/healthz", Fault: s.fault}
	if s.fault != "" {
		at := s.faultAt
		st.InjectedAt = &at
	}
	if !st.Up {
		st.Status = "down"
	}
	if n := len(s.history); n > 0 {
		st.Previous = s.history[n-1]
	}
	return st
}

// restart stops and starts the process: the listener comes back, leaked
// memory is freed and the request statistics start afresh. The cache is a
// separate tier (like memcached) and survives.
func (s *service) restart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
	s.stopLeakLocked()
	s.nResults, s.nextRes = 0, 0
	if s.fault == FaultServiceDown || s.fault == FaultMemoryLeak {
		s.fault = ""
	}
	return s.startLocked()
}

func (s *service) stopLeakLocked() {
	if s.leakStop != nil {
		s.leakStop()
		s.leakStop = nil
	}
	s.leak = nil
}

func (s *service) scale(n int) error {
	if n < 1 || n > s.cfg.MaxReplicas {
		return fmt.Errorf("%w: %d not in 1..%d", ErrBadReplicas, n, s.cfg.MaxReplicas)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.replicas = n
	return nil
}

// deploy rolls a new version out; broken marks a version that answers 5xx.
func (s *service) deploy(version string, broken bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deployLocked(version, broken)
}

func (s *service) deployLocked(version string, broken bool) {
	s.history = append(s.history, s.version)
	if len(s.history) > 20 {
		s.history = s.history[1:]
	}
	s.version, s.broken = version, broken
	s.nResults, s.nextRes = 0, 0
}

// rollback restores the previous version. Only good versions are ever
// kept in the history, so a rollback always lands on a working one.
func (s *service) rollback() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.history)
	if n == 0 {
		return ErrNoPrevious
	}
	s.version, s.history = s.history[n-1], s.history[:n-1]
	s.broken = false
	s.nResults, s.nextRes = 0, 0
	if s.fault == FaultBadDeploy {
		s.fault = ""
	}
	return nil
}

func (s *service) warm() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cache = fullCache(s.cfg.CacheKeys)
	if s.fault == FaultCacheMiss {
		s.fault = ""
	}
}

// inject applies a fault for real.
func (s *service) inject(ctx context.Context, typ string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	at := time.Now().UTC() // the moment the fault hits: taken before it is applied
	switch typ {
	case FaultServiceDown:
		s.stopLocked()
		s.stopLeakLocked()
	case FaultBadDeploy:
		s.deployLocked(nextVersion(s.version), true)
	case FaultMemoryLeak:
		s.startLeakLocked(ctx)
	case FaultCacheMiss:
		clear(s.cache)
	default:
		return fmt.Errorf("%w %q", ErrUnknownFault, typ)
	}
	s.fault, s.faultAt = typ, at
	return nil
}

// clearFault undoes the active fault the way an operator would.
func (s *service) clearFault() error {
	s.mu.Lock()
	f := s.fault
	s.mu.Unlock()
	switch f {
	case FaultServiceDown, FaultMemoryLeak:
		return s.restart()
	case FaultBadDeploy:
		return s.rollback()
	case FaultCacheMiss:
		s.warm()
	}
	return nil
}

// startLeakLocked makes the service hold LeakStep more bytes every
// LeakInterval until it holds LeakMax. The pages are written so the memory
// is really resident, not just reserved.
func (s *service) startLeakLocked(parent context.Context) {
	if s.leakStop != nil {
		return
	}
	ctx, cancel := context.WithCancel(parent)
	s.leakStop = cancel
	step, maxBytes, every := s.cfg.LeakStepBytes, s.cfg.LeakMaxBytes, s.cfg.LeakInterval
	grow := func() bool {
		// Allocate outside the lock so that a slow allocation never
		// stalls the service's handlers (the health check must still
		// answer, and report the memory, while the process leaks).
		s.mu.Lock()
		var held int64
		for _, b := range s.leak {
			held += int64(len(b))
		}
		s.mu.Unlock()
		n := min(step, maxBytes-held)
		if n <= 0 {
			return ctx.Err() == nil
		}
		b := make([]byte, n)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1 // touch every page: resident, not just reserved
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if ctx.Err() != nil {
			return false // restarted meanwhile: the memory is freed
		}
		s.leak = append(s.leak, b)
		return true
	}
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			if !grow() {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// nextVersion turns "v1" into "v2"; anything else gets "-next" appended.
func nextVersion(v string) string {
	if n, err := strconv.Atoi(strings.TrimPrefix(v, "v")); err == nil && strings.HasPrefix(v, "v") {
		return "v" + strconv.Itoa(n+1)
	}
	return v + "-next"
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
