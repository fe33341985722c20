package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/config"
	"github.com/agentpassport/passport/internal/redisx"
	"github.com/agentpassport/passport/internal/tlsx"
	"github.com/agentpassport/passport/passport"
	"github.com/agentpassport/passport/proxy/policy"
)

// Default values of Config. They are also documented on each field.
const (
	DefaultListen        = "127.0.0.1:8080"
	DefaultAdminListen   = "127.0.0.1:9080"
	DefaultIssuer        = "http://127.0.0.1:8081"
	DefaultAudience      = "passport-proxy"
	DefaultLeeway        = 5 * time.Second
	DefaultMaxTokenBytes = 8 << 10
	DefaultMaxBodyBytes  = 1 << 20
	DefaultBodyLimit     = 64 << 10
	DefaultMaxHeaderByte = 32 << 10
	DefaultMaxHeaders    = 100
	DefaultMaxBodyDepth  = 32
	DefaultUnattributed  = "unattributed"
)

// Config is the proxy's configuration (YAML, strict). Zero values mean the
// documented default; Default() returns a Config with every default set.
type Config struct {
	// Listen is the agent-facing address. Default 127.0.0.1:8080.
	Listen string `yaml:"listen"`
	// AdminListen serves /metrics, /healthz and /readyz, apart from agents.
	// Default 127.0.0.1:9080.
	AdminListen string `yaml:"admin_listen"`
	// ResourceURL is this proxy's resource identifier in
	// /.well-known/oauth-protected-resource (RFC 9728). Default
	// "http://" + Listen, or "https://" + Listen with TLS.
	ResourceURL string `yaml:"resource_url"`
	// TLS serves the agent port and the admin port over TLS when
	// cert_file and key_file are set; the agent port then offers HTTP/2
	// through ALPN. Env PASSPORT_TLS_CERT_FILE, PASSPORT_TLS_KEY_FILE.
	// Default: plain HTTP.
	TLS tlsx.Server `yaml:"tls"`

	// Issuer is the only accepted "iss". Default http://127.0.0.1:8081.
	Issuer string `yaml:"issuer"`
	// JWKSURL is where the signing keys are fetched. Default
	// Issuer + "/.well-known/jwks.json".
	JWKSURL string `yaml:"jwks_url"`
	// AuthorityTLS verifies the authority when JWKSURL (and AuthorityURL)
	// are https: a CA bundle (env PASSPORT_CA_FILE when unset), an
	// optional client certificate, a server name. Default: the system's
	// roots.
	AuthorityTLS tlsx.Client `yaml:"authority_tls"`
	// Audience is the only accepted "aud" value. Default passport-proxy.
	Audience string `yaml:"audience"`
	// Leeway is the clock-skew allowance for exp, nbf and iat. Default 5s,
	// at most 30s.
	Leeway time.Duration `yaml:"leeway"`
	// MaxLifetime caps exp - iat. Default and maximum 1h.
	MaxLifetime time.Duration `yaml:"max_lifetime"`
	// MaxTokenBytes bounds the Authorization header; longer ones are
	// refused before any decoding. Default 8192.
	MaxTokenBytes int `yaml:"max_token_bytes"`
	// JWKSRefresh is the periodic key refresh interval. Default 5m.
	JWKSRefresh time.Duration `yaml:"jwks_refresh"`
	// JWKSUnknownKIDInterval is the least time between two refreshes
	// caused by an unknown kid (so random kids cannot hammer the
	// authority). Default 10s.
	JWKSUnknownKIDInterval time.Duration `yaml:"jwks_unknown_kid_interval"`
	// VerifyCacheSize bounds the cache of verified passports. Default 10000.
	VerifyCacheSize int `yaml:"verify_cache_size"`
	// ReputationCache is how long a live reputation read is reused.
	// Default 1s, at most 1s.
	ReputationCache time.Duration `yaml:"reputation_cache"`
	// RequireAgentRecord refuses passports whose agent has no record in
	// Redis (deleted agents). Default true.
	RequireAgentRecord *bool `yaml:"require_agent_record"`

	// AuthorityURL receives policy denials (POST
	// /v1/tenants/{t}/agents/{id}/outcomes {"outcome":"denied"}) with
	// ReportToken. Default Issuer. Reports are sent only when a token is set.
	AuthorityURL string `yaml:"authority_url"`
	// ReportToken authenticates the denial reports: a reporter token of the
	// authority (PASSPORT_REPORTER_TOKEN; it may report outcomes and
	// nothing else), or else the global admin token (PASSPORT_ADMIN_TOKEN).
	// Never read from YAML.
	ReportToken passport.Secret `yaml:"-"`
	// OutcomeQueue bounds pending denial reports; overflow is dropped and
	// counted. Default 1024.
	OutcomeQueue int `yaml:"outcome_queue"`

	// UnattributedTenant is the audit stream for records that belong to no
	// tenant (no route and no valid passport). Default "unattributed".
	UnattributedTenant string `yaml:"unattributed_tenant"`

	// Redis is used by `passport proxy` to build the client (Deps.Redis).
	Redis redisx.Config `yaml:"redis"`
	// Audit tunes the audit writer `passport proxy` builds (Deps.Audit).
	Audit AuditConfig `yaml:"audit"`
	// Assertion is the signer of assertions for upstreams that ask for
	// them (assertion.go).
	Assertion AssertionConfig `yaml:"assertion"`

	// Policy says which Rego to load.
	Policy PolicyConfig `yaml:"policy"`
	// Approvals tunes the approvals the policy asks for (approval.go).
	Approvals ApprovalsConfig `yaml:"approvals"`

	// Delegation says which delegated passports (RFC 8693) are accepted
	// (delegation.go).
	Delegation DelegationConfig `yaml:"delegation"`
	// DPoP configures proofs of possession for bound passports (RFC 9449,
	// dpop.go).
	DPoP DPoPConfig `yaml:"dpop"`

	// Limits bound what a client may send.
	Limits Limits `yaml:"limits"`
	// Timeouts of the agent-facing server.
	Timeouts Timeouts `yaml:"timeouts"`

	// PolicyHeaders lists the request headers (lower case) copied into the
	// policy input and the audit record. Never Authorization or Cookie.
	// Default user-agent, content-type.
	PolicyHeaders []string `yaml:"policy_headers"`

	// StripHeaders are headers, besides the built-in list (method
	// overrides, original URL, client address, Forwarded and
	// X-Forwarded-*: see docs/security.md), that are removed from every
	// request before it goes upstream, in every spelling (case, "_" and
	// "." read as "-"). A name ending in "*" strips every header with that
	// prefix. Add the headers your upstream's framework lets a client use
	// to change the method, the target or who it believes the client is.
	// Default none.
	StripHeaders []string `yaml:"strip_headers"`

	// Upstreams by name.
	Upstreams map[string]Upstream `yaml:"upstreams"`
	// Routes in the order they are documented; matching prefers literal
	// segments over parameters, whatever the order.
	Routes []Route `yaml:"routes"`
}

// AuditConfig is the proxy's `audit:` section, the settings of its audit
// writer that every writing component shares (audit.WriterConfig): writer
// id and signing key file, checkpoints, retention, wait_replicas, and the
// spool: spool_dir keeps outcome records on disk while Redis cannot take
// them (PASSPORT_AUDIT_SPOOL_DIR overrides it); at spool_max_bytes the
// proxy forwards nothing new (503 audit_backlog_full) until it drains.
type AuditConfig = audit.WriterConfig

// PolicyConfig selects the enforced and the shadow policy.
type PolicyConfig struct {
	// Dir is the enforced policy directory, hot-reloaded. Default: the
	// library embedded in the binary (package policies).
	Dir string `yaml:"dir"`
	// ShadowDir is a candidate policy evaluated beside the enforced one;
	// only the enforced one decides. Default none.
	ShadowDir string `yaml:"shadow_dir"`
	// Timeout bounds one evaluation; a timeout denies. Default 250ms.
	Timeout time.Duration `yaml:"timeout"`
	// PollInterval is how often the directories are checked. Default 1s.
	PollInterval time.Duration `yaml:"poll_interval"`
	// Engine is the evaluator: "fast" (OPA's evaluator driven directly,
	// the default) or "rego" (the rego package as OPA documents it,
	// slower: the fallback should the fast one ever be in doubt). Both
	// give the same decisions (proxy/policy's differential test).
	Engine string `yaml:"engine"`
	// KubernetesConfigMap accepts, in Dir and ShadowDir, the symbolic
	// links of a Kubernetes ConfigMap volume (NAME -> ..data/NAME, ..data
	// -> ..VERSION) and no other. Default false: every symbolic link in a
	// policy directory is refused.
	KubernetesConfigMap bool `yaml:"kubernetes_configmap"`
}

// Limits bound client input.
type Limits struct {
	// MaxHeaderBytes bounds the request line and headers (431 beyond).
	// Default 32 KiB.
	MaxHeaderBytes int `yaml:"max_header_bytes"`
	// MaxHeaders bounds the number of header fields (431 beyond). Default 100.
	MaxHeaders int `yaml:"max_headers"`
	// MaxBodyBytes bounds any request body (413 beyond), and routes'
	// body_limit. Default 1 MiB.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// MaxBodyDepth bounds the nesting of a JSON body shown to the policy
	// (400 bad_body beyond). Default 32.
	MaxBodyDepth int `yaml:"max_body_depth"`
}

// Timeouts of the agent-facing server.
type Timeouts struct {
	// ReadHeader bounds reading the request headers (slow clients).
	// Default 5s.
	ReadHeader time.Duration `yaml:"read_header"`
	// Read bounds reading a whole request. Default 60s.
	Read time.Duration `yaml:"read"`
	// Idle closes idle keep-alive connections. Default 120s.
	Idle time.Duration `yaml:"idle"`
	// Drain is how long in-flight requests may finish at shutdown.
	// Default 15s.
	Drain time.Duration `yaml:"drain"`
}

// Upstream is one API the proxy fronts.
type Upstream struct {
	// URL is the base URL, e.g. http://127.0.0.1:9000.
	URL string `yaml:"url"`
	// Timeout is the default per-request timeout (504 beyond). Default 30s.
	Timeout time.Duration `yaml:"timeout"`
	// MaxIdleConns is the keep-alive pool size. Default 256.
	MaxIdleConns int `yaml:"max_idle_conns"`
	// TLS verifies an https:// upstream: a CA bundle, an optional client
	// certificate, a pinned server name. Default: the system's roots and
	// the URL's host.
	TLS tlsx.Client `yaml:"tls"`
	// Credential is added to every request to this upstream after the
	// policy allowed it (credential.go): agents never hold it.
	Credential *Credential `yaml:"credential"`
	// Assertion signs an assertion for every route of this upstream
	// (assertion.go), unless a route says assertion: false.
	Assertion bool `yaml:"assertion"`
	// AssertionAudience is the assertions' aud. Default the upstream's URL.
	AssertionAudience string `yaml:"assertion_audience"`
}

// Route maps a method and a path template to an action and a resource.
type Route struct {
	// Name labels metrics and audit records. Default: the Match string.
	Name string `yaml:"name"`
	// Match is "METHOD /path/{param}/...", e.g. "POST /services/{name}/restart".
	Match string `yaml:"match"`
	// Action is the action name the policy sees, e.g. service.restart.
	Action string `yaml:"action"`
	// Resource is the resource, a literal or made of params: "{name}", "*".
	Resource string `yaml:"resource"`
	// Upstream names an entry of Upstreams. Default: the only upstream.
	Upstream string `yaml:"upstream"`
	// Tenant fixes the tenant of this route: passports of any other tenant
	// are refused. Default: the passport's own tenant.
	Tenant string `yaml:"tenant"`
	// Production marks routes on production systems. Default true.
	Production *bool `yaml:"production"`
	// PolicyBody sends the JSON request body to the policy. The body must
	// then be application/json (415 otherwise) holding one object that
	// every mainstream decoder reads the same way (400 bad_body
	// otherwise: internal/strictjson). Default false.
	PolicyBody bool `yaml:"policy_body"`
	// BodyNames is the rule for member names of a policy body: "folded"
	// (every name in lower-case folded form, so that "Replicas" cannot
	// reach an upstream that matches names case-insensitively while the
	// policy reads "replicas") or "distinct" (any case, for upstreams
	// with mixed-case names; two names of one object that fold to the
	// same are still refused). Default folded.
	BodyNames string `yaml:"body_names"`
	// BodyLimit bounds the request body (413 beyond). The body is read
	// whole, up to this limit, before anything is forwarded, so a framing
	// error or an oversized body is refused (400 or 413) and never
	// reaches the upstream. Default 64 KiB, at most limits.max_body_bytes.
	BodyLimit int64 `yaml:"body_limit"`
	// StreamBody streams the body to the upstream as it arrives instead
	// (for large uploads), bounded by limits.max_body_bytes: the upstream
	// may then see a request whose body breaks off. Not with policy_body;
	// form bodies are refused on such routes (415), since the proxy
	// cannot look for a method override in them. Default false.
	StreamBody bool `yaml:"stream_body"`
	// Timeout overrides the upstream's timeout.
	Timeout time.Duration `yaml:"timeout"`
	// ForwardPassport forwards the Authorization header upstream. Default
	// false: the upstream gets identity headers, not a replayable token.
	ForwardPassport bool `yaml:"forward_passport"`
	// Credential overrides the upstream's credential on this route.
	Credential *Credential `yaml:"credential"`
	// Assertion asks for a signed assertion on this route. Default: the
	// upstream's assertion setting.
	Assertion *bool `yaml:"assertion"`
	// DPoPNonce requires every DPoP proof on this route to carry a server
	// nonce (RFC 9449 §8), handed out in the DPoP-Nonce header: proofs
	// made ahead of time are then useless. Default false.
	DPoPNonce bool `yaml:"dpop_nonce"`

	// Protocol is "mcp" for a route that fronts an MCP server's Streamable
	// HTTP endpoint (docs/mcp.md): each JSON-RPC message is read and each
	// tools/call is judged as its tool's action. Default "" (plain HTTP).
	Protocol string `yaml:"protocol"`
	// Tools maps, on an mcp route, each tool name to its action and
	// resource; a resource may name arguments: "{arguments.name}". A tool
	// that is not listed is refused unless DefaultTool is set.
	Tools map[string]MCPTool `yaml:"tools"`
	// DefaultTool is the action and resource of tools that Tools does not
	// list. Default none: unlisted tools are refused.
	DefaultTool *MCPTool `yaml:"default_tool"`
}

// MCPTool is the action and resource of one MCP tool (Route.Tools).
type MCPTool struct {
	// Action is the action the policy sees, e.g. deployment.restart.
	Action string `yaml:"action"`
	// Resource is a literal, "*", or made of arguments:
	// "{arguments.namespace}/{arguments.name}".
	Resource string `yaml:"resource"`
}

// Default returns a Config with every default filled in and no routes.
func Default() Config {
	t := true
	return Config{
		Listen:                 DefaultListen,
		AdminListen:            DefaultAdminListen,
		Issuer:                 DefaultIssuer,
		Audience:               DefaultAudience,
		Leeway:                 DefaultLeeway,
		MaxLifetime:            passport.MaxLifetime,
		MaxTokenBytes:          DefaultMaxTokenBytes,
		JWKSRefresh:            5 * time.Minute,
		JWKSUnknownKIDInterval: 10 * time.Second,
		VerifyCacheSize:        10000,
		ReputationCache:        time.Second,
		RequireAgentRecord:     &t,
		OutcomeQueue:           1024,
		UnattributedTenant:     DefaultUnattributed,
		Audit:                  AuditConfig{SpoolMaxBytes: audit.DefaultSpoolMaxBytes},
		Policy:                 PolicyConfig{Timeout: 250 * time.Millisecond, PollInterval: time.Second, Engine: string(policy.Fast)},
		Delegation:             DelegationConfig{MaxDepth: DefaultDelegationDepth},
		Limits:                 Limits{MaxHeaderBytes: DefaultMaxHeaderByte, MaxHeaders: DefaultMaxHeaders, MaxBodyBytes: DefaultMaxBodyBytes, MaxBodyDepth: DefaultMaxBodyDepth},
		Timeouts:               Timeouts{ReadHeader: 5 * time.Second, Read: 60 * time.Second, Idle: 120 * time.Second, Drain: 15 * time.Second},
		PolicyHeaders:          []string{"user-agent", "content-type"},
	}
}

// LoadConfig reads a YAML file over the defaults (strict: an unknown key is
// an error naming file and line) and fills derived defaults.
func LoadConfig(path string) (Config, error) {
	c := Default()
	if err := config.Load(path, &c); err != nil {
		return c, err
	}
	c.fill()
	return c, nil
}

// fill derives defaults that depend on other fields. It is idempotent.
func (c *Config) fill() {
	d := Default()
	if c.Listen == "" {
		c.Listen = d.Listen
	}
	if c.AdminListen == "" {
		c.AdminListen = d.AdminListen
	}
	if c.Issuer == "" {
		c.Issuer = d.Issuer
	}
	if c.Audience == "" {
		c.Audience = d.Audience
	}
	if c.JWKSURL == "" {
		c.JWKSURL = strings.TrimRight(c.Issuer, "/") + "/.well-known/jwks.json"
	}
	if c.AuthorityURL == "" {
		c.AuthorityURL = c.Issuer
	}
	if c.ResourceURL == "" {
		c.ResourceURL = c.TLS.Scheme() + "://" + c.Listen
	}
	if c.Leeway == 0 {
		c.Leeway = d.Leeway
	}
	if c.MaxLifetime == 0 {
		c.MaxLifetime = d.MaxLifetime
	}
	if c.MaxTokenBytes == 0 {
		c.MaxTokenBytes = d.MaxTokenBytes
	}
	if c.JWKSRefresh == 0 {
		c.JWKSRefresh = d.JWKSRefresh
	}
	if c.JWKSUnknownKIDInterval == 0 {
		c.JWKSUnknownKIDInterval = d.JWKSUnknownKIDInterval
	}
	if c.VerifyCacheSize == 0 {
		c.VerifyCacheSize = d.VerifyCacheSize
	}
	if c.ReputationCache == 0 {
		c.ReputationCache = d.ReputationCache
	}
	if c.RequireAgentRecord == nil {
		c.RequireAgentRecord = d.RequireAgentRecord
	}
	if c.OutcomeQueue == 0 {
		c.OutcomeQueue = d.OutcomeQueue
	}
	if c.UnattributedTenant == "" {
		c.UnattributedTenant = d.UnattributedTenant
	}
	if c.Audit.SpoolMaxBytes == 0 {
		c.Audit.SpoolMaxBytes = d.Audit.SpoolMaxBytes
	}
	c.DPoP.fill()
	if c.Policy.Timeout == 0 {
		c.Policy.Timeout = d.Policy.Timeout
	}
	if c.Policy.PollInterval == 0 {
		c.Policy.PollInterval = d.Policy.PollInterval
	}
	if c.Policy.Engine == "" {
		c.Policy.Engine = d.Policy.Engine
	}
	if c.Limits.MaxHeaderBytes == 0 {
		c.Limits.MaxHeaderBytes = d.Limits.MaxHeaderBytes
	}
	if c.Limits.MaxHeaders == 0 {
		c.Limits.MaxHeaders = d.Limits.MaxHeaders
	}
	if c.Limits.MaxBodyBytes == 0 {
		c.Limits.MaxBodyBytes = d.Limits.MaxBodyBytes
	}
	if c.Limits.MaxBodyDepth == 0 {
		c.Limits.MaxBodyDepth = d.Limits.MaxBodyDepth
	}
	if c.Timeouts.ReadHeader == 0 {
		c.Timeouts.ReadHeader = d.Timeouts.ReadHeader
	}
	if c.Timeouts.Read == 0 {
		c.Timeouts.Read = d.Timeouts.Read
	}
	if c.Timeouts.Idle == 0 {
		c.Timeouts.Idle = d.Timeouts.Idle
	}
	if c.Timeouts.Drain == 0 {
		c.Timeouts.Drain = d.Timeouts.Drain
	}
	if c.PolicyHeaders == nil {
		c.PolicyHeaders = d.PolicyHeaders
	}
	if len(c.StripHeaders) == 0 {
		c.StripHeaders = nil // "strip_headers: []" is the default
	}
	for i := range c.PolicyHeaders {
		c.PolicyHeaders[i] = strings.ToLower(c.PolicyHeaders[i])
	}
	for name, u := range c.Upstreams {
		if u.Timeout == 0 {
			u.Timeout = 30 * time.Second
		}
		if u.MaxIdleConns == 0 {
			u.MaxIdleConns = 256
		}
		c.Upstreams[name] = u
	}
	for i := range c.Routes {
		r := &c.Routes[i]
		if r.Name == "" {
			r.Name = r.Match
		}
		r.fillMCP()
		if r.Upstream == "" && len(c.Upstreams) == 1 {
			for name := range c.Upstreams {
				r.Upstream = name
			}
		}
		if r.Production == nil {
			t := true
			r.Production = &t
		}
		if r.BodyLimit == 0 {
			r.BodyLimit = min(DefaultBodyLimit, c.Limits.MaxBodyBytes)
		}
		if r.BodyNames == "" {
			r.BodyNames = BodyNamesFolded
		}
		if r.Timeout == 0 {
			r.Timeout = c.Upstreams[r.Upstream].Timeout
		}
	}
}

// Values of Route.BodyNames.
const (
	BodyNamesFolded   = "folded"
	BodyNamesDistinct = "distinct"
)

var ()

// Validate reports every problem at once.
func (c *Config) Validate() error {
	c.fill()
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	for _, a := range []struct{ name, v string }{{"listen", c.Listen}, {"admin_listen", c.AdminListen}} {
		if _, _, err := net.SplitHostPort(a.v); err != nil {
			bad("%s: %q is not host:port", a.name, a.v)
		}
	}
	for _, u := range []struct{ name, v string }{{"issuer", c.Issuer}, {"jwks_url", c.JWKSURL}, {"authority_url", c.AuthorityURL}} {
		if p, err := url.Parse(u.v); err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			bad("%s: %q is not an http(s) URL", u.name, u.v)
		}
	}
	if err := c.TLS.Validate("tls"); err != nil {
		errs = append(errs, err)
	}
	if err := c.AuthorityTLS.Validate("authority_tls"); err != nil {
		errs = append(errs, err)
	}
	if !c.AuthorityTLS.IsZero() && !strings.HasPrefix(c.JWKSURL, "https://") && !strings.HasPrefix(c.AuthorityURL, "https://") {
		bad("authority_tls: set, but jwks_url and authority_url are not https")
	}
	if c.Leeway < 0 || c.Leeway > passport.MaxLeeway {
		bad("leeway: %s is outside 0..%s", c.Leeway, passport.MaxLeeway)
	}
	if c.MaxLifetime < 0 || c.MaxLifetime > passport.MaxLifetime {
		bad("max_lifetime: %s is outside 0..%s", c.MaxLifetime, passport.MaxLifetime)
	}
	if c.ReputationCache < 0 || c.ReputationCache > time.Second {
		bad("reputation_cache: %s is outside 0..1s", c.ReputationCache)
	}
	if c.MaxTokenBytes < 256 || c.MaxTokenBytes > 64<<10 {
		bad("max_token_bytes: %d is outside 256..65536", c.MaxTokenBytes)
	}
	if !passport.ValidTenant(c.UnattributedTenant) {
		bad("unattributed_tenant: %q is not a tenant name", c.UnattributedTenant)
	}
	if _, err := policy.ParseEvaluator(c.Policy.Engine); err != nil {
		bad("policy.engine: %q is neither %q nor %q", c.Policy.Engine, policy.Fast, policy.Rego)
	}
	for _, h := range c.PolicyHeaders {
		if h == "authorization" || h == "cookie" || h == "proxy-authorization" {
			bad("policy_headers: %q carries credentials and is never copied", h)
		}
	}
	errs = append(errs, c.Delegation.validate(), c.DPoP.validate())
	if c.Limits.MaxBodyDepth < 1 || c.Limits.MaxBodyDepth > 1000 {
		bad("limits.max_body_depth: %d is outside 1..1000", c.Limits.MaxBodyDepth)
	}
	for _, h := range c.StripHeaders {
		if name := strings.TrimSuffix(h, "*"); name == "" || !validHeaderName(name) {
			bad("strip_headers: %q is not a header name (or a prefix ending in *)", h)
		}
	}
	if err := c.Audit.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Redis.Validate(); err != nil {
		errs = append(errs, err)
	}
	if len(c.Upstreams) == 0 {
		bad("upstreams: at least one is required")
	}
	for name, u := range c.Upstreams {
		p, err := url.Parse(u.URL)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			bad("upstreams.%s.url: %q is not an http(s) URL", name, u.URL)
		}
		if err := u.TLS.Validate("upstreams." + name + ".tls"); err != nil {
			errs = append(errs, err)
		}
		if err == nil && p.Scheme == "http" && !u.TLS.IsZero() {
			// A CA bundle on a plain URL would look like protection.
			bad("upstreams.%s.tls: set, but the url is http://", name)
		}
	}
	if len(c.Routes) == 0 {
		bad("routes: at least one is required")
	}
	seen := map[string]string{}
	for i, r := range c.Routes {
		where := fmt.Sprintf("routes[%d] (%s)", i, r.Name)
		t, err := parseTemplate(r.Match)
		if err != nil {
			bad("%s: match: %w", where, err)
			continue
		}
		if prev, dup := seen[t.shape()]; dup {
			bad("%s: match %q overlaps route %q", where, r.Match, prev)
		}
		seen[t.shape()] = r.Name
		if !passport.ValidAction(r.Action) {
			bad("%s: action %q: want dotted lower case, e.g. service.restart", where, r.Action)
		}
		if r.Resource == "" {
			bad("%s: resource is required (a literal, \"*\" or a {param})", where)
		} else if err := t.checkResource(r.Resource); err != nil {
			bad("%s: resource: %w", where, err)
		}
		if _, ok := c.Upstreams[r.Upstream]; !ok {
			bad("%s: upstream %q is not defined", where, r.Upstream)
		}
		if r.Tenant != "" && !passport.ValidTenant(r.Tenant) {
			bad("%s: tenant %q is not a tenant name", where, r.Tenant)
		}
		if r.BodyLimit < 0 || r.BodyLimit > c.Limits.MaxBodyBytes {
			bad("%s: body_limit %d is outside 0..limits.max_body_bytes", where, r.BodyLimit)
		}
		if r.StreamBody && r.PolicyBody {
			bad("%s: stream_body and policy_body exclude each other: the policy needs the whole body", where)
		}
		if r.BodyNames != BodyNamesFolded && r.BodyNames != BodyNamesDistinct {
			bad("%s: body_names %q: want %s or %s", where, r.BodyNames, BodyNamesFolded, BodyNamesDistinct)
		}
		errs = append(errs, r.validateMCP(where, t)...)
		if r.Credential != nil {
			if err := r.Credential.validate(); err != nil {
				bad("%s: %w", where, err)
			}
		}
		u := c.Upstreams[r.Upstream]
		cred := r.Credential
		if cred == nil {
			cred = u.Credential
		}
		if cred != nil && r.ForwardPassport && (cred.Header == "" || http.CanonicalHeaderKey(cred.Header) == "Authorization") {
			bad("%s: forward_passport and a credential in Authorization exclude each other", where)
		}
		if r.StreamBody && (r.Assertion != nil && *r.Assertion || r.Assertion == nil && u.Assertion) {
			bad("%s: stream_body and an assertion exclude each other: the assertion holds the body's digest", where)
		}
	}
	for name, u := range c.Upstreams {
		if u.Credential != nil {
			if err := u.Credential.validate(); err != nil {
				bad("upstreams.%s: %w", name, err)
			}
		}
	}
	if c.Assertion.Lifetime < 0 || c.Assertion.Lifetime > maxAssertionLifetime {
		bad("assertion.lifetime %v: want at most %v", c.Assertion.Lifetime, maxAssertionLifetime)
	}
	if c.Assertion.Header != "" && !validHeaderName(c.Assertion.Header) {
		bad("assertion.header %q is not a header name", c.Assertion.Header)
	}
	if err := c.Approvals.validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// FleetRoutes are the routes of the demo fleet's control API (the
// contract in ARCHITECTURE.md), all on the upstream named "fleet".
func FleetRoutes() []Route {
	f := false
	return []Route{
		{Match: "GET /services", Action: "service.list", Resource: "*"},
		{Match: "GET /services/{name}", Action: "service.get", Resource: "{name}"},
		{Match: "POST /services/{name}/restart", Action: "service.restart", Resource: "{name}"},
		{Match: "POST /services/{name}/scale", Action: "service.scale", Resource: "{name}", PolicyBody: true},
		{Match: "POST /deployments/{name}", Action: "deployment.deploy", Resource: "{name}", PolicyBody: true},
		{Match: "POST /deployments/{name}/rollback", Action: "deployment.rollback", Resource: "{name}"},
		{Match: "POST /caches/{name}/warm", Action: "cache.warm", Resource: "{name}"},
		{Match: "POST /faults/{name}", Action: "chaos.inject", Resource: "{name}", PolicyBody: true, Production: &f},
		{Match: "DELETE /faults/{name}", Action: "chaos.clear", Resource: "{name}", Production: &f},
	}
}

// FleetConfig is Default() fronting the demo fleet at fleetURL with
// FleetRoutes: what `passport up` and a bare `passport proxy` run.
func FleetConfig(fleetURL string) Config {
	c := Default()
	c.Upstreams = map[string]Upstream{"fleet": {URL: fleetURL}}
	c.Routes = FleetRoutes()
	return c
}

// validHeaderName reports whether s is an RFC 9110 field name (a token).
func validHeaderName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return s != ""
}
