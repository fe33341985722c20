package authority

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/MicahParks/jwkset"

	"github.com/agentpassport/passport/internal/strictjson"
)

// Bounds on what a trusted issuer's endpoints may send.
const (
	maxJWKSBytes      = 256 << 10
	maxJWKSKeys       = 64
	maxFetchTime      = 10 * time.Second
	minRSABits        = 2048
	maxRSABits        = 8192 // verification cost grows with the modulus
	maxBearerFileSize = 16 << 10
)

var (
	// errKeysUnavailable: the issuer's keys could not be loaded (or are
	// too old). Not the client's fault: the token endpoint answers 503.
	errKeysUnavailable = errors.New("trusted issuer keys unavailable")
	errNoSuchKey       = errors.New("no key with this kid")
)

// extKey is one verification key of a trusted issuer.
type extKey struct {
	pub crypto.PublicKey
	// alg is the JWK's "alg", which pins the key to one algorithm; empty
	// when the JWK has none (then the key type pins the family).
	alg string
}

// extKeySet is an immutable snapshot of an issuer's keys.
type extKeySet struct {
	keys    map[string]extKey
	fetched time.Time
}

// issuerKeys loads one trusted issuer's keys and caches them. Nothing runs
// in the background: a request that finds the keys stale, or a kid
// unknown, fetches them again, one fetch at a time and an unknown kid at
// most once per JWKSMinRefresh.
type issuerKeys struct {
	cfg    TrustedIssuer
	client *http.Client // nil for a jwks_file
	now    func() time.Time
	log    *slog.Logger
	// fetches counts fetch attempts by result (ok, error).
	fetches func(result string)

	set     atomic.Pointer[extKeySet]
	mu      sync.Mutex // serialises fetches
	lastTry time.Time  // guarded by mu
}

// newIssuerKeys prepares the key source of cfg. It reads ca_file (so a bad
// one stops the authority at start) and fetches nothing.
func newIssuerKeys(cfg TrustedIssuer, now func() time.Time, log *slog.Logger, fetches func(string)) (*issuerKeys, error) {
	k := &issuerKeys{cfg: cfg, now: now, log: log, fetches: fetches}
	if cfg.JWKSFile != "" {
		return k, nil
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("trusted issuer %s: ca_file: %w", cfg.Name, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("trusted issuer %s: ca_file %s holds no PEM certificate", cfg.Name, cfg.CAFile)
		}
		tlsCfg.RootCAs = pool
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsCfg
	k.client = &http.Client{
		Transport: tr,
		Timeout:   maxFetchTime,
		// Keys come over HTTPS only: a redirect to http (or a long
		// chain) is refused rather than followed.
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 3 || req.URL.Scheme != "https" {
				return errors.New("redirect refused")
			}
			return nil
		},
	}
	return k, nil
}

// key returns the key published under kid.
func (k *issuerKeys) key(ctx context.Context, kid string) (extKey, error) {
	s := k.set.Load()
	if s == nil || k.now().Sub(s.fetched) >= k.cfg.JWKSRefresh {
		s = k.refresh(ctx, s)
	} else if _, ok := s.keys[kid]; !ok {
		// An unknown kid may be a key the issuer just rotated in.
		s = k.refresh(ctx, s)
	}
	// A set that could not be refreshed serves up to twice its refresh
	// interval; past that a removed key might still be accepted, so the
	// issuer's tokens are refused until a fetch succeeds (fail closed).
	if s == nil || k.now().Sub(s.fetched) >= 2*k.cfg.JWKSRefresh {
		return extKey{}, errKeysUnavailable
	}
	key, ok := s.keys[kid]
	if !ok {
		return extKey{}, errNoSuchKey
	}
	return key, nil
}

// refresh fetches the keys unless another request already replaced seen
// meanwhile, or the last attempt was less than JWKSMinRefresh ago. It
// returns the snapshot to use.
func (k *issuerKeys) refresh(ctx context.Context, seen *extKeySet) *extKeySet {
	k.mu.Lock()
	defer k.mu.Unlock()
	if cur := k.set.Load(); cur != seen {
		return cur
	}
	now := k.now()
	if !k.lastTry.IsZero() && now.Sub(k.lastTry) < k.cfg.JWKSMinRefresh {
		return seen
	}
	k.lastTry = now
	// The fetch serves every waiting request, so it does not end with
	// the one request that started it.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), maxFetchTime)
	defer cancel()
	keys, err := k.fetch(fctx)
	if err != nil {
		k.fetches("error")
		k.log.WarnContext(ctx, "trusted issuer keys not refreshed", "issuer", k.cfg.Name, "err", err)
		return seen
	}
	k.fetches("ok")
	s := &extKeySet{keys: keys, fetched: now}
	k.set.Store(s)
	return s
}

func (k *issuerKeys) fetch(ctx context.Context) (map[string]extKey, error) {
	var (
		body []byte
		err  error
	)
	switch {
	case k.cfg.JWKSFile != "":
		body, err = readBounded(k.cfg.JWKSFile, maxJWKSBytes)
	case k.cfg.JWKSURL != "":
		body, err = k.get(ctx, k.cfg.JWKSURL)
	default:
		var uri string
		if uri, err = k.discover(ctx); err == nil {
			body, err = k.get(ctx, uri)
		}
	}
	if err != nil {
		return nil, err
	}
	return k.parseJWKS(ctx, body)
}

// discover reads the issuer's OpenID configuration (OIDC Discovery §4):
// its issuer must be ours exactly, and its jwks_uri https.
func (k *issuerKeys) discover(ctx context.Context) (string, error) {
	body, err := k.get(ctx, strings.TrimRight(k.cfg.Issuer, "/")+"/.well-known/openid-configuration")
	if err != nil {
		return "", err
	}
	v, err := strictjson.Decode(body, strictjson.Options{Object: true, MaxDepth: 8})
	if err != nil {
		return "", fmt.Errorf("discovery document: %w", err)
	}
	doc := v.(map[string]any)
	if iss, _ := doc["issuer"].(string); iss != k.cfg.Issuer {
		return "", errors.New("discovery document names another issuer")
	}
	uri, _ := doc["jwks_uri"].(string)
	if !httpsURL(uri) {
		return "", errors.New("discovery document: jwks_uri is not an https URL")
	}
	return uri, nil
}

// get fetches an https URL with a size bound.
func (k *issuerKeys) get(ctx context.Context, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json, application/jwk-set+json")
	if k.cfg.BearerTokenFile != "" {
		tok, err := readBounded(k.cfg.BearerTokenFile, maxBearerFileSize)
		if err != nil {
			return nil, fmt.Errorf("bearer_token_file: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	}
	resp, err := k.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", req.URL.Redacted(), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch %s: status %d", req.URL.Redacted(), resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", req.URL.Redacted(), err)
	}
	if len(body) > maxJWKSBytes {
		return nil, fmt.Errorf("fetch %s: larger than %d bytes", req.URL.Redacted(), maxJWKSBytes)
	}
	return body, nil
}

func readBounded(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, max)
	}
	return b, nil
}

// parseJWKS reads a JWKS strictly (no duplicate members, names read
// exactly) and keeps the public signature keys that carry a kid. A key
// with private material, an HMAC key, a key for encryption, a weak RSA key
// and every key of a kid that appears twice is left out: a kid must name
// exactly one key.
func (k *issuerKeys) parseJWKS(ctx context.Context, body []byte) (map[string]extKey, error) {
	v, err := strictjson.Decode(body, strictjson.Options{Object: true, MaxDepth: 8})
	if err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	list, ok := v.(map[string]any)["keys"].([]any)
	if !ok {
		return nil, errors.New("jwks: no keys array")
	}
	if len(list) > maxJWKSKeys {
		return nil, fmt.Errorf("jwks: more than %d keys", maxJWKSKeys)
	}
	out := map[string]extKey{}
	dup := map[string]bool{}
	for i, item := range list {
		m, _ := item.(map[string]any)
		kid, _ := m["kid"].(string)
		key, err := jwkKey(m)
		if err != nil {
			k.log.WarnContext(ctx, "trusted issuer key left out", "issuer", k.cfg.Name, "index", i, "err", err)
			continue
		}
		if _, seen := out[kid]; seen || dup[kid] {
			dup[kid] = true
			delete(out, kid)
			continue
		}
		out[kid] = key
	}
	if len(out) == 0 {
		return nil, errors.New("jwks: no usable signature key")
	}
	return out, nil
}

// jwkKey turns one JWK (as decoded JSON) into a verification key.
func jwkKey(m map[string]any) (extKey, error) {
	if m == nil {
		return extKey{}, errors.New("not an object")
	}
	str := func(name string) string { s, _ := m[name].(string); return s }
	kid := str("kid")
	if kid == "" || len(kid) > 256 {
		return extKey{}, errors.New("no kid")
	}
	for _, private := range []string{"d", "p", "q", "dp", "dq", "qi", "oth", "k"} {
		if _, ok := m[private]; ok {
			return extKey{}, errors.New("private or symmetric key material in a public key set")
		}
	}
	if use := str("use"); use != "" && use != "sig" {
		return extKey{}, errors.New("use is not sig")
	}
	if ops, ok := m["key_ops"]; ok {
		list, _ := ops.([]any)
		if !slices.Contains(list, any("verify")) {
			return extKey{}, errors.New("key_ops does not allow verify")
		}
	}
	alg := str("alg")
	if alg != "" && !slices.Contains(enrollAlgorithms, alg) {
		return extKey{}, fmt.Errorf("alg %q is not a signature algorithm accepted here", alg)
	}
	var x5c []string
	if list, ok := m["x5c"].([]any); ok {
		for _, c := range list {
			s, _ := c.(string)
			x5c = append(x5c, s)
		}
	}
	// jwkset decodes the key material and checks that points are on their
	// curve and that an x5c certificate holds the same key.
	j, err := jwkset.NewJWKFromMarshal(jwkset.JWKMarshal{
		KTY: jwkset.KTY(str("kty")), CRV: jwkset.CRV(str("crv")), X: str("x"), Y: str("y"), N: str("n"), E: str("e"),
		KID: kid, ALG: jwkset.ALG(alg), USE: jwkset.USE(str("use")), X5C: x5c, X5T: str("x5t"), X5TS256: str("x5t#S256"),
	}, jwkset.JWKMarshalOptions{}, jwkset.JWKValidateOptions{SkipKeyOps: true})
	if err != nil {
		return extKey{}, err
	}
	pub := j.Key()
	switch pk := pub.(type) {
	case *rsa.PublicKey:
		if n := pk.N.BitLen(); n < minRSABits || n > maxRSABits {
			return extKey{}, fmt.Errorf("RSA key of %d bits: want %d to %d", n, minRSABits, maxRSABits)
		}
	case *ecdsa.PublicKey, ed25519.PublicKey:
	default:
		return extKey{}, fmt.Errorf("unsupported key type %T", pub)
	}
	if alg != "" && !algFits(alg, pub) {
		return extKey{}, fmt.Errorf("alg %s does not fit the key type", alg)
	}
	return extKey{pub: pub, alg: alg}, nil
}

// algFits reports whether alg is an algorithm of pub's type: RSA keys
// sign RS*/PS*, each ECDSA curve exactly one ES*, Ed25519 EdDSA.
func algFits(alg string, pub crypto.PublicKey) bool {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS")
	case *ecdsa.PublicKey:
		return alg == "ES256" && k.Curve == elliptic.P256() ||
			alg == "ES384" && k.Curve == elliptic.P384() ||
			alg == "ES512" && k.Curve == elliptic.P521()
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
}
