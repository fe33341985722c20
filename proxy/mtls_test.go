package proxy

import (
	"crypto/tls"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/agentpassport/passport/internal/tlstest"
	"github.com/agentpassport/passport/passport"
	"github.com/agentpassport/passport/proxy/internal/testkeys"
)

// TestCertificateBoundPassport (RFC 8705 §3): with client certificates
// requested on the agent port, a passport bound to a certificate passes
// only over a connection that presents that certificate; replayed from a
// connection with another certificate, without one, or sent as a DPoP
// passport, it is 401 and nothing reaches the upstream. An unbound
// passport keeps working with or without a certificate.
func TestCertificateBoundPassport(t *testing.T) {
	h, ca := newTLSHarness(t, func(c *Config) { c.TLS.ClientAuth = "request" })
	agentCA := tlstest.NewCA(t, "workload CA")
	mine := agentCA.Issue(tlstest.Options{Client: true, URIs: []string{"spiffe://acme/healer"}}, "healer-1")
	thief := agentCA.Issue(tlstest.Options{Client: true, URIs: []string{"spiffe://acme/rogue"}}, "rogue")
	client := func(leaf *tlstest.Leaf) *http.Client {
		cfg := &tls.Config{RootCAs: ca.Pool()}
		if leaf != nil {
			cfg.Certificates = []tls.Certificate{leaf.TLS}
		}
		tr := &http.Transport{TLSClientConfig: cfg}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 10 * time.Second}
	}
	h.agent("acme", "healer-1", 90)
	cl := testkeys.Claims(h.now(), "acme", "healer-1", "healer", passport.TrustHigh, "service.get")
	cl.Cnf = &passport.Confirmation{X5T: passport.CertThumbprint(mine.Cert.Raw)}
	bound := h.keys.Sign(t, cl)

	if r := h.doWith(client(mine), "GET", "/services/checkout", bound, nil); r.status != http.StatusOK {
		t.Fatalf("over its certificate: %d %s", r.status, r.body)
	}
	hits := h.up.hits.Load()
	for name, c := range map[string]*http.Client{"another certificate": client(thief), "no certificate": client(nil)} {
		r := h.doWith(c, "GET", "/services/checkout", bound, nil)
		if r.status != http.StatusUnauthorized || !strings.Contains(r.body, "certificate_bound") {
			t.Errorf("%s: %d %s", name, r.status, r.body)
		}
	}
	// As a DPoP passport over the right connection: not how it is bound.
	req, _ := http.NewRequest("GET", h.url+"/services/checkout", nil)
	req.Header.Set("Authorization", "DPoP "+bound)
	if res, err := client(mine).Do(req); err != nil || res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("as DPoP: %v %v", err, res)
	} else {
		res.Body.Close()
	}
	if h.up.hits.Load() != hits {
		t.Fatalf("a refused certificate-bound call reached the upstream")
	}

	_, plain := h.healer()
	for _, c := range []*http.Client{client(mine), client(nil)} {
		if r := h.doWith(c, "GET", "/services/checkout", plain, nil); r.status != http.StatusOK {
			t.Fatalf("an unbound passport: %d", r.status)
		}
	}
}

// TestCertificateBindingIsStrict: cnf with both methods, or the x5t
// member in another spelling, is refused as a malformed binding.
func TestCertificateBindingIsStrict(t *testing.T) {
	h, ca := newTLSHarness(t, func(c *Config) { c.TLS.ClientAuth = "request" })
	h.agent("acme", "healer-1", 90)
	x5t := passport.CertThumbprint([]byte("a certificate"))
	for name, cnf := range map[string]string{
		"both methods":      `{"jkt":"` + x5t + `","x5t#S256":"` + x5t + `"}`,
		"lower-case member": `{"x5t#s256":"` + x5t + `"}`,
		"not a thumbprint":  `{"x5t#S256":"abc"}`,
	} {
		cl := testkeys.Claims(h.now(), "acme", "healer-1", "healer", passport.TrustHigh, "service.get")
		b, err := json.Marshal(cl)
		if err != nil {
			t.Fatal(err)
		}
		payload := `{"cnf":` + cnf + `,` + string(b[1:])
		tok := h.keys.SignRaw(t, `{"alg":"EdDSA","typ":"at+jwt","kid":"`+h.keys.EdKID+`"}`, payload, nil)
		if r := h.doWith(tlsClient(t, ca.Pool(), false), "GET", "/services/checkout", tok, nil); r.status != http.StatusUnauthorized || !strings.Contains(r.body, "cnf") {
			t.Errorf("%s: %d %s", name, r.status, r.body)
		}
	}
}
