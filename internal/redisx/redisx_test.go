package redisx_test

import (
	"context"
	"strings"
	"testing"
	"time"

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
