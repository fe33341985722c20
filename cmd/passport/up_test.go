package main

import (
	"errors"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/internal/stack"
)

// The tour printed by `passport up` names the Redis URL without its
// password (the full URL is in the 0600 demo.json) and warns about nothing.
func TestTourHidesRedisPassword(t *testing.T) {
	var b strings.Builder
	d := stack.Demo{RedisURL: "redis://:s3cret-generated-password@127.0.0.1:6390/0", DashboardLogin: "http://127.0.0.1:8090/#token=x"}
	printTour(&b, ".passport", ".passport/passport.log", d)
	out := b.String()
	if strings.Contains(out, "s3cret-generated-password") {
		t.Fatalf("password printed:\n%s", out)
	}
	if !strings.Contains(out, "redis://:REDACTED@127.0.0.1:6390/0") || !strings.Contains(out, "key-encryption-key") {
		t.Fatalf("tour lacks the redacted Redis URL or the key file:\n%s", out)
	}
	if strings.Contains(strings.ToLower(out), "unencrypted") || strings.Contains(strings.ToLower(out), "warning") {
		t.Fatalf("tour warns:\n%s", out)
	}
}

// `passport up --no-tls`, or tls: false in its config file, serves plain
// HTTP: http URLs, no CA in demo.json or in the banner, and no
// certificates made.
func TestUpNoTLS(t *testing.T) {
	plainCfg := filepath.Join(t.TempDir(), "plain.yaml")
	yaml := "proxy_port: -1\nproxy_admin_port: -1\nauthority_port: -1\nfleet_port: -1\nhealer_port: -1\ndashboard_port: -1\nbcrypt_cost: 4\ntls: false\n"
	if err := os.WriteFile(plainCfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"--no-tls", []string{"--no-tls"}},
		{"tls: false", []string{"--config", plainCfg}}, // the last --config wins
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			up := startUp(t, dir, append(tc.args, "--no-chaos", "--no-rogue")...)
			defer up.stop()
			d, err := stack.ReadDemo(dir)
			if err != nil {
				t.Fatal(err)
			}
			if d.CAFile != "" || !strings.HasPrefix(d.URLs.Proxy, "http://") || !strings.HasPrefix(d.URLs.Authority, "http://") {
				t.Fatalf("demo.json: ca_file %q, proxy %s, authority %s", d.CAFile, d.URLs.Proxy, d.URLs.Authority)
			}
			if _, err := os.Stat(filepath.Join(dir, stack.TLSDir)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("made %s: %v", stack.TLSDir, err)
			}
			banner := up.stdout.String()
			if strings.Contains(banner, "PASSPORT_CA_FILE") || strings.Contains(banner, "--cacert") || !strings.Contains(banner, "curl -i "+d.URLs.Proxy) {
				t.Errorf("banner:\n%s", banner)
			}
			if code, _ := httpDo(t, http.DefaultClient, http.MethodGet, d.URLs.Proxy+"/services", ""); code != http.StatusUnauthorized {
				t.Errorf("plain GET /services: %d, want 401", code)
			}
		})
	}
}

// TestUpOnACluster: `passport up --redis-addrs SEED` runs the demo on that
// Redis Cluster instead of starting its own, says so in its banner and
// demo.json, and commands given --data DIR reach the Cluster: `audit
// verify` checks acme's stream, `incidents` answers.
func TestUpOnACluster(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole demo")
	}
	c := redistest.StartCluster(t)
	seed := c.Addrs()[0]
	dir := filepath.Join(t.TempDir(), "data")
	up := startUp(t, dir, "--redis-addrs", seed, "--no-tls", "--no-chaos", "--no-rogue")
	defer up.stop()
	d, err := stack.ReadDemo(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(d.RedisAddrs, []string{seed}) || d.RedisURL != "" {
		t.Fatalf("demo.json: redis_url %q, redis_addrs %v; want none and [%s]", d.RedisURL, d.RedisAddrs, seed)
	}
	if _, err := os.Stat(filepath.Join(dir, "redis")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("started a private Redis on a Cluster: %v", err)
	}
	if !strings.Contains(up.stdout.String(), "redis       "+seed) {
		t.Errorf("banner does not name the seed:\n%s", up.stdout.String())
	}
	out, errOut, code := cli(t, nil, "audit", "verify", "--data", dir)
	if code != 0 {
		t.Fatalf("audit verify --data: exit %d\n%s\n%s", code, out, errOut)
	}
	// acme's stream has the demo's calls (its observer acts through MCP).
	if !strings.Contains(out, "OK "+audit.StreamKey("acme")) {
		t.Fatalf("audit verify --data did not check acme:\n%s", out)
	}
	if out, errOut, code := cli(t, nil, "incidents", "--json", "--data", dir); code != 0 {
		t.Fatalf("incidents --data: exit %d %q %q", code, out, errOut)
	}
}
