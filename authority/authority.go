// Package authority is the passport authority of Agent Passport: the agent
// registry and its credentials, the OAuth 2.0 token endpoint that exchanges
// client credentials for short-lived signed passports, the signing keys and
// their rotation, the JWKS, RFC 8414 metadata, introspection (RFC 7662),
// revocation (RFC 7009) and the reputation model that lowers an agent's trust
// and blocks it automatically when it misbehaves.
//
// State lives in Redis, so several replicas can run side by side: agents,
// reputation, revocations, blocks and the signing keys (private keys
// optionally encrypted at rest). Use it as
//
//	a, err := authority.New(cfg, authority.Deps{Redis: rdb, Logger: log, Registry: reg, Audit: writer})
//	err = a.Run(ctx, nil) // listens on cfg.Listen until ctx is done
//
// or mount a.Handler() in a server of your own after a.Init(ctx).
package authority

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentpassport/passport/approval"
	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/run"
	"github.com/agentpassport/passport/internal/tlsx"
	"github.com/agentpassport/passport/passport"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"
)

// Deps are the authority's collaborators.
type Deps struct {
	// Redis is the one store. Required.
	Redis redis.UniversalClient
	// Logger receives operator logs. Required.
	Logger *slog.Logger
	// Registry receives the metrics and is served at /metrics. Default: a
	// fresh registry of its own.
	Registry *prometheus.Registry
	// Audit receives agent_blocked, agent_unblocked, reputation,
	// revocation, approval and enrollment records. Required: an authority
	// that records nothing would block and revoke unseen (tests pass
	// audit.Discard).
	Audit audit.Sink
	// Clock is the time source. Default time.Now.
	Clock func() time.Time
}

// Authority is a passport authority. Create it with New.
type Authority struct {
	cfg     Config
	rdb     redis.UniversalClient
	log     *slog.Logger
	reg     *prometheus.Registry
	audit   audit.Sink
	now     func() time.Time
	keys    *keyManager
	m       *metrics
	types   map[string][]string
	actions []string
	secrets secretCache
	admins  adminTokens
	handler http.Handler
	// tls serves Run's listener when Config.TLS is set (nil: plain).
	tls *tls.Config
	// approvals is the shared approval store (package approval); approvers
	// and admins decide through it.
	approvals      *approval.Store
	approvers      approverTokens
	approvalMetric *prometheus.CounterVec
	// verifier is the shared strict passport verifier (package passport).
	verifier *passport.Verifier
	// dpop checks DPoP proofs at the token endpoint; nonces makes and
	// checks its server nonces once their secret is loaded.
	dpop   *passport.DPoPVerifier
	nonces atomic.Pointer[passport.DPoPNonces]
	// trusted are the proxies whose X-Forwarded-For names the source.
	trusted []netip.Prefix
	// hashSlots bounds concurrent bcrypt comparisons (compareSecret).
	hashSlots chan struct{}
	// enroll holds the trusted issuers of workload enrollment (enroll.go).
	enroll *enrollment

	initMu    sync.Mutex
	dummyOnce sync.Once
	dummy     []byte
}

// New validates cfg and builds an authority. It does not touch Redis; Init
// (called by Run, and lazily by the token endpoint) loads the keys.
func New(cfg Config, deps Deps) (*Authority, error) {
	cfg = cfg.withTLSDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("authority config: %w", err)
	}
	if deps.Redis == nil {
		return nil, errors.New("authority: Deps.Redis is required")
	}
	if deps.Logger == nil {
		return nil, errors.New("authority: Deps.Logger is required")
	}
	if deps.Audit == nil {
		return nil, errors.New("authority: Deps.Audit is required (audit.Discard in tests)")
	}
	if deps.Registry == nil {
		deps.Registry = prometheus.NewRegistry()
	}
	if deps.Clock == nil {
		deps.Clock = time.Now
	}
	a := &Authority{
		cfg: cfg, rdb: deps.Redis, log: deps.Logger, reg: deps.Registry, audit: deps.Audit, now: deps.Clock,
		types: cfg.agentTypes(),
	}
	a.actions = knownActions(a.types)
	a.secrets = secretCache{ttl: cfg.Clients.SecretCacheTTL, now: deps.Clock}
	a.trusted, _ = parseTrustedProxies(cfg.Clients.TrustedProxies) // checked by Validate
	slots := cfg.Clients.MaxConcurrentHashes
	if slots == 0 {
		slots = runtime.GOMAXPROCS(0)
	}
	a.hashSlots = make(chan struct{}, slots)
	a.admins = newAdminTokens(cfg.AdminToken, cfg.TenantAdminTokens, cfg.ReporterTokens)
	a.approvers = newApproverTokens(cfg.ApproverTokens)
	a.approvals = approval.NewStore(deps.Redis, approval.Options{Clock: deps.Clock})
	var err error
	if a.approvalMetric, err = newApprovalMetrics(deps.Registry); err != nil {
		return nil, err
	}
	if a.keys, err = newKeyManager(deps.Redis, cfg, deps.Clock, deps.Logger); err != nil {
		return nil, err
	}
	if a.m, err = newMetrics(deps.Registry); err != nil {
		return nil, err
	}
	if a.tls, err = cfg.TLS.Config(tlsx.Options{Name: "authority", Logger: deps.Logger, Metrics: tlsx.NewMetrics(deps.Registry)}); err != nil {
		return nil, fmt.Errorf("authority: %w", err)
	}
	if err := a.initEnrollment(); err != nil {
		return nil, err
	}
	// Passports are checked against every configured audience and the
	// global lifetime cap, as a proxy with default settings does. The
	// authority accepts delegated passports because it checks every link
	// itself (introspection, token exchange), and bound ones because
	// introspection hands cnf on to the resource server (RFC 9449 §6.2)
	// and an exchange binds the result to the actor's own key.
	if a.verifier, err = passport.NewVerifier(passport.VerifierConfig{
		Issuer: cfg.Issuer, Audiences: cfg.Audiences, Leeway: cfg.Passport.Leeway,
		MaxLifetime: passport.MaxLifetime, Clock: deps.Clock, Keys: a.passportKey,
		AcceptDelegated: true, AcceptBound: true,
	}); err != nil {
		return nil, fmt.Errorf("authority verifier: %w", err)
	}
	if a.dpop, err = passport.NewDPoPVerifier(passport.DPoPConfig{
		MaxAge: cfg.DPoP.ProofMaxAge, Leeway: cfg.Passport.Leeway, Clock: deps.Clock, Replay: a.dpopReplay,
	}); err != nil {
		return nil, fmt.Errorf("authority dpop verifier: %w", err)
	}
	if cfg.Keys.EncryptionKey == "" {
		a.log.Warn("signing keys are stored in Redis unencrypted; set PASSPORT_KEY_ENCRYPTION_KEY to encrypt them at rest")
	}
	if !a.admins.any() {
		a.log.Warn("no admin token configured: the admin API refuses every call; set PASSPORT_ADMIN_TOKEN")
	}
	a.handler = a.routes()
	return a, nil
}

// Config returns the configuration the authority runs with.
func (a *Authority) Config() Config { return a.cfg }

// Init loads the signing keys from Redis, creating them on first start. It
// is safe to call more than once.
func (a *Authority) Init(ctx context.Context) error {
	a.initMu.Lock()
	defer a.initMu.Unlock()
	if a.keys.loaded() {
		return nil
	}
	if err := a.keys.Ensure(ctx); err != nil {
		return fmt.Errorf("init authority: %w", err)
	}
	return nil
}

// Handler serves every endpoint of the authority. Before Init has succeeded,
// endpoints that need keys try to load them and answer 503 if they cannot.
func (a *Authority) Handler() http.Handler { return a.handler }

// RotateKeys rotates the signing keys now (what POST /v1/keys/rotate and
// `passport authority rotate-keys` do).
func (a *Authority) RotateKeys(ctx context.Context) error {
	if err := a.Init(ctx); err != nil {
		return err
	}
	if _, err := a.keys.Rotate(ctx, true); err != nil {
		return err
	}
	a.m.rotations.WithLabelValues("manual").Inc()
	return nil
}

// Run serves the authority on ln (or on cfg.Listen when ln is nil) and
// runs its background work — scheduled key rotation, key reloads when
// another replica rotated, pruning of expired revocations — until ctx is
// done. Then it stops accepting, gives in-flight requests
// cfg.HTTP.ShutdownTimeout to finish, and returns nil.
func (a *Authority) Run(ctx context.Context, ln net.Listener) error {
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", a.cfg.Listen); err != nil {
			return fmt.Errorf("authority listen: %w", err)
		}
	}
	srv := &http.Server{
		Handler:           a.handler,
		ReadHeaderTimeout: a.cfg.HTTP.ReadHeaderTimeout,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(run.Guarded(ctx, "authority.serve", func() error {
		a.log.InfoContext(gctx, "authority listening", "addr", ln.Addr().String(), "issuer", a.cfg.Issuer, "tls", a.tls != nil)
		if err := tlsx.Serve(srv, ln, a.tls); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("authority serve: %w", err)
		}
		return nil
	}))
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(gctx), a.cfg.HTTP.ShutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			// The grace period is over: what is still open is cut, as
			// any server does once its drain ends.
			a.log.Warn("authority shutdown: grace period over; closing the connections still open",
				"grace", a.cfg.HTTP.ShutdownTimeout, "err", err)
			_ = srv.Close()
		}
		return nil
	})
	g.Go(run.Guarded(ctx, "authority.key_loop", func() error { return a.keyLoop(gctx) }))
	g.Go(run.Guarded(ctx, "authority.key_watch", func() error { return a.keyWatch(gctx) }))
	err := g.Wait()
	if ctx.Err() != nil && err == nil {
		a.log.Info("authority stopped")
	}
	return err
}

// keyLoop loads the keys (retrying until Redis answers), then every
// CheckInterval reloads them and rotates when the current key is due. The
// rotation lock in Redis makes sure one replica rotates, once.
func (a *Authority) keyLoop(ctx context.Context) error {
	t := time.NewTicker(a.cfg.Keys.CheckInterval)
	defer t.Stop()
	for {
		if err := a.Init(ctx); err != nil {
			if ctx.Err() == nil {
				a.log.WarnContext(ctx, "signing keys not loaded yet", "err", err)
			}
		} else {
			a.tick(ctx)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// tick is one pass of the key loop (tests call it with an injected clock).
func (a *Authority) tick(ctx context.Context) {
	var (
		rotated bool
		err     error
	)
	// Take the Redis lock only when the local view says rotation is due;
	// Rotate re-checks under the lock.
	if k, kerr := a.keys.signer(); kerr != nil || a.now().Sub(k.stored.ActivatedAt) >= a.cfg.Keys.RotationInterval {
		rotated, err = a.keys.Rotate(ctx, false)
	}
	switch {
	case errors.Is(err, ErrRotationInProgress):
		// another replica is rotating; reload below picks it up
	case err != nil:
		a.log.WarnContext(ctx, "scheduled key rotation failed", "err", err)
	case rotated:
		a.m.rotations.WithLabelValues("scheduled").Inc()
	}
	if err := a.keys.Reload(ctx); err != nil && ctx.Err() == nil {
		a.log.WarnContext(ctx, "reload signing keys", "err", err)
	}
	// Revoked jtis are kept until the passport would have expired anyway.
	pipe := a.rdb.Pipeline()
	a.pruneRevoked(ctx, pipe)
	if _, err := pipe.Exec(ctx); err != nil && ctx.Err() == nil {
		a.log.WarnContext(ctx, "prune revocations", "err", err)
	}
	if a.cfg.DPoP.RequireNonce {
		if _, err := a.loadNonces(ctx); err != nil && ctx.Err() == nil {
			a.log.WarnContext(ctx, "reload dpop nonce secret", "err", err)
		}
	}
}

// keyWatch reloads the keys as soon as another replica announces a rotation.
func (a *Authority) keyWatch(ctx context.Context) error {
	sub := a.rdb.Subscribe(ctx, keysChannel)
	defer sub.Close()
	ch := sub.Channel()
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-ch:
			if !ok {
				return nil
			}
			if err := a.keys.Reload(ctx); err != nil && ctx.Err() == nil {
				a.log.WarnContext(ctx, "reload signing keys", "err", err)
			}
		}
	}
}

func (a *Authority) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /oauth2/token", a.handleToken)
	mux.HandleFunc("POST /oauth2/introspect", a.handleIntrospect)
	mux.HandleFunc("POST /oauth2/revoke", a.handleRevoke)
	mux.HandleFunc("GET /.well-known/jwks.json", a.handleJWKS)
	mux.HandleFunc("GET /.well-known/oauth-authorization-server", a.handleMetadata)
	for _, p := range []string{"/oauth2/token", "/oauth2/introspect", "/oauth2/revoke"} {
		mux.HandleFunc(p, func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Allow", http.MethodPost)
			writeOAuthError(w, http.StatusMethodNotAllowed, "invalid_request", "use POST")
		})
	}

	mux.HandleFunc("POST /v1/tenants/{tenant}/agents", a.admin(a.handleRegister))
	mux.HandleFunc("GET /v1/tenants/{tenant}/agents", a.admin(a.handleList))
	mux.HandleFunc("GET /v1/tenants/{tenant}/agents/{id}", a.admin(a.handleGet))
	mux.HandleFunc("DELETE /v1/tenants/{tenant}/agents/{id}", a.admin(a.handleDelete))
	mux.HandleFunc("POST /v1/tenants/{tenant}/agents/{id}/block", a.admin(a.handleBlock))
	mux.HandleFunc("POST /v1/tenants/{tenant}/agents/{id}/unblock", a.admin(a.handleUnblock))
	mux.HandleFunc("POST /v1/tenants/{tenant}/agents/{id}/outcomes", a.reporting(a.handleOutcome))
	mux.HandleFunc("POST /v1/keys/rotate", a.admin(a.handleRotate))
	a.approvalRoutes(mux)

	mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{Registry: a.reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", a.handleReady)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, http.StatusNotFound, "not_found", "no such endpoint")
	})
	return a.limitBody(mux)
}

// limitBody bounds every request body: the token endpoint is
// unauthenticated and must not buffer whatever a client sends.
func (a *Authority) limitBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > a.cfg.HTTP.MaxBodyBytes {
			if strings.HasPrefix(r.URL.Path, "/oauth2/") {
				writeOAuthError(w, http.StatusRequestEntityTooLarge, "invalid_request", "request body too large")
			} else {
				writeProblem(w, http.StatusRequestEntityTooLarge, "body_too_large", "request body too large")
			}
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, a.cfg.HTTP.MaxBodyBytes)
		next.ServeHTTP(w, r)
	})
}

func (a *Authority) handleReady(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	checks := map[string]string{}
	ok := true
	if err := a.rdb.Ping(ctx).Err(); err != nil {
		checks["redis"], ok = "unreachable", false
	} else {
		checks["redis"] = "ok"
	}
	if !a.keys.loaded() {
		if err := a.Init(ctx); err != nil {
			checks["keys"], ok = "not loaded", false
		}
	}
	if ok {
		checks["keys"] = "ok"
	}
	status := http.StatusOK
	if !ok {
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, map[string]any{"ready": ok, "checks": checks})
}

func (a *Authority) handleJWKS(w http.ResponseWriter, r *http.Request) {
	if err := a.Init(r.Context()); err != nil {
		a.log.WarnContext(r.Context(), "jwks without keys", "err", err)
		writeProblem(w, http.StatusServiceUnavailable, "keys_unavailable", "signing keys not loaded")
		return
	}
	// Verifiers cache the JWKS; a short max-age bounds how long a proxy
	// may miss the next key (which is published well ahead of use anyway).
	w.Header().Set("Cache-Control", "public, max-age=60")
	writeJSON(w, http.StatusOK, map[string]any{"keys": a.keys.JWKS()})
}

// Metadata is the RFC 8414 authorization server metadata.
type Metadata struct {
	Issuer                            string   `json:"issuer"`
	TokenEndpoint                     string   `json:"token_endpoint"`
	JWKSURI                           string   `json:"jwks_uri"`
	IntrospectionEndpoint             string   `json:"introspection_endpoint"`
	RevocationEndpoint                string   `json:"revocation_endpoint"`
	GrantTypesSupported               []string `json:"grant_types_supported"`
	ResponseTypesSupported            []string `json:"response_types_supported"`
	TokenEndpointAuthMethods          []string `json:"token_endpoint_auth_methods_supported"`
	TokenEndpointAuthSigningAlgs      []string `json:"token_endpoint_auth_signing_alg_values_supported"`
	IntrospectionEndpointAuthMethods  []string `json:"introspection_endpoint_auth_methods_supported"`
	RevocationEndpointAuthMethods     []string `json:"revocation_endpoint_auth_methods_supported"`
	ScopesSupported                   []string `json:"scopes_supported"`
	AuthorizationDetailsTypes         []string `json:"authorization_details_types_supported"`
	AccessTokenSigningAlgs            []string `json:"access_token_signing_alg_values_supported"`
	DPoPSigningAlgs                   []string `json:"dpop_signing_alg_values_supported"`
	ServiceDocumentation              string   `json:"service_documentation,omitempty"`
	TLSClientCertificateBoundAccess   bool     `json:"tls_client_certificate_bound_access_tokens"`
	AuthorizationResponseIssParameter bool     `json:"authorization_response_iss_parameter_supported"`
}

func (a *Authority) metadata() Metadata {
	base := strings.TrimRight(a.cfg.Issuer, "/")
	methods := []string{"client_secret_basic", "client_secret_post", "private_key_jwt"}
	mtls := a.cfg.TLS.Enabled() && a.cfg.TLS.ClientAuth != "" && a.cfg.TLS.ClientAuth != "none"
	if mtls {
		methods = append(methods, authTLS, authSelfSignedTLS)
	}
	grants := []string{"client_credentials"}
	if a.cfg.Delegation.MaxDepth > 0 {
		grants = append(grants, passport.GrantTypeTokenExchange)
	}
	if len(a.cfg.TrustedIssuers) > 0 {
		grants = append(grants, GrantTypeJWTBearer)
	}
	return Metadata{
		Issuer:                           a.cfg.Issuer,
		TokenEndpoint:                    base + "/oauth2/token",
		JWKSURI:                          base + "/.well-known/jwks.json",
		IntrospectionEndpoint:            base + "/oauth2/introspect",
		RevocationEndpoint:               base + "/oauth2/revoke",
		GrantTypesSupported:              grants,
		ResponseTypesSupported:           []string{},
		TokenEndpointAuthMethods:         methods,
		TLSClientCertificateBoundAccess:  mtls,
		TokenEndpointAuthSigningAlgs:     passport.Algorithms,
		IntrospectionEndpointAuthMethods: append([]string{"bearer_admin_token"}, methods...),
		RevocationEndpointAuthMethods:    append([]string{"bearer_admin_token"}, methods...),
		ScopesSupported:                  a.actions,
		AuthorizationDetailsTypes:        []string{passport.AuthorizationDetailType},
		AccessTokenSigningAlgs:           passport.Algorithms,
		DPoPSigningAlgs:                  passport.DPoPAlgorithms,
	}
}

func (a *Authority) handleMetadata(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Cache-Control", "public, max-age=300")
	writeJSON(w, http.StatusOK, a.metadata())
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
