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
// case. Its connections stay HTTP/1.1 with keep-alive, like the plain
// cases, so the row differs from the full path by TLS alone.
var benchTLS *tls.Config

// startTLSProxy runs a second proxy with the configuration of the full
// path, serving TLS with a certificate made for this run (ECDSA P-256, as
// cert-manager issues by default), and sets benchTLS. It returns the
// proxy's URL and a function that stops it.
func startTLSProxy(ctx context.Context, cfg proxy.Config, deps proxy.Deps) (string, func(), error) {
	dir, err := os.MkdirTemp("", "passport-bench-tls")
	if err != nil {
		return "", nil, err
	}
	cleanup := func() { _ = os.RemoveAll(dir) }
	pool, certFile, keyFile, err := makeCertificate(dir)
	if err != nil {
		cleanup()
		return "", nil, err
	}
	benchTLS = &tls.Config{RootCAs: pool}
	cfg.TLS = tlsx.Server{CertFile: certFile, KeyFile: keyFile}
	deps.Registry = prometheus.NewRegistry() // its own: the metric names are the plain proxy's
	p, err := proxy.New(cfg, deps)
	if err != nil {
		cleanup()
		return "", nil, fmt.Errorf("tls proxy: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cleanup()
		return "", nil, err
	}
	aln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		ln.Close()
		cleanup()
		return "", nil, err
	}
	pctx, stopProxy := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Serve(pctx, ln, aln) }()
	stop := func() { stopProxy(); <-done; cleanup() }
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
