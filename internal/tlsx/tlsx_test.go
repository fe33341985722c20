package tlsx

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentpassport/passport/internal/tlstest"
)

// clock is a settable time source.
type clock struct{ ns atomic.Int64 }

func newClock() *clock               { c := &clock{}; c.ns.Store(time.Now().UnixNano()); return c }
func (c *clock) Now() time.Time      { return time.Unix(0, c.ns.Load()) }
func (c *clock) Add(d time.Duration) { c.ns.Add(int64(d)) }

// serveTLS serves a handler that names the protocol over cfg on a free
// loopback port until the test ends.
func serveTLS(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Proto)
	}), ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, 1)
	go func() { done <- Serve(srv, ln, cfg) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	})
	return ln.Addr().String()
}

// handshake dials addr with cfg and returns the server's leaf.
func handshake(addr string, cfg *tls.Config) (*x509.Certificate, error) {
	d := &tls.Dialer{Config: cfg, NetDialer: &net.Dialer{Timeout: 5 * time.Second}}
	c, err := d.DialContext(context.Background(), "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.(*tls.Conn).ConnectionState().PeerCertificates[0], nil
}

func TestServerRefusesWhatAClientMustNotAccept(t *testing.T) {
	ca := tlstest.NewCA(t, "test CA")
	other := tlstest.NewCA(t, "another CA")
	now := time.Now()
	cases := []struct {
		name    string
		leaf    *tlstest.Leaf
		roots   *x509.CertPool
		wantErr string
	}{
		{"valid", ca.Server(), ca.Pool(), ""},
		{"expired", ca.Issue(tlstest.Options{NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)}, "127.0.0.1"), ca.Pool(), "expired"},
		{"wrong name", ca.Server("api.internal"), ca.Pool(), "127.0.0.1"},
		{"unknown CA", other.Server(), ca.Pool(), "unknown authority"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Server{CertFile: tc.leaf.CertFile, KeyFile: tc.leaf.KeyFile}.Config(Options{Name: "test"})
			if err != nil {
				t.Fatal(err)
			}
			addr := serveTLS(t, cfg)
			_, err = handshake(addr, &tls.Config{RootCAs: tc.roots, ServerName: "127.0.0.1"})
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("handshake: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("handshake error = %v, want one about %q", err, tc.wantErr)
			}
		})
	}
}

func TestServeOffersHTTP2AndHTTP1(t *testing.T) {
	ca := tlstest.NewCA(t, "test CA")
	leaf := ca.Server()
	cfg, err := Server{CertFile: leaf.CertFile, KeyFile: leaf.KeyFile}.Config(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MinVersion != tls.VersionTLS12 || cfg.CipherSuites != nil {
		t.Fatalf("min version %x, cipher suites %v: want TLS 1.2 and Go's defaults", cfg.MinVersion, cfg.CipherSuites)
	}
	addr := serveTLS(t, cfg)
	for _, tc := range []struct {
		h2   bool
		want string
	}{{true, "HTTP/2.0"}, {false, "HTTP/1.1"}} {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}, ForceAttemptHTTP2: tc.h2}
		if !tc.h2 {
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		resp, err := c.Get("https://" + addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		tr.CloseIdleConnections()
		if string(b) != tc.want || resp.TLS.Version != tls.VersionTLS13 {
			t.Fatalf("got %s over TLS %x, want %s over TLS 1.3", b, resp.TLS.Version, tc.want)
		}
	}
	// TLS 1.1 is refused.
	if _, err := handshake(addr, &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}); err == nil {
		t.Fatal("a TLS 1.1 handshake succeeded")
	}
}

func TestRotationWithoutRestart(t *testing.T) {
	ca := tlstest.NewCA(t, "test CA")
	first, second := ca.Server(), ca.Server()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	first.WriteTo(t, certFile, keyFile)
	clk := newClock()
	reg := prometheus.NewRegistry()
	var logs bytes.Buffer
	cfg, err := Server{CertFile: certFile, KeyFile: keyFile}.Config(Options{Name: "test", Clock: clk.Now,
		Metrics: NewMetrics(reg), Logger: slogTo(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	addr := serveTLS(t, cfg)
	client := &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"}
	serialNow := func() string {
		t.Helper()
		c, err := handshake(addr, client)
		if err != nil {
			t.Fatal(err)
		}
		return c.SerialNumber.String()
	}
	if got := serialNow(); got != first.Cert.SerialNumber.String() {
		t.Fatalf("serving %s, want the first certificate", got)
	}

	second.WriteTo(t, certFile, keyFile)
	// Within the check interval the files are not looked at.
	if got := serialNow(); got != first.Cert.SerialNumber.String() {
		t.Fatalf("switched before the check interval")
	}
	clk.Add(DefaultCheckInterval)
	if got := serialNow(); got != second.Cert.SerialNumber.String() {
		t.Fatalf("after rotation serving %s, want the second certificate %s", got, second.Cert.SerialNumber)
	}
	if n := metric(t, reg, "passport_tls_certificate_reloads_total", "success"); n != 1 {
		t.Fatalf("reloads{success} = %v, want 1", n)
	}
	exp := metric(t, reg, "passport_tls_certificate_expiry_timestamp_seconds", "")
	if int64(exp) != second.Cert.NotAfter.Unix() {
		t.Fatalf("expiry gauge %v, want %d", exp, second.Cert.NotAfter.Unix())
	}
	if !strings.Contains(logs.String(), "tls certificate reloaded") {
		t.Fatalf("no reload logged: %s", logs.String())
	}
}

func TestBrokenNewPairKeepsTheOldOne(t *testing.T) {
	ca := tlstest.NewCA(t, "test CA")
	good, next := ca.Server(), ca.Server()
	now := time.Now()
	expired := ca.Issue(tlstest.Options{NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)}, "localhost")
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	good.WriteTo(t, certFile, keyFile)
	clk := newClock()
	reg := prometheus.NewRegistry()
	var logs bytes.Buffer
	kp, err := NewKeyPair(certFile, keyFile, Options{Name: "test", Clock: clk.Now, Metrics: NewMetrics(reg), Logger: slogTo(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	serving := func() string { clk.Add(DefaultCheckInterval); return kp.Certificate().Leaf.SerialNumber.String() }
	failures := func() float64 {
		return metric(t, reg, "passport_tls_certificate_reloads_total", "failure")
	}

	steps := []struct {
		name  string
		write func()
	}{
		{"half written: the new certificate before its key", func() { replaceFile(t, certFile, next.CertPEM) }},
		{"garbage", func() { replaceFile(t, certFile, []byte("not PEM")) }},
		{"empty key", func() { next.WriteTo(t, certFile, keyFile); replaceFile(t, keyFile, nil) }},
		{"expired", func() { expired.WriteTo(t, certFile, keyFile) }},
		{"removed", func() { _ = os.Remove(certFile) }},
	}
	for i, s := range steps {
		s.write()
		if got := serving(); got != good.Cert.SerialNumber.String() {
			t.Fatalf("%s: serving %s, want the old certificate", s.name, got)
		}
		// Handshakes that keep running into the same problem count it once.
		serving()
		serving()
		if n := failures(); n != float64(i+1) {
			t.Fatalf("%s: reloads{failure} = %v, want %d", s.name, n, i+1)
		}
	}
	if c := strings.Count(logs.String(), "reload refused"); c != len(steps) {
		t.Fatalf("%d refusals logged, want %d (one per problem):\n%s", c, len(steps), logs.String())
	}
	// The key lands: the pair is complete and taken.
	next.WriteTo(t, certFile, keyFile)
	if got := serving(); got != next.Cert.SerialNumber.String() {
		t.Fatalf("complete pair not taken: serving %s", got)
	}
}

func TestRotationBySymlinkSwap(t *testing.T) {
	// Kubernetes secret volumes: tls.crt -> ..data/tls.crt, and ..data is
	// a symlink swapped to a new timestamped directory.
	ca := tlstest.NewCA(t, "test CA")
	first, second := ca.Server(), ca.Server()
	dir := t.TempDir()
	for i, l := range []*tlstest.Leaf{first, second} {
		d := filepath.Join(dir, []string{"..v1", "..v2"}[i])
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		l.WriteTo(t, filepath.Join(d, "tls.crt"), filepath.Join(d, "tls.key"))
	}
	must(t, os.Symlink("..v1", filepath.Join(dir, "..data")))
	must(t, os.Symlink("..data/tls.crt", filepath.Join(dir, "tls.crt")))
	must(t, os.Symlink("..data/tls.key", filepath.Join(dir, "tls.key")))
	clk := newClock()
	kp, err := NewKeyPair(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), Options{Clock: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	must(t, os.Symlink("..v2", filepath.Join(dir, "..data.tmp")))
	must(t, os.Rename(filepath.Join(dir, "..data.tmp"), filepath.Join(dir, "..data")))
	clk.Add(DefaultCheckInterval)
	if got := kp.Certificate().Leaf.SerialNumber; got.Cmp(second.Cert.SerialNumber) != 0 {
		t.Fatalf("serving %s after the swap, want the second certificate", got)
	}
}

func TestConcurrentHandshakesDuringRotation(t *testing.T) {
	ca := tlstest.NewCA(t, "test CA")
	leaves := []*tlstest.Leaf{ca.Server(), ca.Server(), ca.Server()}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	leaves[0].WriteTo(t, certFile, keyFile)
	kp, err := NewKeyPair(certFile, keyFile, Options{CheckInterval: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	valid := map[string]bool{}
	for _, l := range leaves {
		valid[l.Cert.SerialNumber.String()] = true
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var bad atomic.Value
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if s := kp.Certificate().Leaf.SerialNumber.String(); !valid[s] {
					bad.Store(s)
				}
			}
		}()
	}
	for i := range 30 {
		leaves[i%3].WriteTo(t, certFile, keyFile)
	}
	close(stop)
	wg.Wait()
	if v := bad.Load(); v != nil {
		t.Fatalf("served a certificate that was never written: %v", v)
	}
}

func TestClientCertificatesAndServerNamePinning(t *testing.T) {
	ca := tlstest.NewCA(t, "test CA")
	other := tlstest.NewCA(t, "another CA")
	srvLeaf := ca.Server("api.internal")
	clientLeaf := ca.Issue(tlstest.Options{Client: true}, "agent-1")
	strangerLeaf := other.Issue(tlstest.Options{Client: true}, "agent-1")
	cfg, err := Server{CertFile: srvLeaf.CertFile, KeyFile: srvLeaf.KeyFile, CAFile: ca.File, ClientAuth: ClientAuthRequire}.Config(Options{})
	if err != nil {
		t.Fatal(err)
	}
	addr := serveTLS(t, cfg)
	get := func(c Client) error {
		tr, err := c.Transport(Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://" + addr + "/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
	cases := []struct {
		name string
		c    Client
		ok   bool
	}{
		{"pinned name and client certificate", Client{CAFile: ca.File, ServerName: "api.internal", CertFile: clientLeaf.CertFile, KeyFile: clientLeaf.KeyFile}, true},
		{"no pinned name: the URL's 127.0.0.1 is not in the certificate", Client{CAFile: ca.File, CertFile: clientLeaf.CertFile, KeyFile: clientLeaf.KeyFile}, false},
		{"pinned to another name", Client{CAFile: ca.File, ServerName: "other.internal", CertFile: clientLeaf.CertFile, KeyFile: clientLeaf.KeyFile}, false},
		{"no client certificate", Client{CAFile: ca.File, ServerName: "api.internal"}, false},
		{"client certificate of another CA", Client{CAFile: ca.File, ServerName: "api.internal", CertFile: strangerLeaf.CertFile, KeyFile: strangerLeaf.KeyFile}, false},
		{"system roots only", Client{ServerName: "api.internal", CertFile: clientLeaf.CertFile, KeyFile: clientLeaf.KeyFile}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := get(tc.c); (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestRequestedClientCertificateReachesTheHandler(t *testing.T) {
	// client_auth request: any certificate is taken (RFC 8705 self-signed
	// ones too) and handed to the handler, which decides.
	ca := tlstest.NewCA(t, "test CA")
	selfSigned := tlstest.NewCA(t, "agent-1")
	leaf := ca.Server()
	cfg, err := Server{CertFile: leaf.CertFile, KeyFile: leaf.KeyFile, ClientAuth: ClientAuthRequest}.Config(Options{})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			io.WriteString(w, r.TLS.PeerCertificates[0].Subject.CommonName)
		}
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = Serve(srv, ln, cfg) }()
	t.Cleanup(func() { _ = srv.Close() })
	for _, h2 := range []bool{true, false} {
		cert := tls.Certificate{Certificate: [][]byte{selfSigned.Cert.Raw}, PrivateKey: selfSigned.Key}
		tr := &http.Transport{ForceAttemptHTTP2: h2, TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{cert}}}
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://" + ln.Addr().String() + "/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		tr.CloseIdleConnections()
		if string(b) != "agent-1" {
			t.Fatalf("h2=%v: handler saw %q, want the client's certificate", h2, b)
		}
	}
}

func TestValidate(t *testing.T) {
	cases := []struct {
		name string
		s    Server
		want string
	}{
		{"off", Server{}, ""},
		{"on", Server{CertFile: "c", KeyFile: "k"}, ""},
		{"cert without key", Server{CertFile: "c"}, "set both or neither"},
		{"key without cert", Server{KeyFile: "k"}, "set both or neither"},
		{"bad version", Server{CertFile: "c", KeyFile: "k", MinVersion: "1.1"}, "min_version"},
		{"bad client auth", Server{CertFile: "c", KeyFile: "k", ClientAuth: "yes"}, "client_auth"},
		{"require without CA", Server{CertFile: "c", KeyFile: "k", ClientAuth: "require"}, "ca_file is required"},
		{"CA that verifies nothing", Server{CertFile: "c", KeyFile: "k", CAFile: "ca"}, "only used with"},
		{"client auth without TLS", Server{ClientAuth: "request"}, "need cert_file"},
		{"verify if given", Server{CertFile: "c", KeyFile: "k", CAFile: "ca", ClientAuth: "verify_if_given"}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.s.Validate("tls")
			if (err == nil) != (tc.want == "") || err != nil && !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want %q", err, tc.want)
			}
		})
	}
	if err := (Client{CertFile: "c"}).Validate("x"); err == nil {
		t.Fatal("client cert without key accepted")
	}
	if err := (Client{ServerName: "https://x"}).Validate("x"); err == nil {
		t.Fatal("a URL as server_name accepted")
	}
	if err := (Client{ServerName: "::1"}).Validate("x"); err != nil {
		t.Fatalf("an IPv6 address as server_name: %v", err)
	}
}

func TestFilesThatDoNotLoad(t *testing.T) {
	ca := tlstest.NewCA(t, "test CA")
	a, b := ca.Server(), ca.Server()
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.pem")
	must(t, os.WriteFile(empty, []byte("# nothing\n"), 0o600))
	if _, err := LoadCAFile(empty); err == nil {
		t.Fatal("a CA file without certificates loaded")
	}
	if _, err := (Server{CertFile: a.CertFile, KeyFile: b.KeyFile}).Config(Options{}); err == nil {
		t.Fatal("a certificate with another's key loaded")
	}
	if _, err := (Server{CertFile: filepath.Join(dir, "missing"), KeyFile: a.KeyFile}).Config(Options{}); err == nil {
		t.Fatal("a missing certificate file loaded")
	}
	if _, err := (Client{CAFile: empty}).Config(Options{}); err == nil {
		t.Fatal("a client with an empty CA bundle was built")
	}
}

func TestHandshakeErrorsAreNotLoggedOneByOne(t *testing.T) {
	var out bytes.Buffer
	clk := newClock()
	f := &handshakeFilter{next: &out, every: 10 * time.Second, now: clk.Now}
	l := log.New(f, "", 0)
	for range 100 {
		l.Print("http: TLS handshake error from 10.0.0.1:1234: EOF")
	}
	l.Print("http: something else")
	clk.Add(11 * time.Second)
	l.Print("http: TLS handshake error from 10.0.0.2:1: bad certificate")
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 || !strings.Contains(lines[2], "and 99 more") || lines[1] != "http: something else" {
		t.Fatalf("log:\n%s", out.String())
	}
}

func replaceFile(t *testing.T, path string, data []byte) {
	t.Helper()
	must(t, os.WriteFile(path+".tmp", data, 0o600))
	must(t, os.Rename(path+".tmp", path))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// metric is the value of the series of name in reg whose "result" label
// is result ("" for a series without one), 0 when there is none.
func metric(t *testing.T, reg *prometheus.Registry, name, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			got := ""
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "result" {
					got = lp.GetValue()
				}
			}
			if got == result {
				return m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

func slogTo(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }
