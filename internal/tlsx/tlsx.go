// Package tlsx builds the TLS configurations of Agent Passport from their
// YAML blocks: the `tls:` block of every server (certificate and key files,
// reloaded when they change, optional client certificates) and the blocks
// of outbound connections (a CA bundle, an optional client certificate,
// a pinned server name).
//
// Versions and cipher suites are Go's defaults from TLS 1.2 up (TLS 1.3
// preferred): no custom cipher list, because Go's choices are kept current
// and a hand-written list only ages. docs/tls.md describes every setting.
package tlsx

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// MaxFileSize bounds a certificate, key or CA file.
const MaxFileSize = 1 << 20

// Client authentication modes of Server.ClientAuth.
const (
	// ClientAuthNone asks for no client certificate (the default).
	ClientAuthNone = "none"
	// ClientAuthRequest asks for a certificate and verifies nothing: the
	// application checks what it gets (RFC 8705 self-signed certificates).
	ClientAuthRequest = "request"
	// ClientAuthVerifyIfGiven verifies a certificate against ca_file when
	// the client sends one; clients without one still connect.
	ClientAuthVerifyIfGiven = "verify_if_given"
	// ClientAuthRequire refuses clients without a certificate that chains
	// to ca_file.
	ClientAuthRequire = "require"
)

// Server is the `tls:` block of a listener. TLS is on when CertFile and
// KeyFile are set; both empty (the default) serves plain HTTP.
type Server struct {
	// CertFile is the PEM certificate chain, leaf first. Reloaded when it
	// changes. Default none.
	CertFile string `yaml:"cert_file"`
	// KeyFile is the PEM private key of the leaf. Reloaded with CertFile.
	// Default none.
	KeyFile string `yaml:"key_file"`
	// CAFile is a PEM bundle of the CAs client certificates must chain to
	// (client_auth verify_if_given or require). Read at start. Default none.
	CAFile string `yaml:"ca_file"`
	// ClientAuth is none (default), request, verify_if_given or require.
	ClientAuth string `yaml:"client_auth"`
	// MinVersion is "1.2" (default) or "1.3".
	MinVersion string `yaml:"min_version"`
}

// Enabled reports whether the listener serves TLS.
func (s Server) Enabled() bool { return s.CertFile != "" || s.KeyFile != "" }

// Scheme is "https" when TLS is on, else "http".
func (s Server) Scheme() string {
	if s.Enabled() {
		return "https"
	}
	return "http"
}

// Validate reports every problem of the block; prefix names it in errors
// (e.g. "tls" or "admin.tls").
func (s Server) Validate(prefix string) error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(prefix+"."+format, a...)) }
	if (s.CertFile == "") != (s.KeyFile == "") {
		bad("cert_file and key_file: set both or neither")
	}
	if _, err := minVersion(s.MinVersion); err != nil {
		bad("min_version: %v", err)
	}
	mode, err := clientAuth(s.ClientAuth)
	if err != nil {
		bad("client_auth: %v", err)
	}
	switch {
	case !s.Enabled() && (s.CAFile != "" || mode != tls.NoClientCert):
		bad("ca_file and client_auth need cert_file and key_file")
	case (mode == tls.VerifyClientCertIfGiven || mode == tls.RequireAndVerifyClientCert) && s.CAFile == "":
		bad("client_auth %s: ca_file is required", s.ClientAuth)
	case (mode == tls.NoClientCert || mode == tls.RequestClientCert) && s.CAFile != "":
		// A CA bundle that verifies nothing would look like protection.
		bad("ca_file: only used with client_auth verify_if_given or require")
	}
	return errors.Join(errs...)
}

// Config builds the server's *tls.Config, or nil when TLS is off. The
// certificate is loaded now (an unreadable or mismatched pair is an error)
// and reloaded on later handshakes when its files change.
func (s Server) Config(o Options) (*tls.Config, error) {
	if !s.Enabled() {
		return nil, nil
	}
	if err := s.Validate("tls"); err != nil {
		return nil, err
	}
	kp, err := NewKeyPair(s.CertFile, s.KeyFile, o)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{GetCertificate: kp.GetCertificate}
	cfg.MinVersion, _ = minVersion(s.MinVersion)
	cfg.ClientAuth, _ = clientAuth(s.ClientAuth)
	if s.CAFile != "" {
		if cfg.ClientCAs, err = LoadCAFile(s.CAFile); err != nil {
			return nil, err
		}
	}
	return cfg, nil
}

// Client is the TLS block of an outbound connection (an upstream, Redis,
// the authority). Every field is optional: the zero value verifies the
// server against the system's roots.
type Client struct {
	// CAFile is a PEM bundle of the only CAs trusted for the server's
	// certificate. Read at start. Default: the system's roots.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are a client certificate to present (mutual
	// TLS), reloaded when they change. Default none.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName is the name the server's certificate must carry (and the
	// SNI sent). Default: the host of the URL dialled.
	ServerName string `yaml:"server_name"`
	// MinVersion is "1.2" (default) or "1.3".
	MinVersion string `yaml:"min_version"`
}

// IsZero reports whether nothing is set.
func (c Client) IsZero() bool { return c == Client{} }

// Validate reports every problem of the block; prefix names it in errors.
func (c Client) Validate(prefix string) error {
	var errs []error
	if (c.CertFile == "") != (c.KeyFile == "") {
		errs = append(errs, fmt.Errorf("%s.cert_file and key_file: set both or neither", prefix))
	}
	if _, err := minVersion(c.MinVersion); err != nil {
		errs = append(errs, fmt.Errorf("%s.min_version: %w", prefix, err))
	}
	if strings.ContainsAny(c.ServerName, " /:") && net.ParseIP(c.ServerName) == nil {
		errs = append(errs, fmt.Errorf("%s.server_name %q: want a host name", prefix, c.ServerName))
	}
	return errors.Join(errs...)
}

// Config builds the client's *tls.Config. Files are read now.
func (c Client) Config(o Options) (*tls.Config, error) {
	if err := c.Validate("tls"); err != nil {
		return nil, err
	}
	cfg := &tls.Config{ServerName: c.ServerName}
	cfg.MinVersion, _ = minVersion(c.MinVersion)
	if c.CAFile != "" {
		pool, err := LoadCAFile(c.CAFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	if c.CertFile != "" {
		kp, err := NewKeyPair(c.CertFile, c.KeyFile, o)
		if err != nil {
			return nil, err
		}
		cfg.GetClientCertificate = kp.GetClientCertificate
	}
	return cfg, nil
}

// Transport is a clone of http.DefaultTransport that uses c for TLS.
func (c Client) Transport(o Options) (*http.Transport, error) {
	cfg, err := c.Config(o)
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = cfg
	return tr, nil
}

// HTTPClient is an http.Client with timeout whose transport trusts the CA
// bundle caFile, or the system's roots when caFile is "".
func HTTPClient(caFile string, timeout time.Duration) (*http.Client, error) {
	if caFile == "" {
		return &http.Client{Timeout: timeout}, nil
	}
	tr, err := Client{CAFile: caFile}.Transport(Options{})
	if err != nil {
		return nil, err
	}
	return &http.Client{Transport: tr, Timeout: timeout}, nil
}

// LoadCAFile reads a PEM bundle of CA certificates. A file without any
// certificate is an error, never an empty pool that trusts nothing quietly.
func LoadCAFile(path string) (*x509.CertPool, error) {
	b, err := readFile(path)
	if err != nil {
		return nil, fmt.Errorf("ca file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("ca file %s: no PEM certificate in it", path)
	}
	return pool, nil
}

// Serve serves srv on ln: plain HTTP when cfg is nil, else TLS with
// HTTP/2 offered through ALPN beside HTTP/1.1 (net/http's own h2). Failed
// handshakes are logged at most once per 10 s with a count, not once each:
// a scanner must not be able to fill the log.
func Serve(srv *http.Server, ln net.Listener, cfg *tls.Config) error {
	if cfg == nil {
		return srv.Serve(ln)
	}
	// A clone: net/http adds its ALPN protocols to the server's own
	// config, and one config may serve several listeners.
	srv.TLSConfig = cfg.Clone()
	srv.ErrorLog = quietHandshakes(srv.ErrorLog)
	return srv.ServeTLS(ln, "", "")
}

func minVersion(v string) (uint16, error) {
	switch v {
	case "", "1.2":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("%q: want 1.2 or 1.3", v)
}

func clientAuth(v string) (tls.ClientAuthType, error) {
	switch v {
	case "", ClientAuthNone:
		return tls.NoClientCert, nil
	case ClientAuthRequest:
		return tls.RequestClientCert, nil
	case ClientAuthVerifyIfGiven:
		return tls.VerifyClientCertIfGiven, nil
	case ClientAuthRequire:
		return tls.RequireAndVerifyClientCert, nil
	}
	return 0, fmt.Errorf("%q: want none, request, verify_if_given or require", v)
}

func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(b) > MaxFileSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, MaxFileSize)
	}
	return b, nil
}

// quietHandshakes wraps an http.Server's error log so that "TLS handshake
// error" lines pass at most once per 10 s, with the number left out.
func quietHandshakes(l *log.Logger) *log.Logger {
	var w io.Writer = log.Default().Writer()
	prefix, flags := log.Default().Prefix(), log.Default().Flags()
	if l != nil {
		w, prefix, flags = l.Writer(), l.Prefix(), l.Flags()
	}
	return log.New(&handshakeFilter{next: w, every: 10 * time.Second, now: time.Now}, prefix, flags)
}

type handshakeFilter struct {
	next  io.Writer
	every time.Duration
	now   func() time.Time

	mu      sync.Mutex
	last    time.Time
	dropped int
}

func (f *handshakeFilter) Write(p []byte) (int, error) {
	if !bytes.Contains(p, []byte("TLS handshake error")) {
		return f.next.Write(p)
	}
	f.mu.Lock()
	now := f.now()
	if !f.last.IsZero() && now.Sub(f.last) < f.every {
		f.dropped++
		f.mu.Unlock()
		return len(p), nil
	}
	dropped := f.dropped
	f.last, f.dropped = now, 0
	f.mu.Unlock()
	if dropped > 0 {
		line := bytes.TrimRight(p, "\n")
		p = fmt.Appendf(line, " (and %d more handshake errors since the last one logged)\n", dropped)
	}
	if _, err := f.next.Write(p); err != nil {
		return 0, err
	}
	return len(p), nil
}
