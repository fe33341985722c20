package stack

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/sync/errgroup"

	"github.com/agentpassport/passport/authority"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/agentcall"
	"github.com/agentpassport/passport/passport"
)

// The demo's stand-in for Kubernetes (docs/enrollment.md): a
// service-account token issuer whose key lives in DATA/enroll and whose
// JWKS is a file there, as a cluster publishes it at /openid/v1/jwks. Like
// the kubelet it keeps DATA/enroll/token fresh (a projected token volume),
// and one demo agent enrolls with that token instead of a client secret.

// DemoEnrolled is the agent that enrolled with a workload identity, as
// demo.json shows it.
type DemoEnrolled struct {
	Tenant  string `json:"tenant"`
	AgentID string `json:"agent_id"`
	Name    string `json:"name"`
	// Subject is the service account the token names; Issuer its "iss".
	Subject string `json:"subject"`
	Issuer  string `json:"issuer"`
	// TokenFile is kept fresh like a projected service-account token:
	// POST it as the assertion of the JWT-bearer grant.
	TokenFile string `json:"token_file"`
	JWKSFile  string `json:"jwks_file"`
}

const (
	demoK8sIssuer      = "https://kubernetes.default.svc.cluster.local"
	demoK8sAccount     = "inventory"
	demoTokenLifetime  = 10 * time.Minute // the shortest a kubelet may ask for
	demoEnrollDir      = "enroll"
	demoIssuerKeyFile  = "issuer-key.pem"
	demoIssuerJWKSFile = "jwks.json"
	demoTokenFile      = "token"
)

// demoIssuer signs service-account tokens for the demo.
type demoIssuer struct {
	dir      string
	key      *ecdsa.PrivateKey
	kid      string
	audience string
	tenant   string
}

// demoIssuer loads (or creates) the stand-in issuer's key, publishes its
// JWKS file, and trusts it in acfg: tokens for
// system:serviceaccount:<first tenant>:* register an observer with at most
// MEDIUM trust on first use. The audience is the authority's URL.
func (s *Stack) demoIssuer(acfg *authority.Config) (*demoIssuer, error) {
	if len(s.cfg.Tenants) == 0 {
		return nil, nil
	}
	d := &demoIssuer{dir: filepath.Join(s.cfg.DataDir, demoEnrollDir), audience: s.demo.URLs.Authority, tenant: s.cfg.Tenants[0]}
	if err := os.MkdirAll(d.dir, 0o700); err != nil {
		return nil, fmt.Errorf("demo issuer: %w", err)
	}
	keyPath := filepath.Join(d.dir, demoIssuerKeyFile)
	if b, err := os.ReadFile(keyPath); err == nil {
		block, _ := pem.Decode(b)
		if block == nil {
			return nil, fmt.Errorf("demo issuer key %s: no PEM block", keyPath)
		}
		if d.key, err = x509.ParseECPrivateKey(block.Bytes); err != nil {
			return nil, fmt.Errorf("demo issuer key %s: %w", keyPath, err)
		}
	} else if errors.Is(err, os.ErrNotExist) {
		if d.key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			return nil, fmt.Errorf("demo issuer key: %w", err)
		}
		der, err := x509.MarshalECPrivateKey(d.key)
		if err != nil {
			return nil, fmt.Errorf("demo issuer key: %w", err)
		}
		if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			return nil, fmt.Errorf("demo issuer key: %w", err)
		}
	} else {
		return nil, fmt.Errorf("demo issuer key: %w", err)
	}
	var err error
	if d.kid, err = passport.JWKThumbprint(&d.key.PublicKey); err != nil {
		return nil, err
	}
	jwk, err := passport.PublicJWK(&d.key.PublicKey)
	if err != nil {
		return nil, err
	}
	jwk["kid"], jwk["alg"], jwk["use"] = d.kid, "ES256", "sig"
	doc, _ := json.Marshal(map[string]any{"keys": []any{jwk}})
	if err := writeFileAtomic(filepath.Join(d.dir, demoIssuerJWKSFile), doc); err != nil {
		return nil, err
	}
	acfg.TrustedIssuers = append(acfg.TrustedIssuers, authority.TrustedIssuer{
		Name: "demo-kubernetes", Issuer: demoK8sIssuer, Kind: authority.IssuerKindKubernetes,
		JWKSFile: filepath.Join(d.dir, demoIssuerJWKSFile), Audiences: []string{d.audience},
		Rules: []authority.EnrollRule{{
			Subject: "system:serviceaccount:" + d.tenant + ":*", Tenant: d.tenant,
			Register: &authority.EnrollRegister{Type: passport.TypeObserver, TrustCeiling: passport.TrustMedium},
		}},
	})
	return d, d.writeToken(time.Now())
}

func (d *demoIssuer) subject() string {
	return "system:serviceaccount:" + d.tenant + ":" + demoK8sAccount
}

// writeToken mints a service-account token as the API server would and
// replaces the token file with it, as the kubelet does.
func (d *demoIssuer) writeToken(now time.Time) error {
	claims := jwt.MapClaims{
		"iss": demoK8sIssuer, "sub": d.subject(), "aud": []string{d.audience},
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(demoTokenLifetime).Unix(),
		"jti": rand.Text(),
		"kubernetes.io": map[string]any{
			"namespace":      d.tenant,
			"serviceaccount": map[string]any{"name": demoK8sAccount, "uid": "00000000-0000-4000-8000-000000000001"},
		},
	}
	t := jwt.NewWithClaims(jwt.SigningMethodES256, claims)
	t.Header["kid"] = d.kid
	raw, err := t.SignedString(d.key)
	if err != nil {
		return fmt.Errorf("demo issuer: sign token: %w", err)
	}
	return writeFileAtomic(filepath.Join(d.dir, demoTokenFile), []byte(raw))
}

// run refreshes the token file at 80% of its lifetime until ctx is done.
func (d *demoIssuer) run(ctx context.Context) error {
	t := time.NewTicker(demoTokenLifetime * 8 / 10)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := d.writeToken(time.Now()); err != nil {
				return err
			}
		}
	}
}

// enrollDemo lets the demo's workload enroll with its token file and list
// the services through the proxy with the passport it got, then keeps the
// token fresh in g. It records the agent in demo.json.
func (s *Stack) enrollDemo(ctx context.Context, g *errgroup.Group, d *demoIssuer) error {
	if d == nil {
		return nil
	}
	tokenFile := filepath.Join(d.dir, demoTokenFile)
	c, err := client.NewWorkload(s.demo.URLs.Authority, client.TokenFile(tokenFile), client.Options{CAFile: s.caFile()})
	if err != nil {
		return err
	}
	tok, err := c.Token(ctx, client.TokenRequest{Scope: []string{"service.list"}})
	if err != nil {
		return fmt.Errorf("demo workload enrollment: %w", err)
	}
	id, _ := agentcall.PeekIdentity(tok.Raw)
	call := &agentcall.Client{BaseURL: s.demo.URLs.Proxy, HTTP: s.httpClient(5 * time.Second), UserAgent: "passport-demo-workload"}
	if _, err := call.Do(ctx, tok.Raw, http.MethodGet, "/services", nil); err != nil {
		return fmt.Errorf("demo workload: list services through the proxy: %w", err)
	}
	s.log.Info("demo workload enrolled with a service-account token", "tenant", d.tenant, "subject", d.subject(), "agent_id", id.AgentID)
	s.demo.Enrolled = &DemoEnrolled{
		Tenant: d.tenant, AgentID: id.AgentID, Name: id.Name, Subject: d.subject(), Issuer: demoK8sIssuer,
		TokenFile: tokenFile, JWKSFile: filepath.Join(d.dir, demoIssuerJWKSFile),
	}
	g.Go(func() error { return d.run(ctx) })
	return nil
}

// writeFileAtomic replaces path with b (mode 0600), never leaving a
// half-written file for a reader.
func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
