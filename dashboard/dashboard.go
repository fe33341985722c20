// Package dashboard serves the Agent Passport dashboard: one embedded web
// page (plain HTML, CSS and JavaScript; no CDN, no build step) that watches
// one tenant live through the feed (feed) and lets an operator block
// and unblock agents, fire chaos events and approve or deny calls that
// wait for a person, plus the small JSON API the page calls. Every API call carries the operator token in an
// Authorization header; the page never puts it in a URL.
package dashboard

import (
	"context"
	"crypto/tls"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/agentpassport/passport/feed"
	"github.com/agentpassport/passport/internal/run"
	"github.com/agentpassport/passport/internal/tlsx"
)

// Defaults.
const (
	DefaultListen          = "127.0.0.1:8090"
	DefaultAuthorityURL    = "http://127.0.0.1:8081"
	DefaultShutdownTimeout = 10 * time.Second // > net/http's 5 s wait for a connection that sent nothing yet
)

// ChaosTypes are the fault types the page offers, in the order shown.
var ChaosTypes = []string{"service_down", "bad_deploy", "memory_leak", "cache_miss"}

// Config configures the dashboard. Zero fields take the documented defaults.
type Config struct {
	// Listen is the address to serve on. Default 127.0.0.1:8090.
	Listen string `yaml:"listen"`
	// AllowedOrigins are extra browser origins allowed to open the feed
	// (the dashboard's own origin always is). Default none.
	AllowedOrigins []string `yaml:"allowed_origins"`
	// Tenants are the tenants a global operator token may pick on the page.
	// A tenant-scoped token sees its own tenants. When set, tenants not
	// listed are refused everywhere. Default none (global tokens then type
	// a tenant name).
	Tenants []string `yaml:"tenants"`
	// AuthorityURL is the passport authority the page links to and the
	// Actions adapter talks to. Default http://127.0.0.1:8081.
	AuthorityURL string `yaml:"authority_url"`
	// PublicAuthorityURL, when set, is the authority link the page shows
	// instead of AuthorityURL: the address a browser can reach when the
	// dashboard reaches the authority by an internal name (compose,
	// Kubernetes). Default: AuthorityURL.
	PublicAuthorityURL string `yaml:"public_authority_url"`
	// ShutdownTimeout bounds the graceful shutdown. Default 10s.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// Feed tunes the live feed (see feed.Config).
	Feed feed.Config `yaml:"feed"`
	// TLS serves the page, its API and the feed over TLS (the feed as
	// wss://) when cert_file and key_file are set (env
	// PASSPORT_TLS_CERT_FILE, PASSPORT_TLS_KEY_FILE). Default: plain HTTP.
	TLS tlsx.Server `yaml:"tls"`
}

// DefaultConfig returns the configuration with every default filled in.
func DefaultConfig() Config {
	return Config{Listen: DefaultListen, AuthorityURL: DefaultAuthorityURL, ShutdownTimeout: DefaultShutdownTimeout}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Listen == "" {
		c.Listen = d.Listen
	}
	if c.AuthorityURL == "" {
		c.AuthorityURL = d.AuthorityURL
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = d.ShutdownTimeout
	}
	return c
}

var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// Validate reports every problem with the configuration.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("dashboard.listen: %w", err))
	}
	if u := c.PublicAuthorityURL; u != "" {
		if pu, err := url.Parse(u); err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			errs = append(errs, fmt.Errorf("dashboard.public_authority_url %q: want an http(s) URL", u))
		}
	}
	for _, t := range c.Tenants {
		if !namePattern.MatchString(t) {
			errs = append(errs, fmt.Errorf("dashboard.tenants: bad tenant name %q", t))
		}
	}
	f := c.Feed
	f.AllowedOrigins = append(slices.Clone(f.AllowedOrigins), c.AllowedOrigins...)
	if err := f.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.TLS.Validate("dashboard.tls"); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Agent is one agent as the page shows it (the admin API's JSON).
type Agent struct {
	ID         string  `json:"id"`
	Name       string  `json:"name"`
	Type       string  `json:"type"`
	TrustLevel string  `json:"trust_level"`
	Reputation float64 `json:"reputation"`
	Blocked    bool    `json:"blocked"`
}

// ErrNotFound is returned by Actions for an unknown agent or target.
var ErrNotFound = errors.New("not found")

// Actions are what the page's buttons do. The host adapts the authority's
// admin API and the chaos simulator to it.
type Actions interface {
	ListAgents(ctx context.Context, tenant string) ([]Agent, error)
	Block(ctx context.Context, tenant, agentID, reason string) error
	Unblock(ctx context.Context, tenant, agentID string) error
	// FireChaos injects faultType (one of ChaosTypes) at target.
	FireChaos(ctx context.Context, tenant, faultType, target string) error
	// Targets lists the services of tenant that chaos may hit.
	Targets(ctx context.Context, tenant string) ([]string, error)
}

// Approval is one pending approval as the page shows it: the exact call
// a person is asked to let through.
type Approval struct {
	ID      string `json:"id"`
	Agent   string `json:"agent"` // the agent's name (or id)
	AgentID string `json:"agent_id,omitempty"`
	Method  string `json:"method"`
	Path    string `json:"path"`
	Query   string `json:"query,omitempty"`
	// Body is the start of the call's body as text, with control and
	// invisible characters escaped (approval.Visible); base64 when
	// BodyEncoding says so.
	Body          string `json:"body,omitempty"`
	BodyEncoding  string `json:"body_encoding,omitempty"`
	BodyBytes     int    `json:"body_bytes,omitempty"`
	BodyTruncated bool   `json:"body_truncated,omitempty"`
	BodySHA256    string `json:"body_sha256,omitempty"`
	Action        string `json:"action,omitempty"`
	Resource      string `json:"resource,omitempty"`
	// Reasons are the refusal's codes; Reason is the policy's words.
	Reasons []string `json:"reasons"`
	Reason  string   `json:"reason,omitempty"`
	// Approvers who approved so far, of RequiredApprovers.
	Approvers         []string  `json:"approvers,omitempty"`
	RequiredApprovers int       `json:"required_approvers,omitempty"`
	State             string    `json:"state,omitempty"`
	ExpiresAt         time.Time `json:"expires_at"`
}

// Approvals is implemented by Actions that offer approvals. When the
// host's Actions implement it, the page shows a panel of pending
// approvals with Approve and Deny buttons; otherwise the panel stays
// hidden.
type Approvals interface {
	PendingApprovals(ctx context.Context, tenant string) ([]Approval, error)
	// DecideApproval approves (approve true) or denies approval id of
	// tenant with the operator's comment; via names the operator
	// ("dashboard:<principal id>"). It answers the approval after the
	// decision, ErrNotFound for an unknown one, or a *Refusal with the
	// authority's code (approval_denied, approval_used, ...).
	DecideApproval(ctx context.Context, tenant, id string, approve bool, comment, via string) (Approval, error)
}

// Deps are what the dashboard needs from its host.
type Deps struct {
	Redis  redis.UniversalClient
	Logger *slog.Logger
	// Registry receives the metrics; nil means a private registry.
	Registry *prometheus.Registry
	// Metrics, when set, is served at /metrics (the registry and whatever
	// the host runs beside the dashboard); nil serves Registry.
	Metrics prometheus.Gatherer
	// Auth maps operator tokens (global or tenant-scoped admin tokens) to
	// the tenants they may see and act on.
	Auth    feed.Auth
	Actions Actions
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Server is the dashboard: the page, its API and the feed.
type Server struct {
	cfg          Config
	log          *slog.Logger
	actions      Actions
	approvals    Approvals // nil: not offered
	now          func() time.Time
	hub          *feed.Hub
	handler      http.Handler
	actionsTotal *prometheus.CounterVec
	tls          *tls.Config // nil: plain HTTP
	metrics      prometheus.Gatherer
}

//go:embed web
var webFS embed.FS

// New returns a dashboard server.
func New(cfg Config, deps Deps) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if deps.Logger == nil || deps.Actions == nil {
		return nil, errors.New("dashboard: Logger and Actions are required")
	}
	reg := deps.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	fc := cfg.Feed
	fc.AllowedOrigins = append(slices.Clone(fc.AllowedOrigins), cfg.AllowedOrigins...)
	hub, err := feed.New(fc, feed.Deps{Redis: deps.Redis, Logger: deps.Logger, Registry: reg, Auth: deps.Auth})
	if err != nil {
		return nil, fmt.Errorf("dashboard feed: %w", err)
	}
	now := deps.Now
	if now == nil {
		now = time.Now
	}
	approvals, _ := deps.Actions.(Approvals)
	s := &Server{
		cfg: cfg, log: deps.Logger, actions: deps.Actions, approvals: approvals, now: now, hub: hub,
		actionsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_dashboard_actions_total", Help: "Operator actions from the dashboard, by action and result.",
		}, []string{"action", "result"}),
	}
	if err := reg.Register(s.actionsTotal); err != nil {
		return nil, fmt.Errorf("register dashboard metrics: %w", err)
	}
	if s.tls, err = cfg.TLS.Config(tlsx.Options{Name: "dashboard", Logger: deps.Logger, Metrics: tlsx.NewMetrics(reg)}); err != nil {
		return nil, fmt.Errorf("dashboard: %w", err)
	}
	s.metrics = deps.Metrics
	if s.metrics == nil {
		s.metrics = reg
	}
	s.handler = s.routes()
	return s, nil
}

// TLSConfig is the listener's TLS configuration, nil for plain HTTP: for
// hosts that serve Handler on a server of their own (tlsx.Serve).
func (s *Server) TLSConfig() *tls.Config { return s.tls }

// Feed returns the live feed hub, to mount on other listeners too (it
// serves feed.Path and feed.TicketPath). Run runs it.
func (s *Server) Feed() *feed.Hub { return s.hub }

// Handler returns the dashboard's HTTP handler: the page, /api/..., the
// feed, /healthz and /metrics. The feed answers only while Run or Serve runs.
func (s *Server) Handler() http.Handler { return s.handler }

// Run listens on Config.Listen and serves until ctx is done.
func (s *Server) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("dashboard listen: %w", err)
	}
	return s.Serve(ctx, ln)
}

// Serve serves on ln until ctx is done, then shuts down gracefully (open
// feed connections are closed with 1001 so that pages reconnect); what is
// still open after ShutdownTimeout is cut, and Serve returns nil.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(run.Guarded(ctx, "dashboard.feed", func() error { return s.hub.Run(gctx) }))
	g.Go(func() error {
		s.log.InfoContext(gctx, "dashboard listening", "addr", ln.Addr().String(), "tls", s.tls != nil)
		if err := tlsx.Serve(srv, ln, s.tls); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("dashboard serve: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(gctx), s.cfg.ShutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			// The grace period is over: what is still open is cut, as a
			// drain does; the stop itself succeeded.
			s.log.Warn("dashboard shutdown: grace period over; closing the connections still open",
				"grace", s.cfg.ShutdownTimeout, "err", err)
			_ = srv.Close()
		}
		return nil
	})
	return g.Wait()
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	web, _ := fs.Sub(webFS, "web")
	files := http.FileServerFS(web)
	mux.Handle("GET /", files)
	mux.Handle("GET "+feed.Path, s.hub)
	mux.Handle("POST "+feed.TicketPath, s.hub)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	// Prometheus scrapes every component on its own port.
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /api/session", s.session)
	mux.HandleFunc("GET /api/tenants/{tenant}/agents", s.tenantAPI(s.listAgents))
	mux.HandleFunc("POST /api/tenants/{tenant}/agents/{id}/block", s.tenantAPI(s.block))
	mux.HandleFunc("POST /api/tenants/{tenant}/agents/{id}/unblock", s.tenantAPI(s.unblock))
	mux.HandleFunc("GET /api/tenants/{tenant}/targets", s.tenantAPI(s.targets))
	mux.HandleFunc("GET /api/tenants/{tenant}/approvals", s.tenantAPI(s.listApprovals))
	mux.HandleFunc("POST /api/tenants/{tenant}/approvals/{id}/approve", s.tenantAPI(s.decideApproval(true)))
	mux.HandleFunc("POST /api/tenants/{tenant}/approvals/{id}/deny", s.tenantAPI(s.decideApproval(false)))
	mux.HandleFunc("POST /api/tenants/{tenant}/chaos", s.tenantAPI(s.fireChaos))
	return securityHeaders(mux)
}

// securityHeaders: the page loads only its own script and styles (so an
// injected string can never run as script), may not be framed
// (clickjacking of the block buttons), and sends no referrer.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		next.ServeHTTP(w, r)
	})
}

// SignInURL is the link `passport up` prints: the dashboard at base with
// the operator token (and optionally the tenant) in the URL fragment. A
// browser never sends the fragment to any server, so the token stays out of
// access logs and Referer headers; the page moves it to sessionStorage and
// strips it from the address bar at once.
func SignInURL(base, token, tenant string) string {
	v := url.Values{"token": {token}}
	if tenant != "" {
		v.Set("tenant", tenant)
	}
	return strings.TrimRight(base, "/") + "/#" + v.Encode()
}
