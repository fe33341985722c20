package main

// The DPoP row of the cost per call: the allowed call with a DPoP-bound
// passport (RFC 9449), each call carrying a fresh proof, beside the
// bearer full path. The proofs are made here, in the load generator, so
// their signing is not counted; the proxy's check of one (a signature,
// a JSON parse, a SET NX in Redis) is.

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/agentpassport/passport/passport"
)

// benchResourceURL is the proxies' resource_url: what a proof's htu
// names, whatever port the proxy listens on.
const benchResourceURL = "http://bench.proxy"

// dpopKeys maps a bound passport to the key it is bound to: a request
// with such a token is sent as "Authorization: DPoP" with a fresh proof.
var dpopKeys sync.Map // token -> ed25519.PrivateKey

// newDPoPKey makes a key and its RFC 7638 thumbprint (the passport's
// cnf.jkt).
func newDPoPKey() (ed25519.PrivateKey, string) {
	_, k, _ := ed25519.GenerateKey(rand.Reader)
	jkt, err := passport.JWKThumbprint(k.Public())
	if err != nil {
		panic(err)
	}
	return k, jkt
}

var proofSeq atomic.Int64

// setAuth sets the request's credentials: Bearer, or DPoP with a proof
// for this method and path when token is a bound passport.
func setAuth(req *http.Request, token string) {
	if token == "" {
		return
	}
	k, ok := dpopKeys.Load(token)
	if !ok {
		req.Header.Set("Authorization", "Bearer "+token)
		return
	}
	htu := benchResourceURL + req.URL.Path
	p, ok := takeProof(token, req.Method, htu)
	if !ok {
		p = proof(k.(ed25519.PrivateKey), req.Method, htu, token)
	}
	req.Header.Set("Authorization", "DPoP "+token)
	req.Header.Set(passport.DPoPHeader, p)
}

// proofPool holds proofs made ahead of a measured run, so that signing
// them neither slows the load (fewer calls per second would also cost the
// proxy more per call: less to batch) nor competes with the proxy for the
// machine's cores while it is measured.
type proofPool struct {
	key    string // token, method and htu
	proofs []string
	next   atomic.Int64
}

var proofs atomic.Pointer[proofPool]

// prepareProofs makes n proofs for calls of method to path with the bound
// passport token (nothing when token is not bound).
func prepareProofs(token, method, path string, n int) {
	k, ok := dpopKeys.Load(token)
	if !ok {
		return
	}
	htu := benchResourceURL + path
	pp := &proofPool{key: token + " " + method + " " + htu, proofs: make([]string, n)}
	for i := range pp.proofs {
		pp.proofs[i] = proof(k.(ed25519.PrivateKey), method, htu, token)
	}
	proofs.Store(pp)
}

func takeProof(token, method, htu string) (string, bool) {
	pp := proofs.Load()
	if pp == nil || pp.key != token+" "+method+" "+htu {
		return "", false
	}
	i := pp.next.Add(1) - 1
	if i >= int64(len(pp.proofs)) {
		return "", false
	}
	return pp.proofs[i], true
}

func proof(k ed25519.PrivateKey, method, htu, token string) string {
	jwk, _ := passport.PublicJWK(k.Public())
	t := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.MapClaims{
		"jti": fmt.Sprintf("b-%d-%d", time.Now().UnixNano(), proofSeq.Add(1)), "htm": method, "htu": htu,
		"iat": time.Now().Unix(), "ath": passport.AccessTokenHash(token)})
	t.Header["typ"] = passport.DPoPProofType
	t.Header["jwk"] = jwk
	s, err := t.SignedString(k)
	if err != nil {
		panic(err)
	}
	return s
}
