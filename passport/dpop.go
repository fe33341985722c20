package passport

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DPoP (RFC 9449): a passport bound to a key (cnf.jkt) is only good
// together with a proof, a small JWT signed by that key for one HTTP
// request. A passport copied from a log or a compromised agent is then
// useless without the key.
const (
	// DPoPProofType is the "typ" of every DPoP proof, exactly.
	DPoPProofType = "dpop+jwt"
	// TokenTypeDPoP is the token_type of a bound passport and the
	// Authorization scheme it is sent with.
	TokenTypeDPoP = "DPoP"
	// DPoPHeader carries the proof; DPoPNonceHeader a server nonce.
	DPoPHeader      = "DPoP"
	DPoPNonceHeader = "DPoP-Nonce"
	// MaxDPoPProofBytes bounds a proof's compact serialisation.
	MaxDPoPProofBytes = 4096
	// DefaultDPoPMaxAge is how old a proof's iat may be unless
	// configured; MaxDPoPMaxAge caps any configuration.
	DefaultDPoPMaxAge = time.Minute
	MaxDPoPMaxAge     = 5 * time.Minute
	// maxDPoPJTI bounds a proof's jti.
	maxDPoPJTI = 256
)

// DPoPAlgorithms are the only algorithms a DPoP proof may use.
var DPoPAlgorithms = []string{AlgES256, AlgEdDSA}

func dpopErr(reason, desc string) *AuthError {
	return &AuthError{Code: "invalid_dpop_proof", Description: desc, Reason: reason}
}

// Refusals of a DPoP proof: Code invalid_dpop_proof (RFC 9449 §5, §7.1),
// except ErrDPoPNonce (use_dpop_nonce, §8), after which the server sends
// a fresh nonce in DPoP-Nonce. Reasons are bounded, for metrics.
var (
	ErrDPoPMissing   = dpopErr("dpop_missing", "a DPoP proof is required")
	ErrDPoPMalformed = dpopErr("dpop_malformed", "the DPoP proof is malformed")
	ErrDPoPType      = dpopErr("dpop_bad_typ", "the DPoP proof's typ must be dpop+jwt")
	ErrDPoPAlgorithm = dpopErr("dpop_bad_alg", "the DPoP proof must be signed with ES256 or EdDSA by the key in its jwk")
	ErrDPoPKey       = dpopErr("dpop_bad_jwk", "the DPoP proof's jwk must be one public Ed25519 or P-256 key")
	ErrDPoPSignature = dpopErr("dpop_bad_signature", "the DPoP proof's signature is invalid")
	ErrDPoPMethod    = dpopErr("dpop_wrong_method", "the DPoP proof is for another HTTP method")
	ErrDPoPURL       = dpopErr("dpop_wrong_url", "the DPoP proof is for another URL")
	ErrDPoPTime      = dpopErr("dpop_stale", "the DPoP proof's iat is outside the accepted window")
	ErrDPoPATH       = dpopErr("dpop_bad_ath", "the DPoP proof's ath does not match the access token")
	ErrDPoPBinding   = dpopErr("dpop_key_mismatch", "the DPoP proof is signed by another key than the passport is bound to")
	ErrDPoPReplay    = dpopErr("dpop_replay", "the DPoP proof has been used before")
	ErrDPoPNonce     = &AuthError{Code: "use_dpop_nonce", Description: "a fresh DPoP nonce is required", Reason: "dpop_nonce"}
)

// DPoPReplayFunc records that the proof named by key was used, and
// reports whether it is the first use. key is DPoPReplayKey(jkt, jti):
// one Redis key per proof, so `SET key 1 NX PX ttl` (go-redis SetNX with
// an expiry) is atomic on a single Redis and on a Cluster alike, and
// every replica that shares the Redis sees every use. The record must
// live ttl. An error means the check could not be made: the caller fails
// closed.
type DPoPReplayFunc func(ctx context.Context, key string, ttl time.Duration) (fresh bool, err error)

// DPoPReplayKey is the Redis key recording one proof's use. The jti is
// scoped by the proof key's thumbprint, so a jti chosen by one agent can
// never make another agent's proof look replayed, and hashed, so the key
// has a fixed length whatever the client sent.
func DPoPReplayKey(jkt, jti string) string {
	sum := sha256.Sum256([]byte(jkt + "." + jti))
	return "passport:dpop:jti:" + base64.RawURLEncoding.EncodeToString(sum[:])
}

// DPoPConfig configures a DPoPVerifier.
type DPoPConfig struct {
	// MaxAge is how old a proof's iat may be. Default DefaultDPoPMaxAge,
	// at most MaxDPoPMaxAge. A proof is refused as replayed for as long
	// as it would otherwise be accepted.
	MaxAge time.Duration
	// Leeway is how far in the future iat may be (clock skew). At most
	// MaxLeeway.
	Leeway time.Duration
	// Clock is the time source. Default time.Now.
	Clock func() time.Time
	// Replay records each proof's use. Required.
	Replay DPoPReplayFunc
}

// DPoPRequest is the request a proof must be for.
type DPoPRequest struct {
	// Method is the request's HTTP method; htm must equal it exactly.
	Method string
	// URL is the request's target URI as the server knows itself (its
	// configured public URL plus the path), never a Host header the
	// client chose. htu must equal it after RFC 3986 syntax- and
	// scheme-based normalisation, ignoring query and fragment.
	URL string
	// AccessToken is the passport presented with the proof. Empty at the
	// token endpoint: then the proof must carry no ath (RFC 9449 §4.3).
	// Otherwise ath must be its base64url SHA-256 (AccessTokenHash).
	AccessToken string
	// ATH, when set, is AccessTokenHash(AccessToken), computed once by a
	// caller that sees the same token many times.
	ATH string
	// JKT, when set, is the thumbprint the proof's key must have: the
	// passport's cnf.jkt.
	JKT string
	// Nonce, when set, requires a nonce claim it accepts; a proof without
	// one, or with one it refuses, gets ErrDPoPNonce.
	Nonce func(nonce string) bool
}

// DPoPProof is a proof that passed every check.
type DPoPProof struct {
	// JKT is the RFC 7638 thumbprint of the proof's key: what cnf.jkt of
	// a passport bound to it says.
	JKT      string
	JTI      string
	IssuedAt time.Time
	Nonce    string
	Key      crypto.PublicKey
}

// DPoPVerifier checks DPoP proofs against every rule of RFC 9449 §4.3.
// It is safe for concurrent use.
type DPoPVerifier struct {
	cfg DPoPConfig
	// headers remembers proof headers already checked, by their exact
	// encoded bytes: an agent signs every proof under the same header
	// (typ, alg, its jwk), so its key is read and hashed once.
	headers   sync.Map // string -> *proofHeader
	nHeaders  atomic.Int64
	headersMu sync.Mutex // one reset at a time
}

// proofHeader is what the checks of a proof header found.
type proofHeader struct {
	pub crypto.PublicKey
	jkt string
}

// maxProofHeaders bounds the remembered headers: past it they are
// forgotten all at once (each is one agent key: a proxy sees few).
const maxProofHeaders = 4096

// NewDPoPVerifier checks cfg and returns a verifier.
func NewDPoPVerifier(cfg DPoPConfig) (*DPoPVerifier, error) {
	if cfg.MaxAge == 0 {
		cfg.MaxAge = DefaultDPoPMaxAge
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	var errs []error
	if cfg.MaxAge < time.Second || cfg.MaxAge > MaxDPoPMaxAge {
		errs = append(errs, fmt.Errorf("dpop: max age %v: want 1s to %v", cfg.MaxAge, MaxDPoPMaxAge))
	}
	if cfg.Leeway < 0 || cfg.Leeway > MaxLeeway {
		errs = append(errs, fmt.Errorf("dpop: leeway %v: want 0 to %v", cfg.Leeway, MaxLeeway))
	}
	if cfg.Replay == nil {
		errs = append(errs, errors.New("dpop: a replay check is required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &DPoPVerifier{cfg: cfg}, nil
}

// proofPointers are key-pointing headers a proof must not carry: its key
// is the jwk it embeds, nothing else.
var proofPointers = []string{"jku", "x5u", "x5c", "x5t", "x5t#S256"}

// Verify checks proof for req and records its use. It returns the proof,
// an *AuthError (a refusal), or another error when the replay check could
// not be made (the caller fails closed: 503, never accept).
//
// The checks, in RFC 9449 §4.3's terms: one well-formed JWT; typ exactly
// dpop+jwt; alg ES256 or EdDSA, pinned to the type of the key in jwk; jwk
// one public Ed25519 or P-256 key (no private member, no other member
// than kty, crv, x, y, alg, use, kid); no crit and no other key pointer;
// the signature by that key; htm and htu equal to the request; iat within
// [now - MaxAge, now + Leeway]; ath absent at the token endpoint, else the
// access token's hash; the key's thumbprint equal to req.JKT when set; the
// nonce when required; and jti never used before with this key within the
// window (req's Replay). Cheap checks come first and the replay record
// last, so a refused proof writes nothing.
func (v *DPoPVerifier) Verify(ctx context.Context, proof string, req DPoPRequest) (*DPoPProof, error) {
	if proof == "" {
		return nil, ErrDPoPMissing
	}
	if len(proof) > MaxDPoPProofBytes {
		return nil, ErrDPoPMalformed
	}
	parts, ok := splitCompact(proof)
	if !ok {
		return nil, ErrDPoPMalformed
	}
	dec := base64.RawURLEncoding.Strict()
	ph, known := v.header(parts[0])
	var hdrJSON []byte
	var err1 error
	if !known {
		hdrJSON, err1 = dec.DecodeString(parts[0])
	}
	payJSON, err2 := dec.DecodeString(parts[1])
	sig, err3 := dec.DecodeString(parts[2])
	if err1 != nil || err2 != nil || err3 != nil {
		return nil, ErrDPoPMalformed
	}
	var err error
	if !known {
		if ph, err = checkProofHeader(hdrJSON); err != nil {
			return nil, err
		}
	}
	pub := ph.pub

	claims, err := strictObject(payJSON, false)
	if err != nil {
		return nil, ErrDPoPMalformed
	}
	jti, _ := claims["jti"].(string)
	if jti == "" || len(jti) > maxDPoPJTI {
		return nil, ErrDPoPMalformed
	}
	htm, ok := claims["htm"].(string)
	if !ok || htm != req.Method {
		return nil, ErrDPoPMethod
	}
	htu, ok := claims["htu"].(string)
	if !ok {
		return nil, ErrDPoPURL
	}
	got, okGot := NormalizeHTU(htu)
	want, okWant := NormalizeHTU(req.URL)
	if !okGot || !okWant || got != want {
		return nil, ErrDPoPURL
	}
	iatN, ok := claims["iat"].(json.Number)
	if !ok {
		return nil, ErrDPoPMalformed
	}
	iatS, err := strconv.ParseInt(string(iatN), 10, 64)
	if err != nil {
		return nil, ErrDPoPMalformed
	}
	iat := time.Unix(iatS, 0)
	now := v.cfg.Clock()
	if iat.Before(now.Add(-v.cfg.MaxAge)) || iat.After(now.Add(v.cfg.Leeway)) {
		return nil, ErrDPoPTime
	}
	athV, hasATH := claims["ath"]
	switch {
	case req.AccessToken == "" && hasATH:
		return nil, ErrDPoPATH
	case req.AccessToken != "":
		ath, ok := athV.(string)
		want := req.ATH
		if want == "" {
			want = AccessTokenHash(req.AccessToken)
		}
		if !ok || subtle.ConstantTimeCompare([]byte(ath), []byte(want)) != 1 {
			return nil, ErrDPoPATH
		}
	}
	if !verifyJWS(pub, parts[0]+"."+parts[1], sig) {
		return nil, ErrDPoPSignature
	}
	jkt := ph.jkt
	if req.JKT != "" && subtle.ConstantTimeCompare([]byte(jkt), []byte(req.JKT)) != 1 {
		return nil, ErrDPoPBinding
	}
	if !known {
		// Remembered only once a proof under it was signed by the key the
		// passport is bound to: unbound keys cannot fill the table.
		v.remember(parts[0], ph)
	}
	nonce, _ := claims["nonce"].(string)
	if req.Nonce != nil && (nonce == "" || !req.Nonce(nonce)) {
		return nil, ErrDPoPNonce
	}
	// Another replica with a clock up to Leeway behind still accepts the
	// proof until iat + MaxAge by its clock: the record outlives that.
	ttl := iat.Add(v.cfg.MaxAge + v.cfg.Leeway).Sub(now)
	if ttl < time.Second {
		ttl = time.Second
	}
	fresh, err := v.cfg.Replay(ctx, DPoPReplayKey(jkt, jti), ttl)
	if err != nil {
		return nil, fmt.Errorf("dpop replay check: %w", err)
	}
	if !fresh {
		return nil, ErrDPoPReplay
	}
	return &DPoPProof{JKT: jkt, JTI: jti, IssuedAt: iat, Nonce: nonce, Key: pub}, nil
}

// header returns the checked header of these exact encoded bytes.
func (v *DPoPVerifier) header(enc string) (*proofHeader, bool) {
	if x, ok := v.headers.Load(enc); ok {
		return x.(*proofHeader), true
	}
	return nil, false
}

func (v *DPoPVerifier) remember(enc string, ph *proofHeader) {
	if _, loaded := v.headers.LoadOrStore(enc, ph); loaded {
		return
	}
	if v.nHeaders.Add(1) <= maxProofHeaders {
		return
	}
	v.headersMu.Lock()
	defer v.headersMu.Unlock()
	if v.nHeaders.Load() > maxProofHeaders {
		v.headers.Clear()
		v.nHeaders.Store(0)
	}
}

// checkProofHeader applies the header's rules: typ, alg, no crit and no
// key pointer, a public jwk of alg's type; and takes the key's thumbprint.
func checkProofHeader(hdrJSON []byte) (*proofHeader, error) {
	hdr, err := strictObject(hdrJSON, false)
	if err != nil {
		return nil, ErrDPoPMalformed
	}
	if typ, _ := hdr["typ"].(string); typ != DPoPProofType {
		return nil, ErrDPoPType
	}
	alg, _ := hdr["alg"].(string)
	if !slices.Contains(DPoPAlgorithms, alg) {
		return nil, ErrDPoPAlgorithm
	}
	if _, ok := hdr["crit"]; ok {
		return nil, ErrDPoPMalformed // no extension is understood
	}
	for _, k := range proofPointers {
		if _, ok := hdr[k]; ok {
			return nil, ErrDPoPKey
		}
	}
	pub, err := proofKey(hdr["jwk"], alg)
	if err != nil {
		return nil, err
	}
	jkt, err := JWKThumbprint(pub)
	if err != nil {
		return nil, ErrDPoPKey
	}
	return &proofHeader{pub: pub, jkt: jkt}, nil
}

// proofJWKMembers are the only members a proof's jwk may have. The
// private members of every key type (d, p, q, dp, dq, qi, oth, k) are
// thereby refused, and so is anything a later reader might act on.
var proofJWKMembers = []string{"kty", "crv", "x", "y", "alg", "use", "kid"}

// proofKey reads the header's jwk: an Ed25519 key for EdDSA or a P-256
// key for ES256, public members only.
func proofKey(v any, alg string) (crypto.PublicKey, error) {
	m, ok := v.(map[string]any)
	if !ok {
		return nil, ErrDPoPKey
	}
	str := map[string]string{}
	for k, x := range m {
		s, ok := x.(string)
		if !ok || !slices.Contains(proofJWKMembers, k) {
			return nil, ErrDPoPKey
		}
		str[k] = s
	}
	if a, ok := str["alg"]; ok && a != alg {
		return nil, ErrDPoPAlgorithm
	}
	if u, ok := str["use"]; ok && u != "sig" {
		return nil, ErrDPoPKey
	}
	dec := base64.RawURLEncoding.Strict()
	switch {
	case str["kty"] == "OKP" && str["crv"] == "Ed25519":
		if _, ok := str["y"]; ok {
			return nil, ErrDPoPKey
		}
		x, err := dec.DecodeString(str["x"])
		if err != nil || len(x) != ed25519.PublicKeySize {
			return nil, ErrDPoPKey
		}
		if alg != AlgEdDSA {
			return nil, ErrDPoPAlgorithm
		}
		return ed25519.PublicKey(x), nil
	case str["kty"] == "EC" && str["crv"] == "P-256":
		x, errX := dec.DecodeString(str["x"])
		y, errY := dec.DecodeString(str["y"])
		if errX != nil || errY != nil || len(x) != 32 || len(y) != 32 {
			return nil, ErrDPoPKey
		}
		pk, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
		if err != nil {
			return nil, ErrDPoPKey // not a point on the curve
		}
		if alg != AlgES256 {
			return nil, ErrDPoPAlgorithm
		}
		return pk, nil
	}
	return nil, ErrDPoPKey
}

// verifyJWS checks a JWS signature: Ed25519 over the signing input, or
// ES256 as the 64-byte r||s of RFC 7518 §3.4 (never ASN.1).
func verifyJWS(pub crypto.PublicKey, input string, sig []byte) bool {
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return len(sig) == ed25519.SignatureSize && ed25519.Verify(k, []byte(input), sig)
	case *ecdsa.PublicKey:
		if len(sig) != 64 {
			return false
		}
		h := sha256.Sum256([]byte(input))
		r := new(big.Int).SetBytes(sig[:32])
		s := new(big.Int).SetBytes(sig[32:])
		return ecdsa.Verify(k, h[:], r, s)
	}
	return false
}

// PublicJWK returns the required members of an Ed25519 or P-256 public
// key's JWK (RFC 7517, RFC 8037): what a DPoP proof's jwk header holds.
func PublicJWK(pub crypto.PublicKey) (map[string]string, error) {
	b64 := base64.RawURLEncoding.EncodeToString
	switch k := pub.(type) {
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return nil, errors.New("jwk: bad Ed25519 key")
		}
		return map[string]string{"kty": "OKP", "crv": "Ed25519", "x": b64(k)}, nil
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, errors.New("jwk: want a P-256 key")
		}
		raw, err := k.Bytes() // 0x04 || X || Y, each 32 bytes
		if err != nil || len(raw) != 65 {
			return nil, fmt.Errorf("jwk: encode P-256 key: %v", err)
		}
		return map[string]string{"kty": "EC", "crv": "P-256", "x": b64(raw[1:33]), "y": b64(raw[33:])}, nil
	}
	return nil, fmt.Errorf("jwk: unsupported key type %T: want Ed25519 or P-256", pub)
}

// JWKThumbprint is the RFC 7638 SHA-256 thumbprint of an Ed25519 or P-256
// public key, base64url: the required members in lexicographic order,
// no whitespace, hashed. It is what cnf.jkt holds (RFC 9449 §6.1).
func JWKThumbprint(pub crypto.PublicKey) (string, error) {
	j, err := PublicJWK(pub)
	if err != nil {
		return "", err
	}
	var canon string
	if j["kty"] == "OKP" {
		canon = `{"crv":"` + j["crv"] + `","kty":"OKP","x":"` + j["x"] + `"}`
	} else {
		canon = `{"crv":"` + j["crv"] + `","kty":"EC","x":"` + j["x"] + `","y":"` + j["y"] + `"}`
	}
	sum := sha256.Sum256([]byte(canon))
	return base64.RawURLEncoding.EncodeToString(sum[:]), nil
}

// AccessTokenHash is a proof's ath for an access token: the base64url
// SHA-256 of its ASCII bytes (RFC 9449 §4.2).
func AccessTokenHash(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// NormalizeHTU brings an http(s) URI into the form htu is compared in
// (RFC 9449 §4.3, RFC 3986 §6.2.2–6.2.3): scheme and host in lower case,
// the scheme's default port dropped, an empty path as "/", percent
// escapes in upper case and those of unreserved characters decoded;
// query and fragment dropped. Dot segments are not resolved: a path that
// holds them only ever matches itself, so the comparison can fail, never
// match two different resources. It reports false for anything else (no
// host, user info, another scheme).
func NormalizeHTU(s string) (string, bool) {
	u, err := url.Parse(s)
	if err != nil || u.Opaque != "" || u.User != nil || u.Host == "" {
		return "", false
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "http" && scheme != "https" {
		return "", false
	}
	host := strings.ToLower(u.Hostname())
	if host == "" {
		return "", false
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	port := u.Port()
	if (scheme == "http" && port == "80") || (scheme == "https" && port == "443") {
		port = ""
	}
	if port != "" {
		host += ":" + port
	}
	path, ok := normalizePercent(u.EscapedPath())
	if !ok {
		return "", false
	}
	if path == "" {
		path = "/"
	}
	return scheme + "://" + host + path, true
}

// normalizePercent upper-cases percent escapes and decodes those of
// unreserved characters (RFC 3986 §6.2.2.1–6.2.2.2).
func normalizePercent(p string) (string, bool) {
	if !strings.Contains(p, "%") {
		return p, true
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] != '%' {
			b.WriteByte(p[i])
			continue
		}
		if i+2 >= len(p) {
			return "", false
		}
		v, err := strconv.ParseUint(p[i+1:i+3], 16, 8)
		if err != nil {
			return "", false
		}
		c := byte(v)
		if 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' {
			b.WriteByte(c)
		} else {
			b.WriteString(strings.ToUpper(p[i : i+3]))
		}
		i += 2
	}
	return b.String(), true
}

// DPoPNonces makes and checks server nonces (RFC 9449 §8) without state:
// a nonce is an HMAC of the number of the current period, so every
// replica that shares the secret hands out the same nonce and accepts
// the current period's and the previous one's. A nonce thus lives
// between one and two periods.
type DPoPNonces struct {
	secret []byte
	period time.Duration
	clock  func() time.Time
}

// NewDPoPNonces returns a nonce source. secret must be at least 32 bytes,
// period at least 1s; clock nil means time.Now.
func NewDPoPNonces(secret []byte, period time.Duration, clock func() time.Time) (*DPoPNonces, error) {
	if len(secret) < 32 {
		return nil, errors.New("dpop nonces: secret shorter than 32 bytes")
	}
	if period < time.Second {
		return nil, fmt.Errorf("dpop nonces: period %v: want at least 1s", period)
	}
	if clock == nil {
		clock = time.Now
	}
	return &DPoPNonces{secret: slices.Clone(secret), period: period, clock: clock}, nil
}

func (n *DPoPNonces) at(slot int64) string {
	m := hmac.New(sha256.New, n.secret)
	m.Write([]byte("passport dpop nonce\x00"))
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(slot))
	m.Write(b[:])
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (n *DPoPNonces) slot() int64 { return n.clock().UnixNano() / int64(n.period) }

// Current is the nonce to hand out now.
func (n *DPoPNonces) Current() string { return n.at(n.slot()) }

// Valid reports whether s is the current or the previous period's nonce.
func (n *DPoPNonces) Valid(s string) bool {
	slot := n.slot()
	ok := subtle.ConstantTimeCompare([]byte(s), []byte(n.at(slot)))
	ok |= subtle.ConstantTimeCompare([]byte(s), []byte(n.at(slot-1)))
	return ok == 1
}
