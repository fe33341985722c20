package stack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// localRedis is a private redis-server that `passport up` runs under the
// data directory, with AOF on so the audit stream survives a restart.
type localRedis struct {
	cmd  *exec.Cmd
	done chan struct{}
	url  string
}

// startRedis starts redis-server on host with a free port, its data in dir.
// appendfsync always: the demo's audit promise is that an acknowledged
// record survives a crash of Redis, and the demo's load is small.
func startRedis(ctx context.Context, host, dir string) (*localRedis, error) {
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
	args := []string{
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
	r := &localRedis{cmd: cmd, done: make(chan struct{}), url: fmt.Sprintf("redis://%s/0", net.JoinHostPort(host, strconv.Itoa(port)))}
	go func() { _ = cmd.Wait(); close(r.done) }()

	c := redis.NewClient(&redis.Options{Addr: net.JoinHostPort(host, strconv.Itoa(port)), MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
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
