package stack

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: not PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The demo's CA and server certificate: made once with 0600 keys, kept
// across starts while they serve, the server certificate alone reissued
// when it nears its expiry or does not name the host, both when the CA
// itself expires.
func TestEnsureTLS(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	now := time.Now()
	d, err := ensureTLS(dir, "127.0.0.1", now)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{CAKeyFile, ServerKeyFile} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v, mode %v; want 0600", f, err, fi.Mode().Perm())
		}
	}
	ca, srv := readCert(t, d.caFile), readCert(t, d.certFile)
	if !ca.IsCA || ca.NotAfter.Sub(now) < 360*24*time.Hour {
		t.Errorf("CA: IsCA %v, valid until %v", ca.IsCA, ca.NotAfter)
	}
	if got := srv.NotAfter.Sub(now); got < 89*24*time.Hour || got > 91*24*time.Hour {
		t.Errorf("server certificate valid for %v, want about 90 days", got)
	}
	for _, h := range []string{"127.0.0.1", "::1", "localhost"} {
		if err := srv.VerifyHostname(h); err != nil {
			t.Errorf("server certificate: %v", err)
		}
	}
	if _, err := srv.Verify(x509.VerifyOptions{Roots: d.pool, DNSName: "localhost"}); err != nil {
		t.Errorf("server certificate does not chain to the CA: %v", err)
	}
	if err := srv.VerifyHostname("example.com"); err == nil {
		t.Error("server certificate names example.com")
	}

	files := func() map[string][]byte {
		m := map[string][]byte{}
		for _, f := range []string{CACertFile, CAKeyFile, ServerCertFile, ServerKeyFile} {
			b, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				t.Fatal(err)
			}
			m[f] = b
		}
		return m
	}
	before := files()

	cases := []struct {
		name       string
		host       string
		at         time.Time
		keepCA     bool
		keepServer bool
	}{
		{"restart", "127.0.0.1", now.Add(time.Minute), true, true},
		{"localhost is named already", "localhost", now.Add(time.Minute), true, true},
		{"another host", "demo.internal", now.Add(time.Minute), true, false},
		{"server certificate expiring within 7 days", "127.0.0.1", now.Add(85 * 24 * time.Hour), true, false},
		{"CA expiring", "127.0.0.1", now.Add(360 * 24 * time.Hour), false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Each case starts from the first run's files.
			for f, b := range before {
				if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := ensureTLS(dir, tc.host, tc.at); err != nil {
				t.Fatal(err)
			}
			after := files()
			if got := bytes.Equal(after[CACertFile], before[CACertFile]) && bytes.Equal(after[CAKeyFile], before[CAKeyFile]); got != tc.keepCA {
				t.Errorf("CA kept %v, want %v", got, tc.keepCA)
			}
			if got := bytes.Equal(after[ServerCertFile], before[ServerCertFile]); got != tc.keepServer {
				t.Errorf("server certificate kept %v, want %v", got, tc.keepServer)
			}
			srv := readCert(t, filepath.Join(dir, ServerCertFile))
			if err := srv.VerifyHostname(tc.host); err != nil {
				t.Errorf("server certificate: %v", err)
			}
			ca := readCert(t, filepath.Join(dir, CACertFile))
			if err := srv.CheckSignatureFrom(ca); err != nil {
				t.Errorf("server certificate not signed by the CA in ca.crt: %v", err)
			}
		})
	}

	t.Run("a server key that does not match is replaced", func(t *testing.T) {
		for f, b := range before {
			_ = os.WriteFile(filepath.Join(dir, f), b, 0o600)
		}
		// The CA's key in place of the server's.
		if err := os.WriteFile(filepath.Join(dir, ServerKeyFile), before[CAKeyFile], 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := ensureTLS(dir, "127.0.0.1", now); err != nil {
			t.Fatal(err)
		}
		if _, _, err := loadPair(filepath.Join(dir, ServerCertFile), filepath.Join(dir, ServerKeyFile)); err != nil {
			t.Errorf("after ensureTLS: %v", err)
		}
	})
}

// On an unspecified address the certificate names the machine: its name
// and every address it can be reached at, beside loopback.
func TestCertHosts(t *testing.T) {
	if got := certHosts("127.0.0.1"); !slices.Equal(got, []string{"127.0.0.1", "::1", "localhost"}) {
		t.Errorf("certHosts(127.0.0.1) = %v", got)
	}
	if got := certHosts("10.1.2.3"); !slices.Equal(got, []string{"127.0.0.1", "::1", "localhost", "10.1.2.3"}) {
		t.Errorf("certHosts(10.1.2.3) = %v", got)
	}
	got := certHosts("0.0.0.0")
	name, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"localhost", "0.0.0.0", name} // 0.0.0.0: the URLs the stack's clients use
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLinkLocalUnicast() {
			want = append(want, n.IP.String())
		}
	}
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("certHosts(0.0.0.0) = %v, lacks %s", got, w)
		}
	}
}
