// Package testkeys mints passports for the proxy's tests and serves their
// JWKS from httptest, without importing the authority (the proxy must not
// depend on the issuer, not even in tests).
package testkeys

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/agentpassport/passport/passport"
)

// Issuer and Audience used by default.
const (
	Issuer   = "http://authority.test"
	Audience = "passport-proxy"
)

// Keys is a key set with its JWKS server.
type Keys struct {
	Ed     ed25519.PrivateKey
	EdKID  string
	EC     *ecdsa.PrivateKey
	ECKID  string
	Server *httptest.Server
	// Fetches counts JWKS requests.
	Fetches atomic.Int64

	mu    sync.Mutex
	extra []map[string]string
}

// New makes an Ed25519 and a P-256 key and serves both as a JWKS.
func New(t testing.TB) *Keys {
	t.Helper()
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k := &Keys{Ed: ed, EdKID: "ed-1", EC: ec, ECKID: "es-1"}
	k.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		k.Fetches.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": k.jwks()})
	}))
	t.Cleanup(k.Server.Close)
	return k
}

// URL is the JWKS URL.
func (k *Keys) URL() string { return k.Server.URL + "/.well-known/jwks.json" }

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func (k *Keys) jwks() []map[string]string {
	pub := k.Ed.Public().(ed25519.PublicKey)
	xy := k.EC.PublicKey
	x, y := make([]byte, 32), make([]byte, 32)
	xy.X.FillBytes(x)
	xy.Y.FillBytes(y)
	out := []map[string]string{
		{"kty": "OKP", "crv": "Ed25519", "x": b64(pub), "kid": k.EdKID, "alg": "EdDSA", "use": "sig"},
		{"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y), "kid": k.ECKID, "alg": "ES256", "use": "sig"},
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	return append(out, k.extra...)
}

// AddEd adds a new Ed25519 key to the served set (key rotation).
func (k *Keys) AddEd(kid string) ed25519.PrivateKey {
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	k.mu.Lock()
	k.extra = append(k.extra, map[string]string{"kty": "OKP", "crv": "Ed25519", "x": b64(ed.Public().(ed25519.PublicKey)), "kid": kid, "alg": "EdDSA", "use": "sig"})
	k.mu.Unlock()
	return ed
}

// EdPublic is the raw Ed25519 public key (used for HMAC-confusion tests).
func (k *Keys) EdPublic() []byte { return k.Ed.Public().(ed25519.PublicKey) }

// Claims returns valid claims for an agent at now.
func Claims(now time.Time, tenant, agentID, typ string, trust passport.TrustLevel, actions ...string) *passport.Claims {
	return &passport.Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    Issuer,
			Subject:   "client-" + agentID,
			Audience:  jwt.ClaimStrings{Audience},
			ExpiresAt: jwt.NewNumericDate(now.Add(5 * time.Minute)),
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now),
			ID:        fmt.Sprintf("jti-%s-%d", agentID, now.UnixNano()),
		},
		ClientID: "client-" + agentID,
		Tenant:   tenant,
		Scope:    "",
		Agent:    passport.Agent{ID: agentID, Name: agentID, Type: typ, TrustLevel: trust, Reputation: 90},
		AuthorizationDetails: []passport.AuthorizationDetail{{
			Type: passport.AuthorizationDetailType, Actions: actions, Locations: []string{Audience},
		}},
	}
}

// Sign signs claims with the Ed25519 key (typ at+jwt, kid set).
func (k *Keys) Sign(t testing.TB, c *passport.Claims) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, c)
	tok.Header["typ"] = passport.TokenType
	tok.Header["kid"] = k.EdKID
	s, err := tok.SignedString(k.Ed)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// SignES256 signs claims with the P-256 key.
func (k *Keys) SignES256(t testing.TB, c *passport.Claims) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodES256, c)
	tok.Header["typ"] = passport.TokenType
	tok.Header["kid"] = k.ECKID
	s, err := tok.SignedString(k.EC)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// SignRaw signs an arbitrary header and payload (JSON text, taken as is)
// with the Ed25519 key or, for alg HS256, with hmacKey.
func (k *Keys) SignRaw(t testing.TB, header, payload string, hmacKey []byte) string {
	t.Helper()
	signing := b64([]byte(header)) + "." + b64([]byte(payload))
	var sig []byte
	switch {
	case hmacKey != nil:
		s, err := jwt.SigningMethodHS256.Sign(signing, hmacKey)
		if err != nil {
			t.Fatal(err)
		}
		sig = s
	default:
		sig = ed25519.Sign(k.Ed, []byte(signing))
	}
	return signing + "." + b64(sig)
}

// SignEdWith signs claims with another Ed25519 key under kid.
func SignEdWith(t testing.TB, key ed25519.PrivateKey, kid string, c *passport.Claims) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, c)
	tok.Header["typ"] = passport.TokenType
	tok.Header["kid"] = kid
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
