package authority

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/agentpassport/passport/passport"
)

// Kinds of trusted issuer. The kind checks the shape of subjects and
// claims and chooses the replay default (docs/enrollment.md).
const (
	IssuerKindOIDC       = "oidc"       // any OIDC-style issuer: the generic checks only
	IssuerKindKubernetes = "kubernetes" // service-account tokens: system:serviceaccount:<ns>:<sa>
	IssuerKindGitHub     = "github"     // GitHub Actions OIDC tokens: repo:<owner>/<repo>:...
	IssuerKindSPIFFE     = "spiffe"     // JWT-SVIDs: spiffe://<trust domain>/<path>
)

// Replay modes of a trusted issuer.
const (
	// ReplayOnce accepts each token once: its jti (or, without one, a
	// hash of its signed part) is remembered in Redis until it expires.
	ReplayOnce = "once"
	// ReplayReuse accepts a token again within its lifetime, as the
	// issuer intends (Kubernetes projected tokens and SPIRE's cached
	// JWT-SVIDs are reused until refreshed).
	ReplayReuse = "reuse"
)

// Limits and defaults of trusted issuers.
const (
	DefaultEnrollMaxLifetime = time.Hour
	MaxEnrollMaxLifetime     = 24 * time.Hour
	DefaultJWKSRefresh       = 10 * time.Minute
	DefaultJWKSMinRefresh    = 30 * time.Second
	// maxSubjectBytes bounds an external subject (and a rule's pattern).
	maxSubjectBytes = 512
)

// DefaultEnrollAlgorithms are the signature algorithms a trusted issuer's
// tokens may use unless its algorithms list says otherwise: what
// Kubernetes (RS256, ES256), GitHub Actions (RS256) and SPIRE (ES256,
// RS256) sign with, plus EdDSA.
var DefaultEnrollAlgorithms = []string{"RS256", "PS256", "ES256", "ES384", "EdDSA"}

// enrollAlgorithms are every algorithm a trusted issuer may be allowed.
// Never "none" and never HMAC: a shared secret cannot be published in a
// JWKS, and HS256 keyed with a public key is the classic forgery.
var enrollAlgorithms = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// TrustedIssuer is an external identity provider whose signed tokens the
// token endpoint takes as proof of a workload's identity: with the RFC
// 7523 JWT-bearer grant (grant_type
// urn:ietf:params:oauth:grant-type:jwt-bearer, assertion=<token>) or as a
// client assertion (client_assertion_type
// urn:ietf:params:oauth:client-assertion-type:jwt-bearer). Its rules map a
// verified subject to an agent. See docs/enrollment.md.
type TrustedIssuer struct {
	// Name labels the issuer in metrics and logs (bounded: it comes from
	// this file, never from a token). Default: the issuer URL's host, or
	// issuer-<n>.
	Name string `yaml:"name"`
	// Issuer is the exact "iss" of the tokens. Required.
	Issuer string `yaml:"issuer"`
	// Kind is oidc (default), kubernetes, github or spiffe.
	Kind string `yaml:"kind"`
	// Exactly one of JWKSFile (a JWKS on disk, re-read on refresh),
	// JWKSURL (https only) and Discovery (issuer +
	// /.well-known/openid-configuration, whose issuer must equal Issuer
	// and whose jwks_uri must be https).
	JWKSFile  string `yaml:"jwks_file"`
	JWKSURL   string `yaml:"jwks_url"`
	Discovery bool   `yaml:"discovery"`
	// CAFile holds PEM roots for the HTTPS fetches (the cluster's ca.crt
	// for a Kubernetes API server). Default: the system roots.
	CAFile string `yaml:"ca_file"`
	// BearerTokenFile, when set, is read on every fetch and sent as
	// "Authorization: Bearer" to the discovery and JWKS URLs (a Kubernetes
	// API server may require it). Default none.
	BearerTokenFile string `yaml:"bearer_token_file"`
	// Audiences: the token's "aud" must name at least one. Required. Use
	// a value that names this authority (its issuer URL), so that a token
	// minted for something else is never accepted here.
	Audiences []string `yaml:"audiences"`
	// Algorithms the tokens may be signed with; each key is further
	// pinned to its JWK's "alg" and key type. Default
	// DefaultEnrollAlgorithms. HMAC and "none" are refused.
	Algorithms []string `yaml:"algorithms"`
	// MaxLifetime caps a token's exp - iat. Default 1h, at most 24h.
	MaxLifetime time.Duration `yaml:"max_lifetime"`
	// Replay is once or reuse. Default: reuse for kubernetes and spiffe
	// (their tokens are reused by design until refreshed), once
	// otherwise.
	Replay string `yaml:"replay"`
	// JWKSRefresh: keys older than this are fetched again before use.
	// A set that cannot be refreshed serves until twice this age, then
	// tokens are refused (fail closed). Default 10m.
	JWKSRefresh time.Duration `yaml:"jwks_refresh"`
	// JWKSMinRefresh: an unknown kid fetches the keys again at most once
	// per this interval, so made-up kids cannot make the authority hammer
	// the issuer. Default 30s.
	JWKSMinRefresh time.Duration `yaml:"jwks_min_refresh"`
	// Rules map a verified subject to an agent; the first that matches
	// wins. At least one.
	Rules []EnrollRule `yaml:"rules"`
}

// EnrollRule maps external subjects to one agent, or registers one agent
// per subject on first use.
type EnrollRule struct {
	// Subject is an exact subject or a pattern (docs/enrollment.md): the
	// subject is split at ':' and '/'; "*" stands for exactly one whole
	// non-empty segment and "**", only at the end, for one or more. A
	// '*' inside a segment ("prod*") is refused, so a pattern can never
	// reach into a neighbouring name.
	Subject string `yaml:"subject"`
	// Claims must each be present in the token as a string matching the
	// value (exact, or a pattern as for Subject), e.g. GitHub's
	// repository and workflow_ref. Default none.
	Claims map[string]string `yaml:"claims"`
	// Tenant the agent belongs to. Required.
	Tenant string `yaml:"tenant"`
	// Agent is the id of a registered agent of Tenant. Exactly one of
	// Agent and Register.
	Agent string `yaml:"agent"`
	// Register registers one agent per subject on its first use.
	Register *EnrollRegister `yaml:"register"`
}

// EnrollRegister says what an agent registered on first use is.
type EnrollRegister struct {
	// Type is an agent type (built in or from agent_types). Required.
	Type string `yaml:"type"`
	// TrustCeiling is the agent's trust level, and a cap on every
	// passport issued through this rule even if an admin raises the
	// agent's level later. Required.
	TrustCeiling passport.TrustLevel `yaml:"trust_ceiling"`
	// Capabilities narrow the type's default capabilities. Default: the
	// type's.
	Capabilities []string `yaml:"capabilities"`
}

// withDefaults fills the defaults of ti (the i-th issuer).
func (ti TrustedIssuer) withDefaults(i int) TrustedIssuer {
	if ti.Kind == "" {
		ti.Kind = IssuerKindOIDC
	}
	if ti.Name == "" {
		ti.Name = fmt.Sprintf("issuer-%d", i)
		if u, err := url.Parse(ti.Issuer); err == nil && u.Hostname() != "" {
			ti.Name = u.Hostname()
		}
	}
	if len(ti.Algorithms) == 0 {
		ti.Algorithms = DefaultEnrollAlgorithms
	}
	if ti.MaxLifetime == 0 {
		ti.MaxLifetime = DefaultEnrollMaxLifetime
	}
	if ti.Replay == "" {
		ti.Replay = ReplayOnce
		if ti.Kind == IssuerKindKubernetes || ti.Kind == IssuerKindSPIFFE {
			ti.Replay = ReplayReuse
		}
	}
	if ti.JWKSRefresh == 0 {
		ti.JWKSRefresh = DefaultJWKSRefresh
	}
	if ti.JWKSMinRefresh == 0 {
		ti.JWKSMinRefresh = DefaultJWKSMinRefresh
	}
	return ti
}

// validateTrustedIssuers reports every problem of the trusted_issuers
// block; types are the agent types and actions the known actions.
func (c Config) validateTrustedIssuers(types map[string][]string) []error {
	var errs []error
	names := map[string]bool{}
	issuers := map[string]bool{}
	for i, raw := range c.TrustedIssuers {
		ti := raw.withDefaults(i)
		p := fmt.Sprintf("trusted_issuers[%d]", i)
		bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(p+": "+format, args...)) }
		switch {
		case ti.Issuer == "":
			bad("issuer is required")
		case !printable(ti.Issuer, 1024) || strings.ContainsAny(ti.Issuer, " \t"):
			bad("issuer: want printable characters without spaces")
		case ti.Issuer == c.Issuer || strings.TrimRight(ti.Issuer, "/") == strings.TrimRight(c.Issuer, "/"):
			bad("issuer is this authority's own issuer; its passports are not workload identities")
		case issuers[ti.Issuer]:
			bad("issuer %q appears twice", ti.Issuer)
		}
		issuers[ti.Issuer] = true
		if !nameOK(ti.Name) {
			bad("name %q: want 1-64 letters, digits, '-', '_' or '.'", ti.Name)
		} else if names[ti.Name] {
			bad("name %q appears twice", ti.Name)
		}
		names[ti.Name] = true
		if !slices.Contains([]string{IssuerKindOIDC, IssuerKindKubernetes, IssuerKindGitHub, IssuerKindSPIFFE}, ti.Kind) {
			bad("kind %q: want oidc, kubernetes, github or spiffe", ti.Kind)
		}
		sources := 0
		for _, set := range []bool{ti.JWKSFile != "", ti.JWKSURL != "", ti.Discovery} {
			if set {
				sources++
			}
		}
		if sources != 1 {
			bad("want exactly one of jwks_file, jwks_url and discovery")
		}
		if ti.JWKSURL != "" && !httpsURL(ti.JWKSURL) {
			bad("jwks_url: want an https:// URL")
		}
		if ti.Discovery && !httpsURL(ti.Issuer) {
			bad("discovery: the issuer must be an https:// URL")
		}
		if ti.JWKSFile != "" && (ti.CAFile != "" || ti.BearerTokenFile != "") {
			bad("ca_file and bearer_token_file apply to jwks_url and discovery only")
		}
		if len(ti.Audiences) == 0 {
			bad("audiences: at least one is needed")
		}
		for j, aud := range ti.Audiences {
			if aud == "" || !printable(aud, 1024) {
				bad("audiences[%d]: want a non-empty printable string", j)
			}
		}
		for _, alg := range ti.Algorithms {
			if !slices.Contains(enrollAlgorithms, alg) {
				bad("algorithms: %q is not accepted (want some of %s; never none or HMAC)", alg, strings.Join(enrollAlgorithms, ", "))
			}
		}
		if ti.MaxLifetime < time.Minute || ti.MaxLifetime > MaxEnrollMaxLifetime {
			bad("max_lifetime %v: want 1m to %v", ti.MaxLifetime, MaxEnrollMaxLifetime)
		}
		if ti.Replay != ReplayOnce && ti.Replay != ReplayReuse {
			bad("replay %q: want once or reuse", ti.Replay)
		}
		if ti.JWKSRefresh < time.Second || ti.JWKSMinRefresh < time.Second || ti.JWKSMinRefresh > ti.JWKSRefresh {
			bad("want 1s <= jwks_min_refresh <= jwks_refresh")
		}
		if len(ti.Rules) == 0 {
			bad("rules: at least one is needed")
		}
		for j, r := range ti.Rules {
			for _, err := range r.validate(ti.Kind, types) {
				errs = append(errs, fmt.Errorf("%s.rules[%d]: %w", p, j, err))
			}
		}
	}
	return errs
}

func (r EnrollRule) validate(kind string, types map[string][]string) []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if _, err := parsePattern(r.Subject); err != nil {
		bad("subject: %v", err)
	} else if kind == IssuerKindKubernetes && !strings.HasPrefix(r.Subject, "system:serviceaccount:") {
		bad("subject: a kubernetes subject starts with system:serviceaccount:")
	} else if kind == IssuerKindSPIFFE && !strings.HasPrefix(r.Subject, "spiffe://") {
		bad("subject: a spiffe subject starts with spiffe://")
	} else if kind == IssuerKindGitHub && !strings.HasPrefix(r.Subject, "repo:") {
		bad("subject: a github subject starts with repo:")
	}
	for name, v := range r.Claims {
		if reservedClaims[name] || name == "" || !printable(name, 64) {
			bad("claims: %q cannot be matched (iss, sub, aud and the times are checked by the authority itself)", name)
		}
		if _, err := parsePattern(v); err != nil {
			bad("claims.%s: %v", name, err)
		}
	}
	if !ValidTenant(r.Tenant) {
		bad("tenant %q: want lowercase letters, digits, '-' or '_'", r.Tenant)
	}
	switch {
	case (r.Agent == "") == (r.Register == nil):
		bad("want exactly one of agent and register")
	case r.Agent != "" && !validAgentID(r.Agent):
		bad("agent %q: want an agent id (agt_...)", r.Agent)
	case r.Register != nil:
		caps, ok := types[r.Register.Type]
		if !ok {
			bad("register.type %q: want one of %s", r.Register.Type, strings.Join(sortedKeys(types), ", "))
		}
		if !r.Register.TrustCeiling.Valid() {
			bad("register.trust_ceiling %q: want LOW, MEDIUM or HIGH", r.Register.TrustCeiling)
		}
		for _, c := range r.Register.Capabilities {
			if ok && !slices.Contains(caps, c) {
				bad("register.capabilities: %q is not a capability of type %s", c, r.Register.Type)
			}
		}
	}
	return errs
}

// reservedClaims are checked by the authority and cannot be matched by a
// rule's claims.
var reservedClaims = map[string]bool{"iss": true, "sub": true, "aud": true, "exp": true, "iat": true, "nbf": true, "jti": true}

func httpsURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && u.Scheme == "https" && u.Host != "" && u.User == nil && u.Fragment == ""
}

// printable: valid UTF-8, 1 to max bytes, no control characters.
func printable(s string, max int) bool {
	if s == "" || len(s) > max || !utf8.ValidString(s) {
		return false
	}
	for _, c := range s {
		if !unicode.IsPrint(c) {
			return false
		}
	}
	return true
}

// pattern is a parsed subject or claim pattern: an alternation of
// segments and separators (':' or '/'), as a subject is split.
type pattern struct {
	parts []string // even indexes: segments ("*", "**" or literal); odd: separators
	exact string   // set when the pattern has no wildcard
	rest  bool     // ends with "**"
}

var errEmptyPattern = errors.New("empty")

// parsePattern checks a rule pattern. A wildcard must be a whole
// segment; "**" only the last one.
func parsePattern(s string) (*pattern, error) {
	if s == "" {
		return nil, errEmptyPattern
	}
	if !printable(s, maxSubjectBytes) {
		return nil, fmt.Errorf("want 1-%d printable characters", maxSubjectBytes)
	}
	parts := splitSegments(s)
	p := &pattern{parts: parts}
	wild := false
	for i := 0; i < len(parts); i += 2 {
		seg := parts[i]
		switch {
		case seg == "*":
			wild = true
		case seg == "**":
			if i != len(parts)-1 {
				return nil, errors.New(`"**" may only be the last segment`)
			}
			wild, p.rest = true, true
		case strings.Contains(seg, "*"):
			return nil, fmt.Errorf("%q: a wildcard must be a whole segment between ':' or '/' (write \"*\", not \"prod*\")", seg)
		}
	}
	if !wild {
		p.exact = s
	}
	return p, nil
}

// splitSegments splits s at ':' and '/', keeping the separators at odd
// indexes: "a:b/c" is [a : b / c]. Empty segments are kept.
func splitSegments(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == ':' || s[i] == '/' {
			out = append(out, s[start:i], s[i:i+1])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// match reports whether s matches the pattern. Separators must be equal
// one for one; "*" matches one non-empty segment, "**" one or more
// segments with whatever separators, and a literal segment only itself
// (bytewise: no case folding, no normalisation).
func (p *pattern) match(s string) bool {
	if p.exact != "" {
		return s == p.exact
	}
	got := splitSegments(s)
	for i, want := range p.parts {
		if i%2 == 0 && want == "**" {
			// One or more segments, none empty.
			if len(got) <= i {
				return false
			}
			for j := i; j < len(got); j += 2 {
				if got[j] == "" {
					return false
				}
			}
			return true
		}
		if i >= len(got) {
			return false
		}
		switch {
		case i%2 == 1 || want != "*":
			if got[i] != want {
				return false
			}
		case got[i] == "":
			return false
		}
	}
	return len(got) == len(p.parts)
}
