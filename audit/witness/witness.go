// Package witness is `passport witness`: an HTTP server that keeps audit
// writers' signed statements (the heads of their checkpoints) in its own
// directory, outside Redis, so that `passport audit verify --witness URL`
// can tell what Redis no longer shows: a deleted stream, a cut tail, a
// rewritten head, a restored snapshot.
//
// Who may write: anyone who can sign as a writer, and no one else. Each
// statement is signed with the writer's checkpoint key; the witness pins
// the first key a writer signs with (or takes the keys from a trusted-keys
// file, and then refuses every other writer), refuses a statement that is
// not later than the writer's last one (a replay), that takes a stream's
// sealed seq back (a rollback) or seals a seq with another hash (a fork).
// A bearer token, when configured, keeps strangers from opening new writer
// logs at all; MaxWriters bounds how many they could.
package witness

import (
	"context"
	"crypto/ed25519"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/time/rate"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/problem"
	"github.com/agentpassport/passport/internal/tlsx"
)

// DefaultListen is the address `passport witness` listens on by default.
const DefaultListen = "127.0.0.1:9190"

// Config is the witness server's configuration (YAML for --config).
type Config struct {
	// Listen is the address of the API, /metrics and /healthz. Default
	// 127.0.0.1:9190.
	Listen string `yaml:"listen"`
	// Dir holds the writers' logs. Required.
	Dir string `yaml:"dir"`
	// TrustedKeysFile, when set, lists the only writers accepted and their
	// keys ("<writer-id> <base64 Ed25519 public key>" per line, as printed
	// by `passport audit writers` or `passport audit keygen`). Default:
	// the first key a writer signs with is pinned.
	TrustedKeysFile string `yaml:"trusted_keys_file"`
	// Token, when set, must be presented as a bearer token on every
	// request (PASSPORT_WITNESS_TOKEN, at least 16 characters). Default
	// none: signatures alone decide, and reads are open.
	Token string `yaml:"-"`
	// RotateBytes starts a writer's next log file at this size. Default
	// 16 MiB.
	RotateBytes int64 `yaml:"rotate_bytes"`
	// MaxWriters bounds the writer logs the directory may hold. Default
	// 100000.
	MaxWriters int `yaml:"max_writers"`
	// TLS serves the witness over TLS when cert_file and key_file are set
	// (env PASSPORT_TLS_CERT_FILE, PASSPORT_TLS_KEY_FILE). Default: plain
	// HTTP.
	TLS tlsx.Server `yaml:"tls"`
}

// Default returns the configuration with its defaults.
func Default() Config {
	return Config{Listen: DefaultListen, RotateBytes: 16 << 20, MaxWriters: 100000}
}

// Validate reports every problem of the configuration.
func (c Config) Validate() error {
	var errs []error
	if c.Listen == "" {
		errs = append(errs, errors.New("listen: required"))
	}
	if c.Dir == "" {
		errs = append(errs, errors.New("dir: required (--dir)"))
	}
	if c.Token != "" && len(c.Token) < 16 {
		errs = append(errs, errors.New("token: at least 16 characters"))
	}
	if c.RotateBytes < 0 || c.MaxWriters < 0 {
		errs = append(errs, errors.New("rotate_bytes and max_writers must not be negative"))
	}
	if err := c.TLS.Validate("tls"); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Deps are what the server needs from its caller.
type Deps struct {
	Logger   *slog.Logger
	Registry *prometheus.Registry // /metrics; may be nil (a private one)
	Clock    func() time.Time     // default time.Now
}

// Server is the witness.
type Server struct {
	cfg     Config
	log     *slog.Logger
	reg     *prometheus.Registry
	store   *audit.DirWitness
	results *prometheus.CounterVec
	appendD prometheus.Histogram
	writers prometheus.Gauge
	logRate map[string]*rate.Sometimes
	tls     *tls.Config // nil: plain HTTP
}

// New checks cfg and returns the server. It starts nothing and creates
// nothing on disk until the first statement.
func New(cfg Config, deps Deps) (*Server, error) {
	if deps.Logger == nil {
		return nil, errors.New("witness: nil logger")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("witness config: %w", err)
	}
	var trusted map[string]ed25519.PublicKey
	if cfg.TrustedKeysFile != "" {
		f, err := os.Open(cfg.TrustedKeysFile)
		if err != nil {
			return nil, fmt.Errorf("witness trusted keys: %w", err)
		}
		trusted, err = audit.ParseTrustedKeys(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("witness trusted keys %s: %w", cfg.TrustedKeysFile, err)
		}
	}
	store, err := audit.NewDirWitness(cfg.Dir, audit.DirWitnessOptions{RotateBytes: cfg.RotateBytes,
		TrustedKeys: trusted, MaxWriters: cfg.MaxWriters, Clock: deps.Clock})
	if err != nil {
		return nil, err
	}
	reg := deps.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	s := &Server{cfg: cfg, log: deps.Logger.With("component", "witness"), reg: reg, store: store,
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_witness_statements_total",
			Help: "Statements received, by result: stored, or the refusal code (invalid, unauthorized, unknown_writer, key_mismatch, stale, rollback, fork, too_many_writers), or error.",
		}, []string{"result"}),
		appendD: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "passport_witness_append_duration_seconds",
			Help:    "Time to check and durably append one statement (fsync included).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		writers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "passport_witness_writers",
			Help: "Writer logs in the directory, counted at the last listing.",
		}),
		logRate: map[string]*rate.Sometimes{},
	}
	for _, c := range []prometheus.Collector{s.results, s.appendD, s.writers} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("witness metrics: %w", err)
		}
	}
	if s.tls, err = cfg.TLS.Config(tlsx.Options{Name: "witness", Logger: s.log, Metrics: tlsx.NewMetrics(reg)}); err != nil {
		return nil, fmt.Errorf("witness: %w", err)
	}
	for _, code := range []string{audit.RefusedInvalid, audit.RefusedUnauthorized, audit.RefusedUnknown, audit.RefusedKey,
		audit.RefusedStale, audit.RefusedRollback, audit.RefusedFork, audit.RefusedFull, "error"} {
		s.logRate[code] = &rate.Sometimes{Interval: time.Second}
	}
	return s, nil
}

// Store is the directory store behind the server.
func (s *Server) Store() *audit.DirWitness { return s.store }

// Handler serves the API, /metrics and /healthz.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/statements", s.auth(s.postStatement))
	mux.HandleFunc("GET /v1/writers", s.auth(s.listWriters))
	mux.HandleFunc("GET /v1/writers/{writer}/log", s.auth(s.writerLog))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	return mux
}

// Run listens on cfg.Listen and serves until ctx is done.
func (s *Server) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("witness listen: %w", err)
	}
	return s.Serve(ctx, ln)
}

// shutdownGrace is how long Serve lets requests in flight finish once ctx
// is done; then it cuts what is still open.
var shutdownGrace = 5 * time.Second

// Serve serves on ln until ctx is done, then shuts down within
// shutdownGrace and returns nil.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second,
		IdleTimeout: 2 * time.Minute, BaseContext: func(net.Listener) context.Context { return ctx }}
	s.log.Info("witness listening", "addr", ln.Addr().String(), "tls", s.tls != nil, "dir", s.cfg.Dir, "trusted_keys", s.cfg.TrustedKeysFile != "", "token", s.cfg.Token != "")
	errc := make(chan error, 1)
	go func() { errc <- tlsx.Serve(srv, ln, s.tls) }()
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("witness serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		// The grace period is over: what is still open is cut; the stop
		// itself succeeded.
		s.log.Warn("witness shutdown: grace period over; closing the connections still open",
			"grace", shutdownGrace, "err", err)
		_ = srv.Close()
	}
	return nil
}

// auth checks the bearer token when one is configured.
func (s *Server) auth(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.Token != "" {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(s.cfg.Token)) != 1 {
				s.count(audit.RefusedUnauthorized, "", "missing or wrong bearer token")
				w.Header().Set("WWW-Authenticate", `Bearer realm="passport-witness"`)
				problem.Answer(w, http.StatusUnauthorized, audit.RefusedUnauthorized, "a bearer token is required")
				return
			}
		}
		next(w, r)
	}
}

func (s *Server) postStatement(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, audit.MaxStatementBytes))
	if err != nil {
		s.count(audit.RefusedInvalid, "", "body too large or unreadable")
		problem.Answer(w, http.StatusRequestEntityTooLarge, audit.RefusedInvalid, fmt.Sprintf("a statement is at most %d bytes", audit.MaxStatementBytes))
		return
	}
	start := time.Now()
	err = s.store.Witness(r.Context(), body)
	s.appendD.Observe(time.Since(start).Seconds())
	var ref *audit.WitnessRefusal
	switch {
	case err == nil:
		s.results.WithLabelValues("stored").Inc()
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"status":"stored"}`+"\n")
	case errors.As(err, &ref):
		s.count(ref.Code, writerOf(body), ref.Detail)
		status := http.StatusConflict
		switch ref.Code {
		case audit.RefusedInvalid:
			status = http.StatusBadRequest
		case audit.RefusedKey, audit.RefusedUnknown, audit.RefusedFull:
			status = http.StatusForbidden
		}
		problem.Answer(w, status, ref.Code, ref.Detail)
	default:
		s.count("error", writerOf(body), err.Error())
		problem.Answer(w, http.StatusInternalServerError, "error", "the statement could not be stored")
	}
}

// writerOf names the writer of a refused statement for the log, bounded.
func writerOf(body []byte) string {
	var st struct {
		Writer string `json:"writer"`
	}
	_ = json.Unmarshal(body, &st)
	if len(st.Writer) > 128 {
		st.Writer = st.Writer[:128]
	}
	return st.Writer
}

// count counts a result and logs a refusal at most once a second per code:
// a stranger's flood costs a counter, not the log.
func (s *Server) count(code, writer, detail string) {
	s.results.WithLabelValues(code).Inc()
	lvl := slog.LevelWarn
	if code == audit.RefusedRollback || code == audit.RefusedFork || code == "error" {
		lvl = slog.LevelError // a writer's chain went back or forked, or the disk fails
	}
	s.logRate[code].Do(func() {
		s.log.Log(context.Background(), lvl, "witness refused a statement", "code", code, "writer", writer, "detail", detail)
	})
}

func (s *Server) listWriters(w http.ResponseWriter, r *http.Request) {
	ws, err := s.store.Writers(r.Context())
	if errors.Is(err, os.ErrNotExist) {
		ws, err = []string{}, nil
	}
	if err != nil {
		s.log.Error("witness list writers", "err", err)
		problem.Answer(w, http.StatusInternalServerError, "error", "cannot list writers")
		return
	}
	if ws == nil {
		ws = []string{}
	}
	s.writers.Set(float64(len(ws)))
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string][]string{"writers": ws})
}

func (s *Server) writerLog(w http.ResponseWriter, r *http.Request) {
	writer := r.PathValue("writer")
	w.Header().Set("Content-Type", "application/x-ndjson")
	started := false
	err := s.store.ReadLog(r.Context(), writer, func(line []byte) error {
		started = true
		_, err := w.Write(append(line, '\n'))
		return err
	})
	if err != nil && !started {
		s.log.Warn("witness read log", "writer", writer, "err", err)
		problem.Answer(w, http.StatusNotFound, "not_found", "no readable log for this writer")
	}
	// An error after the first line ends the body early: the client sees
	// a log cut short (a line without its newline, or a broken chain).
}
