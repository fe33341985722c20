package client

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/agentpassport/passport/passport"
)

// NewDPoPProof makes a DPoP proof (RFC 9449 §4.2) signed by key (an
// Ed25519 key, EdDSA, or a P-256 key, ES256) for one request: method and
// target (its query and fragment are left out of htu), a fresh jti, iat
// now, ath when accessToken is set (every call to a resource server; never
// at the token endpoint) and nonce when the server asked for one.
func NewDPoPProof(key crypto.Signer, method, target, accessToken, nonce string, now time.Time) (string, error) {
	var m jwt.SigningMethod
	switch key.(type) {
	case ed25519.PrivateKey:
		m = jwt.SigningMethodEdDSA
	case *ecdsa.PrivateKey:
		m = jwt.SigningMethodES256
	default:
		return "", fmt.Errorf("dpop key %T: want ed25519.PrivateKey or *ecdsa.PrivateKey (P-256)", key)
	}
	jwk, err := passport.PublicJWK(key.Public())
	if err != nil {
		return "", fmt.Errorf("dpop key: %w", err)
	}
	htu, err := htuOf(target)
	if err != nil {
		return "", err
	}
	claims := jwt.MapClaims{"jti": randomJTI(), "htm": method, "htu": htu, "iat": now.Unix()}
	if accessToken != "" {
		claims["ath"] = passport.AccessTokenHash(accessToken)
	}
	if nonce != "" {
		claims["nonce"] = nonce
	}
	t := jwt.NewWithClaims(m, claims)
	t.Header["typ"] = passport.DPoPProofType
	t.Header["jwk"] = jwk
	s, err := t.SignedString(key)
	if err != nil {
		return "", fmt.Errorf("sign dpop proof: %w", err)
	}
	return s, nil
}

// htuOf is target without query and fragment.
func htuOf(target string) (string, error) {
	u, err := url.Parse(target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("dpop target %q: want an absolute http(s) URL", target)
	}
	u.RawQuery, u.Fragment, u.RawFragment, u.ForceQuery = "", "", "", false
	return u.String(), nil
}

// origin is the key of a server's nonce: scheme and host.
func origin(u *url.URL) string { return strings.ToLower(u.Scheme + "://" + u.Host) }

// nonces remembers the latest DPoP nonce each server handed out
// (DPoP-Nonce), per origin, so the next proof carries it.
type nonces struct {
	mu sync.Mutex
	m  map[string]string
}

func (n *nonces) get(o string) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.m[o]
}

// learn keeps the DPoP-Nonce of an answer, if it has one.
func (n *nonces) learn(o string, h http.Header) bool {
	v := h.Get(passport.DPoPNonceHeader)
	if v == "" || len(v) > 512 {
		return false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.m == nil || len(n.m) > 64 {
		n.m = map[string]string{}
	}
	n.m[o] = v
	return true
}

// DPoPProof makes a proof with the client's DPoP key for one call to a
// resource server (such as the proxy) with the bound passport tok: send
// it as the DPoP header next to "Authorization: DPoP <tok.Raw>". target
// must be the URL the server knows itself by (the proxy's resource_url
// plus the path). It carries the latest nonce that server sent.
func (c *Client) DPoPProof(method, target string, tok Token) (string, error) {
	if c.opts.DPoPKey == nil {
		return "", errors.New("dpop: the client has no DPoP key (Options.DPoPKey)")
	}
	u, err := url.Parse(target)
	if err != nil {
		return "", fmt.Errorf("dpop target %q: %w", target, err)
	}
	return NewDPoPProof(c.opts.DPoPKey, method, target, tok.Raw, c.nonces.get(origin(u)), c.opts.now())
}

// useDPoPNonce reports whether a resource server's 401 asks for a nonce
// (RFC 9449 §9: WWW-Authenticate: DPoP error="use_dpop_nonce").
func useDPoPNonce(resp *http.Response) bool {
	if resp.StatusCode != http.StatusUnauthorized {
		return false
	}
	for _, v := range resp.Header.Values("WWW-Authenticate") {
		if strings.HasPrefix(strings.ToLower(strings.TrimSpace(v)), "dpop") && strings.Contains(v, `error="use_dpop_nonce"`) {
			return true
		}
	}
	return false
}
