package stack_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/internal/stack"
)

// syncBuffer collects log output from many goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// runOwnRedis runs the stack with its own redis-server (as `passport up`
// does) in dir until stop is called; it returns the demo and the log.
func runOwnRedis(t *testing.T, dir string) (stack.Demo, *syncBuffer, func()) {
	t.Helper()
	cfg := stack.Config{DataDir: dir, ChaosInterval: -1, NoRogue: true, BcryptCost: 4}
	cfg.ProxyPort, cfg.ProxyAdminPort, cfg.AuthorityPort, cfg.FleetPort, cfg.DashboardPort, cfg.HealerPort = -1, -1, -1, -1, -1, -1
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan stack.Demo, 1)
	done := make(chan error, 1)
	go func() { done <- stack.Run(ctx, cfg, log, func(d stack.Demo) { ready <- d }) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("stack stopped with error: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("stack did not stop within 30s of cancel")
			}
		})
	}
	t.Cleanup(stop)
	select {
	case d := <-ready:
		return d, logs, stop
	case err := <-done:
		t.Fatalf("stack failed to start: %v\n%s", err, logs.String())
	case <-time.After(60 * time.Second):
		t.Fatal("stack not ready within 60s")
	}
	return stack.Demo{}, nil, nil
}

// `passport up` is secure by default: its Redis requires a generated
// password (in demo.json's redis_url; TestRedisPasswordNotOnCommandLine
// checks it is never on a command line), the signing
// keys are encrypted at rest with a generated key kept in the data
// directory, every secret file is mode 0600, a restart reuses them, and
// nothing in the output warns about security. Before the fix Redis took
// any local connection and the keys were stored in the clear, with a
// warning saying so.
func TestUpIsSecureByDefault(t *testing.T) {
	dir := t.TempDir()
	d, logs, stop := runOwnRedis(t, dir)

	u, err := url.Parse(d.RedisURL)
	if err != nil {
		t.Fatal(err)
	}
	password, ok := u.User.Password()
	if !ok || len(password) < 32 {
		t.Fatalf("demo.json redis_url %q carries no generated password", d.RedisURL)
	}
	ctx := context.Background()
	anon := redis.NewClient(&redis.Options{Addr: u.Host, MaxRetries: -1})
	defer anon.Close()
	if err := anon.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Fatalf("Redis without the password: %v, want NOAUTH", err)
	}
	if err := anon.HGetAll(ctx, "passport:authority:keys").Err(); err == nil {
		t.Fatal("signing keys readable without the password")
	}
	opts, err := redis.ParseURL(d.RedisURL)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	keys, err := rdb.HGetAll(ctx, "passport:authority:keys").Result()
	if err != nil || len(keys) < 2 {
		t.Fatalf("signing keys with the password: %d keys, %v", len(keys), err)
	}
	for kid, raw := range keys {
		var k struct {
			Enc string `json:"enc"`
		}
		if err := json.Unmarshal([]byte(raw), &k); err != nil || k.Enc != "A256GCM" {
			t.Fatalf("signing key %s stored with enc %q (%v)", kid, k.Enc, err)
		}
	}

	kek := filepath.Join(dir, stack.KeyEncryptionKeyFile)
	pw := filepath.Join(dir, stack.RedisPasswordFile)
	for _, f := range []string{kek, pw, stack.DemoFile(dir), filepath.Join(dir, "redis", "redis.conf")} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s has mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
	if b, _ := os.ReadFile(pw); strings.TrimSpace(string(b)) != password {
		t.Fatal("redis-password file differs from the URL's password")
	}
	assertNoWarnings(t, logs.String(), password)
	kekBefore, _ := os.ReadFile(kek)
	kidBefore := currentKID(t, d.URLs.Authority)
	stop()

	// A restart reuses the password, the key-encryption key and the keys.
	d2, logs2, _ := runOwnRedis(t, dir)
	u2, _ := url.Parse(d2.RedisURL)
	if p2, _ := u2.User.Password(); p2 != password {
		t.Fatal("restart made a new Redis password")
	}
	if kekAfter, _ := os.ReadFile(kek); !bytes.Equal(kekBefore, kekAfter) {
		t.Fatal("restart made a new key-encryption key")
	}
	if kid := currentKID(t, d2.URLs.Authority); kid != kidBefore {
		t.Fatalf("restart signs with %s, before with %s", kid, kidBefore)
	}
	if len(d2.Agents) == 0 || d2.Agents[0].ClientID != d.Agents[0].ClientID {
		t.Fatal("restart did not reuse the demo agents")
	}
	assertNoWarnings(t, logs2.String(), password)
}

// assertNoWarnings: no warning or error in the output, and the password
// nowhere in it.
func assertNoWarnings(t *testing.T, logs, password string) {
	t.Helper()
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
			t.Errorf("warning in the output: %s", line)
		}
	}
	if strings.Contains(logs, password) {
		t.Error("the Redis password appears in the output")
	}
}

func currentKID(t *testing.T, authorityURL string) string {
	t.Helper()
	var jwks struct {
		Keys []struct {
			Kid string `json:"kid"`
		} `json:"keys"`
	}
	resp, err := http.Get(authorityURL + "/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&jwks); err != nil {
		t.Fatal(err)
	}
	// The JWKS lists the current key first.
	if len(jwks.Keys) == 0 {
		t.Fatal("empty JWKS")
	}
	return jwks.Keys[0].Kid
}
