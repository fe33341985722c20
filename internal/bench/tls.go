package main

import (
	"context"
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
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentpassport/passport/internal/tlsx"
	"github.com/agentpassport/passport/proxy"
)

// tlsCaseName is the full path served over TLS (-tls).
const tlsCaseName = "full path TLS (allow)"

// benchTLS is what the load generator trusts: the private CA of the TLS
// cases. Its connections stay HTTP/1.1 with keep-alive, like the plain
// cases, so the TLS rows differ from the plain ones by TLS alone.
var benchTLS *tls.Config

// tlsFiles are the run's certificate and key, used by the in-process TLS
// proxy and by the TLS proxy process of the cost cases.
type tlsFiles struct{ dir, cert, key string }

// setupTLS makes a certificate for 127.0.0.1 signed by a private CA
// (ECDSA P-256, as cert-manager issues by default) and sets benchTLS.
func setupTLS() (*tlsFiles, error) {
	dir, err := os.MkdirTemp("", "passport-bench-tls")
	if err != nil {
		return nil, err
	}
	pool, cert, key, err := makeCertificate(dir)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	benchTLS = &tls.Config{RootCAs: pool}
	return &tlsFiles{dir: dir, cert: cert, key: key}, nil
}

func (f *tlsFiles) remove() { _ = os.RemoveAll(f.dir) }

// startTLSProxy runs a second proxy with the configuration of the full
// path, serving TLS with f. It returns the proxy's URL and a function that
// stops it.
func startTLSProxy(ctx context.Context, cfg proxy.Config, deps proxy.Deps, f *tlsFiles) (string, func(), error) {
	cfg.TLS = tlsx.Server{CertFile: f.cert, KeyFile: f.key}
	deps.Registry = prometheus.NewRegistry() // its own: the metric names are the plain proxy's
	p, err := proxy.New(cfg, deps)
	if err != nil {
		return "", nil, fmt.Errorf("tls proxy: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	aln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		ln.Close()
		return "", nil, err
	}
	pctx, stopProxy := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Serve(pctx, ln, aln) }()
	stop := func() { stopProxy(); <-done }
	deadline := time.Now().Add(10 * time.Second)
	for !p.Ready(ctx) {
		if time.Now().After(deadline) {
			stop()
			return "", nil, errors.New("tls proxy not ready after 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return "https://" + ln.Addr().String(), stop, nil
}

// makeCertificate writes a private CA's certificate for 127.0.0.1 and its
// key into dir and returns a pool holding the CA.
func makeCertificate(dir string) (*x509.CertPool, string, string, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, "", "", err
	}
	now := time.Now()
	caTpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "passport bench CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTpl, caTpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, "", "", err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, "", "", err
	}
	tpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, "", "", err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, "", "", err
	}
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return nil, "", "", err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return nil, "", "", err
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return pool, certFile, keyFile, nil
}
