package proxy

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"

	"github.com/agentpassport/passport/passport"
)

// AuthError is a refused passport. Code is the RFC 6750 error code and
// Description a safe, fixed sentence for error_description: it never holds
// input or an internal error string.
type AuthError struct {
	Code        string // "invalid_token", or "" when no passport was sent
	Description string
	Reason      string // snake_case, for the audit record and metrics
}

func (e *AuthError) Error() string { return e.Description }

func authErr(reason, desc string) *AuthError {
	return &AuthError{Code: "invalid_token", Description: desc, Reason: reason}
}

// Refusals of the verifier. They are values so tests and callers can use
// errors.Is; the descriptions are what the agent reads.
var (
	ErrNoPassport     = &AuthError{Description: "a passport is required", Reason: "no_passport"}
	ErrTooLarge       = authErr("token_too_large", "the passport is too large")
	ErrMalformed      = authErr("malformed", "the passport is malformed")
	ErrHeader         = authErr("bad_header", "the passport header is not acceptable")
	ErrAlgorithm      = authErr("bad_algorithm", "the passport algorithm is not accepted")
	ErrUnknownKey     = authErr("unknown_key", "the passport signing key is unknown")
	ErrSignature      = authErr("bad_signature", "the passport signature is invalid")
	ErrExpired        = authErr("expired", "the passport has expired")
	ErrNotYetValid    = authErr("not_yet_valid", "the passport is not valid yet")
	ErrIssuer         = authErr("bad_issuer", "the passport was not issued by the trusted authority")
	ErrAudience       = authErr("bad_audience", "the passport is not meant for this resource")
	ErrClaims         = authErr("bad_claims", "the passport claims are not acceptable")
	ErrLifetime       = authErr("lifetime_too_long", "the passport lives longer than allowed")
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

// Verified is a passport that passed every static check. Dynamic checks
// (expiry, revocation, blocks, tenant) are repeated on every use.
type Verified struct {
	token   string
	Claims  *passport.Claims
	Payload map[string]any // the claims as JSON values, for the policy input
	Exp     time.Time
	NotBef  time.Time
	inputMu sync.Once       // computes the two below once per passport
	pjson   json.RawMessage // Payload as JSON, for the audit record
	pterms  passportTerms   // Payload and agent fields as OPA terms, for the policy
}

// keySource returns the verification key for a kid.
type keySource interface {
	key(ctx context.Context, kid string) (jwkset.JWK, error)
	ready(ctx context.Context) bool
}

// verifier checks passports strictly and caches the ones it accepted.
type verifier struct {
	cfg    *Config
	keys   keySource
	clock  func() time.Time
	parser *jwt.Parser
	cache  *tokenCache
	hits   func(hit bool)
}

func newVerifier(cfg *Config, keys keySource, clock func() time.Time) *verifier {
	return &verifier{
		cfg:   cfg,
		keys:  keys,
		clock: clock,
		parser: jwt.NewParser(
			jwt.WithValidMethods(passport.Algorithms),
			jwt.WithIssuer(cfg.Issuer),
			jwt.WithAudience(cfg.Audience),
			jwt.WithExpirationRequired(),
			jwt.WithIssuedAt(),
			jwt.WithLeeway(cfg.Leeway),
			jwt.WithTimeFunc(clock),
			jwt.WithStrictDecoding(),
		),
		cache: newTokenCache(cfg.VerifyCacheSize),
		hits:  func(bool) {},
	}
}

// bearer extracts the token from an Authorization header value. The size
// is checked first, on the header's length alone, so a huge header costs
// nothing to refuse.
func (v *verifier) bearer(h http.Header) (string, error) {
	vals := h["Authorization"]
	switch len(vals) {
	case 0:
		return "", ErrNoPassport
	case 1:
	default:
		return "", ErrMalformed // two credentials: which one would the upstream read?
	}
	a := vals[0]
	if len(a) > v.cfg.MaxTokenBytes+len("Bearer ") {
		return "", ErrTooLarge
	}
	if len(a) < 7 || !asciiEqualFold(a[:7], "Bearer ") {
		return "", ErrNoPassport // another scheme is no passport (RFC 6750 §3.1)
	}
	tok := a[7:]
	if tok == "" {
		return "", ErrMalformed
	}
	return tok, nil
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
		if err := v.checkTimes(vp, now); err != nil {
			return nil, err
		}
		return vp, nil
	}
	v.hits(false)
	vp, err := v.verifySlow(ctx, tok)
	if err != nil {
		return nil, err
	}
	if err := v.checkTimes(vp, now); err != nil {
		return nil, err
	}
	v.cache.put(tok, vp, now)
	return vp, nil
}

func (v *verifier) checkTimes(vp *Verified, now time.Time) error {
	if !now.Before(vp.Exp.Add(v.cfg.Leeway)) {
		return ErrExpired
	}
	if !vp.NotBef.IsZero() && now.Add(v.cfg.Leeway).Before(vp.NotBef) {
		return ErrNotYetValid
	}
	return nil
}

// forbiddenHeaders are JOSE headers that point at keys. A verifier that
// followed them would let the token choose its own key; the proxy only
// trusts keys from its configured JWKS, so a token carrying them is
// refused outright.
var forbiddenHeaders = []string{"jku", "x5u", "x5c", "jwk", "x5t", "x5t#S256"}

func (v *verifier) verifySlow(ctx context.Context, tok string) (*Verified, error) {
	// Shape: three base64url parts, no padding, nothing else.
	var parts [3]string
	n := 0
	start := 0
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if c == '.' {
			if n == 2 {
				return nil, ErrMalformed
			}
			parts[n] = tok[start:i]
			n++
			start = i + 1
			continue
		}
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return nil, ErrMalformed
		}
	}
	if n != 2 {
		return nil, ErrMalformed
	}
	parts[2] = tok[start:]
	if parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return nil, ErrMalformed
	}
	hdrJSON, err := base64.RawURLEncoding.Strict().DecodeString(parts[0])
	if err != nil {
		return nil, ErrMalformed
	}
	payJSON, err := base64.RawURLEncoding.Strict().DecodeString(parts[1])
	if err != nil {
		return nil, ErrMalformed
	}

	// Header: strict JSON, exact names, no key pointers, no crit.
	hdr, err := strictObject(hdrJSON, false)
	if err != nil {
		return nil, ErrHeader
	}
	for _, k := range forbiddenHeaders {
		if _, ok := hdr[k]; ok {
			return nil, ErrHeader
		}
	}
	if _, ok := hdr["crit"]; ok {
		// We implement no JOSE extension, so every critical one is unknown
		// (RFC 7515 §4.1.11: the recipient must then reject the JWS).
		return nil, ErrHeader
	}
	if typ, _ := hdr["typ"].(string); typ != passport.TokenType {
		return nil, ErrHeader // RFC 9068 §4: refuse anything but an access token
	}
	alg, _ := hdr["alg"].(string)
	if !slices.Contains(passport.Algorithms, alg) {
		return nil, ErrAlgorithm
	}
	if kid, _ := hdr["kid"].(string); kid == "" {
		return nil, ErrHeader
	}

	// Payload: strict JSON, lower-case ASCII claim names only (Go's JSON
	// decoding matches names case-insensitively, so "ISS" or "iſs" would
	// otherwise land in the issuer), numeric times.
	payload, err := strictObject(payJSON, true)
	if err != nil {
		return nil, ErrClaims
	}
	for _, k := range []string{"exp", "iat", "nbf"} {
		val, ok := payload[k]
		if !ok {
			continue
		}
		if _, isNum := val.(json.Number); !isNum {
			return nil, ErrClaims // golang-jwt would accept "exp":"123"
		}
	}
	if _, ok := payload["exp"]; !ok {
		return nil, ErrClaims
	}
	if _, ok := payload["iat"]; !ok {
		return nil, ErrClaims
	}

	var claims passport.Claims
	parsed, err := v.parser.ParseWithClaims(tok, &claims, func(t *jwt.Token) (any, error) {
		return v.keyFor(ctx, t)
	})
	if err != nil {
		return nil, mapJWTError(err)
	}
	if parsed == nil || !parsed.Valid {
		return nil, ErrSignature // never accept on "no error" alone
	}
	// A token is accepted only when ParseWithClaims returned no error; the
	// claims below are checked on top of what the library checked.
	if claims.ExpiresAt == nil || claims.IssuedAt == nil {
		return nil, ErrClaims
	}
	if claims.ExpiresAt.Sub(claims.IssuedAt.Time) > v.cfg.MaxLifetime {
		return nil, ErrLifetime
	}
	if claims.ID == "" || claims.Subject == "" || claims.Tenant == "" || claims.Agent.ID == "" ||
		!tenantRE.MatchString(claims.Tenant) || !claims.Agent.TrustLevel.Valid() ||
		(claims.ClientID != "" && claims.ClientID != claims.Subject) {
		return nil, ErrClaims
	}
	vp := &Verified{token: tok, Claims: &claims, Payload: payload, Exp: claims.ExpiresAt.Time}
	if claims.NotBefore != nil {
		vp.NotBef = claims.NotBefore.Time
	}
	return vp, nil
}

// keyFor looks the kid up exactly and pins the algorithm to the key: an
// Ed25519 key verifies only EdDSA, a P-256 key only ES256, and a JWK that
// names its "alg" only that one. So a token cannot pick HMAC with the
// public key as secret, or another curve.
func (v *verifier) keyFor(ctx context.Context, t *jwt.Token) (any, error) {
	kid, _ := t.Header["kid"].(string)
	k, err := v.keys.key(ctx, kid)
	if err != nil {
		if !v.keys.ready(ctx) {
			return nil, ErrKeysUnavailable
		}
		return nil, ErrUnknownKey
	}
	alg := t.Method.Alg()
	m := k.Marshal()
	if m.USE != "" && m.USE != jwkset.UseSig {
		return nil, ErrAlgorithm
	}
	if m.ALG != "" && string(m.ALG) != alg {
		return nil, ErrAlgorithm
	}
	switch pk := k.Key().(type) {
	case ed25519.PublicKey:
		if alg == passport.AlgEdDSA {
			return pk, nil
		}
	case *ecdsa.PublicKey:
		if alg == passport.AlgES256 && pk.Curve == elliptic.P256() {
			return pk, nil
		}
	}
	return nil, ErrAlgorithm
}

func mapJWTError(err error) error {
	if errors.Is(err, ErrKeysUnavailable) {
		return ErrKeysUnavailable
	}
	var ae *AuthError
	if errors.As(err, &ae) {
		return ae
	}
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return ErrExpired
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return ErrNotYetValid
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return ErrIssuer
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return ErrAudience
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return ErrSignature
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return ErrAlgorithm
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing), errors.Is(err, jwt.ErrTokenInvalidClaims):
		return ErrClaims
	}
	return ErrMalformed
}

// maxJSONDepth bounds nesting in a passport's header and payload.
const maxJSONDepth = 16

// strictObject decodes one JSON object, refusing what encoding/json would
// let through silently: invalid UTF-8 (replaced by U+FFFD), duplicate
// keys at any depth (last one wins), trailing data, deep nesting, and, when
// lowerKeys is set, any key that is not lower-case ASCII.
func strictObject(b []byte, lowerKeys bool) (map[string]any, error) {
	if !utf8.Valid(b) {
		return nil, errors.New("invalid utf-8")
	}
	if err := scanKeys(b, lowerKeys); err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	if m == nil {
		return nil, errors.New("not an object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data")
	}
	return m, nil
}

func scanKeys(b []byte, lowerKeys bool) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	type frame struct {
		obj     bool
		keys    map[string]struct{}
		wantKey bool
	}
	var stack []frame
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{', '[':
				if len(stack) > 0 && stack[len(stack)-1].obj {
					stack[len(stack)-1].wantKey = true
				}
				if len(stack) >= maxJSONDepth {
					return errors.New("too deep")
				}
				stack = append(stack, frame{obj: d == '{', keys: map[string]struct{}{}, wantKey: d == '{'})
			case '}', ']':
				stack = stack[:len(stack)-1]
				if len(stack) > 0 && stack[len(stack)-1].obj {
					stack[len(stack)-1].wantKey = true
				}
			}
			continue
		}
		if len(stack) == 0 {
			return errors.New("not an object")
		}
		top := &stack[len(stack)-1]
		if top.obj && top.wantKey {
			k, _ := tok.(string)
			if _, dup := top.keys[k]; dup {
				return fmt.Errorf("duplicate key")
			}
			if lowerKeys {
				for i := 0; i < len(k); i++ {
					if c := k[i]; c >= 0x80 || 'A' <= c && c <= 'Z' {
						return fmt.Errorf("claim name not lower-case ascii")
					}
				}
			}
			top.keys[k] = struct{}{}
			top.wantKey = false
			continue
		}
		if top.obj {
			top.wantKey = true
		}
	}
	return nil
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

func (c *tokenCache) put(tok string, vp *Verified, now time.Time) {
	if c.max <= 0 {
		return
	}
	h := maphash.String(c.seed, tok)
	c.mu.Lock()
	defer c.mu.Unlock()
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
