package stack

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The private Redis gets its password from a 0600 config file, never from
// its command line, which every local user can read (ps, /proc/PID/cmdline
// before redis-server retitles itself).
func TestRedisPasswordNotOnCommandLine(t *testing.T) {
	dir := t.TempDir()
	pw, err := localSecret(filepath.Join(dir, RedisPasswordFile))
	if err != nil {
		t.Fatal(err)
	}
	r, err := startRedis(context.Background(), "127.0.0.1", filepath.Join(dir, "redis"), pw)
	if err != nil {
		t.Fatal(err)
	}
	defer r.stop()
	if slices.ContainsFunc(r.cmd.Args, func(a string) bool { return strings.Contains(a, pw) }) {
		t.Fatalf("password on the command line: %q", r.cmd.Args)
	}
	conf := filepath.Join(dir, "redis", "redis.conf")
	b, err := os.ReadFile(conf)
	if err != nil || !strings.Contains(string(b), "requirepass "+pw) {
		t.Fatalf("config: %v", err)
	}
	if fi, _ := os.Stat(conf); fi.Mode().Perm() != 0o600 {
		t.Fatalf("redis.conf mode %v", fi.Mode().Perm())
	}
}

// localSecret makes a secret once, 0600, and returns the same one after;
// a file readable by others is narrowed to 0600; a short one is refused.
func TestLocalSecret(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "s")
	a, err := localSecret(p)
	if err != nil || len(a) < 32 {
		t.Fatalf("%q %v", a, err)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode().Perm())
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := localSecret(p)
	if err != nil || b != a {
		t.Fatalf("second read %q %v", b, err)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode after narrowing %v", fi.Mode().Perm())
	}
	if err := os.WriteFile(p, []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := localSecret(p); err == nil {
		t.Fatal("a short secret accepted")
	}
}
