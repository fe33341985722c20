// Package redistest starts a private, real redis-server for a test on a free
// loopback port and stops it when the test ends. Claims about Redis
// behaviour are tested against it, never against a mock.
//
// When redis-server is not installed the test is skipped locally with a hint,
// but fails loudly when the CI environment variable is set: CI must never go
// green by skipping the tests that matter.
package redistest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Options tunes the server.
type Options struct {
	// AOF turns on append-only persistence.
	AOF bool
	// Fsync is the appendfsync policy when AOF is on: "always" (default),
	// "everysec" or "no".
	Fsync string
	// Args are extra redis-server arguments, e.g. "--maxmemory", "10mb".
	Args []string
}

// Server is a running private redis-server.
type Server struct {
	t    testing.TB
	opts Options
	dir  string
	Port int
	// Addr is 127.0.0.1:port.
	Addr string

	// conf is a config file given first on the command line (Sentinel
	// needs one it can rewrite); sentinel starts the server as a Sentinel.
	conf     string
	sentinel bool
	// extra are arguments added at each start after opts.Args (cluster
	// settings, the current replicaof of a Sentinel-managed node).
	extra []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Binary returns the path of redis-server, or an error that says how to get it.
func Binary() (string, error) {
	if p := os.Getenv("PASSPORT_REDIS_SERVER"); p != "" {
		return p, nil
	}
	p, err := exec.LookPath("redis-server")
	if err != nil {
		return "", fmt.Errorf("redis-server not found: run `make deps` or `sudo apt-get install -y redis-server`")
	}
	return p, nil
}

// Start starts a server for t and registers its shutdown with t.Cleanup.
func Start(t testing.TB, opts ...Options) *Server {
	t.Helper()
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	requireBinary(t)
	return launch(t, o, nil)
}

// requireBinary skips t when redis-server is missing, or fails it under CI.
func requireBinary(t testing.TB) {
	t.Helper()
	if _, err := Binary(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("redistest: %v (CI is set, so this is a failure, not a skip)", err)
		}
		t.Skipf("redistest: %v", err)
	}
}

// launch starts a server on a fresh free port, or fails t.
func launch(t testing.TB, o Options, setup func(*Server) error) *Server {
	t.Helper()
	s, err := tryLaunch(t, o, setup)
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	return s
}

// tryLaunch starts a server on a fresh free port and registers its Stop
// with t.Cleanup. setup, when given, is called with the port chosen and may
// set conf, sentinel and extra. A port taken between choosing and binding
// it is retried with another one. Safe to call from several goroutines.
func tryLaunch(t testing.TB, o Options, setup func(*Server) error) (*Server, error) {
	if o.Fsync == "" {
		o.Fsync = "always"
	}
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		s := &Server{t: t, opts: o, dir: t.TempDir()}
		if s.Port, err = pickPort(); err != nil {
			return nil, err
		}
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port))
		if setup != nil {
			if err = setup(s); err != nil {
				return nil, err
			}
		}
		if err = s.start(); err == nil {
			t.Cleanup(s.Stop)
			return s, nil
		}
		if !strings.Contains(err.Error(), "in use") {
			break
		}
	}
	return nil, err
}

// URL is the redis:// URL of the server.
func (s *Server) URL() string { return "redis://" + s.Addr + "/0" }

// Client returns a new client for the server, closed when the test ends.
func (s *Server) Client() *redis.Client {
	// As internal/redisx does for every production client: the caller's
	// deadline bounds each command.
	c := redis.NewClient(&redis.Options{Addr: s.Addr, ContextTimeoutEnabled: true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}})
	s.t.Cleanup(func() { _ = c.Close() })
	return c
}

// Dir is the server's working directory (where the AOF lives).
func (s *Server) Dir() string { return s.dir }

func (s *Server) start() error {
	bin, err := Binary()
	if err != nil {
		return err
	}
	var args []string
	if s.conf != "" {
		args = append(args, s.conf)
	}
	if s.sentinel {
		args = append(args, "--sentinel")
	}
	args = append(args,
		"--port", strconv.Itoa(s.Port),
		"--bind", "127.0.0.1",
		"--dir", s.dir,
		"--daemonize", "no",
		"--protected-mode", "yes",
		"--loglevel", "warning",
		"--logfile", filepath.Join(s.dir, "redis.log"),
	)
	switch {
	case s.sentinel:
	case s.opts.AOF:
		args = append(args, "--save", "", "--appendonly", "yes", "--appendfsync", s.opts.Fsync)
	default:
		args = append(args, "--save", "", "--appendonly", "no")
	}
	args = append(args, s.opts.Args...)
	args = append(args, s.extra...)
	cmd := exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	return s.waitReady(done)
}

func (s *Server) waitReady(done <-chan struct{}) error {
	deadline := time.Now().Add(10 * time.Second)
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	defer c.Close()
	for {
		select {
		case <-done:
			return fmt.Errorf("redis-server exited at start: %s", s.logTail())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server on %s not ready after 10s: %v; log: %s", s.Addr, err, s.logTail())
		}
		// Polling a socket that is not yet listening: there is no event to
		// wait on, so back off briefly.
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *Server) logTail() string {
	f, err := os.Open(filepath.Join(s.dir, "redis.log"))
	if err != nil {
		return "(no log)"
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > 10 {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, " | ")
}

// running reports whether the server process is alive (not killed or
// stopped).
func (s *Server) running() bool {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return false
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// Kill stops the server with SIGKILL, as a crash would, and waits for it.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// Freeze stops the server with SIGSTOP: it keeps its sockets open but
// answers nothing, as a hung process or a silent network would. Thaw
// resumes it.
func (s *Server) Freeze() { s.signal(syscall.SIGSTOP) }

// Thaw resumes a frozen server (SIGCONT).
func (s *Server) Thaw() { s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig os.Signal) {
	s.mu.Lock()
	cmd := s.cmd
	s.mu.Unlock()
	if cmd != nil {
		_ = cmd.Process.Signal(sig)
	}
}

// Restart starts the server again on the same port and directory, so with
// AOF on it reloads what it had acknowledged.
func (s *Server) Restart() {
	s.t.Helper()
	if err := s.start(); err != nil {
		s.t.Fatalf("redistest: restart: %v", err)
	}
}

// Stop terminates the server; it is registered with t.Cleanup.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGCONT) // a frozen server could not act on SIGINT
	_ = cmd.Process.Signal(os.Interrupt)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// pickPort returns a loopback port that was free a moment ago.
func pickPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
