package proxy

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"time"
)

// A signed assertion tells the upstream who called and what was decided,
// so that it can verify the caller itself instead of trusting headers
// that only network isolation protects. It is a short-lived JWT signed
// with the proxy's own Ed25519 key, in the claim names of the IETF
// Transaction Tokens draft where it has them: txn (the transaction: the
// request id), tctx (the transaction context: what was decided) and rctx
// (the requester context). The proxy's public key is served as a JWKS on
// the admin port (AssertionJWKSPath).

// AssertionConfig is the proxy's assertion signer.
type AssertionConfig struct {
	// KeyFile is an Ed25519 private key, PKCS#8 PEM. Default: a key made
	// at start, which only this process holds (its JWKS is on the admin
	// port); set a file so that restarts and replicas keep one key.
	KeyFile string `yaml:"key_file"`
	// Issuer is the assertion's iss. Default: the proxy's resource URL.
	Issuer string `yaml:"issuer"`
	// Header carries the assertion. Default Passport-Assertion.
	Header string `yaml:"header"`
	// Lifetime of an assertion. Default 30s, at most 60s.
	Lifetime time.Duration `yaml:"lifetime"`
}

// AssertionJWKSPath serves the assertion key on the admin port.
const AssertionJWKSPath = "/.well-known/assertion-jwks.json"

// DefaultAssertionHeader carries the assertion when the config names none.
const DefaultAssertionHeader = "Passport-Assertion"

const maxAssertionLifetime = 60 * time.Second

// assertionSigner signs assertions with one key; its header is encoded
// once.
type assertionSigner struct {
	key      ed25519.PrivateKey
	kid      string
	issuer   string
	header   string // canonical header name
	lifetime time.Duration
	head     string // base64url of the JOSE header
	jwks     []byte
}

func newAssertionSigner(c AssertionConfig, defaultIssuer string) (*assertionSigner, error) {
	if c.Lifetime < 0 || c.Lifetime > maxAssertionLifetime {
		return nil, fmt.Errorf("assertion lifetime %v: want at most %v", c.Lifetime, maxAssertionLifetime)
	}
	s := &assertionSigner{issuer: c.Issuer, header: http.CanonicalHeaderKey(c.Header), lifetime: c.Lifetime}
	if s.issuer == "" {
		s.issuer = defaultIssuer
	}
	if c.Header == "" {
		s.header = DefaultAssertionHeader
	} else if !validHeaderName(c.Header) {
		return nil, fmt.Errorf("assertion header %q is not a header name", c.Header)
	}
	if s.lifetime == 0 {
		s.lifetime = 30 * time.Second
	}
	var err error
	if c.KeyFile != "" {
		s.key, err = readEd25519Key(c.KeyFile)
	} else {
		_, s.key, err = ed25519.GenerateKey(rand.Reader)
	}
	if err != nil {
		return nil, err
	}
	pub := s.key.Public().(ed25519.PublicKey)
	sum := sha256.Sum256(pub)
	s.kid = base64.RawURLEncoding.EncodeToString(sum[:12])
	head, _ := json.Marshal(map[string]string{"alg": "EdDSA", "typ": "txn+jwt", "kid": s.kid})
	s.head = base64.RawURLEncoding.EncodeToString(head)
	s.jwks, _ = json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": s.kid,
		"x": base64.RawURLEncoding.EncodeToString(pub),
	}}})
	return s, nil
}

func readEd25519Key(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("assertion key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("assertion key %s: no PEM block", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("assertion key %s: %w", path, err)
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, errors.New("assertion key " + path + ": not an Ed25519 key")
	}
	return ek, nil
}

// assertionClaims are the claims of one assertion.
type assertionClaims struct {
	Iss  string        `json:"iss"`
	Aud  string        `json:"aud"`
	Iat  int64         `json:"iat"`
	Exp  int64         `json:"exp"`
	JTI  string        `json:"jti"`
	Txn  string        `json:"txn"`
	Sub  string        `json:"sub"`
	Purp string        `json:"purp"`
	Tctx assertionTctx `json:"tctx"`
	Rctx assertionRctx `json:"rctx"`
}

// assertionTctx is what was decided about the call.
type assertionTctx struct {
	Tenant     string `json:"tenant"`
	Action     string `json:"action"`
	Resource   string `json:"resource"`
	Method     string `json:"method"`
	Path       string `json:"path"`
	Query      string `json:"query,omitempty"`
	BodySHA256 string `json:"body_sha256"`
	DecisionID string `json:"decision_id"`
	Revision   string `json:"policy_revision"`
}

// assertionRctx is who asked: the agent's passport and address.
type assertionRctx struct {
	Authn    string `json:"authn"`
	Passport string `json:"passport_jti"`
	ReqIP    string `json:"req_ip,omitempty"`
}

// sign returns the compact JWS of the claims.
func (s *assertionSigner) sign(cl *assertionClaims) (string, error) {
	payload := cl.appendJSON(make([]byte, 0, 640))
	n := len(s.head) + 1 + base64.RawURLEncoding.EncodedLen(len(payload))
	buf := make([]byte, 0, n+1+base64.RawURLEncoding.EncodedLen(ed25519.SignatureSize))
	buf = append(buf, s.head...)
	buf = append(buf, '.')
	buf = base64.RawURLEncoding.AppendEncode(buf, payload)
	sig, err := s.key.Sign(nil, buf, crypto.Hash(0))
	if err != nil {
		return "", err
	}
	buf = append(buf, '.')
	return string(base64.RawURLEncoding.AppendEncode(buf, sig)), nil
}

// appendJSON is json.Marshal(cl) written by hand (the claims are on the
// path of every call of a route that asks for them).
func (cl *assertionClaims) appendJSON(b []byte) []byte {
	str := func(b []byte, key, v string) []byte {
		b = append(b, key...)
		return appendJSONString(b, v)
	}
	b = str(b, `{"iss":`, cl.Iss)
	b = str(b, `,"aud":`, cl.Aud)
	b = strconv.AppendInt(append(b, `,"iat":`...), cl.Iat, 10)
	b = strconv.AppendInt(append(b, `,"exp":`...), cl.Exp, 10)
	b = str(b, `,"jti":`, cl.JTI)
	b = str(b, `,"txn":`, cl.Txn)
	b = str(b, `,"sub":`, cl.Sub)
	b = str(b, `,"purp":`, cl.Purp)
	t := &cl.Tctx
	b = str(b, `,"tctx":{"tenant":`, t.Tenant)
	b = str(b, `,"action":`, t.Action)
	b = str(b, `,"resource":`, t.Resource)
	b = str(b, `,"method":`, t.Method)
	b = str(b, `,"path":`, t.Path)
	if t.Query != "" {
		b = str(b, `,"query":`, t.Query)
	}
	b = str(b, `,"body_sha256":`, t.BodySHA256)
	b = str(b, `,"decision_id":`, t.DecisionID)
	b = str(b, `,"policy_revision":`, t.Revision)
	r := &cl.Rctx
	b = str(b, `},"rctx":{"authn":`, r.Authn)
	b = str(b, `,"passport_jti":`, r.Passport)
	if r.ReqIP != "" {
		b = str(b, `,"req_ip":`, r.ReqIP)
	}
	return append(b, '}', '}')
}

// assertionFor builds the claims of an allowed, recorded call.
func (s *assertionSigner) assertionFor(c *call, r *http.Request, audience, decisionID string, now time.Time) (string, error) {
	sum := sha256.Sum256(c.rawBody)
	cl := &assertionClaims{
		Iss: s.issuer, Aud: audience, Iat: now.Unix(), Exp: now.Add(s.lifetime).Unix(), JTI: c.id, Txn: c.id,
		Sub: c.agentID, Purp: c.route.Action,
		Tctx: assertionTctx{Tenant: c.tenant, Action: c.route.Action, Resource: c.rec.Resource, Method: r.Method,
			Path: singleJoin(c.route.upstream.url.Path, c.path), Query: c.query, BodySHA256: base64.RawURLEncoding.EncodeToString(sum[:]),
			DecisionID: decisionID, Revision: c.rec.PolicyRevision},
		Rctx: assertionRctx{Authn: "passport", Passport: c.vp.Claims.ID, ReqIP: clientAddr(r)},
	}
	return s.sign(cl)
}
