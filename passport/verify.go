package passport

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"
)

// AuthError is a refused passport. Code is the RFC 6750 error code and
// Description a safe, fixed sentence for error_description: it never holds
// input or an internal error string. Reason is snake_case, for audit
// records and metrics.
type AuthError struct {
	Code        string // "invalid_token", or "" when no passport was sent
	Description string
	Reason      string
}

func (e *AuthError) Error() string { return e.Description }

// NewAuthError returns an invalid_token refusal.
func NewAuthError(reason, desc string) *AuthError {
	return &AuthError{Code: "invalid_token", Description: desc, Reason: reason}
}

// Refusals of the verifier. They are values so callers can use errors.Is.
var (
	ErrTooLarge    = NewAuthError("token_too_large", "the passport is too large")
	ErrMalformed   = NewAuthError("malformed", "the passport is malformed")
	ErrHeader      = NewAuthError("bad_header", "the passport header is not acceptable")
	ErrAlgorithm   = NewAuthError("bad_algorithm", "the passport algorithm is not accepted")
	ErrUnknownKey  = NewAuthError("unknown_key", "the passport signing key is unknown")
	ErrSignature   = NewAuthError("bad_signature", "the passport signature is invalid")
	ErrExpired     = NewAuthError("expired", "the passport has expired")
	ErrNotYetValid = NewAuthError("not_yet_valid", "the passport is not valid yet")
	ErrIssuer      = NewAuthError("bad_issuer", "the passport was not issued by the trusted authority")
	ErrAudience    = NewAuthError("bad_audience", "the passport is not meant for this resource")
	ErrClaims      = NewAuthError("bad_claims", "the passport claims are not acceptable")
	ErrLifetime    = NewAuthError("lifetime_too_long", "the passport lives longer than allowed")
)

// DefaultMaxTokenBytes bounds a passport's compact serialisation unless a
// verifier is configured otherwise.
const DefaultMaxTokenBytes = 8 << 10

// VerifyKey is a public key a passport may be verified with.
type VerifyKey struct {
	// Key is an ed25519.PublicKey or a P-256 *ecdsa.PublicKey.
	Key crypto.PublicKey
	// Alg, when set, is the one algorithm the key may verify (a JWK's
	// "alg"); the key's type pins it in any case.
	Alg string
}

// KeyFunc returns the key published under kid. An *AuthError it returns is
// passed through as the verdict; any other error means the kid is unknown.
type KeyFunc func(ctx context.Context, kid string) (VerifyKey, error)

// VerifierConfig configures a Verifier.
type VerifierConfig struct {
	// Issuer is the only accepted "iss". Required.
	Issuer string
	// Audiences: the passport's "aud" must name at least one. Required.
	Audiences []string
	// Leeway is the clock skew allowed on exp, nbf and iat; at most
	// MaxLeeway.
	Leeway time.Duration
	// MaxLifetime caps exp - iat. Default and maximum MaxLifetime.
	MaxLifetime time.Duration
	// MaxTokenBytes bounds the token's length. Default DefaultMaxTokenBytes.
	MaxTokenBytes int
	// Clock is the time source. Default time.Now.
	Clock func() time.Time
	// Keys finds verification keys. Required.
	Keys KeyFunc
	// AcceptDelegated admits delegated passports (act and delegation
	// claims, RFC 8693). Set it only when the caller refuses a passport
	// any of whose links (delegation.links) is revoked or whose agent is
	// blocked, as it does for the holder: otherwise revoking an ancestor
	// would not reach its descendants. Default false: such passports are
	// refused with ErrDelegatedUnsupported.
	AcceptDelegated bool
	// AcceptBound admits DPoP-bound passports (cnf.jkt, RFC 9449). Set it
	// only when the caller checks a DPoP proof by the bound key on every
	// use (VerifyDPoP with DPoPRequest.JKT), or, like introspection,
	// hands cnf on to one that does. Default false: such passports are
	// refused with ErrBoundUnsupported, never taken as bearer tokens.
	AcceptBound bool
}

// Verifier is the one strict passport verifier: the proxy, the authority's
// introspection and the authority's check right after signing all use it,
// so that no passport is active for one and refused by another. It is
// stricter than the JWT library on everything two JSON or JOSE readers
// could read differently. A Verifier is safe for concurrent use.
type Verifier struct {
	cfg    VerifierConfig
	parser *jwt.Parser
}

// Verified is a passport that passed every check of Verify.
type Verified struct {
	Claims *Claims
	// Payload is the claims as decoded JSON values (numbers as
	// json.Number), for callers that pass them on, such as the policy.
	Payload   map[string]any
	Exp       time.Time
	NotBefore time.Time // zero when the passport has no nbf
}

// NewVerifier checks cfg and returns a verifier.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
	if cfg.MaxLifetime == 0 {
		cfg.MaxLifetime = MaxLifetime
	}
	if cfg.MaxTokenBytes == 0 {
		cfg.MaxTokenBytes = DefaultMaxTokenBytes
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	var errs []error
	if cfg.Issuer == "" {
		errs = append(errs, errors.New("verifier: issuer is required"))
	}
	if len(cfg.Audiences) == 0 || slices.Contains(cfg.Audiences, "") {
		errs = append(errs, errors.New("verifier: at least one non-empty audience is required"))
	}
	if cfg.Leeway < 0 || cfg.Leeway > MaxLeeway {
		errs = append(errs, fmt.Errorf("verifier: leeway %v: want 0 to %v", cfg.Leeway, MaxLeeway))
	}
	if cfg.MaxLifetime < 0 || cfg.MaxLifetime > MaxLifetime {
		errs = append(errs, fmt.Errorf("verifier: max lifetime %v: want at most %v", cfg.MaxLifetime, MaxLifetime))
	}
	if cfg.MaxTokenBytes < 0 {
		errs = append(errs, errors.New("verifier: max token bytes must not be negative"))
	}
	if cfg.Keys == nil {
		errs = append(errs, errors.New("verifier: a key source is required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &Verifier{cfg: cfg, parser: jwt.NewParser(
		jwt.WithValidMethods(Algorithms),
		jwt.WithIssuer(cfg.Issuer),
		jwt.WithAudience(cfg.Audiences...),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(cfg.Leeway),
		jwt.WithTimeFunc(cfg.Clock),
		jwt.WithStrictDecoding(),
	)}, nil
}

// Leeway is the clock skew the verifier allows.
func (v *Verifier) Leeway() time.Duration { return v.cfg.Leeway }

// forbiddenHeaders are JOSE headers that point at keys. A verifier that
// followed them would let the token choose its own key; passports are only
// verified with published keys, so a token carrying them is refused.
var forbiddenHeaders = []string{"jku", "x5u", "x5c", "jwk", "x5t", "x5t#S256"}

// Verify checks raw completely, times included, and returns the passport
// or an *AuthError.
func (v *Verifier) Verify(ctx context.Context, raw string) (*Verified, error) {
	vp, err := v.verify(ctx, raw)
	if err != nil {
		return nil, err
	}
	if err := v.CheckTimes(vp, v.cfg.Clock()); err != nil {
		return nil, err
	}
	return vp, nil
}

// CheckTimes repeats the time checks of Verify at now, for a caller that
// keeps verified passports and uses them again.
func (v *Verifier) CheckTimes(vp *Verified, now time.Time) error {
	if !now.Before(vp.Exp.Add(v.cfg.Leeway)) {
		return ErrExpired
	}
	if !vp.NotBefore.IsZero() && now.Add(v.cfg.Leeway).Before(vp.NotBefore) {
		return ErrNotYetValid
	}
	return nil
}

func (v *Verifier) verify(ctx context.Context, tok string) (*Verified, error) {
	if len(tok) > v.cfg.MaxTokenBytes {
		return nil, ErrTooLarge
	}
	parts, ok := splitCompact(tok)
	if !ok {
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
	if typ, _ := hdr["typ"].(string); typ != TokenType {
		return nil, ErrHeader // RFC 9068 §4: exactly at+jwt, nothing else
	}
	alg, _ := hdr["alg"].(string)
	if !slices.Contains(Algorithms, alg) {
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

	var claims Claims
	parsed, err := v.parser.ParseWithClaims(tok, &claims, func(t *jwt.Token) (any, error) {
		return v.keyFor(ctx, t)
	})
	if err != nil {
		return nil, mapJWTError(err)
	}
	if parsed == nil || !parsed.Valid {
		return nil, ErrSignature // never accept on "no error" alone
	}
	// The claims below are checked on top of what the library checked.
	if claims.ExpiresAt == nil || claims.IssuedAt == nil {
		return nil, ErrClaims
	}
	if claims.ExpiresAt.Sub(claims.IssuedAt.Time) > v.cfg.MaxLifetime {
		return nil, ErrLifetime
	}
	if claims.ID == "" || claims.Subject == "" || claims.Tenant == "" || claims.Agent.ID == "" ||
		!ValidTenant(claims.Tenant) || !claims.Agent.TrustLevel.Valid() ||
		(claims.ClientID != "" && claims.ClientID != claims.Subject) {
		return nil, ErrClaims
	}
	if err := checkDelegation(payload, &claims); err != nil {
		return nil, err
	}
	if err := checkConfirmation(payload, &claims); err != nil {
		return nil, err
	}
	if claims.Delegation != nil && !v.cfg.AcceptDelegated {
		return nil, ErrDelegatedUnsupported
	}
	if claims.Cnf != nil && !v.cfg.AcceptBound {
		return nil, ErrBoundUnsupported
	}
	vp := &Verified{Claims: &claims, Payload: payload, Exp: claims.ExpiresAt.Time}
	if claims.NotBefore != nil {
		vp.NotBefore = claims.NotBefore.Time
	}
	return vp, nil
}

// splitCompact splits a compact JWS into its three parts: base64url
// characters only, no padding, no empty part, exactly two dots.
func splitCompact(tok string) ([3]string, bool) {
	var parts [3]string
	n := 0
	start := 0
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if c == '.' {
			if n == 2 {
				return parts, false
			}
			parts[n] = tok[start:i]
			n++
			start = i + 1
			continue
		}
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return parts, false
		}
	}
	if n != 2 {
		return parts, false
	}
	parts[2] = tok[start:]
	return parts, parts[0] != "" && parts[1] != "" && parts[2] != ""
}

// keyFor looks the kid up exactly and pins the algorithm to the key: an
// Ed25519 key verifies only EdDSA, a P-256 key only ES256, and a key with
// an Alg only that one. So a token cannot pick HMAC with the public key as
// secret, or another curve.
func (v *Verifier) keyFor(ctx context.Context, t *jwt.Token) (any, error) {
	kid, _ := t.Header["kid"].(string)
	k, err := v.cfg.Keys(ctx, kid)
	if err != nil {
		var ae *AuthError
		if errors.As(err, &ae) {
			return nil, ae
		}
		return nil, ErrUnknownKey
	}
	alg := t.Method.Alg()
	if k.Alg != "" && k.Alg != alg {
		return nil, ErrAlgorithm
	}
	switch pk := k.Key.(type) {
	case ed25519.PublicKey:
		if alg == AlgEdDSA {
			return pk, nil
		}
	case *ecdsa.PublicKey:
		if alg == AlgES256 && pk.Curve == elliptic.P256() {
			return pk, nil
		}
	}
	return nil, ErrAlgorithm
}

func mapJWTError(err error) error {
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

// claimX5T is the one registered claim name with an upper-case letter
// (cnf's RFC 8705 member). Its other spellings stay refused: a lower-case
// "x5t#s256" passes the scan but not checkConfirmation, which wants the
// exact name.
const claimX5T = "x5t#S256"

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
			if lowerKeys && k != claimX5T {
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
