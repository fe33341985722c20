package redisx_test

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/internal/redisx"
	"github.com/agentpassport/passport/internal/tlstest"
	"github.com/agentpassport/passport/internal/tlsx"
)

// tlsRedis starts a real redis-server that also listens with TLS on a
// second free port, with leaf as its certificate and ca verifying client
// certificates (authClients: no, optional or yes). It returns host:port of
// the TLS port.
func tlsRedis(t *testing.T, ca *tlstest.CA, leaf *tlstest.Leaf, authClients string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	redistest.Start(t, redistest.Options{Args: []string{
		"--tls-port", strconv.Itoa(port),
		"--tls-cert-file", leaf.CertFile, "--tls-key-file", leaf.KeyFile,
		"--tls-ca-cert-file", ca.File, "--tls-auth-clients", authClients,
	}})
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

func ping(cfg redisx.Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	c, err := redisx.New(cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Set(ctx, "tls", "yes", 0).Err(); err != nil {
		return err
	}
	if v, err := c.Get(ctx, "tls").Result(); err != nil || v != "yes" {
		return fmt.Errorf("get = %q, %v", v, err)
	}
	return nil
}

func TestRedissAgainstRealServer(t *testing.T) {
	ca := tlstest.NewCA(t, "redis CA")
	other := tlstest.NewCA(t, "another CA")
	byIP := tlsRedis(t, ca, ca.Server("127.0.0.1"), "no")
	byName := tlsRedis(t, ca, ca.Server("redis.internal"), "yes")
	now := time.Now()
	expired := tlsRedis(t, ca, ca.Issue(tlstest.Options{NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)}, "127.0.0.1"), "no")
	client := ca.Issue(tlstest.Options{Client: true}, "proxy-1")
	stranger := other.Issue(tlstest.Options{Client: true}, "proxy-1")

	cases := []struct {
		name    string
		cfg     redisx.Config
		wantErr string // "" for success
	}{
		{"rediss with the CA", redisx.Config{URL: "rediss://" + byIP + "/0", TLS: redisx.TLS{Client: tlsx.Client{CAFile: ca.File}}}, ""},
		{"system roots do not know a private CA", redisx.Config{URL: "rediss://" + byIP + "/0"}, "certificate"},
		{"another CA", redisx.Config{URL: "rediss://" + byIP + "/0", TLS: redisx.TLS{Client: tlsx.Client{CAFile: other.File}}}, "certificate"},
		{"expired server certificate", redisx.Config{URL: "rediss://" + expired + "/0", TLS: redisx.TLS{Client: tlsx.Client{CAFile: ca.File}}}, "expired"},
		{"plain redis:// to the TLS port", redisx.Config{URL: "redis://" + byIP + "/0", TLS: redisx.TLS{Client: tlsx.Client{CAFile: ca.File}}}, "TLS is off"},
		{"skip_verify is refused", redisx.Config{URL: "rediss://" + byIP + "/0?skip_verify=true"}, "skip_verify"},
		{"wrong name", redisx.Config{URL: "rediss://" + byName + "/0", TLS: redisx.TLS{Client: tlsx.Client{CAFile: ca.File,
			CertFile: client.CertFile, KeyFile: client.KeyFile}}}, "127.0.0.1"},
		{"pinned name and client certificate", redisx.Config{URL: "rediss://" + byName + "/0", TLS: redisx.TLS{Client: tlsx.Client{CAFile: ca.File,
			ServerName: "redis.internal", CertFile: client.CertFile, KeyFile: client.KeyFile}}}, ""},
		{"no client certificate where Redis requires one", redisx.Config{URL: "rediss://" + byName + "/0", TLS: redisx.TLS{Client: tlsx.Client{CAFile: ca.File,
			ServerName: "redis.internal"}}}, "certificate"},
		{"client certificate of another CA", redisx.Config{URL: "rediss://" + byName + "/0", TLS: redisx.TLS{Client: tlsx.Client{CAFile: ca.File,
			ServerName: "redis.internal", CertFile: stranger.CertFile, KeyFile: stranger.KeyFile}}}, "certificate"},
		{"addrs with tls.enabled", redisx.Config{Addrs: []string{byIP}, TLS: redisx.TLS{Enabled: true, Client: tlsx.Client{CAFile: ca.File}}}, ""},
		{"addrs with a CA but TLS off", redisx.Config{Addrs: []string{byIP}, TLS: redisx.TLS{Client: tlsx.Client{CAFile: ca.File}}}, "TLS is off"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := ping(tc.cfg)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("want success, got %v", err)
			case tc.wantErr != "" && err == nil:
				t.Fatalf("want an error about %q, got success", tc.wantErr)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Fatalf("error %v, want one about %q", err, tc.wantErr)
			}
		})
	}
}
