package stack

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/agentpassport/passport/internal/tlsx"
)

// Files of the demo's private CA and its server certificate, under
// DataDir/TLSDir. The keys are mode 0600; ca.crt is what clients trust
// (demo.json's ca_file, PASSPORT_CA_FILE, a browser's import).
const (
	TLSDir         = "tls"
	CACertFile     = "ca.crt"
	CAKeyFile      = "ca.key"
	ServerCertFile = "server.crt"
	ServerKeyFile  = "server.key"
)

// Lifetimes of the demo's certificates. The CA lives long enough that a
// browser told to trust it keeps trusting it across many runs; the server
// certificate is short and renewed at a start when it is about to expire.
const (
	caLifetime     = 365 * 24 * time.Hour
	serverLifetime = 90 * 24 * time.Hour
	// renewBefore: a certificate expiring sooner is replaced at start,
	// so that a demo left running for days does not break mid-tour.
	renewBefore = 7 * 24 * time.Hour
)

// demoTLS is the demo's CA and server certificate, as files.
type demoTLS struct {
	caFile, certFile, keyFile string
	pool                      *x509.CertPool
}

// server is the serving block of every component of the demo.
func (d *demoTLS) server() tlsx.Server {
	return tlsx.Server{CertFile: d.certFile, KeyFile: d.keyFile}
}

// client verifies the demo's servers with the demo CA alone.
func (d *demoTLS) client() tlsx.Client { return tlsx.Client{CAFile: d.caFile} }

// clientConfig is client as a *tls.Config.
func (d *demoTLS) clientConfig() *tls.Config {
	return &tls.Config{RootCAs: d.pool, MinVersion: tls.VersionTLS12}
}

// ensureTLS makes sure dir holds a valid CA and a server certificate it
// signed for the names the demo is reached at (certHosts), and returns
// them. Files that still serve are kept: a CA a
// user told a browser to trust stays the same across restarts, and only
// the server certificate is reissued when it expires within renewBefore,
// no longer chains to the CA, or does not name host.
func ensureTLS(dir, host string, now time.Time) (*demoTLS, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("tls dir: %w", err)
	}
	d := &demoTLS{
		caFile:   filepath.Join(dir, CACertFile),
		certFile: filepath.Join(dir, ServerCertFile),
		keyFile:  filepath.Join(dir, ServerKeyFile),
	}
	caKeyFile := filepath.Join(dir, CAKeyFile)
	hosts := certHosts(host)

	ca, caKey, err := loadPair(d.caFile, caKeyFile)
	if err != nil || !ca.IsCA || !usable(ca, now) {
		if ca, caKey, err = newCA(d.caFile, caKeyFile, now); err != nil {
			return nil, err
		}
	}
	d.pool = x509.NewCertPool()
	d.pool.AddCert(ca)

	cert, _, err := loadPair(d.certFile, d.keyFile)
	if err != nil || !usable(cert, now) || !serves(cert, d.pool, hosts, now) {
		if err := newServerCert(d.certFile, d.keyFile, ca, caKey, hosts, now); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// certHosts are the names the server certificate must carry: loopback
// (127.0.0.1, ::1, localhost) and host, which is in every URL of
// demo.json, so the stack's own clients verify it. When host is an
// unspecified address (--listen 0.0.0.0:8090, the demo on another host),
// browsers reach it by the machine's addresses and name: those too.
func certHosts(host string) []string {
	hosts := []string{"127.0.0.1", "::1", "localhost"}
	add := func(h string) {
		if h != "" && !slices.Contains(hosts, h) {
			hosts = append(hosts, h)
		}
	}
	add(host)
	if ip := net.ParseIP(host); ip == nil || !ip.IsUnspecified() {
		return hosts
	}
	if name, err := os.Hostname(); err == nil {
		add(name)
	}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && !n.IP.IsLinkLocalUnicast() {
				add(n.IP.String())
			}
		}
	}
	return hosts
}

// usable says whether c is valid now and for renewBefore more.
func usable(c *x509.Certificate, now time.Time) bool {
	return !now.Before(c.NotBefore) && now.Add(renewBefore).Before(c.NotAfter)
}

// serves says whether c chains to roots as a server certificate and names
// every host.
func serves(c *x509.Certificate, roots *x509.CertPool, hosts []string, now time.Time) bool {
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return false
	}
	for _, h := range hosts {
		if c.VerifyHostname(h) != nil {
			return false
		}
	}
	return true
}

// loadPair reads a PEM certificate and its PKCS#8 ECDSA key and checks
// that they belong together.
func loadPair(certFile, keyFile string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, nil, err
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, nil, errors.New("not PEM")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, nil, err
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok || !key.PublicKey.Equal(cert.PublicKey) {
		return nil, nil, errors.New("key does not match the certificate")
	}
	return cert, key, nil
}

func newCA(certFile, keyFile string, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tpl := &x509.Certificate{
		SerialNumber: serialNumber(),
		Subject:      pkix.Name{CommonName: "Agent Passport demo CA " + now.UTC().Format("2006-01-02"), Organization: []string{"Agent Passport demo"}},
		NotBefore:    now.Add(-time.Hour), NotAfter: now.Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true, IsCA: true,
		// The CA signs server certificates only, so that trusting it (in
		// a browser too) gives nothing else: no intermediate CAs, and
		// only the names the demo is served at.
		MaxPathLenZero: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("demo CA: %w", err)
	}
	if err := writePair(certFile, keyFile, der, key); err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

func newServerCert(certFile, keyFile string, ca *x509.Certificate, caKey crypto.Signer, hosts []string, now time.Time) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tpl := &x509.Certificate{
		SerialNumber: serialNumber(),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    now.Add(-time.Hour), NotAfter: now.Add(serverLifetime),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tpl.IPAddresses = append(tpl.IPAddresses, ip)
		} else {
			tpl.DNSNames = append(tpl.DNSNames, h)
		}
	}
	if tpl.NotAfter.After(ca.NotAfter) {
		tpl.NotAfter = ca.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("demo server certificate: %w", err)
	}
	return writePair(certFile, keyFile, der, key)
}

// writePair writes the key (mode 0600) and then the certificate, each
// through a temporary file renamed into place.
func writePair(certFile, keyFile string, der []byte, key *ecdsa.PrivateKey) error {
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})); err != nil {
		return fmt.Errorf("write %s: %w", keyFile, err)
	}
	if err := writeFileAtomic(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})); err != nil {
		return fmt.Errorf("write %s: %w", certFile, err)
	}
	return nil
}

func serialNumber() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

// scheme is https with TLS on, else http.
func (s *Stack) scheme() string {
	if s.tls != nil {
		return "https"
	}
	return "http"
}

// serverTLS is every listener's TLS block (zero: plain HTTP).
func (s *Stack) serverTLS() tlsx.Server {
	if s.tls == nil {
		return tlsx.Server{}
	}
	return s.tls.server()
}

// clientTLS verifies the demo's servers; nil with TLS off.
func (s *Stack) clientTLS() *tls.Config {
	if s.tls == nil {
		return nil
	}
	return s.tls.clientConfig()
}

// caFile is the demo CA's certificate file, "" with TLS off.
func (s *Stack) caFile() string {
	if s.tls == nil {
		return ""
	}
	return s.tls.caFile
}

// httpClient is a client with timeout that trusts the demo CA alone.
func (s *Stack) httpClient(timeout time.Duration) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil // loopback: never through an HTTP proxy of the environment
	tr.TLSClientConfig = s.clientTLS()
	return &http.Client{Timeout: timeout, Transport: tr}
}
