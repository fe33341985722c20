package authority

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/strictjson"
	"github.com/agentpassport/passport/passport"
)

// Workload identity enrollment (docs/enrollment.md). A workload that
// already holds a signed identity — a Kubernetes service-account token, a
// GitHub Actions OIDC token, a SPIFFE JWT-SVID — trades it for a passport:
//
//   - with the RFC 7523 JWT-bearer grant: grant_type
//     urn:ietf:params:oauth:grant-type:jwt-bearer and assertion=<token>,
//     no other client credentials;
//   - or as client authentication (RFC 7523 §2.2) with any grant:
//     client_assertion_type urn:ietf:params:oauth:client-assertion-type:jwt-bearer
//     and client_assertion=<token>, when the token's issuer is a trusted
//     issuer (an agent's own private_key_jwt assertion has iss = sub = its
//     client id, which no trusted issuer is).
//
// The token is checked strictly (verifyExternal), its subject mapped by the
// issuer's first matching rule to a registered agent, or to one agent
// registered for that subject on first use (registerOnFirstUse), and the
// passport is issued to that agent as with client credentials, capped by
// the rule's trust ceiling and never outliving the token.

// GrantTypeJWTBearer is the RFC 7523 §2.1 grant type.
const GrantTypeJWTBearer = "urn:ietf:params:oauth:grant-type:jwt-bearer"

// Client authentication "methods" of the enrollment paths, as metrics and
// logs name them.
const (
	authJWTBearer   = "jwt_bearer"   // the grant: the assertion is the whole credential
	authWorkloadJWT = "workload_jwt" // client_assertion from a trusted issuer
)

// maxExternalTokenBytes bounds an external token (a Kubernetes token is
// about 1 KB, a GitHub Actions one under 2 KB).
const maxExternalTokenBytes = maxParam

// enrollError is a refused external token. reason is a bounded snake_case
// word for metrics and logs; desc a fixed sentence safe for the client.
type enrollError struct{ reason, desc string }

func (e *enrollError) Error() string { return e.desc }

// Refusals of an external token.
var (
	errExtMalformed = &enrollError{"malformed", "the assertion is not a well-formed signed JWT"}
	errExtIssuer    = &enrollError{"unknown_issuer", "the assertion's issuer is not trusted here"}
	errExtHeader    = &enrollError{"bad_header", "the assertion's header is not acceptable"}
	errExtAlg       = &enrollError{"bad_algorithm", "the assertion's algorithm is not accepted for its key"}
	errExtKey       = &enrollError{"unknown_key", "the assertion's signing key is unknown"}
	errExtSig       = &enrollError{"bad_signature", "the assertion's signature is invalid"}
	errExtClaims    = &enrollError{"bad_claims", "the assertion's claims are not acceptable"}
	errExtAudience  = &enrollError{"bad_audience", "the assertion is not meant for this authority"}
	errExtExpired   = &enrollError{"expired", "the assertion has expired"}
	errExtNotYet    = &enrollError{"not_yet_valid", "the assertion is not valid yet"}
	errExtLifetime  = &enrollError{"lifetime_too_long", "the assertion lives longer than this authority accepts"}
	errExtSubject   = &enrollError{"bad_subject", "the assertion's subject is not acceptable"}
	errExtNoRule    = &enrollError{"no_rule", "no enrollment rule maps this identity to an agent"}
	errExtReplay    = &enrollError{"replayed", "the assertion has been used before"}
	errExtNoAgent   = &enrollError{"agent_missing", "the agent this identity maps to does not exist"}
	errExtClientID  = &enrollError{"client_id_mismatch", "the assertion maps to another agent than client_id"}
)

// trustedIssuer is a configured issuer, ready to verify.
type trustedIssuer struct {
	cfg   TrustedIssuer
	keys  *issuerKeys
	rules []enrollRule
}

type enrollRule struct {
	EnrollRule
	index   int
	subject *pattern
	claims  map[string]*pattern
}

// extIdentity is an external token that passed every check.
type extIdentity struct {
	iss     *trustedIssuer
	subject string
	claims  map[string]any
	exp     time.Time
	jti     string
	// signed is header.payload, the part the signature covers.
	signed string
}

// extGrant is what an enrollment puts on the passport: a rule's ceiling
// and the token's expiry, and the token to spend before issuing.
type extGrant struct {
	id      *extIdentity
	rule    *enrollRule
	ceiling passport.TrustLevel // "" for an agent rule
	created bool                // the agent was registered by this request
}

// capGrant lowers g to what the external identity allows: a trust level no
// higher than the rule's ceiling and an exp no later than the token's.
func (x *extGrant) capGrant(g *grant) {
	exp := x.id.exp.Truncate(time.Second)
	if g.maxExp.IsZero() || exp.Before(g.maxExp) {
		g.maxExp = exp
	}
	if x.ceiling.Valid() {
		if g.maxTrust.Valid() {
			g.maxTrust = g.maxTrust.Min(x.ceiling)
		} else {
			g.maxTrust = x.ceiling
		}
	}
}

// enrollment is the authority's enrollment state.
type enrollment struct {
	issuers map[string]*trustedIssuer // by exact iss
	ordered []*trustedIssuer
	results *prometheus.CounterVec
	fetches *prometheus.CounterVec
}

// initEnrollment prepares the trusted issuers (Validate has checked them)
// and registers the enrollment metrics. It fetches nothing.
func (a *Authority) initEnrollment() error {
	e := &enrollment{issuers: map[string]*trustedIssuer{}}
	e.results = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "passport_authority_enrollments_total",
		Help: "External workload tokens presented, by trusted issuer (its configured name, or unknown) and result: enrolled, registered (first use), or the refusal reason.",
	}, []string{"issuer", "result"})
	e.fetches = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "passport_authority_enrollment_key_fetches_total",
		Help: "Fetches of trusted issuers' keys, by issuer and result (ok, error).",
	}, []string{"issuer", "result"})
	for _, c := range []prometheus.Collector{e.results, e.fetches} {
		if err := a.reg.Register(c); err != nil {
			return err
		}
	}
	for i, raw := range a.cfg.TrustedIssuers {
		cfg := raw.withDefaults(i)
		name := cfg.Name
		keys, err := newIssuerKeys(cfg, a.now, a.log, func(result string) { e.fetches.WithLabelValues(name, result).Inc() })
		if err != nil {
			return err
		}
		ti := &trustedIssuer{cfg: cfg, keys: keys}
		for j, r := range cfg.Rules {
			sub, _ := parsePattern(r.Subject)
			er := enrollRule{EnrollRule: r, index: j, subject: sub, claims: map[string]*pattern{}}
			for k, v := range r.Claims {
				er.claims[k], _ = parsePattern(v)
			}
			ti.rules = append(ti.rules, er)
		}
		e.issuers[cfg.Issuer] = ti
		e.ordered = append(e.ordered, ti)
	}
	a.enroll = e
	return nil
}

// count records one presented external token.
func (a *Authority) countEnrollment(ti *trustedIssuer, err error, result string) {
	issuer := "unknown"
	if ti != nil {
		issuer = ti.cfg.Name
	}
	var ee *enrollError
	switch {
	case errors.As(err, &ee):
		result = ee.reason
	case errors.Is(err, errKeysUnavailable):
		result = "keys_unavailable"
	case err != nil:
		result = "error"
	}
	a.enroll.results.WithLabelValues(issuer, result).Inc()
}

// peekIssuer reads the unverified "iss" of a compact JWT: it only chooses
// which issuer's keys verify the token, and nothing else is believed
// before the signature has been checked.
func peekIssuer(raw string) string {
	_, p, _, ok := passport.SplitCompact(raw)
	if !ok || len(raw) > maxExternalTokenBytes {
		return ""
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(p)
	if err != nil {
		return ""
	}
	var c struct {
		Iss string `json:"iss"`
	}
	if json.Unmarshal(b, &c) != nil {
		return ""
	}
	return c.Iss
}

// isExternal reports whether a client assertion comes from a trusted issuer.
func (a *Authority) isExternal(raw string) bool {
	if len(a.enroll.ordered) == 0 {
		return false
	}
	_, ok := a.enroll.issuers[peekIssuer(raw)]
	return ok
}

// forbiddenExtHeaders point at or carry keys. A token never chooses its
// own key: keys come from the configured JWKS only.
var forbiddenExtHeaders = []string{"jku", "x5u", "jwk", "x5c"}

// verifyExternal checks an external token completely: compact form and
// strict JSON (no duplicate member, no case-folded twin); iss exactly a
// trusted issuer; no key pointer and no crit in the header, typ absent or
// JWT/JOSE; alg one of the issuer's algorithms and the one its key allows;
// kid required and looked up exactly; the signature; aud naming one of the
// issuer's audiences; exp and iat required, nbf and iat not in the future
// beyond the leeway, exp - iat within the issuer's max lifetime; the
// subject (and for Kubernetes and GitHub the claims it repeats) in the
// shape of the issuer's kind. It returns the identity, an *enrollError, or
// errKeysUnavailable.
func (a *Authority) verifyExternal(ctx context.Context, raw string) (*extIdentity, *trustedIssuer, error) {
	if len(raw) > maxExternalTokenBytes {
		return nil, nil, errExtMalformed
	}
	h, p, s, ok := passport.SplitCompact(raw)
	if !ok {
		return nil, nil, errExtMalformed
	}
	dec := base64.RawURLEncoding.Strict()
	hdrJSON, err1 := dec.DecodeString(h)
	payJSON, err2 := dec.DecodeString(p)
	sig, err3 := dec.DecodeString(s)
	if err1 != nil || err2 != nil || err3 != nil {
		return nil, nil, errExtMalformed
	}
	hdr, err := decodeObject(hdrJSON, 4)
	if err != nil {
		return nil, nil, errExtHeader
	}
	claims, err := decodeObject(payJSON, 16)
	if err != nil {
		return nil, nil, errExtClaims
	}
	iss, _ := claims["iss"].(string)
	ti := a.enroll.issuers[iss]
	if ti == nil {
		return nil, nil, errExtIssuer
	}

	for _, name := range forbiddenExtHeaders {
		if _, ok := hdr[name]; ok {
			return nil, ti, errExtHeader
		}
	}
	if _, ok := hdr["crit"]; ok {
		return nil, ti, errExtHeader // no extension is understood (RFC 7515 §4.1.11)
	}
	if typ, ok := hdr["typ"]; ok {
		// An explicit type other than a plain JWT (at+jwt, dpop+jwt, ...)
		// is a token minted for another purpose.
		t, _ := typ.(string)
		if !strings.EqualFold(t, "JWT") && !strings.EqualFold(t, "JOSE") {
			return nil, ti, errExtHeader
		}
	}
	alg, _ := hdr["alg"].(string)
	if !slices.Contains(ti.cfg.Algorithms, alg) {
		return nil, ti, errExtAlg
	}
	kid, _ := hdr["kid"].(string)
	if kid == "" || len(kid) > 256 {
		return nil, ti, errExtHeader
	}
	key, err := ti.keys.key(ctx, kid)
	switch {
	case errors.Is(err, errNoSuchKey):
		return nil, ti, errExtKey
	case err != nil:
		return nil, ti, err
	}
	if (key.alg != "" && key.alg != alg) || !algFits(alg, key.pub) {
		return nil, ti, errExtAlg
	}
	method := jwt.GetSigningMethod(alg)
	if method == nil {
		return nil, ti, errExtAlg
	}
	if err := method.Verify(h+"."+p, sig, key.pub); err != nil {
		return nil, ti, errExtSig
	}

	id := &extIdentity{iss: ti, claims: claims, signed: h + "." + p}
	if err := a.checkExternalClaims(ti, id); err != nil {
		return nil, ti, err
	}
	return id, ti, nil
}

func decodeObject(b []byte, depth int) (map[string]any, error) {
	v, err := strictjson.Decode(b, strictjson.Options{Object: true, MaxDepth: depth})
	if err != nil {
		return nil, err
	}
	return v.(map[string]any), nil
}

// checkExternalClaims checks the registered claims and the subject.
func (a *Authority) checkExternalClaims(ti *trustedIssuer, id *extIdentity) error {
	c := id.claims
	exp, okExp := numericDate(c["exp"])
	iat, okIat := numericDate(c["iat"])
	if !okExp || !okIat {
		return errExtClaims
	}
	var nbf time.Time
	if v, ok := c["nbf"]; ok {
		if nbf, ok = numericDate(v); !ok {
			return errExtClaims
		}
	}
	if !audienceOK(c["aud"], ti.cfg.Audiences) {
		return errExtAudience
	}
	sub, _ := c["sub"].(string)
	if !printable(sub, maxSubjectBytes) {
		return errExtSubject
	}
	if v, ok := c["jti"]; ok {
		jti, _ := v.(string)
		if !printable(jti, 256) {
			return errExtClaims
		}
		id.jti = jti
	}
	now, leeway := a.now(), a.cfg.Passport.Leeway
	switch {
	case !now.Before(exp):
		// No leeway on expiry: the passport would be capped at exp anyway.
		return errExtExpired
	case iat.After(now.Add(leeway)), !nbf.IsZero() && nbf.After(now.Add(leeway)):
		return errExtNotYet
	case !exp.After(iat):
		return errExtClaims
	case exp.Sub(iat) > ti.cfg.MaxLifetime:
		return errExtLifetime
	}
	if err := checkKind(ti.cfg.Kind, sub, c); err != nil {
		return err
	}
	id.subject, id.exp = sub, exp
	return nil
}

// numericDate reads a JSON number of seconds (RFC 7519 §2).
func numericDate(v any) (time.Time, bool) {
	n, ok := v.(json.Number)
	if !ok {
		return time.Time{}, false
	}
	f, err := n.Float64()
	if err != nil || math.IsNaN(f) || f <= 0 || f > 1e11 {
		return time.Time{}, false
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), true
}

// audienceOK: aud is a string or an array of strings (RFC 7519 §4.1.3),
// one of which is configured.
func audienceOK(v any, want []string) bool {
	switch aud := v.(type) {
	case string:
		return slices.Contains(want, aud)
	case []any:
		if len(aud) > 32 {
			return false
		}
		for _, x := range aud {
			if s, ok := x.(string); ok && slices.Contains(want, s) {
				return true
			}
		}
	}
	return false
}

// checkKind checks the subject's shape for the issuer's kind, and that
// claims repeating parts of it agree with it.
func checkKind(kind, sub string, c map[string]any) error {
	switch kind {
	case IssuerKindKubernetes:
		parts := strings.Split(sub, ":")
		if len(parts) != 4 || parts[0] != "system" || parts[1] != "serviceaccount" || !dnsLabel(parts[2]) || !dnsSubdomain(parts[3]) {
			return errExtSubject
		}
		// The API server also says who in "kubernetes.io"; if present, it
		// must agree with sub.
		if k8s, ok := c["kubernetes.io"].(map[string]any); ok {
			if ns, ok := k8s["namespace"]; ok && ns != parts[2] {
				return errExtSubject
			}
			if sa, ok := k8s["serviceaccount"].(map[string]any); ok {
				if name, ok := sa["name"]; ok && name != parts[3] {
					return errExtSubject
				}
			}
		}
	case IssuerKindGitHub:
		repo, _ := c["repository"].(string)
		if repo == "" || !strings.HasPrefix(sub, "repo:"+repo+":") {
			return errExtSubject
		}
	case IssuerKindSPIFFE:
		if !validSPIFFEID(sub) {
			return errExtSubject
		}
	}
	return nil
}

// dnsLabel: an RFC 1123 label (a Kubernetes namespace).
func dnsLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// dnsSubdomain: an RFC 1123 subdomain (a service account name).
func dnsSubdomain(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if !dnsLabel(l) {
			return false
		}
	}
	return true
}

// validSPIFFEID checks a SPIFFE ID as the SPIFFE-ID standard defines it:
// spiffe://, a lower-case trust domain, and a path of non-empty segments
// of letters, digits, '.', '-' and '_' that are not "." or "..".
func validSPIFFEID(s string) bool {
	rest, ok := strings.CutPrefix(s, "spiffe://")
	if !ok || len(s) > 2048 {
		return false
	}
	td, path, _ := strings.Cut(rest, "/")
	if td == "" || len(td) > 255 {
		return false
	}
	for _, c := range td {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	if path == "" {
		return !strings.HasSuffix(rest, "/")
	}
	for _, seg := range strings.Split(path, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
		for _, c := range seg {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// matchRule returns the issuer's first rule that matches the identity.
func (ti *trustedIssuer) matchRule(id *extIdentity) *enrollRule {
next:
	for i := range ti.rules {
		r := &ti.rules[i]
		if !r.subject.match(id.subject) {
			continue
		}
		for name, p := range r.claims {
			v, ok := id.claims[name].(string)
			if !ok || !p.match(v) {
				continue next
			}
		}
		return r
	}
	return nil
}

// externalAgent verifies an external token and finds (or registers) the
// agent it maps to. clientID, when the request names one, must be that
// agent.
func (a *Authority) externalAgent(ctx context.Context, raw, clientID string) (*agentRecord, *extGrant, error) {
	id, ti, err := a.verifyExternal(ctx, raw)
	if err != nil {
		a.countEnrollment(ti, err, "")
		// Debug only: anyone can send tokens, and the metric counts them.
		a.log.DebugContext(ctx, "external token refused", "err", err)
		return nil, nil, err
	}
	rule := ti.matchRule(id)
	if rule == nil {
		a.countEnrollment(ti, errExtNoRule, "")
		a.log.InfoContext(ctx, "external identity matches no enrollment rule", "issuer", ti.cfg.Name, "subject", id.subject)
		return nil, nil, errExtNoRule
	}
	x := &extGrant{id: id, rule: rule}
	var agent *agentRecord
	if rule.Register != nil {
		x.ceiling = rule.Register.TrustCeiling
		agent, x.created, err = a.registerOnFirstUse(ctx, ti, rule, id)
	} else {
		agent, err = a.getAgent(ctx, rule.Tenant, rule.Agent)
		if errors.Is(err, ErrAgentNotFound) {
			a.log.WarnContext(ctx, "enrollment rule names an agent that does not exist", "issuer", ti.cfg.Name, "rule", rule.index,
				"tenant", rule.Tenant, "agent_id", rule.Agent)
			err = errExtNoAgent
		}
	}
	if err == nil && clientID != "" && clientID != agent.ID {
		err = errExtClientID
	}
	if err != nil {
		a.countEnrollment(ti, err, "")
		return nil, nil, err
	}
	return agent, x, nil
}

// accepted counts and logs an external token that got its agent through:
// "registered" when this request registered the agent, else "enrolled".
// Refusals are counted where they happen, so each token counts once.
func (a *Authority) accepted(ctx context.Context, agent *agentRecord, x *extGrant) {
	result := "enrolled"
	if x.created {
		result = "registered"
	}
	a.countEnrollment(x.id.iss, nil, result)
	a.log.InfoContext(ctx, "external identity verified", "issuer", x.id.iss.cfg.Name, "subject", x.id.subject, "rule", x.rule.index,
		"tenant", agent.Tenant, "agent_id", agent.ID, "registered", x.created)
}

// spend records the token's use when its issuer accepts each token once:
// its jti, or without one a hash of its signed part (header and payload,
// not the signature: an ECDSA signature can be rewritten into another
// valid one, so the same token would get a second hash). The record lives
// in Redis, shared by every replica, until the token expires. Issuers in
// reuse mode record nothing.
func (a *Authority) spend(ctx context.Context, x *extGrant) error {
	ti := x.id.iss
	if ti.cfg.Replay != ReplayOnce {
		return nil
	}
	h := sha256.New()
	h.Write([]byte(ti.cfg.Issuer))
	if x.id.jti != "" {
		h.Write([]byte("\x00jti\x00" + x.id.jti))
	} else {
		h.Write([]byte("\x00signed\x00" + x.id.signed))
	}
	key := "passport:authority:enroll:seen:" + base64.RawURLEncoding.EncodeToString(h.Sum(nil))
	ttl := max(x.id.exp.Sub(a.now())+a.cfg.Passport.Leeway, time.Second)
	fresh, err := a.rdb.SetNX(ctx, key, "1", ttl).Result()
	if err != nil {
		return fmt.Errorf("record external token use: %w", err)
	}
	if !fresh {
		a.countEnrollment(ti, errExtReplay, "")
		return errExtReplay
	}
	return nil
}

// enrollKey maps one external subject of one issuer to the agent
// registered for it, in the rule's tenant (so in the tenant's hash slot,
// next to the agent). The subject is hashed: it is long and chosen by the
// issuer.
func enrollKey(tenant, issuer, subject string) string {
	sum := sha256.Sum256([]byte(issuer + "\x00" + subject))
	return passport.TenantKey(tenant, "enrolled", hex.EncodeToString(sum[:]))
}

// registerScript registers an agent for a subject unless one is already
// registered, atomically: KEYS[1] the subject's mapping (enrollKey),
// KEYS[2] the new agent's hash, KEYS[3] the tenant's agent set, KEYS[4]
// the hash of the agent the caller found mapped but gone (or KEYS[2]).
// ARGV[1] is that gone agent's id (or ""), ARGV[2] the new id, the rest
// the new hash's fields. It answers the id of the subject's agent. All
// keys share the tenant's hash slot, so it runs on a Cluster too.
var registerScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur then
  if cur ~= ARGV[1] or redis.call('EXISTS', KEYS[4]) == 1 then
    return cur
  end
end
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('SET', KEYS[1], ARGV[2])
return ARGV[2]
`)

// registerOnFirstUse returns the agent registered for the identity's
// subject under rule, registering it if there is none: exactly one agent
// per issuer, subject and tenant, even when replicas race (the script
// decides). An agent an admin deleted is replaced by a new one on the next
// use; to keep a subject out, block its agent or change the rule.
func (a *Authority) registerOnFirstUse(ctx context.Context, ti *trustedIssuer, rule *enrollRule, id *extIdentity) (*agentRecord, bool, error) {
	tenant := rule.Tenant
	mapKey := enrollKey(tenant, ti.cfg.Issuer, id.subject)
	for attempt := 0; attempt < 3; attempt++ {
		gone := ""
		cur, err := a.rdb.Get(ctx, mapKey).Result()
		switch {
		case err == nil:
			rec, err := a.getAgent(ctx, tenant, cur)
			if err == nil {
				return rec, false, nil
			}
			if !errors.Is(err, ErrAgentNotFound) {
				return nil, false, err
			}
			gone = cur
		case !errors.Is(err, redis.Nil):
			return nil, false, fmt.Errorf("look up enrolled agent: %w", err)
		}
		rec := a.enrolledRecord(ti, rule, id)
		// The global client index first, as createAgent does: a client id
		// never names nothing for long. A lost race removes it again.
		if err := a.rdb.HSet(ctx, clientsKey, rec.ID, tenant).Err(); err != nil {
			return nil, false, fmt.Errorf("store enrolled agent: %w", err)
		}
		goneKey := passport.AgentKey(tenant, rec.ID)
		if gone != "" {
			goneKey = passport.AgentKey(tenant, gone)
		}
		args := []any{gone, rec.ID}
		for k, v := range agentFields(rec) {
			args = append(args, k, v)
		}
		won, err := registerScript.Run(ctx, a.rdb, []string{mapKey, passport.AgentKey(tenant, rec.ID), tenantAgentsKey(tenant), goneKey}, args...).Text()
		if err != nil {
			_ = a.rdb.HDel(context.WithoutCancel(ctx), clientsKey, rec.ID).Err()
			return nil, false, fmt.Errorf("store enrolled agent: %w", err)
		}
		if won == rec.ID {
			a.auditAppend(ctx, tenant, rec, audit.KindAgentEnrolled, map[string]any{
				"issuer": ti.cfg.Name, "subject": id.subject, "rule": rule.index,
				"type": rec.Type, "trust_level": rec.Trust, "capabilities": rec.Capabilities,
			})
			a.log.InfoContext(ctx, "agent registered on first use", "tenant", tenant, "agent_id", rec.ID, "name", rec.Name,
				"type", rec.Type, "trust_level", rec.Trust, "issuer", ti.cfg.Name, "subject", id.subject)
			return rec, true, nil
		}
		// Another request (or replica) registered the subject first.
		_ = a.rdb.HDel(ctx, clientsKey, rec.ID).Err()
		other, err := a.getAgent(ctx, tenant, won)
		if err == nil {
			return other, false, nil
		}
		if !errors.Is(err, ErrAgentNotFound) {
			return nil, false, err
		}
		// Deleted in between: look again.
	}
	return nil, false, errors.New("register enrolled agent: the subject's agent keeps disappearing")
}

// enrolledRecord is a new agent for the identity under rule. It has no
// client secret: it authenticates with its external identity only.
func (a *Authority) enrolledRecord(ti *trustedIssuer, rule *enrollRule, id *extIdentity) *agentRecord {
	reg := rule.Register
	caps := slices.Clone(reg.Capabilities)
	if len(caps) == 0 {
		caps = slices.Clone(a.types[reg.Type])
	}
	slices.Sort(caps)
	caps = slices.Compact(caps)
	now := a.now()
	base := a.cfg.Reputation.baseline(reg.TrustCeiling)
	return &agentRecord{
		ID: agentIDPrefix + randomID(20), Tenant: rule.Tenant, Name: enrolledName(ti.cfg.Kind, id.subject),
		Type: reg.Type, Trust: reg.TrustCeiling, Capabilities: caps, CreatedAt: now,
		Reputation:   passport.Reputation{Score: base, Baseline: base, UpdatedAt: now, HalfLife: a.cfg.Reputation.HalfLife},
		EnrollIssuer: ti.cfg.Name, EnrollSubject: id.subject,
	}
}

// enrolledName makes a readable agent name from a subject: its most
// specific part, in the characters names allow, and a short hash of the
// whole subject so that two subjects never look alike.
func enrolledName(kind, sub string) string {
	s := sub
	switch kind {
	case IssuerKindKubernetes:
		s = strings.TrimPrefix(s, "system:serviceaccount:")
	case IssuerKindSPIFFE:
		s = strings.TrimPrefix(s, "spiffe://")
	case IssuerKindGitHub:
		s = strings.TrimPrefix(s, "repo:")
	}
	var b strings.Builder
	dot := false
	for _, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
		switch {
		case ok:
			b.WriteRune(c)
			dot = false
		case !dot && b.Len() > 0:
			b.WriteByte('.')
			dot = true
		}
	}
	name := strings.Trim(b.String(), ".")
	if len(name) > 54 {
		name = strings.TrimLeft(name[len(name)-54:], ".")
	}
	sum := sha256.Sum256([]byte(sub))
	if name == "" {
		name = "workload"
	}
	return name + "-" + hex.EncodeToString(sum[:4])
}

// enrollGrant serves the JWT-bearer grant (RFC 7523 §2.1): the assertion
// is the whole credential. Refusals of the assertion are invalid_grant
// (§3.1); a blocked agent is unauthorized_client, as with client
// credentials.
func (a *Authority) enrollGrant(ctx context.Context, r *http.Request, f *tokenForm) (*issued, error) {
	if len(a.enroll.ordered) == 0 {
		return nil, &oauthError{http.StatusBadRequest, "unsupported_grant_type", "this authority trusts no external issuer (trusted_issuers)", 0}
	}
	if f.GrantAssertion == "" {
		return nil, errInvalidRequest("assertion is required")
	}
	if err := a.Init(ctx); err != nil {
		return nil, err
	}
	agent, x, err := a.externalAgent(ctx, f.GrantAssertion, f.ClientID)
	if err != nil {
		return nil, grantError(err)
	}
	if f.Tenant != "" && f.Tenant != agent.Tenant {
		return nil, &oauthError{http.StatusBadRequest, "invalid_target", "this identity may not obtain passports for tenant " + safeTenant(f.Tenant), 0}
	}
	if agent.Blocked {
		return nil, &oauthError{http.StatusBadRequest, "unauthorized_client", "agent is blocked: " + blockedDesc(agent), 0}
	}
	g, err := a.narrow(agent, f)
	if err != nil {
		return nil, err
	}
	x.capGrant(g)
	if !g.maxExp.After(a.now().Truncate(time.Second)) {
		return nil, grantError(errExtExpired)
	}
	if g.jkt, err = a.checkDPoP(ctx, r, dpopNeed{required: agent.RequireDPoP, why: "this agent is registered with require_dpop"}); err != nil {
		return nil, err
	}
	// Spent only now, after every check the request could still fail, so
	// that a refused request does not use the token up.
	if err := a.spend(ctx, x); err != nil {
		return nil, grantError(err)
	}
	a.accepted(ctx, agent, x)
	if err := a.takeIssuance(ctx, agent); err != nil {
		return nil, err
	}
	return a.issue(ctx, agent, g)
}

// grantError maps a refusal of the assertion to invalid_grant.
func grantError(err error) error {
	var ee *enrollError
	switch {
	case errors.As(err, &ee):
		return &oauthError{http.StatusBadRequest, "invalid_grant", ee.desc, 0}
	case errors.Is(err, errKeysUnavailable):
		return &oauthError{http.StatusServiceUnavailable, "temporarily_unavailable", "the issuer's keys cannot be loaded right now", 30 * time.Second}
	}
	return err
}

// authenticateExternal is client authentication with a trusted issuer's
// token as client_assertion. Every refusal is invalid_client, like any
// other failed client authentication; the token is spent here, as a
// private_key_jwt assertion is.
func (a *Authority) authenticateExternal(ctx context.Context, f *tokenForm) (*agentRecord, error) {
	agent, x, err := a.externalAgent(ctx, f.Assertion, f.ClientID)
	if err == nil {
		err = a.spend(ctx, x)
	}
	var ee *enrollError
	switch {
	case errors.As(err, &ee):
		a.m.authFailures.WithLabelValues(authWorkloadJWT, ee.reason).Inc()
		return nil, errInvalidClient
	case errors.Is(err, errKeysUnavailable):
		return nil, &oauthError{http.StatusServiceUnavailable, "temporarily_unavailable", "the issuer's keys cannot be loaded right now", 30 * time.Second}
	case err != nil:
		return nil, err
	}
	a.accepted(ctx, agent, x)
	f.external = x
	return agent, nil
}
