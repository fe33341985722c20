package proxy

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/passport"
)

// DPoP (RFC 9449) at the proxy: a passport bound to a key (cnf.jkt) is
// accepted only as "Authorization: DPoP <passport>" together with a DPoP
// header holding a proof signed by that key for this very request: this
// method, this URL as the proxy knows itself (resource_url plus the path),
// this passport (ath), issued within the window and never seen before by
// any proxy sharing the Redis. A passport copied from a log or a
// compromised agent is useless without the private key. The proof checks
// themselves are the shared passport.DPoPVerifier, the same code as the
// authority's token endpoint.

// DPoPConfig configures proofs of possession at the proxy.
type DPoPConfig struct {
	// ProofMaxAge is how old a proof's iat may be; it may also be up to
	// leeway in the future. Each proof's jti is remembered in Redis for
	// that long, shared by every proxy, so a proof is used once. Default
	// 1m, 1s to 5m.
	ProofMaxAge time.Duration `yaml:"proof_max_age"`
	// NonceLifetime: on routes with dpop_nonce, a server nonce is accepted
	// for one to two lifetimes. Nonces are an HMAC of the time keyed by a
	// secret every proxy shares in Redis, so no state is kept per nonce.
	// Default 5m, 1s to 1h.
	NonceLifetime time.Duration `yaml:"nonce_lifetime"`
}

// DefaultDPoPNonceLifetime is DPoPConfig.NonceLifetime's default.
const DefaultDPoPNonceLifetime = 5 * time.Minute

func (d *DPoPConfig) fill() {
	if d.ProofMaxAge == 0 {
		d.ProofMaxAge = passport.DefaultDPoPMaxAge
	}
	if d.NonceLifetime == 0 {
		d.NonceLifetime = DefaultDPoPNonceLifetime
	}
}

func (d DPoPConfig) validate() error {
	var errs []error
	if d.ProofMaxAge < time.Second || d.ProofMaxAge > passport.MaxDPoPMaxAge {
		errs = append(errs, fmt.Errorf("dpop.proof_max_age: %v is outside 1s..%v", d.ProofMaxAge, passport.MaxDPoPMaxAge))
	}
	if d.NonceLifetime < time.Second || d.NonceLifetime > time.Hour {
		errs = append(errs, fmt.Errorf("dpop.nonce_lifetime: %v is outside 1s..1h", d.NonceLifetime))
	}
	return errors.Join(errs...)
}

// Refusals of the way a passport was presented. A bound passport sent as
// Bearer is refused (never taken as a bearer token: that is what a thief
// would do), and so is an unbound one sent as DPoP (it proves nothing,
// and an upstream given forward_passport would read it as proven).
var (
	ErrBoundAsBearer = authErr("dpop_bound_as_bearer", "the passport is DPoP-bound: send it as Authorization: DPoP with a DPoP proof")
	ErrNotBound      = authErr("dpop_not_bound", "the passport is not DPoP-bound: send it as Authorization: Bearer")
	// ErrCertBound: a passport bound to a client certificate (RFC 8705)
	// came over a connection without that certificate.
	ErrCertBound = authErr("certificate_bound", "the passport is bound to a client certificate this connection did not present")
)

// dpopNonceKey holds the secret every proxy makes DPoP nonces with,
// created once (SET NX). It is the proxies' own, not the authority's: a
// nonce of one server is no good at another.
const dpopNonceKey = "passport:proxy:dpop_nonce_secret"

// nonceReload is how long a loaded nonce secret is used before it is read
// again, so that proxies follow a secret replaced after Redis lost its
// data.
const nonceReload = time.Minute

// dpopGate checks the proofs of bound passports.
type dpopGate struct {
	verifier *passport.DPoPVerifier
	rdb      redis.UniversalClient
	// base is resource_url without a trailing slash: a proof's htu must be
	// base plus the request's path. Never the Host header, which the
	// client chooses.
	base     string
	lifetime time.Duration
	clock    func() time.Time

	nonces  atomic.Pointer[loadedNonces]
	nonceMu sync.Mutex // one reload at a time
}

type loadedNonces struct {
	n  *passport.DPoPNonces
	at time.Time
}

func newDPoPGate(cfg *Config, rdb redis.UniversalClient, clock func() time.Time) (*dpopGate, error) {
	g := &dpopGate{rdb: rdb, base: strings.TrimRight(cfg.ResourceURL, "/"), lifetime: cfg.DPoP.NonceLifetime,
		clock: clock}
	v, err := passport.NewDPoPVerifier(passport.DPoPConfig{MaxAge: cfg.DPoP.ProofMaxAge, Leeway: cfg.Leeway,
		Clock: clock, Replay: g.replay})
	if err != nil {
		return nil, err
	}
	g.verifier = v
	return g, nil
}

// replay records a proof's use: one key per proof, SET NX with an expiry,
// so the first proxy to see a proof wins, on one Redis and on a Cluster
// alike (a single key lives in one slot).
func (g *dpopGate) replay(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	fresh, err := g.rdb.SetNX(ctx, key, "1", ttl).Result()
	if err != nil {
		return false, fmt.Errorf("%w: record dpop proof: %w", ErrStateUnavailable, err)
	}
	return fresh, nil
}

// nonceSource returns the shared nonce source, loading (or creating) its
// secret in Redis when it is missing or older than nonceReload.
func (g *dpopGate) nonceSource(ctx context.Context) (*passport.DPoPNonces, error) {
	now := time.Now()
	if l := g.nonces.Load(); l != nil && now.Sub(l.at) < nonceReload {
		return l.n, nil
	}
	g.nonceMu.Lock()
	defer g.nonceMu.Unlock()
	if l := g.nonces.Load(); l != nil && now.Sub(l.at) < nonceReload {
		return l.n, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	if err := g.rdb.SetArgs(ctx, dpopNonceKey, base64.RawStdEncoding.EncodeToString(b), redis.SetArgs{Mode: "NX"}).Err(); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("%w: create dpop nonce secret: %w", ErrStateUnavailable, err)
	}
	v, err := g.rdb.Get(ctx, dpopNonceKey).Result()
	if err != nil {
		return nil, fmt.Errorf("%w: load dpop nonce secret: %w", ErrStateUnavailable, err)
	}
	secret, err := base64.RawStdEncoding.DecodeString(v)
	if err != nil {
		return nil, fmt.Errorf("%w: dpop nonce secret is not base64: %w", ErrStateUnavailable, err)
	}
	n, err := passport.NewDPoPNonces(secret, g.lifetime, g.clock)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStateUnavailable, err)
	}
	g.nonces.Store(&loadedNonces{n: n, at: now})
	return n, nil
}

// credential reads the Authorization header: one value, "Bearer <token>"
// or "DPoP <token>" (schemes are case-insensitive, RFC 9110 §11.1). The
// size is checked first, on the header's length alone, so a huge header
// costs nothing to refuse.
func (v *verifier) credential(h http.Header) (tok string, dpop bool, err error) {
	vals := h["Authorization"]
	switch len(vals) {
	case 0:
		return "", false, ErrNoPassport
	case 1:
	default:
		return "", false, ErrMalformed // two credentials: which one would the upstream read?
	}
	a := vals[0]
	if len(a) > v.cfg.MaxTokenBytes+len("Bearer ") {
		return "", false, ErrTooLarge
	}
	switch {
	case len(a) >= 7 && asciiEqualFold(a[:7], "Bearer "):
		tok = a[7:]
	case len(a) >= 5 && asciiEqualFold(a[:5], "DPoP "):
		tok, dpop = a[5:], true
	default:
		return "", false, ErrNoPassport // another scheme is no passport (RFC 6750 §3.1)
	}
	if tok == "" {
		return "", dpop, ErrMalformed
	}
	return tok, dpop, nil
}

// possess is the step after identify: the passport's binding and, for a
// bound one, its DPoP proof. A bearer passport sent as Bearer passes with
// nothing to check (a DPoP header beside it is ignored and not
// forwarded). The proof is checked after the passport, its revocation and
// its agent (a proof costs a signature check and a Redis write), and
// written to the replay cache last, so a refused proof writes nothing.
func (p *Proxy) possess(w http.ResponseWriter, r *http.Request, c *call) *refusal {
	tok, dpop, err := p.verifier.credential(r.Header)
	if err != nil {
		return c.unauthorized(err) // identify read the same header; never reached
	}
	if x5t := c.vp.Claims.BoundCert(); x5t != "" {
		// RFC 8705 §3: only over a connection with the same certificate.
		if dpop || r.TLS == nil || len(r.TLS.PeerCertificates) == 0 ||
			passport.CertThumbprint(r.TLS.PeerCertificates[0].Raw) != x5t {
			return c.unauthorized(ErrCertBound)
		}
		r.Header.Del(passport.DPoPHeader)
		return nil
	}
	jkt := c.vp.Claims.BoundKey()
	switch {
	case jkt == "" && !dpop:
		r.Header.Del(passport.DPoPHeader)
		return nil
	case jkt == "":
		return c.unauthorized(ErrNotBound)
	case !dpop:
		return c.unauthorized(ErrBoundAsBearer)
	}
	proofs := r.Header.Values(passport.DPoPHeader)
	switch len(proofs) {
	case 0:
		return c.unauthorized(passport.ErrDPoPMissing)
	case 1:
	default:
		return c.unauthorized(passport.ErrDPoPMalformed) // two proofs: which one was meant?
	}
	req := passport.DPoPRequest{Method: r.Method, URL: p.dpop.base + r.URL.EscapedPath(), AccessToken: tok, ATH: c.vp.ath, JKT: jkt}
	if c.route.DPoPNonce {
		n, err := p.dpop.nonceSource(r.Context())
		if err != nil {
			return p.stateError(r, c, err)
		}
		req.Nonce = n.Valid
		// On every answer of the route, so the agent has the next one.
		w.Header().Set(passport.DPoPNonceHeader, n.Current())
	}
	if _, err := p.dpop.verifier.Verify(r.Context(), proofs[0], req); err != nil {
		return p.stateError(r, c, err)
	}
	c.proven = true
	r.Header.Del(passport.DPoPHeader) // single use, and for this proxy's URL: nothing for the upstream
	return nil
}

// authenticated reports whether the call came with a credential: a valid
// bearer passport, or a bound one with its proof. A bound passport without
// its proof is what a thief holds: its refusals are counted in refusal
// summaries like those of calls without a passport, so that a copied
// passport cannot make the proxy write one record per call into its
// owner's audit stream.
func (c *call) authenticated() bool {
	return c.vp != nil && (c.vp.Claims.BoundKey() == "" || c.proven)
}

// challengeScheme is the auth scheme of a 401's challenge: DPoP (RFC 9449
// §7.1) when the agent used it or the refusal is about a proof or a
// binding, else Bearer (RFC 6750).
func challengeScheme(r *http.Request, ae *AuthError) string {
	switch {
	case ae.Code == "invalid_dpop_proof" || ae.Code == "use_dpop_nonce" || ae == ErrBoundAsBearer:
		return passport.TokenTypeDPoP
	case ae == ErrNotBound:
		return "Bearer"
	}
	if a := r.Header.Get("Authorization"); len(a) >= 5 && asciiEqualFold(a[:5], "DPoP ") {
		return passport.TokenTypeDPoP
	}
	return "Bearer"
}

// dpopAlgs is the algs parameter of a DPoP challenge (RFC 9449 §7.1).
var dpopAlgs = strings.Join(passport.DPoPAlgorithms, " ")
