package main

import (
	"crypto/tls"
	"net/http"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/pflag"

	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/config"
	"github.com/agentpassport/passport/internal/redisx"
	"github.com/agentpassport/passport/internal/stack"
	"github.com/agentpassport/passport/internal/tlsx"
)

// firstNonEmpty returns the first value that is not "": settings resolved
// in order of precedence (flag, demo.json, environment, file, default).
func firstNonEmpty(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// tlsFlags are the serving TLS flags of every server subcommand.
type tlsFlags struct{ cert, key string }

func (f *tlsFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.cert, "tls-cert", "", "serve TLS with this PEM certificate chain, reloaded when it changes (default $PASSPORT_TLS_CERT_FILE, or tls.cert_file)")
	fs.StringVar(&f.key, "tls-key", "", "the certificate's PEM private key (default $PASSPORT_TLS_KEY_FILE, or tls.key_file)")
}

// apply overrides the YAML's tls block with the environment
// (PASSPORT_TLS_CERT_FILE, PASSPORT_TLS_KEY_FILE), then the flags.
func (f tlsFlags) apply(a *app, dst *tlsx.Server) {
	env := config.Env(a.getenv)
	env.String("PASSPORT_TLS_CERT_FILE", &dst.CertFile)
	env.String("PASSPORT_TLS_KEY_FILE", &dst.KeyFile)
	if f.cert != "" {
		dst.CertFile = f.cert
	}
	if f.key != "" {
		dst.KeyFile = f.key
	}
}

// caFile is the CA bundle this process trusts for the TLS services it
// calls (authority, proxy, healer, witness): --ca-file, else
// PASSPORT_CA_FILE, else the ca_file of the demo.json in --data DIR (a
// `passport up` serving TLS with its own CA); "" means the system's roots.
func (a *app) caFile() string {
	return firstNonEmpty(a.caFileFlag, a.getenv("PASSPORT_CA_FILE"), a.demoCAFile())
}

// demoCAFile is the ca_file of DIR/demo.json for a command given --data
// DIR, "" without one. An unreadable demo.json gives "": the command
// reads it itself and says what is wrong.
func (a *app) demoCAFile() string {
	if a.dataDir == "" {
		return ""
	}
	d, err := stack.ReadDemo(a.dataDir)
	if err != nil {
		return ""
	}
	return d.CAFile
}

// demoRedisSeeds is the demo.json in --data DIR when it names Redis seeds
// (redis_addrs), else nil.
func (a *app) demoRedisSeeds() *stack.Demo {
	if a.dataDir == "" {
		return nil
	}
	d, err := stack.ReadDemo(a.dataDir)
	if err != nil || len(d.RedisAddrs) == 0 {
		return nil
	}
	return &d
}

// httpClient is a client with timeout that trusts caFile.
func (a *app) httpClient(timeout time.Duration) (*http.Client, error) {
	return tlsx.HTTPClient(a.caFile(), timeout)
}

// clientTLS verifies the TLS services this process calls with caFile; nil
// (the system's roots) when none is set.
func (a *app) clientTLS() (*tls.Config, error) {
	if a.caFile() == "" {
		return nil, nil
	}
	return tlsx.Client{CAFile: a.caFile()}.Config(tlsx.Options{})
}

// clientOptions are the authority client's options: its HTTP client
// trusts caFile.
func (a *app) clientOptions() (client.Options, error) {
	hc, err := a.httpClient(10 * time.Second)
	if err != nil {
		return client.Options{}, err
	}
	return client.Options{HTTPClient: hc}, nil
}

// redisEnv completes rc from the command line and the environment:
// Sentinel or Cluster seeds (redisSeeds), then TLS (redisTLS).
func (a *app) redisEnv(rc *redisx.Config) {
	a.redisSeeds(rc)
	a.redisTLS(rc)
}

// redisSeeds applies --redis-addrs (PASSPORT_REDIS_ADDRS) and
// --redis-master (PASSPORT_REDIS_MASTER): the addresses replace the URL's
// (its user, password and database still apply); with a master name they
// are sentinels, without one Cluster seeds (one seed is enough). Between
// the flags and the environment come the redis_addrs and redis_master of
// the demo.json in --data DIR, of a `passport up` on a Cluster or Sentinel
// set.
func (a *app) redisSeeds(rc *redisx.Config) {
	addrs := a.redisAddrs
	master := firstNonEmpty(a.redisMaster, a.getenv("PASSPORT_REDIS_MASTER"), rc.MasterName)
	if addrs == "" {
		if d := a.demoRedisSeeds(); d != nil {
			addrs, master = strings.Join(d.RedisAddrs, ","), d.RedisMaster
		}
	}
	if addrs == "" {
		addrs = a.getenv("PASSPORT_REDIS_ADDRS")
	}
	if addrs == "" {
		return
	}
	rc.Addrs = nil
	for _, s := range strings.Split(addrs, ",") {
		if s = strings.TrimSpace(s); s != "" {
			rc.Addrs = append(rc.Addrs, s)
		}
	}
	rc.MasterName = master
	rc.Cluster = rc.MasterName == ""
	if rc.URL != "" {
		if ro, err := redis.ParseURL(rc.URL); err == nil {
			rc.Username = firstNonEmpty(rc.Username, ro.Username)
			rc.Password = firstNonEmpty(rc.Password, ro.Password)
			if rc.DB == 0 {
				rc.DB = ro.DB
			}
			rc.TLS.Enabled = rc.TLS.Enabled || strings.HasPrefix(rc.URL, "rediss://")
		}
	}
}

// redisTLS completes rc's TLS block from the environment when it uses TLS
// (a rediss:// URL or tls.enabled): PASSPORT_REDIS_CA_FILE, else the
// file's ca_file, else caFile; PASSPORT_REDIS_CERT_FILE and
// PASSPORT_REDIS_KEY_FILE for a client certificate.
func (a *app) redisTLS(rc *redisx.Config) {
	if !rc.TLS.Enabled && (len(rc.Addrs) > 0 || !strings.HasPrefix(rc.URL, "rediss://")) {
		return
	}
	env := config.Env(a.getenv)
	env.String("PASSPORT_REDIS_CA_FILE", &rc.TLS.CAFile)
	if rc.TLS.CAFile == "" {
		rc.TLS.CAFile = a.caFile()
	}
	env.String("PASSPORT_REDIS_CERT_FILE", &rc.TLS.CertFile)
	env.String("PASSPORT_REDIS_KEY_FILE", &rc.TLS.KeyFile)
}

// redisConfig is the configuration of a Redis URL given on the command
// line or in the environment, with the seeds and TLS settings of the
// command line and the environment (redisEnv).
func (a *app) redisConfig(url string) redisx.Config {
	rc := redisx.Config{URL: url}
	a.redisEnv(&rc)
	return rc
}
