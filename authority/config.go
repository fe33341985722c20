package authority

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redisx"
	"github.com/agentpassport/passport/internal/tlsx"
	"github.com/agentpassport/passport/passport"
	"golang.org/x/crypto/bcrypt"
)

// Defaults of Config. DefaultConfig returns a Config holding all of them.
const (
	DefaultListen          = "127.0.0.1:8081"
	DefaultIssuer          = "http://127.0.0.1:8081"
	DefaultAudience        = "passport-proxy"
	DefaultMaxBodyBytes    = 16 << 10
	DefaultShutdownTimeout = 10 * time.Second
)

// MinAdminTokenLength is the shortest admin token accepted. Admin tokens are
// bearer credentials for the whole registry; a short one could be guessed.
const MinAdminTokenLength = 16

// Config configures the authority. Every field has a default (see
// DefaultConfig and examples/authority.yaml), so an authority starts with
// nothing but a Redis URL.
type Config struct {
	// Listen is the HTTP address. Default 127.0.0.1:8081.
	Listen string `yaml:"listen"`
	// Issuer is the "iss" of every passport and the base of the URLs in
	// the RFC 8414 metadata. Default http://127.0.0.1:8081, or
	// https://127.0.0.1:8081 with TLS; with TLS it must be https.
	Issuer string `yaml:"issuer"`
	// TLS serves the authority over TLS when cert_file and key_file are
	// set (env PASSPORT_TLS_CERT_FILE, PASSPORT_TLS_KEY_FILE): client
	// secrets must not cross the network in the clear (RFC 6749 §2.3.1).
	// Default: plain HTTP.
	TLS tlsx.Server `yaml:"tls"`
	// Redis says how to reach Redis (env PASSPORT_REDIS_URL overrides url).
	Redis redisx.Config `yaml:"redis"`
	// Audit configures the writer of the authority's records (agent
	// blocked and unblocked, reputation, revocation, approvals,
	// enrollment): writer id, signing key file, checkpoints, retention,
	// wait_replicas (audit.WriterConfig, docs/audit.md).
	Audit audit.WriterConfig `yaml:"audit"`
	// AdminToken is the global admin token (env PASSPORT_ADMIN_TOKEN). It
	// may manage every tenant and rotate keys. Default none: without any
	// admin token the admin API refuses every call (fail closed).
	AdminToken string `yaml:"admin_token"`
	// TenantAdminTokens maps a tenant to tokens that may manage only that
	// tenant's agents. Default none.
	TenantAdminTokens map[string][]string `yaml:"tenant_admin_tokens"`
	// ReporterTokens may only report outcomes (POST
	// /v1/tenants/{t}/agents/{id}/outcomes), for every tenant: the
	// credential a proxy needs to report policy denials, instead of the
	// global admin token. Env PASSPORT_REPORTER_TOKEN adds one. Default none.
	ReporterTokens []string `yaml:"reporter_tokens"`
	// ApproverTokens may list, read, approve and deny approvals (GET and
	// POST /v1/tenants/{t}/approvals...), of their tenants or of every
	// tenant, and nothing else; each names its approver. Env
	// PASSPORT_APPROVER_TOKENS adds entries ([TENANT[+TENANT]:]APPROVER=TOKEN,
	// comma-separated). Admin tokens may decide too, recorded as "admin".
	// Default none.
	ApproverTokens []ApproverToken `yaml:"approver_tokens"`
	// Audiences lists the audiences a passport may be issued for (the
	// token request's "resource" or "audience"); the first is the
	// default. Default [passport-proxy].
	Audiences []string `yaml:"audiences"`
	// Passport shapes issued passports.
	Passport PassportConfig `yaml:"passport"`
	// Keys configures signing keys and their rotation.
	Keys KeysConfig `yaml:"keys"`
	// Clients configures client authentication.
	Clients ClientsConfig `yaml:"clients"`
	// Reputation configures the reputation model.
	Reputation ReputationConfig `yaml:"reputation"`
	// AgentTypes maps an agent type to the capabilities (actions) it gets
	// when registered without an explicit list. Entries here replace or
	// add to the built-in types (healer, deployer, scaler, observer,
	// chaos). A registration may list any action known to some type.
	AgentTypes map[string][]string `yaml:"agent_types"`
	// Delegation configures token exchange (RFC 8693).
	Delegation DelegationConfig `yaml:"delegation"`
	// DPoP configures proof of possession at the token endpoint (RFC 9449).
	DPoP DPoPConfig `yaml:"dpop"`
	// HTTP tunes the server.
	HTTP HTTPConfig `yaml:"http"`
	// TrustedIssuers are external identity providers (Kubernetes, GitHub
	// Actions, SPIFFE, any OIDC issuer) whose tokens workloads exchange
	// for passports (RFC 7523; docs/enrollment.md). Default none.
	TrustedIssuers []TrustedIssuer `yaml:"trusted_issuers"`

	// envErrs are ApplyEnv's problems, reported by Validate.
	envErrs []error
}

// DelegationConfig configures token exchange (RFC 8693): an agent trades
// another agent's passport for a narrower one that names the chain.
type DelegationConfig struct {
	// MaxDepth is how many exchanges one chain may hold: 1 lets an agent
	// exchange another agent's own passport, 2 lets the result be
	// exchanged once more, and so on. 0 turns token exchange off. Default
	// 2, at most 8 (passport.MaxDelegationDepth).
	MaxDepth int `yaml:"max_depth"`
}

// DPoPConfig configures DPoP (RFC 9449) at the token endpoint.
type DPoPConfig struct {
	// ProofMaxAge is how old a proof's iat may be (it may also be up to
	// passport.leeway in the future). Each proof's jti is remembered in
	// Redis for that long, shared by every replica, so a proof is used
	// once. Default 1m, 1s to 5m.
	ProofMaxAge time.Duration `yaml:"proof_max_age"`
	// RequireNonce makes every proof at the token endpoint carry a server
	// nonce (RFC 9449 §8), handed out in the DPoP-Nonce header of every
	// token endpoint answer: proofs made ahead of time become useless.
	// Default false.
	RequireNonce bool `yaml:"require_nonce"`
	// NonceLifetime: a nonce is accepted for one to two lifetimes. Nonces
	// are an HMAC of the time, keyed by a secret every replica shares in
	// Redis, so no state is kept per nonce. Default 5m, 1s to 1h.
	NonceLifetime time.Duration `yaml:"nonce_lifetime"`
}

// PassportConfig shapes issued passports.
type PassportConfig struct {
	// Lifetime of a passport. Default 5m, at most 1h (passport.MaxLifetime).
	Lifetime time.Duration `yaml:"lifetime"`
	// Leeway is the clock skew allowed when the authority verifies
	// passports (introspection, revocation) and client assertions.
	// Default 30s, at most 30s.
	Leeway time.Duration `yaml:"leeway"`
	// IssueInterval and IssueBurst limit how many passports one agent
	// gets: a token bucket of IssueBurst passports that refills one per
	// IssueInterval, shared by every replica in Redis. Over it the token
	// endpoint answers 429 with Retry-After. It bounds what one agent can
	// hold at once (about IssueBurst + Lifetime/IssueInterval live
	// passports) and so what unblocking it costs. Defaults 1s and 30.
	IssueInterval time.Duration `yaml:"issue_interval"`
	IssueBurst    int           `yaml:"issue_burst"`
}

// KeysConfig configures signing keys.
type KeysConfig struct {
	// Algorithm for new keys: EdDSA (Ed25519) or ES256. Default EdDSA.
	// Existing keys keep their algorithm until rotated out.
	Algorithm string `yaml:"algorithm"`
	// RotationInterval is how long a key stays current. Default 24h;
	// 0 is not allowed (use a very long interval to rotate by hand only).
	RotationInterval time.Duration `yaml:"rotation_interval"`
	// CheckInterval is how often a replica reloads the key set from Redis
	// and checks whether a rotation is due. Default 10s.
	CheckInterval time.Duration `yaml:"check_interval"`
	// EncryptionKey encrypts private keys at rest in Redis with
	// AES-256-GCM (the AES key is SHA-256 of this value); env
	// PASSPORT_KEY_ENCRYPTION_KEY. Use a high-entropy value such as
	// `openssl rand -base64 32`. Default none: keys are stored unencrypted
	// and a warning is logged, because anyone who can read Redis could
	// then mint passports.
	EncryptionKey string `yaml:"encryption_key"`
}

// ClientsConfig configures client authentication at the token endpoint.
type ClientsConfig struct {
	// BcryptCost for client secrets. Default 10 (bcrypt.DefaultCost);
	// tests may use 4 (bcrypt.MinCost).
	BcryptCost int `yaml:"bcrypt_cost"`
	// SecretCacheTTL caches a successful secret verification in memory,
	// keyed by SHA-256 of client id and secret and checked against a
	// digest of the stored hash, so that an agent fetching passports often
	// does not pay bcrypt each time. A changed or deleted secret never
	// matches the cache. A cached success needs no bcrypt and so takes no
	// place in the failure limits: an agent's own concurrency never runs
	// into them (with the cache off, more than auth_failure_limit
	// simultaneous authentications of one client from one address may be
	// refused). Default 1m; 0 disables the cache.
	SecretCacheTTL time.Duration `yaml:"secret_cache_ttl"`
	// AuthFailureLimit is how many failed authentications one client id
	// may have from one source address per AuthFailureWindow before the
	// token endpoint refuses that client id from that address with 429
	// (before checking its credentials). Never per client id alone: the
	// id is public, and failures from elsewhere must not lock its owner
	// out. Counted in Redis so every replica shares the count. Default 10.
	AuthFailureLimit int `yaml:"auth_failure_limit"`
	// SourceFailureLimit is how many failed authentications one source
	// address (an IPv6 source counts as its /64) may have per
	// AuthFailureWindow, whatever client ids it names, before it is
	// refused with 429. Default 100.
	SourceFailureLimit int `yaml:"source_failure_limit"`
	// AuthFailureWindow. Default 1m.
	AuthFailureWindow time.Duration `yaml:"auth_failure_window"`
	// TrustedProxies lists the addresses or CIDRs of reverse proxies in
	// front of the authority. Only when the connection comes from one is
	// X-Forwarded-For read (right to left, skipping trusted hops) to find
	// the source address the limits count. Default none: the source is
	// the connection's remote address.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// MaxConcurrentHashes bounds the bcrypt comparisons running at once,
	// so a flood of guesses costs at most this many cores. Default 0: the
	// number of CPUs Go may use (GOMAXPROCS).
	MaxConcurrentHashes int `yaml:"max_concurrent_hashes"`
	// HashWait is how long a request waits for a free bcrypt slot before
	// it is answered 503 temporarily_unavailable with Retry-After.
	// Default 2s.
	HashWait time.Duration `yaml:"hash_wait"`
	// AssertionMaxLifetime caps exp-iat of a private_key_jwt assertion;
	// its jti is remembered until exp so it is single-use. Default 5m.
	AssertionMaxLifetime time.Duration `yaml:"assertion_max_lifetime"`
}

// ReputationConfig configures the reputation model (0–100 per agent).
type ReputationConfig struct {
	// Weights are added to the score per reported outcome.
	// Defaults: success +1, failure -5, denied -10.
	Success float64 `yaml:"success"`
	Failure float64 `yaml:"failure"`
	Denied  float64 `yaml:"denied"`
	// HalfLife of the drift back to the baseline. Default 1h.
	HalfLife time.Duration `yaml:"half_life"`
	// Baselines per trust level. Defaults HIGH 90, MEDIUM 75, LOW 60.
	BaselineHigh   float64 `yaml:"baseline_high"`
	BaselineMedium float64 `yaml:"baseline_medium"`
	BaselineLow    float64 `yaml:"baseline_low"`
	// HighMin is the lowest score at which HIGH trust is issued. Default 80.
	HighMin float64 `yaml:"high_min"`
	// MediumMin is the lowest score at which MEDIUM trust is issued;
	// below it passports say LOW. Default 50.
	MediumMin float64 `yaml:"medium_min"`
	// BlockBelow blocks an agent automatically when its score falls
	// below it. Default 25.
	BlockBelow float64 `yaml:"block_below"`
}

// HTTPConfig tunes the HTTP server.
type HTTPConfig struct {
	// MaxBodyBytes bounds every request body. Default 16384.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// ShutdownTimeout is how long in-flight requests get at shutdown.
	// Default 10s.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// ReadHeaderTimeout. Default 5s.
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
}

// DefaultAgentTypes are the built-in agent types and their capabilities.
func DefaultAgentTypes() map[string][]string {
	return map[string][]string{
		passport.TypeHealer:   {"service.list", "service.get", "service.restart", "deployment.rollback", "cache.warm"},
		passport.TypeDeployer: {"service.list", "service.get", "deployment.deploy", "deployment.rollback"},
		passport.TypeScaler:   {"service.list", "service.get", "service.scale"},
		passport.TypeObserver: {"service.list", "service.get"},
		passport.TypeChaos:    {"service.list", "service.get", "chaos.inject", "chaos.clear"},
	}
}

// DefaultConfig returns the configuration with every default filled in.
func DefaultConfig() Config {
	return Config{
		Listen:    DefaultListen,
		Issuer:    DefaultIssuer,
		Audiences: []string{DefaultAudience},
		Passport: PassportConfig{
			Lifetime: passport.DefaultLifetime, Leeway: passport.MaxLeeway,
			IssueInterval: time.Second, IssueBurst: 30,
		},
		Keys: KeysConfig{
			Algorithm:        passport.AlgEdDSA,
			RotationInterval: 24 * time.Hour,
			CheckInterval:    10 * time.Second,
		},
		Clients: ClientsConfig{
			BcryptCost:           bcrypt.DefaultCost,
			SecretCacheTTL:       time.Minute,
			AuthFailureLimit:     10,
			SourceFailureLimit:   100,
			AuthFailureWindow:    time.Minute,
			HashWait:             2 * time.Second,
			AssertionMaxLifetime: 5 * time.Minute,
		},
		Reputation: ReputationConfig{
			Success: 1, Failure: -5, Denied: -10,
			HalfLife:       time.Hour,
			BaselineHigh:   passport.BaselineReputation(passport.TrustHigh),
			BaselineMedium: passport.BaselineReputation(passport.TrustMedium),
			BaselineLow:    passport.BaselineReputation(passport.TrustLow),
			HighMin:        80,
			MediumMin:      50,
			BlockBelow:     25,
		},
		Delegation: DelegationConfig{MaxDepth: 2},
		DPoP: DPoPConfig{
			ProofMaxAge:   passport.DefaultDPoPMaxAge,
			NonceLifetime: 5 * time.Minute,
		},
		HTTP: HTTPConfig{
			MaxBodyBytes:      DefaultMaxBodyBytes,
			ShutdownTimeout:   DefaultShutdownTimeout,
			ReadHeaderTimeout: 5 * time.Second,
		},
	}
}

// ApplyEnv overrides addresses and secrets from the environment:
// PASSPORT_REDIS_URL, PASSPORT_ADMIN_TOKEN, PASSPORT_KEY_ENCRYPTION_KEY,
// PASSPORT_AUTHORITY_ISSUER; PASSPORT_REPORTER_TOKEN and
// PASSPORT_APPROVER_TOKENS add tokens (a malformed entry is reported by
// Validate).
func (c *Config) ApplyEnv(getenv func(string) string) {
	if getenv == nil {
		return
	}
	set := func(key string, dst *string) {
		if v := getenv(key); v != "" {
			*dst = v
		}
	}
	set("PASSPORT_REDIS_URL", &c.Redis.URL)
	set("PASSPORT_ADMIN_TOKEN", &c.AdminToken)
	if v := getenv("PASSPORT_REPORTER_TOKEN"); v != "" && !slices.Contains(c.ReporterTokens, v) {
		c.ReporterTokens = append(slices.Clone(c.ReporterTokens), v)
	}
	if v := getenv("PASSPORT_APPROVER_TOKENS"); v != "" {
		toks, err := ParseApproverTokens(v)
		c.ApproverTokens = append(slices.Clone(c.ApproverTokens), toks...)
		if err != nil {
			c.envErrs = append(c.envErrs, err)
		}
	}
	set("PASSPORT_KEY_ENCRYPTION_KEY", &c.Keys.EncryptionKey)
	set("PASSPORT_AUTHORITY_ISSUER", &c.Issuer)
}

// withTLSDefaults makes the default issuer https when TLS is on, so that
// the issuer, the JWKS URL and the RFC 8414 metadata name the scheme
// served.
func (c Config) withTLSDefaults() Config {
	if c.TLS.Enabled() && c.Issuer == DefaultIssuer {
		c.Issuer = "https://" + strings.TrimPrefix(DefaultIssuer, "http://")
	}
	return c
}

// ValidTenant reports whether s is a valid tenant name (passport.ValidTenant:
// lowercase letters, digits, '-' and '_', at most 63 characters).
func ValidTenant(s string) bool { return passport.ValidTenant(s) }

// Validate reports every problem in the configuration at once.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Listen); err != nil {
			bad("listen: %v", err)
		}
	}
	c = c.withTLSDefaults()
	if u, err := url.Parse(c.Issuer); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		bad("issuer %q: want an http(s) URL without query or fragment", c.Issuer)
	} else if c.TLS.Enabled() && u.Scheme != "https" {
		// The metadata would send clients to a plain URL the authority
		// does not serve, and secrets with them.
		bad("issuer %q: the authority serves TLS, so its issuer must be an https URL", c.Issuer)
	}
	if err := c.TLS.Validate("tls"); err != nil {
		errs = append(errs, err)
	}
	if err := c.Redis.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Audit.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.AdminToken != "" && len(c.AdminToken) < MinAdminTokenLength {
		bad("admin_token: shorter than %d characters", MinAdminTokenLength)
	}
	for _, t := range slices.Sorted(maps.Keys(c.TenantAdminTokens)) {
		if !ValidTenant(t) {
			bad("tenant_admin_tokens: tenant %q: want lowercase letters, digits, '-' or '_'", t)
		}
		for i, tok := range c.TenantAdminTokens[t] {
			if len(tok) < MinAdminTokenLength {
				bad("tenant_admin_tokens.%s[%d]: shorter than %d characters", t, i, MinAdminTokenLength)
			}
		}
	}
	for i, tok := range c.ReporterTokens {
		switch {
		case len(tok) < MinAdminTokenLength:
			bad("reporter_tokens[%d]: shorter than %d characters", i, MinAdminTokenLength)
		case tok == c.AdminToken:
			bad("reporter_tokens[%d]: the same as the admin token; a reporter token must be its own", i)
		}
	}
	errs = append(errs, c.validateApproverTokens()...)
	errs = append(errs, c.envErrs...)
	if len(c.Audiences) == 0 {
		bad("audiences: at least one audience is needed")
	}
	for i, a := range c.Audiences {
		if a == "" {
			bad("audiences[%d]: empty", i)
		}
	}
	if c.Passport.Lifetime <= 0 || c.Passport.Lifetime > passport.MaxLifetime {
		bad("passport.lifetime %v: want more than 0 and at most %v", c.Passport.Lifetime, passport.MaxLifetime)
	}
	if c.Passport.Leeway < 0 || c.Passport.Leeway > passport.MaxLeeway {
		bad("passport.leeway %v: want 0 to %v", c.Passport.Leeway, passport.MaxLeeway)
	}
	if c.Passport.IssueInterval < time.Millisecond {
		bad("passport.issue_interval %v: want at least 1ms", c.Passport.IssueInterval)
	}
	if c.Passport.IssueBurst < 1 {
		bad("passport.issue_burst %d: want at least 1", c.Passport.IssueBurst)
	}
	if c.Keys.Algorithm != passport.AlgEdDSA && c.Keys.Algorithm != passport.AlgES256 {
		bad("keys.algorithm %q: want EdDSA or ES256", c.Keys.Algorithm)
	}
	if c.Keys.RotationInterval < time.Minute {
		bad("keys.rotation_interval %v: want at least 1m", c.Keys.RotationInterval)
	}
	if c.Keys.CheckInterval <= 0 {
		bad("keys.check_interval %v: want more than 0", c.Keys.CheckInterval)
	}
	if c.Clients.BcryptCost < bcrypt.MinCost || c.Clients.BcryptCost > bcrypt.MaxCost {
		bad("clients.bcrypt_cost %d: want %d to %d", c.Clients.BcryptCost, bcrypt.MinCost, bcrypt.MaxCost)
	}
	if c.Clients.SecretCacheTTL < 0 {
		bad("clients.secret_cache_ttl: must not be negative")
	}
	if c.Clients.AuthFailureLimit < 1 {
		bad("clients.auth_failure_limit %d: want at least 1", c.Clients.AuthFailureLimit)
	}
	if c.Clients.SourceFailureLimit < 1 {
		bad("clients.source_failure_limit %d: want at least 1", c.Clients.SourceFailureLimit)
	}
	if _, err := parseTrustedProxies(c.Clients.TrustedProxies); err != nil {
		errs = append(errs, err)
	}
	if c.Clients.MaxConcurrentHashes < 0 {
		bad("clients.max_concurrent_hashes %d: want 0 (the number of CPUs) or more", c.Clients.MaxConcurrentHashes)
	}
	if c.Clients.HashWait <= 0 {
		bad("clients.hash_wait %v: want more than 0", c.Clients.HashWait)
	}
	if c.Clients.AuthFailureWindow < time.Second {
		bad("clients.auth_failure_window %v: want at least 1s", c.Clients.AuthFailureWindow)
	}
	if c.Clients.AssertionMaxLifetime < time.Second || c.Clients.AssertionMaxLifetime > time.Hour {
		bad("clients.assertion_max_lifetime %v: want 1s to 1h", c.Clients.AssertionMaxLifetime)
	}
	r := c.Reputation
	if r.HalfLife < 0 {
		bad("reputation.half_life: must not be negative")
	}
	for name, v := range map[string]float64{"baseline_high": r.BaselineHigh, "baseline_medium": r.BaselineMedium,
		"baseline_low": r.BaselineLow, "high_min": r.HighMin, "medium_min": r.MediumMin, "block_below": r.BlockBelow} {
		if v < 0 || v > 100 {
			bad("reputation.%s %v: want 0 to 100", name, v)
		}
	}
	if !(r.BlockBelow <= r.MediumMin && r.MediumMin <= r.HighMin) {
		bad("reputation: want block_below <= medium_min <= high_min")
	}
	for name, b := range map[string]float64{"baseline_high": r.BaselineHigh, "baseline_medium": r.BaselineMedium, "baseline_low": r.BaselineLow} {
		if b < r.BlockBelow {
			bad("reputation.%s %v: below block_below %v, every new agent would be blocked", name, b, r.BlockBelow)
		}
	}
	types := c.agentTypes()
	for _, name := range slices.Sorted(maps.Keys(types)) {
		if !passport.ValidAgentType(name) {
			bad("agent_types: type %q: want lowercase letters, digits, '-' or '_'", name)
		}
		for _, a := range types[name] {
			if !passport.ValidAction(a) {
				bad("agent_types.%s: action %q: want dotted lowercase like service.restart", name, a)
			}
		}
	}
	errs = append(errs, c.validateTrustedIssuers(types)...)
	if c.Delegation.MaxDepth < 0 || c.Delegation.MaxDepth > passport.MaxDelegationDepth {
		bad("delegation.max_depth %d: want 0 (token exchange off) to %d", c.Delegation.MaxDepth, passport.MaxDelegationDepth)
	}
	if c.DPoP.ProofMaxAge < time.Second || c.DPoP.ProofMaxAge > passport.MaxDPoPMaxAge {
		bad("dpop.proof_max_age %v: want 1s to %v", c.DPoP.ProofMaxAge, passport.MaxDPoPMaxAge)
	}
	if c.DPoP.NonceLifetime < time.Second || c.DPoP.NonceLifetime > time.Hour {
		bad("dpop.nonce_lifetime %v: want 1s to 1h", c.DPoP.NonceLifetime)
	}
	if c.HTTP.MaxBodyBytes < 1024 {
		bad("http.max_body_bytes %d: want at least 1024", c.HTTP.MaxBodyBytes)
	}
	if c.HTTP.ShutdownTimeout < 0 || c.HTTP.ReadHeaderTimeout < 0 {
		bad("http: timeouts must not be negative")
	}
	return errors.Join(errs...)
}

// agentTypes merges the built-in agent types with the configured ones.
func (c Config) agentTypes() map[string][]string {
	m := DefaultAgentTypes()
	maps.Copy(m, c.AgentTypes)
	return m
}

// knownActions is the sorted union of every type's capabilities.
func knownActions(types map[string][]string) []string {
	set := map[string]bool{}
	for _, as := range types {
		for _, a := range as {
			set[a] = true
		}
	}
	out := make([]string, 0, len(set))
	for a := range set {
		out = append(out, a)
	}
	sort.Strings(out)
	return out
}

// baseline is the starting reputation for a trust level.
func (r ReputationConfig) baseline(t passport.TrustLevel) float64 {
	switch t {
	case passport.TrustHigh:
		return r.BaselineHigh
	case passport.TrustMedium:
		return r.BaselineMedium
	}
	return r.BaselineLow
}

// allowed is the highest trust level the score allows.
func (r ReputationConfig) allowed(score float64) passport.TrustLevel {
	switch {
	case score >= r.HighMin:
		return passport.TrustHigh
	case score >= r.MediumMin:
		return passport.TrustMedium
	}
	return passport.TrustLow
}
