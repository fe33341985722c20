package authority

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/config"
	"github.com/agentpassport/passport/internal/redistest"
)

func TestDefaultConfigIsValid(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
}

// The annotated example config in examples/ loads strictly and says
// exactly the defaults.
func TestExampleConfigMatchesDefaults(t *testing.T) {
	path := filepath.Join("..", "examples", "authority.yaml")
	cfg := DefaultConfig()
	if err := config.Load(path, &cfg); err != nil {
		t.Fatalf("load %s: %v", path, err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("validate %s: %v", path, err)
	}
	def := DefaultConfig()
	def.AgentTypes = DefaultAgentTypes()
	if cfg.Listen != def.Listen || cfg.Issuer != def.Issuer || cfg.Passport != def.Passport || cfg.Keys != def.Keys ||
		!reflect.DeepEqual(cfg.Clients, def.Clients) || cfg.Reputation != def.Reputation || cfg.HTTP != def.HTTP || cfg.TLS != def.TLS || cfg.Redis.TLS != def.Redis.TLS ||
		cfg.Delegation != def.Delegation || cfg.DPoP != def.DPoP || len(cfg.TrustedIssuers) != len(def.TrustedIssuers) ||
		strings.Join(cfg.Audiences, ",") != strings.Join(def.Audiences, ",") || len(cfg.AgentTypes) != len(def.AgentTypes) {
		t.Fatalf("example config differs from the defaults:\n got %+v\nwant %+v", cfg, def)
	}
	for typ, caps := range def.AgentTypes {
		if strings.Join(cfg.AgentTypes[typ], ",") != strings.Join(caps, ",") {
			t.Fatalf("agent type %s: %v, want %v", typ, cfg.AgentTypes[typ], caps)
		}
	}
}

func TestBrokenConfig(t *testing.T) {
	cases := []struct {
		name string
		yaml string
		want []string
	}{
		{"unknown key", "listen: 127.0.0.1:8081\npassport:\n  lifetme: 5m\n", []string{"line 3", "unknown field lifetme"}},
		{"wrong type", "clients:\n  bcrypt_cost: lots\n", []string{"line 2"}},
		{"not yaml", "listen: [\n", []string{"config"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "authority.yaml")
			if err := os.WriteFile(path, []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg := DefaultConfig()
			err := config.Load(path, &cfg)
			if err == nil {
				t.Fatal("broken config loaded")
			}
			for _, w := range append(tc.want, path) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Issuer = "ftp://x"
	cfg.AdminToken = "short"
	cfg.TenantAdminTokens = map[string][]string{"Bad{Tenant}": {"a-long-enough-token-here"}, "acme": {"short"}}
	cfg.ReporterTokens = []string{"short"}
	cfg.Audiences = nil
	cfg.Passport.Lifetime = 2 * time.Hour
	cfg.Passport.Leeway = time.Minute
	cfg.Keys.Algorithm = "HS256"
	cfg.Keys.RotationInterval = time.Second
	cfg.Clients.BcryptCost = 2
	cfg.Clients.AuthFailureLimit = 0
	cfg.Clients.SourceFailureLimit = 0
	cfg.Clients.TrustedProxies = []string{"10.0.0.0/8", "not-an-address"}
	cfg.Clients.MaxConcurrentHashes = -1
	cfg.Clients.HashWait = 0
	cfg.Passport.IssueInterval = 0
	cfg.Passport.IssueBurst = 0
	cfg.Reputation.BlockBelow = 90
	cfg.AgentTypes = map[string][]string{"wizard": {"Cast Spell"}}
	cfg.HTTP.MaxBodyBytes = 10
	err := cfg.Validate()
	if err == nil {
		t.Fatal("invalid config validated")
	}
	for _, w := range []string{"issuer", "admin_token", "tenant_admin_tokens: tenant", "tenant_admin_tokens.acme[0]", "reporter_tokens[0]", "audiences",
		"passport.lifetime", "passport.leeway", "keys.algorithm", "keys.rotation_interval", "clients.bcrypt_cost",
		"clients.auth_failure_limit", "clients.source_failure_limit", "clients.trusted_proxies[1]", "clients.max_concurrent_hashes",
		"clients.hash_wait", "passport.issue_interval", "passport.issue_burst", "block_below", "agent_types.wizard", "http.max_body_bytes"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q:\n%v", w, err)
		}
	}
	if _, nerr := New(cfg, Deps{}); nerr == nil {
		t.Fatal("New accepted an invalid config")
	}
}

func TestApplyEnv(t *testing.T) {
	cfg := DefaultConfig()
	env := map[string]string{
		"PASSPORT_REDIS_URL": "redis://10.0.0.1:6379/2", "PASSPORT_ADMIN_TOKEN": "from-env-admin-token-123",
		"PASSPORT_KEY_ENCRYPTION_KEY": "kek", "PASSPORT_AUTHORITY_ISSUER": "https://auth.example",
	}
	cfg.ApplyEnv(func(k string) string { return env[k] })
	if cfg.Redis.URL != env["PASSPORT_REDIS_URL"] || cfg.AdminToken != env["PASSPORT_ADMIN_TOKEN"] ||
		cfg.Keys.EncryptionKey != "kek" || cfg.Issuer != "https://auth.example" {
		t.Fatalf("env not applied: %+v", cfg)
	}

	// PASSPORT_REPORTER_TOKEN adds to the YAML's reporter tokens; one equal
	// to the admin token is refused.
	cfg = DefaultConfig()
	cfg.ReporterTokens = []string{"yaml-reporter-token-123"}
	cfg.ApplyEnv(func(k string) string {
		return map[string]string{"PASSPORT_REPORTER_TOKEN": "env-reporter-token-456", "PASSPORT_ADMIN_TOKEN": "env-reporter-token-456"}[k]
	})
	if !slices.Equal(cfg.ReporterTokens, []string{"yaml-reporter-token-123", "env-reporter-token-456"}) {
		t.Fatalf("reporter tokens %q", cfg.ReporterTokens)
	}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "reporter_tokens[1]: the same as the admin token") {
		t.Fatalf("reporter token equal to the admin token: %v", err)
	}
}

// Run serves until the context ends, lets an in-flight request finish, and
// returns nil.
func TestRunGraceful(t *testing.T) {
	base, ctx, cancel, done := runAuthority(t, testConfig())
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Fatal("still serving after Run returned")
	}
	if !errors.Is(context.Cause(ctx), context.Canceled) {
		t.Fatal("unexpected")
	}
}

// A connection still busy when the grace period ends (here one that sent
// half a request) is cut, and Run returns nil: the drain is over, not
// failed.
func TestRunCutsWhatOutlastsTheGrace(t *testing.T) {
	cfg := testConfig()
	cfg.HTTP.ShutdownTimeout = 200 * time.Millisecond
	cfg.HTTP.ReadHeaderTimeout = time.Minute
	base, _, cancel, done := runAuthority(t, cfg)
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n")); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v, want nil once the grace period is over", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return")
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Fatal("the half-sent request's connection is still open")
	}
}

// runAuthority runs an authority of cfg on a free port and waits until it
// is ready; it returns its URL, Run's context, the cancel that stops it
// and the channel Run's result arrives on.
func runAuthority(t *testing.T, cfg Config) (string, context.Context, context.CancelFunc, chan error) {
	t.Helper()
	rs := redistest.Start(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	cfg.Issuer = base
	a, err := New(cfg, Deps{Audit: audit.Discard, Redis: rs.Client(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, ln) }()
	waitFor(t, 10*time.Second, "readyz", func() bool {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return base, ctx, cancel, done
}
