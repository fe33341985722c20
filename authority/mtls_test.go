package authority

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/tlstest"
	"github.com/agentpassport/passport/passport"
)

// mtlsClient is an HTTPS client that trusts ca and shows leaf (nil: no
// client certificate).
func mtlsClient(t *testing.T, ca *tlstest.CA, leaf *tlstest.Leaf) *http.Client {
	t.Helper()
	cfg := &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12}
	if leaf != nil {
		cfg.Certificates = []tls.Certificate{leaf.TLS}
	}
	tr := &http.Transport{TLSClientConfig: cfg}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// certToken asks for a passport with nothing but client_id and the
// connection's certificate; it returns the status, the OAuth error code
// and the passport's cnf.
func certToken(t *testing.T, c *http.Client, base, clientID string) (int, string, map[string]any) {
	t.Helper()
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {clientID}}
	res, err := c.Post(base+"/oauth2/token", "application/x-www-form-urlencoded", strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	var out struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
		Error       string `json:"error"`
	}
	_ = json.Unmarshal(b, &out)
	if res.StatusCode != http.StatusOK {
		return res.StatusCode, out.Error, nil
	}
	parts := strings.Split(out.AccessToken, ".")
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var claims struct {
		Cnf map[string]any `json:"cnf"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil || out.TokenType != "Bearer" {
		t.Fatalf("passport %s (%v), token_type %q", payload, err, out.TokenType)
	}
	return res.StatusCode, "", claims.Cnf
}

// TestMutualTLSClientAuth (RFC 8705): an agent registered with a
// certificate subject gets a passport bound to the certificate it showed,
// with no secret; another certificate, none, or a certificate of another
// CA is invalid_client.
func TestMutualTLSClientAuth(t *testing.T) {
	ca := tlstest.NewCA(t, "workload CA")
	other := tlstest.NewCA(t, "another CA")
	_, base := runTLS(t, ca, func(c *Config) { c.TLS.CAFile, c.TLS.ClientAuth = ca.File, "verify_if_given" })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	admin, err := client.NewAdmin(base, testAdminToken, client.Options{CAFile: ca.File})
	if err != nil {
		t.Fatal(err)
	}
	const spiffe = "spiffe://acme.example/ns/ops/sa/healer"
	reg, err := admin.RegisterAgent(ctx, "acme", client.AgentSpec{Name: "healer-1", Type: "healer", TrustLevel: passport.TrustHigh,
		TLSClientAuthSANURI: spiffe})
	if err != nil {
		t.Fatal(err)
	}
	if ag, err := admin.GetAgent(ctx, "acme", reg.ID); err != nil || ag.TLSClientAuth != "san_uri:"+spiffe {
		t.Fatalf("agent %+v (%v)", ag, err)
	}
	good := ca.Issue(tlstest.Options{Client: true, URIs: []string{spiffe}}, "healer-1")
	st, code, cnf := certToken(t, mtlsClient(t, ca, good), base, reg.ID)
	if st != http.StatusOK || cnf["x5t#S256"] != passport.CertThumbprint(good.Cert.Raw) || len(cnf) != 1 {
		t.Fatalf("with its certificate: %d %s, cnf %v", st, code, cnf)
	}
	for name, leaf := range map[string]*tlstest.Leaf{
		"another SPIFFE ID": ca.Issue(tlstest.Options{Client: true, URIs: []string{"spiffe://acme.example/ns/ops/sa/rogue"}}, "rogue"),
		"no certificate":    nil,
	} {
		if st, code, _ := certToken(t, mtlsClient(t, ca, leaf), base, reg.ID); st != http.StatusUnauthorized || code != "invalid_client" {
			t.Errorf("%s: %d %s, want 401 invalid_client", name, st, code)
		}
	}
	// A certificate of another CA: Go's client does not even offer it
	// (the server names its CA), and a client that did would fail the
	// handshake; either way no passport.
	foreign := other.Issue(tlstest.Options{Client: true, URIs: []string{spiffe}}, "healer-1")
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {reg.ID}}
	if res, err := mtlsClient(t, ca, foreign).Post(base+"/oauth2/token", "application/x-www-form-urlencoded", strings.NewReader(form.Encode())); err == nil {
		res.Body.Close()
		if res.StatusCode != http.StatusUnauthorized {
			t.Fatalf("a certificate of another CA: %d", res.StatusCode)
		}
	}
	// The secret still works, and gives an unbound passport.
	c, err := client.New(base, reg.ClientID, passport.Secret(reg.ClientSecret), client.Options{CAFile: ca.File})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Token(ctx, client.TokenRequest{})
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := base64.RawURLEncoding.DecodeString(strings.Split(tok.Raw, ".")[1])
	if strings.Contains(string(payload), `"cnf"`) {
		t.Fatalf("a passport got by secret is bound: %s", payload)
	}
}

// TestSelfSignedTLSClientAuth: with client_auth request, an agent that
// registered its own certificate authenticates with exactly that
// certificate; a subject registration is then refused (nothing verified
// the chain).
func TestSelfSignedTLSClientAuth(t *testing.T) {
	ca := tlstest.NewCA(t, "server CA")
	own := tlstest.NewCA(t, "the agent's own").Issue(tlstest.Options{Client: true}, "deployer-1")
	_, base := runTLS(t, ca, func(c *Config) { c.TLS.ClientAuth = "request" })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	admin, err := client.NewAdmin(base, testAdminToken, client.Options{CAFile: ca.File})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := admin.RegisterAgent(ctx, "acme", client.AgentSpec{Name: "deployer-1", Type: "healer", TrustLevel: passport.TrustMedium,
		TLSClientCertificate: string(own.CertPEM)})
	if err != nil {
		t.Fatal(err)
	}
	st, code, cnf := certToken(t, mtlsClient(t, ca, own), base, reg.ID)
	if st != http.StatusOK || cnf["x5t#S256"] != passport.CertThumbprint(own.Cert.Raw) {
		t.Fatalf("with its registered certificate: %d %s, cnf %v", st, code, cnf)
	}
	impostor := tlstest.NewCA(t, "impostor").Issue(tlstest.Options{Client: true}, "deployer-1")
	if st, code, _ := certToken(t, mtlsClient(t, ca, impostor), base, reg.ID); st != http.StatusUnauthorized || code != "invalid_client" {
		t.Fatalf("same name, other certificate: %d %s", st, code)
	}
	subj, err := admin.RegisterAgent(ctx, "acme", client.AgentSpec{Name: "healer-2", Type: "healer", TrustLevel: passport.TrustHigh,
		TLSClientAuthSANDNS: "healer-2"})
	if err != nil {
		t.Fatal(err)
	}
	unverified := tlstest.NewCA(t, "any").Issue(tlstest.Options{Client: true}, "healer-2")
	if st, code, _ := certToken(t, mtlsClient(t, ca, unverified), base, subj.ID); st != http.StatusUnauthorized || code != "invalid_client" {
		t.Fatalf("a subject match on an unverified chain: %d %s", st, code)
	}
}

// TestMutualTLSRegistrationChecks: bad certificate registrations are
// refused with the reason.
func TestMutualTLSRegistrationChecks(t *testing.T) {
	for name, spec := range map[string]client.AgentSpec{
		"two subjects":     {TLSClientAuthSANURI: "spiffe://a/b", TLSClientAuthSANDNS: "b"},
		"not a PEM":        {TLSClientCertificate: "hello"},
		"subject and cert": {TLSClientAuthSubjectDN: "CN=x", TLSClientCertificate: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"},
		"control chars":    {TLSClientAuthSubjectDN: "CN=x\nOU=y"},
	} {
		if _, err := tlsSubjectOrCert(spec); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func tlsSubjectOrCert(spec client.AgentSpec) (string, error) {
	s, err := tlsSubjectOf(spec)
	if err != nil {
		return "", err
	}
	c, err := tlsCertOf(spec)
	if err != nil {
		return "", err
	}
	if s != "" && c != "" {
		return "", io.EOF
	}
	return s + c, nil
}

// TestClientLibraryWithCertificate: the Go client authenticates with a
// client certificate alone and gets a certificate-bound passport.
func TestClientLibraryWithCertificate(t *testing.T) {
	ca := tlstest.NewCA(t, "workload CA")
	_, base := runTLS(t, ca, func(c *Config) { c.TLS.CAFile, c.TLS.ClientAuth = ca.File, "verify_if_given" })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	admin, err := client.NewAdmin(base, testAdminToken, client.Options{CAFile: ca.File})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := admin.RegisterAgent(ctx, "acme", client.AgentSpec{Name: "healer-1", Type: "healer", TrustLevel: passport.TrustHigh,
		TLSClientAuthSANDNS: "healer-1.acme.svc"})
	if err != nil {
		t.Fatal(err)
	}
	leaf := ca.Issue(tlstest.Options{Client: true}, "healer-1.acme.svc")
	c, err := client.New(base, reg.ClientID, "", client.Options{CAFile: ca.File, ClientCertificate: &leaf.TLS})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Token(ctx, client.TokenRequest{Scope: []string{"service.get"}})
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := base64.RawURLEncoding.DecodeString(strings.Split(tok.Raw, ".")[1])
	if !strings.Contains(string(payload), `"x5t#S256":"`+passport.CertThumbprint(leaf.Cert.Raw)+`"`) || tok.Type != "Bearer" {
		t.Fatalf("passport %s, type %s", payload, tok.Type)
	}
}
