package audit_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
)

func TestProxyACLCanAppendButNotDeleteTrimOrReconfigure(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	admin := srv.Client()
	ctx := context.Background()
	args := []any{"ACL", "SETUSER", "passport-proxy", "on", ">proxy-secret"}
	for _, r := range strings.Fields(audit.ProxyACLRules) {
		args = append(args, r)
	}
	if err := admin.Do(ctx, args...).Err(); err != nil {
		t.Fatalf("ACL SETUSER: %v", err)
	}
	proxy := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "passport-proxy", Password: "proxy-secret"})
	t.Cleanup(func() { _ = proxy.Close() })

	s := newStream(t, proxy, audit.StreamConfig{CheckpointEvery: 3})
	for i := range 10 {
		if _, err := s.Append(ctx, decision("acme", i)); err != nil {
			t.Fatalf("Append as proxy user: %v", err)
		}
	}
	if d := s.Durability(); d.Level != audit.DurabilityAlways {
		t.Errorf("durability as proxy user = %s, want always (CONFIG GET allowed)", d)
	}
	// Run's shutdown seals the chain and lists the tenant in the registry.
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(runCtx) }()
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if ok, err := admin.SIsMember(ctx, audit.TenantsKey, "acme").Result(); err != nil || !ok {
		t.Errorf("tenant registry as proxy user: member %v, %v", ok, err)
	}
	mustOK(t, verify(t, admin, "acme", audit.VerifyOptions{}))

	key := audit.StreamKey("acme")
	ids, _ := admin.XRange(ctx, key, "-", "+").Result()
	denied := []struct {
		name string
		cmd  []any
	}{
		{"xdel", []any{"XDEL", key, ids[0].ID}},
		{"xtrim", []any{"XTRIM", key, "MAXLEN", "0"}},
		{"del", []any{"DEL", key}},
		{"unlink", []any{"UNLINK", key}},
		{"config set", []any{"CONFIG", "SET", "appendonly", "no"}},
		{"flushall", []any{"FLUSHALL"}},
		{"xdel inside a script", []any{"EVAL", "return redis.call('XDEL', KEYS[1], ARGV[1])", "1", key, ids[0].ID}},
		{"overwrite writer key", []any{"HSET", audit.WritersKey, s.WriterID(), "AAAA"}},
		{"overwrite head outside the script", []any{"HDEL", audit.HeadsKey("acme"), s.WriterID()}},
		{"xadd to a non-audit key", []any{"XADD", "passport:{t:acme}:agent:a1", "*", "x", "1"}},
		{"write an agent hash", []any{"HSET", "passport:{t:acme}:agent:a1", "blocked", "0"}},
		{"remove a tenant from the registry", []any{"SREM", audit.TenantsKey, "acme"}},
		{"set outside the dpop keys", []any{"SET", "passport:{t:acme}:agent:a1", "x"}},
		{"delete a dpop replay record", []any{"DEL", "passport:dpop:jti:abc"}},
	}
	// DPoP at the proxy: a proof's replay record (SET NX with an expiry)
	// and the shared nonce secret (SET NX).
	if err := proxy.SetNX(ctx, "passport:dpop:jti:abc", "1", time.Minute).Err(); err != nil {
		t.Errorf("dpop replay record as proxy user: %v", err)
	}
	if err := proxy.SetArgs(ctx, "passport:proxy:dpop_nonce_secret", "s", redis.SetArgs{Mode: "NX"}).Err(); err != nil {
		t.Errorf("dpop nonce secret as proxy user: %v", err)
	}
	for _, d := range denied {
		err := proxy.Do(ctx, d.cmd...).Err()
		// Redis answers NOPERM, or for a script "can't run this command".
		if err == nil || !(strings.Contains(err.Error(), "NOPERM") || strings.Contains(err.Error(), "can't run this command")) {
			t.Errorf("%s as proxy user: err = %v, want NOPERM", d.name, err)
		}
	}
	if n, _ := admin.XLen(ctx, key).Result(); n != int64(len(ids)) {
		t.Errorf("stream changed: %d entries, had %d", n, len(ids))
	}
}

func TestCheckDurability(t *testing.T) {
	cases := []struct {
		name string
		opts redistest.Options
		want string
	}{
		{"aof always", redistest.Options{AOF: true, Fsync: "always"}, audit.DurabilityAlways},
		{"aof everysec", redistest.Options{AOF: true, Fsync: "everysec"}, audit.DurabilityEverysec},
		{"no aof", redistest.Options{}, audit.DurabilityOff},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := redistest.Start(t, tc.opts)
			d := audit.CheckDurability(context.Background(), srv.Client())
			if d.Level != tc.want {
				t.Errorf("level = %s, want %s", d, tc.want)
			}
			s := newStream(t, srv.Client(), audit.StreamConfig{})
			if s.Durability().Level != tc.want {
				t.Errorf("stream durability = %s", s.Durability())
			}
		})
	}
	t.Run("config refused by acl", func(t *testing.T) {
		srv := redistest.Start(t, redistest.Options{AOF: true})
		ctx := context.Background()
		if err := srv.Client().Do(ctx, "ACL", "SETUSER", "noconfig", "on", ">pw", "~*", "+@all", "-config").Err(); err != nil {
			t.Fatal(err)
		}
		c := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "noconfig", Password: "pw"})
		defer c.Close()
		d := audit.CheckDurability(ctx, c)
		if d.Level != audit.DurabilityUnknown || d.Err == nil {
			t.Errorf("level = %s, want unknown with an error", d)
		}
		if d.Meets(audit.DurabilityEverysec) || !d.Meets("") {
			t.Error("unknown must meet only the empty requirement")
		}
	})
}
