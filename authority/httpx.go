package authority

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/problem"
)

// writeJSON answers v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeProblem answers an RFC 9457 problem (internal/problem). code is a
// stable snake_case identifier; detail is safe to show a client and never
// carries an internal error.
func writeProblem(w http.ResponseWriter, status int, code, detail string) {
	problem.Answer(w, status, code, detail)
}

// writeOAuthErr answers oe, with Retry-After when it has one.
func writeOAuthErr(w http.ResponseWriter, oe *oauthError) {
	if oe.retryAfter > 0 {
		w.Header().Set("Retry-After", retryAfterSeconds(oe.retryAfter))
	}
	writeOAuthError(w, oe.status, oe.code, oe.desc)
}

// writeOAuthError answers an RFC 6749 §5.2 error.
func writeOAuthError(w http.ResponseWriter, status int, code, desc string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="passport", charset="UTF-8"`)
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(client.OAuthError{Code: code, Description: desc})
}

// adminTokens holds SHA-256 digests of the admin tokens. Comparing digests
// in constant time hides both the content and the length of the tokens,
// and every configured token is compared on every call so the time taken
// does not say which one matched.
type adminTokens struct {
	global  [][32]byte
	tenants map[[32]byte]string // digest -> tenant; iterated fully, never indexed
	list    []tenantToken
	// reporters may only report outcomes; check never matches them.
	reporters [][32]byte
}

type tenantToken struct {
	sum    [32]byte
	tenant string
}

func newAdminTokens(global string, tenants map[string][]string, reporters []string) adminTokens {
	at := adminTokens{}
	for _, tok := range reporters {
		at.reporters = append(at.reporters, sha256.Sum256([]byte(tok)))
	}
	if global != "" {
		at.global = append(at.global, sha256.Sum256([]byte(global)))
	}
	for _, t := range sortedKeys(tenants) {
		for _, tok := range tenants[t] {
			at.list = append(at.list, tenantToken{sha256.Sum256([]byte(tok)), t})
		}
	}
	return at
}

func (at adminTokens) any() bool { return len(at.global) > 0 || len(at.list) > 0 }

// principal is who called the admin API: global, one tenant's admin, or a
// reporter (outcomes only, every tenant).
type principal struct {
	global   bool
	tenant   string
	reporter bool
}

func (p principal) may(tenant string) bool { return p.global || p.reporter || p.tenant == tenant }

// check returns the principal of a presented token.
func (at adminTokens) check(tok string) (principal, bool) {
	if tok == "" {
		return principal{}, false
	}
	sum := sha256.Sum256([]byte(tok))
	var p principal
	ok := 0
	for _, g := range at.global {
		if subtle.ConstantTimeCompare(sum[:], g[:]) == 1 {
			p.global, ok = true, 1
		}
	}
	for _, t := range at.list {
		if subtle.ConstantTimeCompare(sum[:], t.sum[:]) == 1 && !p.global {
			p.tenant, ok = t.tenant, 1
		}
	}
	return p, ok == 1
}

// reporter reports whether tok is a reporter token.
func (at adminTokens) reporter(tok string) bool {
	if tok == "" {
		return false
	}
	sum := sha256.Sum256([]byte(tok))
	ok := 0
	for _, r := range at.reporters {
		ok |= subtle.ConstantTimeCompare(sum[:], r[:])
	}
	return ok == 1
}

func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

type adminHandler func(w http.ResponseWriter, r *http.Request, p principal)

// admin authenticates the admin API and enforces the tenant boundary: a
// tenant admin reaching for another tenant gets 403 before anything is
// read, so it learns nothing about the other tenant.
func (a *Authority) admin(h adminHandler) http.HandlerFunc {
	return a.authorize(h, false)
}

// reporting is admin for the outcomes route, which reporter tokens may
// also call (for any tenant).
func (a *Authority) reporting(h adminHandler) http.HandlerFunc {
	return a.authorize(h, true)
}

func (a *Authority) authorize(h adminHandler, reporters bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		tok := bearer(r)
		p, ok := a.admins.check(tok)
		if !ok && a.admins.reporter(tok) {
			if !reporters {
				writeProblem(w, http.StatusForbidden, "forbidden", "a reporter token may only report outcomes")
				return
			}
			p, ok = principal{reporter: true}, true
		}
		if !ok {
			if _, approver := a.approvers.check(tok); approver {
				writeProblem(w, http.StatusForbidden, "forbidden", "an approver token may only list and decide approvals")
				return
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="passport-admin"`)
			writeProblem(w, http.StatusUnauthorized, "unauthenticated", "a valid admin token is required (Authorization: Bearer ...)")
			return
		}
		if t := r.PathValue("tenant"); t != "" {
			if !ValidTenant(t) {
				writeProblem(w, http.StatusBadRequest, "invalid_tenant", "tenant: want lowercase letters, digits, '-' or '_'")
				return
			}
			if !p.may(t) {
				writeProblem(w, http.StatusForbidden, "forbidden", "this admin token may not manage tenant "+t)
				return
			}
		}
		h(w, r, p)
	}
}

// secretCache remembers successful client secret verifications for a short
// time. The key is SHA-256 over client id and secret, so the secret itself
// is never kept; each entry holds a digest of the bcrypt hash it was
// checked against, so a rotated or deleted secret can never hit.
type secretCache struct {
	ttl time.Duration
	now func() time.Time
	mu  sync.Mutex
	m   map[[32]byte]secretEntry
}

type secretEntry struct {
	exp  time.Time
	hash [32]byte // SHA-256 of the stored bcrypt hash
}

const secretCacheMax = 10000

func secretCacheKey(clientID, secret string) [32]byte {
	h := sha256.New()
	h.Write([]byte(clientID))
	h.Write([]byte{0})
	h.Write([]byte(secret))
	var k [32]byte
	h.Sum(k[:0])
	return k
}

// hit reports whether secret was verified for clientID against the bcrypt
// hash stored (still) as hash.
func (c *secretCache) hit(clientID, secret string, hash []byte) bool {
	if c.ttl <= 0 {
		return false
	}
	sum := sha256.Sum256(hash)
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[secretCacheKey(clientID, secret)]
	return ok && c.now().Before(e.exp) && subtle.ConstantTimeCompare(e.hash[:], sum[:]) == 1
}

// known reports whether secret was verified for clientID recently,
// whatever the hash: a hint that hit will likely succeed after a lookup.
func (c *secretCache) known(clientID, secret string) bool {
	if c.ttl <= 0 {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[secretCacheKey(clientID, secret)]
	return ok && c.now().Before(e.exp)
}

func (c *secretCache) put(clientID, secret string, hash []byte) {
	if c.ttl <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= secretCacheMax {
		c.m = map[[32]byte]secretEntry{} // bounded: start over rather than grow
	}
	c.m[secretCacheKey(clientID, secret)] = secretEntry{exp: c.now().Add(c.ttl), hash: sha256.Sum256(hash)}
}

// metrics of the authority. Labels are bounded enums, never ids.
type metrics struct {
	issued       *prometheus.CounterVec
	refused      *prometheus.CounterVec
	authFailures *prometheus.CounterVec
	revocations  *prometheus.CounterVec
	blocks       *prometheus.CounterVec
	unblocks     prometheus.Counter
	rotations    *prometheus.CounterVec
	reputation   *prometheus.CounterVec
	auditErrors  prometheus.Counter
	hashes       prometheus.Counter
	hashBusy     prometheus.Counter
	dpop         *prometheus.CounterVec
	exchanges    *prometheus.CounterVec
}

func newMetrics(reg *prometheus.Registry) (*metrics, error) {
	m := &metrics{
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_authority_passports_issued_total", Help: "Passports issued, by issued trust level and client authentication method.",
		}, []string{"trust_level", "auth_method"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_authority_passports_refused_total", Help: "Token requests refused, by OAuth error code.",
		}, []string{"reason"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_authority_client_auth_failures_total", Help: "Failed client authentications, by method and reason.",
		}, []string{"method", "reason"}),
		revocations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_authority_revocations_total", Help: "Passports revoked, by cause (revoke, block, delete).",
		}, []string{"cause"}),
		blocks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_authority_agent_blocks_total", Help: "Agents blocked, by cause (admin, reputation).",
		}, []string{"cause"}),
		unblocks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "passport_authority_agent_unblocks_total", Help: "Agents unblocked by an admin.",
		}),
		rotations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_authority_key_rotations_total", Help: "Signing key rotations done by this replica, by trigger.",
		}, []string{"trigger"}),
		reputation: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_authority_reputation_updates_total", Help: "Reputation updates, by outcome.",
		}, []string{"outcome"}),
		auditErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "passport_authority_audit_errors_total", Help: "Audit records the authority failed to write.",
		}),
	}
	m.hashes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "passport_authority_secret_hashes_total", Help: "bcrypt comparisons of client secrets (real and for unknown clients).",
	})
	m.hashBusy = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "passport_authority_secret_hash_busy_total", Help: "Authentications answered 503 because every bcrypt slot stayed taken.",
	})
	m.dpop = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "passport_authority_dpop_proofs_total", Help: "DPoP proofs at the token endpoint: accepted, or the reason of the refusal.",
	}, []string{"result"})
	m.exchanges = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "passport_authority_token_exchanges_total", Help: "Delegated passports issued by token exchange, by chain depth.",
	}, []string{"depth"})
	for _, c := range []prometheus.Collector{m.issued, m.refused, m.authFailures, m.revocations, m.blocks, m.unblocks, m.rotations, m.reputation, m.auditErrors, m.hashes, m.hashBusy, m.dpop, m.exchanges} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
