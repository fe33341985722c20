package redistest

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestStartKillRestartKeepsAOFData(t *testing.T) {
	srv := Start(t, Options{AOF: true})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := srv.Client()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("ping after kill: want error")
	}
	srv.Restart()
	got, err := c.Get(ctx, "k").Result()
	if err != nil || got != "v" {
		t.Fatalf("after restart Get = %q, %v; want v (appendfsync always)", got, err)
	}
	if v := c.ConfigGet(ctx, "appendfsync").Val()["appendfsync"]; v != "always" {
		t.Fatalf("appendfsync = %q", v)
	}
}

func TestServersArePrivate(t *testing.T) {
	a, b := Start(t), Start(t)
	if a.Addr == b.Addr {
		t.Fatal("two servers share an address")
	}
	ctx := context.Background()
	a.Client().Set(ctx, "only-a", "1", 0)
	if n := b.Client().Exists(ctx, "only-a").Val(); n != 0 {
		t.Fatal("key leaked between servers")
	}
}

func TestFreezeThaw(t *testing.T) {
	srv := Start(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr, ReadTimeout: 300 * time.Millisecond, MaxRetries: -1})
	defer c.Close()
	ctx := context.Background()
	srv.Freeze()
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("ping answered while frozen")
	}
	srv.Thaw()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("ping after thaw: %v", err)
	}
	srv.Freeze() // Stop at cleanup must not hang on a frozen server
}
