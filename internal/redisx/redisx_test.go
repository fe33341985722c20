package redisx_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/internal/netfault"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/internal/redisx"
)

func TestOptions(t *testing.T) {
	tests := []struct {
		name     string
		cfg      redisx.Config
		wantAddr string
		wantDB   int
		wantPass string
		wantErr  bool
	}{
		{name: "default", cfg: redisx.Config{}, wantAddr: "127.0.0.1:6379"},
		{name: "url with db and password", cfg: redisx.Config{URL: "redis://:s3cret@10.0.0.1:7000/3"}, wantAddr: "10.0.0.1:7000", wantDB: 3, wantPass: "s3cret"},
		{name: "addrs win", cfg: redisx.Config{URL: "redis://x:1", Addrs: []string{"a:1", "b:2"}}, wantAddr: "a:1"},
		{name: "bad url", cfg: redisx.Config{URL: "http://nope"}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o, err := tc.cfg.Options()
			if tc.wantErr {
				if err == nil {
					t.Fatal("want error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.Addrs[0] != tc.wantAddr || o.DB != tc.wantDB || o.Password != tc.wantPass {
				t.Fatalf("got addrs=%v db=%d pass=%q", o.Addrs, o.DB, o.Password)
			}
		})
	}
}

func TestRedact(t *testing.T) {
	got := redisx.Redact("redis://user:hunter2@h:1/0")
	if strings.Contains(got, "hunter2") || !strings.Contains(got, "REDACTED") {
		t.Fatalf("Redact = %q", got)
	}
}

func TestValidate(t *testing.T) {
	if err := (redisx.Config{URL: "ftp://x", PoolSize: -1}).Validate(); err == nil ||
		!strings.Contains(err.Error(), "redis.url") || !strings.Contains(err.Error(), "pool_size") {
		t.Fatalf("Validate = %v, want both problems", err)
	}
}

func TestNewAgainstRealServer(t *testing.T) {
	srv := redistest.Start(t)
	c, err := redisx.New(redisx.Config{URL: srv.URL()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := redisx.Ping(ctx, c); err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	if err := redisx.Ping(ctx, c); err == nil {
		t.Fatal("ping after kill: want error")
	}
}

// TestDeadlineIsTheCallers: against a Redis that stops answering (a relay
// that black-holes both directions, as SIGSTOP would), a command costs its
// own context deadline, not the client's 2s read timeout.
func TestDeadlineIsTheCallers(t *testing.T) {
	srv := redistest.Start(t)
	relay := netfault.Start(t, srv.Addr)
	rdb, err := redisx.New(redisx.Config{URL: "redis://" + relay.Addr() + "/0"})
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	if err := redisx.Ping(context.Background(), rdb); err != nil {
		t.Fatal(err)
	}
	relay.BlackHole(netfault.Both)
	for _, cmd := range []struct {
		name string
		run  func(ctx context.Context) error
	}{
		{"ping", func(ctx context.Context) error { return rdb.Ping(ctx).Err() }},
		{"pipeline", func(ctx context.Context) error {
			_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				p.Get(ctx, "a")
				p.Get(ctx, "b")
				return nil
			})
			return err
		}},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		start := time.Now()
		err := cmd.run(ctx)
		took := time.Since(start)
		cancel()
		if err == nil {
			t.Fatalf("%s: answered through a black hole", cmd.name)
		}
		// The client's read timeout is 2s; the deadline is 300ms.
		if took > time.Second {
			t.Fatalf("%s: took %s with a 300ms deadline (the client's read timeout won)", cmd.name, took)
		}
		t.Logf("%s: failed after %s: %v", cmd.name, took, err)
	}
}

// TestSetLogger: go-redis's own lines (here: a pool that cannot dial) go
// through the slog logger, not to stderr.
func TestSetLogger(t *testing.T) {
	var buf syncBuffer
	redisx.SetLogger(slog.New(slog.NewTextHandler(&buf, nil)))
	defer redisx.SetLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	rdb, err := redisx.New(redisx.Config{URL: "redis://" + addr + "/0", DialTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for !strings.Contains(buf.String(), "level=WARN msg=\"redis client:") {
		if ctx.Err() != nil {
			t.Fatalf("no go-redis line through slog; got %q", buf.String())
		}
		_ = rdb.Ping(ctx).Err()
	}
	t.Log(strings.TrimSpace(buf.String()))
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
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
