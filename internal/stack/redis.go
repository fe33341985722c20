package stack

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/internal/redisx"
)

// redisConfig is how every component of the stack reaches Redis: the URL
// alone for one node; with addrs, Cluster seeds (or sentinels, with
// master), taking from the URL only its user, password and database, as
// the commands' --redis-addrs does.
func redisConfig(url string, addrs []string, master string) (redisx.Config, error) {
	if len(addrs) == 0 {
		return redisx.Config{URL: url}, nil
	}
	rc := redisx.Config{Addrs: addrs, MasterName: master, Cluster: master == ""}
	if url != "" {
		ro, err := redis.ParseURL(url)
		if err != nil {
			return redisx.Config{}, fmt.Errorf("parse redis url %s: %w", redisx.Redact(url), err)
		}
		rc.Username, rc.Password, rc.DB = ro.Username, ro.Password, ro.DB
		rc.TLS.Enabled = strings.HasPrefix(url, "rediss://")
	}
	return rc, nil
}

// redisWhere names the Redis the stack uses, without its password, for
// errors.
func redisWhere(url string, addrs []string) string {
	if len(addrs) > 0 {
		return strings.Join(addrs, ",")
	}
	return redisx.Redact(url)
}

// localRedis is a private redis-server that `passport up` runs under the
// data directory, with AOF on so the audit stream survives a restart.
type localRedis struct {
	cmd  *exec.Cmd
	done chan struct{}
	url  string
}

// startRedis starts redis-server on host with a free port, its data in dir,
// requiring password. appendfsync always: the demo's audit promise is that
// an acknowledged record survives a crash of Redis, and the demo's load is
// small. The password goes into a 0600 config file, never onto the command
// line, where any local user could read it (ps, /proc/PID/cmdline).
func startRedis(ctx context.Context, host, dir, password string) (*localRedis, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("redis-server not found: run `make deps` (installs it with apt-get) or `sudo apt-get install -y redis-server`, or set PASSPORT_REDIS_URL to a Redis 7 server")
	}
	// redis-server changes into --dir before it opens --logfile, so a
	// relative path would be resolved twice.
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("redis data dir: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("redis data dir: %w", err)
	}
	port, err := freePort(host)
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "redis.conf")
	if err := writeFile0600(conf, []byte("# written by passport up at every start\nrequirepass "+password+"\n")); err != nil {
		return nil, fmt.Errorf("redis config: %w", err)
	}
	args := []string{
		conf,
		"--bind", host,
		"--port", strconv.Itoa(port),
		"--dir", dir,
		"--appendonly", "yes",
		"--appendfsync", "always",
		"--save", "",
		"--daemonize", "no",
		"--protected-mode", "yes",
		"--logfile", filepath.Join(dir, "redis.log"),
	}
	// Not CommandContext: the stack stops Redis itself, after every
	// component has flushed its last audit records.
	cmd := exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start redis-server: %w", err)
	}
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	u := url.URL{Scheme: "redis", User: url.UserPassword("", password), Host: addr, Path: "/0"}
	r := &localRedis{cmd: cmd, done: make(chan struct{}), url: u.String()}
	go func() { _ = cmd.Wait(); close(r.done) }()

	c := redis.NewClient(&redis.Options{Addr: addr, Password: password, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-r.done:
			return nil, fmt.Errorf("redis-server exited at start; see %s", filepath.Join(dir, "redis.log"))
		case <-ctx.Done():
			r.stop()
			return nil, ctx.Err()
		default:
		}
		pctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		err := c.Ping(pctx).Err()
		cancel()
		if err == nil {
			return r, nil
		}
		if time.Now().After(deadline) {
			r.stop()
			return nil, fmt.Errorf("redis-server not ready after 10s: %w", err)
		}
		// The server is starting and not yet listening: nothing to wait on
		// but the socket itself.
		time.Sleep(20 * time.Millisecond)
	}
}

// stop asks Redis to exit (SIGTERM flushes the AOF) and waits for it.
func (r *localRedis) stop() {
	if r == nil || r.cmd.Process == nil {
		return
	}
	_ = r.cmd.Process.Signal(os.Interrupt)
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
}

func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("find a free port on %s: %w", host, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// writeFile0600 writes b to path readable by its owner only, also when the
// file existed with a wider mode.
func writeFile0600(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// localSecret returns the secret kept in path, creating it (32 random
// bytes, base64url, mode 0600) on first use, so a restart reuses it. A
// secret file readable by others is narrowed to 0600.
func localSecret(path string) (string, error) {
	for range 2 {
		b, err := os.ReadFile(path)
		if err == nil {
			s := strings.TrimSpace(string(b))
			if len(s) < 32 {
				return "", fmt.Errorf("%s: too short to be a secret written by passport up; remove it to make a new one", path)
			}
			if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
				if err := os.Chmod(path, 0o600); err != nil {
					return "", fmt.Errorf("%s: %w", path, err)
				}
			}
			return s, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			continue // another `passport up` made it first: read theirs
		}
		if err != nil {
			return "", err
		}
		secret := rand.Text() + rand.Text()
		_, werr := f.WriteString(secret + "\n")
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			_ = os.Remove(path)
			return "", fmt.Errorf("%s: %w", path, werr)
		}
		return secret, nil
	}
	return "", fmt.Errorf("%s: cannot read or create", path)
}
