// Package redisx is the one Redis connection layer of Agent Passport. It
// builds a go-redis universal client, so the same configuration reaches a
// single node, a Sentinel-managed primary or a Redis Cluster.
package redisx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/agentpassport/passport/internal/tlsx"
)

// DefaultURL is used when neither the config nor PASSPORT_REDIS_URL names a
// Redis server.
const DefaultURL = "redis://127.0.0.1:6379/0"

// Config says how to reach Redis. Either URL, or Addrs (with MasterName for
// Sentinel; more than one address without MasterName, or Cluster, means
// Cluster).
type Config struct {
	// URL is a redis:// or rediss:// URL. Default DefaultURL, or the value
	// of PASSPORT_REDIS_URL.
	URL string `yaml:"url"`
	// Addrs lists host:port seeds for Sentinel or Cluster. Overrides URL.
	Addrs []string `yaml:"addrs"`
	// MasterName selects Sentinel mode.
	MasterName string `yaml:"master_name"`
	// Cluster selects Cluster mode even with a single seed address (one
	// service name in front of the nodes); with one address and without
	// it, the address is taken for a single node. Default false.
	Cluster bool `yaml:"cluster"`
	// Username and Password authenticate (Redis ACL). Default none.
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// DB selects the database (single node and Sentinel only). Default 0.
	DB int `yaml:"db"`
	// PoolSize is connections per node. Default 10 per CPU (go-redis).
	PoolSize int `yaml:"pool_size"`
	// DialTimeout, ReadTimeout, WriteTimeout. Defaults 2s, 2s, 2s. They
	// bound commands whose context has no deadline; a context deadline
	// always wins (ContextTimeoutEnabled).
	DialTimeout  time.Duration `yaml:"dial_timeout"`
	ReadTimeout  time.Duration `yaml:"read_timeout"`
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// TLS verifies Redis over TLS: on with a rediss:// URL, or with
	// tls.enabled (the way to say it for addrs). Default: the system's
	// roots and the URL's host name.
	TLS TLS `yaml:"tls"`
}

// TLS is the redis.tls block: a CA bundle, an optional client certificate
// (Redis tls-auth-clients) and an optional server name.
type TLS struct {
	// Enabled turns TLS on for addrs (Sentinel, Cluster). Default false;
	// a rediss:// URL turns it on by itself.
	Enabled     bool `yaml:"enabled"`
	tlsx.Client `yaml:",inline"`
}

// tlsOn reports whether connections use TLS.
func (c Config) tlsOn() bool {
	if c.TLS.Enabled {
		return true
	}
	return len(c.Addrs) == 0 && strings.HasPrefix(c.URL, "rediss://")
}

// Validate reports every problem with the configuration.
func (c Config) Validate() error {
	var errs []error
	if len(c.Addrs) == 0 && c.URL != "" {
		if ro, err := redis.ParseURL(c.URL); err != nil {
			errs = append(errs, fmt.Errorf("redis.url: %w", err))
		} else if ro.TLSConfig != nil && ro.TLSConfig.InsecureSkipVerify {
			// Fail closed: an unverified server could be anyone.
			errs = append(errs, errors.New("redis.url: skip_verify turns certificate checks off; name the CA in redis.tls.ca_file instead"))
		}
	}
	if !c.TLS.IsZero() && !c.tlsOn() {
		errs = append(errs, errors.New("redis.tls: set, but TLS is off: use a rediss:// URL (or tls.enabled with addrs)"))
	}
	if err := c.TLS.Validate("redis.tls"); err != nil {
		errs = append(errs, err)
	}
	if c.PoolSize < 0 {
		errs = append(errs, errors.New("redis.pool_size: must not be negative"))
	}
	if c.Cluster && c.MasterName != "" {
		errs = append(errs, errors.New("redis.cluster: a Sentinel primary (redis.master_name) is not a Cluster"))
	}
	return errors.Join(errs...)
}

// Options turns the configuration into go-redis universal options.
func (c Config) Options() (*redis.UniversalOptions, error) {
	o := &redis.UniversalOptions{
		Addrs:         c.Addrs,
		MasterName:    c.MasterName,
		IsClusterMode: c.Cluster,
		Username:      c.Username,
		Password:      c.Password,
		DB:            c.DB,
		PoolSize:      c.PoolSize,
		DialTimeout:   orDefault(c.DialTimeout, 2*time.Second),
		ReadTimeout:   orDefault(c.ReadTimeout, 2*time.Second),
		WriteTimeout:  orDefault(c.WriteTimeout, 2*time.Second),
		// The caller's deadline bounds every command: without this, go-redis
		// replaces it with ReadTimeout, so a hung Redis would cost a call
		// 2s whatever deadline the code set (a 500ms revocation check, a
		// 1s /readyz ping).
		ContextTimeoutEnabled: true,
		// Redis Enterprise's maintenance notifications: nothing here uses
		// them, and the fallback from a server without them writes the
		// shared options unguarded, a data race between a client and the
		// connections it hands out (Client.Conn, used by audit.Tail).
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	if len(c.Addrs) == 0 {
		u := c.URL
		if u == "" {
			u = DefaultURL
		}
		ro, err := redis.ParseURL(u)
		if err != nil {
			return nil, fmt.Errorf("parse redis url %s: %w", Redact(u), err)
		}
		o.Addrs = []string{ro.Addr}
		o.DB = ro.DB
		if o.Username == "" {
			o.Username = ro.Username
		}
		if o.Password == "" {
			o.Password = ro.Password
		}
	}
	if c.tlsOn() {
		if err := c.TLS.Validate("redis.tls"); err != nil {
			return nil, err
		}
		tc, err := c.TLS.Client.Config(tlsx.Options{Name: "redis"})
		if err != nil {
			return nil, fmt.Errorf("redis tls: %w", err)
		}
		// Without a pinned name, each node is checked against the host
		// it is dialled at (crypto/tls fills it in), which is what a
		// Cluster's announced node addresses need.
		o.TLSConfig = tc
	}
	return o, nil
}

// New opens a universal client. It does not contact Redis; use Ping.
//
// A Cluster client also reloads the slot map whenever a command fails
// without a Redis reply (refused, reset, timed out) or a connection to a
// node cannot be dialled: go-redis otherwise reloads only on MOVED or once a
// minute, so after a failover it would keep sending a dead primary's slots,
// and subscriptions to channels in them, to the dead primary for up to a
// minute.
func New(c Config) (redis.UniversalClient, error) {
	o, err := c.Options()
	if err != nil {
		return nil, err
	}
	u := redis.NewUniversalClient(o)
	if cc, ok := u.(*redis.ClusterClient); ok {
		h := reloadOnNodeError{cc}
		cc.AddHook(h)
		// Pub/sub connections are dialled by the node clients, outside
		// the cluster client's command hooks.
		cc.OnNewNode(func(n *redis.Client) { n.AddHook(h) })
	}
	return u, nil
}

// reloadOnNodeError asks a Cluster client for a fresh slot map when a node
// did not answer. The reload is asynchronous and coalesced by go-redis (at
// most one every 200 ms), so a burst of failures costs one CLUSTER SLOTS.
type reloadOnNodeError struct{ c *redis.ClusterClient }

func (h reloadOnNodeError) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := next(ctx, network, addr)
		if err != nil {
			h.c.ReloadState(ctx)
		}
		return conn, err
	}
}

func (h reloadOnNodeError) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		h.check(ctx, err)
		return err
	}
}

func (h reloadOnNodeError) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		h.check(ctx, err)
		return err
	}
}

func (h reloadOnNodeError) check(ctx context.Context, err error) {
	if nodeUnreachable(err) {
		h.c.ReloadState(ctx)
	}
}

// nodeUnreachable reports whether err means a node gave no answer (network
// error, closed connection, or the caller's deadline, which is how a
// black-holed node shows) or the cluster refused for a failed node
// (CLUSTERDOWN), as opposed to a reply such as redis.Nil or WRONGTYPE.
func nodeUnreachable(err error) bool {
	if err == nil {
		return false
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		return strings.HasPrefix(rerr.Error(), "CLUSTERDOWN")
	}
	return true
}

// Ping checks that Redis answers within the context's deadline.
func Ping(ctx context.Context, c redis.UniversalClient) error {
	if err := c.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("ping redis: %w", err)
	}
	return nil
}

// Redact removes the password from a Redis URL so it can be logged.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		if strings.Contains(raw, "@") {
			return "redis://REDACTED"
		}
		return raw
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "REDACTED")
	}
	return u.String()
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// SetLogger sends go-redis's own log lines (failed dials, reconnects,
// pool trouble) to log at warn level, instead of the library's default of
// the standard logger on stderr. The library's logger is global, so this
// applies to every client of the process.
func SetLogger(log *slog.Logger) { redis.SetLogger(slogLogger{log}) }

type slogLogger struct{ log *slog.Logger }

// Printf logs one go-redis line. The message is the format string (a
// constant of the library), so a rate-limiting handler groups repeats of
// one event however their values differ; the values go in "detail".
func (l slogLogger) Printf(ctx context.Context, format string, v ...any) {
	if ctx == nil {
		ctx = context.Background()
	}
	l.log.WarnContext(ctx, "redis client: "+strings.TrimPrefix(format, "redis: "), "detail", fmt.Sprintf(format, v...))
}
