package authority

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/internal/tlstest"
	"github.com/agentpassport/passport/internal/tlsx"
	"github.com/agentpassport/passport/passport"
)

// runTLS runs an authority serving TLS with a certificate of ca for
// 127.0.0.1 on a free port until the test ends, and returns its URL.
func runTLS(t *testing.T, ca *tlstest.CA, mutate func(*Config)) (*Authority, string) {
	t.Helper()
	rs := redistest.Start(t)
	leaf := ca.Server("127.0.0.1")
	cfg := testConfig()
	cfg.TLS = tlsx.Server{CertFile: leaf.CertFile, KeyFile: leaf.KeyFile}
	if mutate != nil {
		mutate(&cfg)
	}
	a, err := New(cfg, Deps{Audit: audit.Discard, Redis: rs.Client(), Logger: testLogger(t), Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	return a, "https://" + ln.Addr().String()
}

func TestTokenEndpointOverTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "authority CA")
	a, base := runTLS(t, ca, nil)
	if got := a.Config().Issuer; got != "https://127.0.0.1:8081" {
		t.Fatalf("issuer %q: the default issuer must be https with TLS", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	admin, err := client.NewAdmin(base, testAdminToken, client.Options{CAFile: ca.File})
	if err != nil {
		t.Fatal(err)
	}
	var reg client.Registration
	// The key loop loads the keys in the background; registration needs none.
	if reg, err = admin.RegisterAgent(ctx, "acme", client.AgentSpec{Name: "healer-1", Type: "healer", TrustLevel: passport.TrustHigh}); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(base, reg.ClientID, passport.Secret(reg.ClientSecret), client.Options{CAFile: ca.File})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Token(ctx, client.TokenRequest{Scope: []string{"service.restart"}})
	if err != nil {
		t.Fatal(err)
	}
	var claims passport.Claims
	if err := decodePayload(tok.Raw, &claims); err != nil || claims.Issuer != "https://127.0.0.1:8081" {
		t.Fatalf("iss %q (%v)", claims.Issuer, err)
	}

	hc, err := tlsx.HTTPClient(ca.File, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	res, err := hc.Get(base + "/.well-known/oauth-authorization-server")
	if err != nil {
		t.Fatal(err)
	}
	var md Metadata
	err = json.NewDecoder(res.Body).Decode(&md)
	res.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{md.Issuer, md.TokenEndpoint, md.JWKSURI, md.IntrospectionEndpoint, md.RevocationEndpoint} {
		if !strings.HasPrefix(u, "https://") {
			t.Errorf("metadata URL %q is not https", u)
		}
	}
	res, err = hc.Get(base + "/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !strings.Contains(string(body), `"keys"`) {
		t.Fatalf("jwks over TLS: %d %s", res.StatusCode, body)
	}

	// A client that does not know the CA gets nothing, and client secrets
	// sent in the clear to the TLS port are never read.
	stranger, err := client.New(base, reg.ClientID, passport.Secret(reg.ClientSecret), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stranger.Token(ctx, client.TokenRequest{}); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("token without the CA: %v", err)
	}
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {reg.ClientID}, "client_secret": {reg.ClientSecret}}
	res, err = http.PostForm("http://"+strings.TrimPrefix(base, "https://")+"/oauth2/token", form)
	if err == nil {
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode == 200 || strings.Contains(string(b), "access_token") {
			t.Fatalf("plain HTTP to the TLS port issued a passport: %d %s", res.StatusCode, b)
		}
	}
}

func TestIssuerMustBeHTTPSWithTLS(t *testing.T) {
	cfg := testConfig()
	cfg.TLS = tlsx.Server{CertFile: "tls.crt", KeyFile: "tls.key"}
	cfg.Issuer = "http://authority.internal:8081"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "must be an https URL") {
		t.Fatalf("Validate = %v", err)
	}
	cfg.Issuer = DefaultIssuer // becomes https
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.TLS = tlsx.Server{CertFile: "tls.crt"}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "tls.cert_file and key_file") {
		t.Fatalf("Validate = %v", err)
	}
}

func TestUnreadableCertificateStopsNew(t *testing.T) {
	rs := redistest.Start(t)
	cfg := testConfig()
	cfg.TLS = tlsx.Server{CertFile: "/nonexistent/tls.crt", KeyFile: "/nonexistent/tls.key"}
	_, err := New(cfg, Deps{Audit: audit.Discard, Redis: rs.Client(), Logger: testLogger(t)})
	if err == nil || !strings.Contains(err.Error(), "tls.crt") {
		t.Fatalf("New = %v, want an error naming the certificate file", err)
	}
}

// decodePayload reads a JWT's claims without verifying them (tests only).
func decodePayload(raw string, dst any) error {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return errors.New("not a JWS")
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return err
	}
	return json.Unmarshal(b, dst)
}
