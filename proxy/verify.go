package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"net/http"
	"sync"
	"time"

	"github.com/MicahParks/jwkset"
	"golang.org/x/time/rate"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/passport"
	"github.com/agentpassport/passport/proxy/policy"
)

// AuthError is a refused passport (the shared verifier's type): Code is
// the RFC 6750 error code, Description a safe fixed sentence, Reason the
// snake_case name for audit records and metrics.
type AuthError = passport.AuthError

func authErr(reason, desc string) *AuthError { return passport.NewAuthError(reason, desc) }

// Refusals. The verifier's own come from the shared verifier in package
// passport (the same values introspection answers from); the rest are the
// proxy's checks around it. They are values so tests and callers can use
// errors.Is; the descriptions are what the agent reads.
var (
	ErrNoPassport     = &AuthError{Description: "a passport is required", Reason: "no_passport"}
	ErrTooLarge       = passport.ErrTooLarge
	ErrMalformed      = passport.ErrMalformed
	ErrHeader         = passport.ErrHeader
	ErrAlgorithm      = passport.ErrAlgorithm
	ErrUnknownKey     = passport.ErrUnknownKey
	ErrSignature      = passport.ErrSignature
	ErrExpired        = passport.ErrExpired
	ErrNotYetValid    = passport.ErrNotYetValid
	ErrIssuer         = passport.ErrIssuer
	ErrAudience       = passport.ErrAudience
	ErrClaims         = passport.ErrClaims
	ErrLifetime       = passport.ErrLifetime
	ErrRevoked        = authErr("revoked", "the passport has been revoked")
	ErrBlocked        = authErr("agent_blocked", "the agent is blocked")
	ErrUnknownAgent   = authErr("agent_unknown", "the agent is not registered")
	ErrTenantMismatch = authErr("tenant_mismatch", "the passport belongs to another tenant")
)

// ErrKeysUnavailable means no signing key has been fetched from the
// authority yet: a passport cannot be judged either way, so the call is
// refused with 503 keys_unavailable (retry), not 401 (a verdict on the
// passport that the agent would act on, e.g. by fetching a new one).
var ErrKeysUnavailable = errors.New("the authority's signing keys are not loaded yet")

// identify is the step that judges the passport: the shared verifier,
// the route's tenant, revocation, and the agent's live state (blocked,
// registered, reputation). It leaves the verified passport, the time and
// the reputation on the call.
func (p *Proxy) identify(_ http.ResponseWriter, r *http.Request, c *call) *refusal {
	c.decStart = time.Now()
	tok, err := p.verifier.bearer(r.Header)
	var vp *Verified
	if err == nil {
		vp, err = p.verifier.verify(r.Context(), tok)
	}
	if errors.Is(err, ErrKeysUnavailable) {
		return refuseKeysUnavailable
	}
	if err != nil {
		return c.unauthorized(err)
	}
	cl := vp.Claims
	c.vp = vp
	c.tenant, c.agentID = cl.Tenant, cl.Agent.ID
	if rt := c.route; rt.Tenant != "" && rt.Tenant != cl.Tenant {
		c.tenant = rt.Tenant
		return c.unauthorized(ErrTenantMismatch)
	}
	if err := p.revoked.check(r.Context(), cl.ID, cl.Tenant, cl.Agent.ID); err != nil {
		return p.stateError(r, c, err)
	}
	if err := p.checkChain(r.Context(), cl); err != nil { // delegation.go
		return p.stateError(r, c, err)
	}
	st, err := p.reps.get(r.Context(), cl.Tenant, cl.Agent.ID)
	if err != nil {
		return p.stateError(r, c, err)
	}
	switch {
	case st.blocked:
		return c.unauthorized(ErrBlocked)
	case !st.exists && *p.cfg.RequireAgentRecord:
		return c.unauthorized(ErrUnknownAgent)
	}
	c.now = p.clock()
	c.reputation = float64(cl.Agent.Reputation)
	if st.hasRep {
		c.reputation = st.reputation.At(c.now)
	}
	return nil
}

var (
	refuseKeysUnavailable = &refusal{status: http.StatusServiceUnavailable, code: "keys_unavailable",
		detail: "the authority's signing keys are not loaded yet, so no passport can be checked", retryAfter: "2"}
	refuseStateUnavailable = &refusal{status: http.StatusServiceUnavailable, code: "state_unavailable",
		detail: "revocation state is unavailable, so the call is refused", retryAfter: "1"}
)

// unauthorized is the call's refusal of its passport: 401 with an RFC 6750
// challenge, audited with decision error (nothing could be judged).
func (c *call) unauthorized(err error) *refusal {
	var ae *AuthError
	if !errors.As(err, &ae) {
		ae = ErrMalformed
	}
	return c.refuse(refusal{status: http.StatusUnauthorized, reason: ae.Reason, decision: audit.DecisionError, auth: ae})
}

// stateError maps revocation/agent-state results: revoked and blocked are
// 401, an unreadable state is 503 (refused, never allowed).
func (p *Proxy) stateError(r *http.Request, c *call, err error) *refusal {
	var ae *AuthError
	if errors.As(err, &ae) {
		return c.unauthorized(ae)
	}
	p.log.ErrorContext(r.Context(), "agent state unavailable; refusing", "request_id", c.id, "error", err)
	return refuseStateUnavailable
}

// Verified is a passport that passed the shared verifier. Dynamic checks
// (expiry, revocation, blocks, tenant) are repeated on every use.
type Verified struct {
	passport.Verified                 // Claims, Payload (for the policy input), Exp, NotBefore
	token             string          // the raw passport, compared on every cache hit
	inputMu           sync.Once       // computes the three below once per passport
	pjson             json.RawMessage // Payload as JSON, for the audit record
	pterms            passportTerms   // Payload and agent fields as OPA terms, for the policy
	inputErr          error           // why the two above could not be made: every call is denied
	ref               passportRef     // its passport record in the audit stream (passportref.go)
	ath               string          // a bound passport's hash, for its DPoP proofs' ath
	stages            sync.Map        // *route -> *policy.Stage: the policy's per-passport stage (decide.go)
}

// stage is the policy stage kept for the passport on route rt, or nil.
// Routes are the configuration's, so a passport keeps at most one per
// route; a stale one (from a load no longer in force) is replaced.
func (v *Verified) stage(rt *route) *policy.Stage {
	if st, ok := v.stages.Load(rt); ok {
		return st.(*policy.Stage)
	}
	return nil
}

func (v *Verified) setStage(rt *route, st *policy.Stage) { v.stages.Store(rt, st) }

// keySource returns the verification key for a kid.
type keySource interface {
	key(ctx context.Context, kid string) (jwkset.JWK, error)
	ready(ctx context.Context) bool
}

// verifier runs the shared strict verifier (passport.Verifier, the same
// code as the authority's introspection) with the proxy's key source, and
// caches the passports it accepted.
type verifier struct {
	cfg   *Config
	keys  keySource
	clock func() time.Time
	pv    *passport.Verifier
	cache *tokenCache
	hits  func(hit bool)
}

func newVerifier(cfg *Config, keys keySource, clock func() time.Time) (*verifier, error) {
	v := &verifier{
		cfg:   cfg,
		keys:  keys,
		clock: clock,
		cache: newTokenCache(cfg.VerifyCacheSize),
		hits:  func(bool) {},
	}
	pv, err := passport.NewVerifier(passport.VerifierConfig{
		Issuer:        cfg.Issuer,
		Audiences:     []string{cfg.Audience},
		Leeway:        cfg.Leeway,
		MaxLifetime:   cfg.MaxLifetime,
		MaxTokenBytes: cfg.MaxTokenBytes,
		Clock:         clock,
		Keys:          v.keyFor,
		// Every link of a chain is checked on every call (checkChain), and
		// every bound passport's proof (possess).
		AcceptDelegated: cfg.Delegation.MaxDepth > 0,
		AcceptBound:     true,
	})
	if err != nil {
		return nil, err
	}
	v.pv = pv
	return v, nil
}

// bearer is the passport of the Authorization header, sent as Bearer or
// as DPoP (credential, dpop.go).
func (v *verifier) bearer(h http.Header) (string, error) {
	tok, _, err := v.credential(h)
	return tok, err
}

func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// verify returns the verified passport or an *AuthError. A repeat of a
// passport already verified costs a hash and a map lookup; its expiry is
// checked again against the clock.
func (v *verifier) verify(ctx context.Context, tok string) (*Verified, error) {
	now := v.clock()
	if vp := v.cache.get(tok); vp != nil {
		v.hits(true)
		if err := v.pv.CheckTimes(&vp.Verified, now); err != nil {
			return nil, err
		}
		return vp, nil
	}
	v.hits(false)
	pv, err := v.pv.Verify(ctx, tok)
	if err != nil {
		if errors.Is(err, ErrUnknownKey) && !v.keys.ready(ctx) {
			return nil, ErrKeysUnavailable
		}
		return nil, err
	}
	vp := &Verified{Verified: *pv, token: tok, ref: passportRef{lock: make(chan struct{}, 1)}}
	if pv.Claims.BoundKey() != "" {
		vp.ath = passport.AccessTokenHash(tok) // once per passport, not per proof
	}
	// Concurrent first calls of one passport each verified it; they share
	// the first one cached, so its passport record is written once.
	return v.cache.put(tok, vp, now), nil
}

// keyFor is the shared verifier's key source: the JWKS key under kid,
// refused when the JWK says it is not for signatures. The shared verifier
// pins the algorithm to the key's type and to the JWK's "alg".
func (v *verifier) keyFor(ctx context.Context, kid string) (passport.VerifyKey, error) {
	k, err := v.keys.key(ctx, kid)
	if err != nil {
		return passport.VerifyKey{}, ErrUnknownKey
	}
	m := k.Marshal()
	if m.USE != "" && m.USE != jwkset.UseSig {
		return passport.VerifyKey{}, ErrAlgorithm
	}
	return passport.VerifyKey{Key: k.Key(), Alg: string(m.ALG)}, nil
}

// tokenCache maps a verified token to its result. The key is a seeded
// 64-bit hash of the token, and the full token is compared on every hit, so
// a collision can never hand one token another's identity. Entries are
// dropped once expired; when full, expired entries are swept first, then
// arbitrary ones (Go randomises map order).
type tokenCache struct {
	seed maphash.Seed
	max  int
	mu   sync.RWMutex
	m    map[uint64]*Verified
}

func newTokenCache(max int) *tokenCache {
	return &tokenCache{seed: maphash.MakeSeed(), max: max, m: make(map[uint64]*Verified, max/4)}
}

func (c *tokenCache) get(tok string) *Verified {
	h := maphash.String(c.seed, tok)
	c.mu.RLock()
	vp := c.m[h]
	c.mu.RUnlock()
	if vp == nil || vp.token != tok {
		return nil
	}
	return vp
}

// put caches vp for tok and returns it, or returns the entry another
// caller cached for tok first.
func (c *tokenCache) put(tok string, vp *Verified, now time.Time) *Verified {
	if c.max <= 0 {
		return vp
	}
	h := maphash.String(c.seed, tok)
	c.mu.Lock()
	defer c.mu.Unlock()
	if cur := c.m[h]; cur != nil && cur.token == tok {
		return cur
	}
	if len(c.m) >= c.max {
		for k, e := range c.m {
			if now.After(e.Exp.Add(passport.MaxLeeway)) {
				delete(c.m, k)
			}
		}
		for k := range c.m {
			if len(c.m) < c.max*9/10 {
				break
			}
			delete(c.m, k)
		}
	}
	c.m[h] = vp
	return vp
}

// jwksKeys fetches the authority's JWKS with jwkset: cached, refreshed
// periodically, and refreshed on an unknown kid at most once per interval.
// The rate limit is checked without waiting, so a flood of made-up kids is
// refused at once instead of queueing behind the limiter.
type jwksKeys struct {
	store   jwkset.Storage // cached keys, periodic refresh
	refresh jwkset.Storage // same keys, refreshes on every unknown kid
	limit   *rate.Limiter
}

func newJWKSKeys(ctx context.Context, url string, client *http.Client, every, unknownEvery time.Duration, onErr func(context.Context, error)) (*jwksKeys, error) {
	st, err := jwkset.NewStorageFromHTTP(url, jwkset.HTTPClientStorageOptions{
		Client:                    client,
		Ctx:                       ctx,
		HTTPTimeout:               5 * time.Second,
		NoErrorReturnFirstHTTPReq: true, // the authority may start after us; /readyz says when keys are in
		RefreshErrorHandler:       onErr,
		RefreshInterval:           every,
	})
	if err != nil {
		return nil, fmt.Errorf("jwks %s: %w", url, err)
	}
	rc, err := jwkset.NewHTTPClient(jwkset.HTTPClientOptions{
		HTTPURLs:          map[string]jwkset.Storage{url: st},
		RefreshUnknownKID: rate.NewLimiter(rate.Inf, 1), // our own limiter below decides
	})
	if err != nil {
		return nil, fmt.Errorf("jwks %s: %w", url, err)
	}
	return &jwksKeys{store: st, refresh: rc, limit: rate.NewLimiter(rate.Every(unknownEvery), 1)}, nil
}

func (k *jwksKeys) key(ctx context.Context, kid string) (jwkset.JWK, error) {
	j, err := k.store.KeyRead(ctx, kid)
	if err == nil {
		return j, nil
	}
	if !k.limit.Allow() {
		return jwkset.JWK{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return k.refresh.KeyRead(ctx, kid)
}

func (k *jwksKeys) ready(ctx context.Context) bool {
	all, err := k.store.KeyReadAll(ctx)
	return err == nil && len(all) > 0
}

// poke refreshes the keys now (used while none are loaded yet).
func (k *jwksKeys) poke(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, _ = k.refresh.KeyRead(ctx, "\x00no-such-kid") // a miss forces one refresh
}
