// Package stack assembles the whole Agent Passport demo in one process: a
// private Redis (unless one is given), the authority, the demo fleet, the
// proxy in front of the fleet, a healer, a chaos simulator and a rogue agent
// per tenant, and the dashboard with its live feed. `passport up` runs it and
// the end-to-end tests start it on free loopback ports.
//
// Nothing here takes a shortcut around the product: the demo agents get
// passports from the authority over HTTP and call the fleet through the
// proxy, so every repair, every fault and every refusal is verified,
// decided by the Rego library and written to the audit stream.
package stack

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/authority"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/chaos"
	"github.com/agentpassport/passport/dashboard"
	"github.com/agentpassport/passport/examples/fleet"
	"github.com/agentpassport/passport/examples/mcpserver"
	"github.com/agentpassport/passport/examples/rogue"
	"github.com/agentpassport/passport/healer"
	"github.com/agentpassport/passport/internal/agentcall"
	"github.com/agentpassport/passport/internal/assemble"
	"github.com/agentpassport/passport/internal/redisx"
	"github.com/agentpassport/passport/internal/tlsx"
	"github.com/agentpassport/passport/passport"
	"github.com/agentpassport/passport/proxy"
)

// Default ports of the demo (ARCHITECTURE.md, "Interface details").
const (
	DefaultProxyPort      = 8080
	DefaultProxyAdminPort = 9080
	DefaultAuthorityPort  = 8081
	DefaultFleetPort      = 9000
	DefaultDashboardPort  = 8090
	DefaultHealerPort     = 9100 // acme; each further tenant takes the next port
)

// DefaultTenants are the demo tenants.
var DefaultTenants = []string{"acme", "globex"}

// Config configures the demo stack. Zero values take the defaults.
type Config struct {
	// DataDir holds Redis's AOF and demo.json. Default .passport.
	DataDir string `yaml:"data_dir"`
	// Host is the loopback address every listener binds. Default 127.0.0.1.
	Host string `yaml:"host"`
	// Ports; 0 means the default, -1 means a free port (tests).
	ProxyPort      int `yaml:"proxy_port"`
	ProxyAdminPort int `yaml:"proxy_admin_port"`
	AuthorityPort  int `yaml:"authority_port"`
	FleetPort      int `yaml:"fleet_port"`
	DashboardPort  int `yaml:"dashboard_port"`
	HealerPort     int `yaml:"healer_port"`
	// RedisURL uses an existing Redis instead of starting one (env
	// PASSPORT_REDIS_URL). Default: a private redis-server under DataDir,
	// requiring the password kept in DataDir/redis-password.
	RedisURL string `yaml:"redis_url"`
	// RedisAddrs uses an existing Redis Cluster (or, with RedisMaster, a
	// Sentinel set) given by its seeds host:port (`passport up
	// --redis-addrs`, env PASSPORT_REDIS_ADDRS) instead of starting one;
	// RedisURL then supplies only the user, password and database.
	// Default none.
	RedisAddrs []string `yaml:"redis_addrs"`
	// RedisMaster is the Sentinel primary's name: RedisAddrs are then
	// sentinels (`--redis-master`, env PASSPORT_REDIS_MASTER). Default
	// none: RedisAddrs are Cluster seeds.
	RedisMaster string `yaml:"redis_master"`
	// KeyEncryptionKey encrypts the authority's signing keys at rest in
	// Redis (env PASSPORT_KEY_ENCRYPTION_KEY). Default: the one kept in
	// DataDir/key-encryption-key, generated on first start (mode 0600).
	KeyEncryptionKey string `yaml:"-"`
	// AdminToken is the global admin token (env PASSPORT_ADMIN_TOKEN).
	// Default: the one in DataDir/demo.json, else a new random one.
	AdminToken string `yaml:"-"`
	// Tenants of the demo. Default acme and globex.
	Tenants []string `yaml:"tenants"`
	// ChaosInterval is how often random chaos strikes per tenant; 0 is the
	// default 20s, negative turns random chaos off (faults can still be
	// fired from the dashboard or `passport chaos fire`).
	ChaosInterval time.Duration `yaml:"chaos_interval"`
	// ChaosSeed makes random chaos reproducible; 0 seeds from the clock.
	ChaosSeed uint64 `yaml:"chaos_seed"`
	// NoRogue leaves the rogue agents out.
	NoRogue bool `yaml:"no_rogue"`
	// PolicyDir enforces Rego from a directory (hot-reloaded) instead of
	// the embedded library.
	PolicyDir string `yaml:"policy_dir"`
	// RestartBudget declares, in the embedded library's data, the budget
	// restarts-per-service: at most this many restarts of one service in
	// 10 minutes, then the library asks a person (budget_escalations). 0,
	// the default, declares none. Ignored with PolicyDir, whose data rules.
	RestartBudget int `yaml:"restart_budget"`
	// BcryptCost for client secrets. Default bcrypt's default (10).
	BcryptCost int `yaml:"bcrypt_cost"`
	// Witness is where every audit writer's signed checkpoints also go: a
	// directory or an http(s):// URL of `passport witness`, comma-separated
	// for several (env PASSPORT_WITNESS). Default DataDir/witness; "none"
	// for none.
	Witness string `yaml:"witness"`
	// WitnessToken is sent to HTTP witnesses (env PASSPORT_WITNESS_TOKEN).
	WitnessToken string `yaml:"-"`
	// TLS serves every listener over TLS with a certificate of the demo's
	// own CA, kept in DataDir/tls (tls.go), and makes every client of the
	// stack trust that CA alone. Off (the zero value): plain HTTP on
	// loopback. `passport up` turns it on unless --no-tls.
	TLS bool `yaml:"tls"`
}

// Demo is what DataDir/demo.json holds: where everything is and the demo
// agents' credentials, for scripts, the CLI (--data DIR) and tests.
type Demo struct {
	URLs     URLs   `json:"urls"`
	RedisURL string `json:"redis_url"`
	// RedisAddrs and RedisMaster are the stack's Cluster seeds or
	// sentinels and Sentinel primary (Config.RedisAddrs); redis_url then
	// carries only credentials, if any.
	RedisAddrs  []string    `json:"redis_addrs,omitempty"`
	RedisMaster string      `json:"redis_master,omitempty"`
	AdminToken  string      `json:"admin_token"`
	Tenants     []string    `json:"tenants"`
	Agents      []DemoAgent `json:"agents"`
	// HealerAPIs maps a tenant to its healer's incidents API.
	HealerAPIs map[string]string `json:"healer_apis"`
	// DashboardLogin opens the dashboard signed in (the token is in the
	// URL fragment, which browsers never send to a server).
	DashboardLogin string    `json:"dashboard_login"`
	StartedAt      time.Time `json:"started_at"`
	// Witness is the audit witnesses' spec ("" for none), which
	// `passport audit verify --data DIR` checks against.
	Witness string `json:"witness,omitempty"`
	// Enrolled is the agent that enrolled with a service-account token
	// from the demo's stand-in for Kubernetes (docs/enrollment.md).
	Enrolled *DemoEnrolled `json:"enrolled,omitempty"`
	// CAFile is the absolute path of the demo CA's certificate with TLS
	// on: what the CLI (--data DIR), curl --cacert and browsers trust.
	CAFile string `json:"ca_file,omitempty"`
	// Restored says, one line per agent, which demo agents of an earlier
	// run got their reputation back or were unblocked at this start.
	Restored []string `json:"-"`
}

// URLs are the base URLs of the stack's services.
type URLs struct {
	Proxy      string `json:"proxy"`
	ProxyAdmin string `json:"proxy_admin"`
	Authority  string `json:"authority"`
	Fleet      string `json:"fleet"`
	Dashboard  string `json:"dashboard"`
}

// DemoAgent is one registered demo agent with its credentials.
type DemoAgent struct {
	Name         string `json:"name"`
	Type         string `json:"type"`
	Tenant       string `json:"tenant"`
	TrustLevel   string `json:"trust_level"`
	ID           string `json:"id"`
	ClientID     string `json:"client_id"`
	ClientSecret string `json:"client_secret"`
	// Role is the agent's part in the demo: healer, chaos, observer, rogue.
	Role string `json:"role"`
}

// demoRoles are the agents each tenant gets.
var demoRoles = []struct {
	role, typ string
	trust     passport.TrustLevel
	owner     string // who is accountable; the rogue has nobody
}{
	{"healer", passport.TypeHealer, passport.TrustHigh, "sre-oncall"},
	{"chaos", passport.TypeChaos, passport.TrustHigh, "chaos-engineering"},
	{"observer", passport.TypeObserver, passport.TrustLow, "observability"},
	// The deployer's deploys to payments need a person (the library's
	// approvals rule): the demo's approval flow.
	{"deployer", passport.TypeDeployer, passport.TrustMedium, "release-eng"},
	{"rogue", passport.TypeObserver, passport.TrustLow, ""},
}

func (c *Config) fill() {
	if c.DataDir == "" {
		c.DataDir = ".passport"
	}
	if c.Host == "" {
		c.Host = "127.0.0.1"
	}
	def := func(p *int, d int) {
		switch {
		case *p == 0:
			*p = d
		case *p < 0:
			*p = 0
		}
	}
	def(&c.ProxyPort, DefaultProxyPort)
	def(&c.ProxyAdminPort, DefaultProxyAdminPort)
	def(&c.AuthorityPort, DefaultAuthorityPort)
	def(&c.FleetPort, DefaultFleetPort)
	def(&c.DashboardPort, DefaultDashboardPort)
	def(&c.HealerPort, DefaultHealerPort)
	if len(c.Tenants) == 0 {
		c.Tenants = DefaultTenants
	}
	if c.ChaosInterval == 0 {
		c.ChaosInterval = 20 * time.Second
	}
	switch c.Witness {
	case "":
		c.Witness = filepath.Join(c.DataDir, "witness")
		if abs, err := filepath.Abs(c.Witness); err == nil {
			c.Witness = abs // demo.json is read from other directories too
		}
	case "none":
		c.Witness = ""
	}
}

// Stack is a running demo.
type Stack struct {
	cfg  Config
	log  *slog.Logger
	demo Demo
	// tls is the demo's CA and server certificate; nil with TLS off.
	tls *demoTLS

	rdb   redis.UniversalClient
	fleet *fleet.Fleet
	chaos map[string]*chaos.Chaos
	// dashChaos is the first tenant's simulator: it runs as a part of the
	// dashboard, whose /metrics serves its metrics, as a standalone
	// dashboard serves those of the simulator behind its buttons.
	dashChaos *assemble.Service
	admin     *client.Admin
	// witnesses receive every audit writer's signed checkpoints too.
	witnesses []audit.Witness
	mu        sync.Mutex
	closer    []func()
}

// Run starts the stack and blocks until ctx ends or a component fails.
// onReady is called once everything answers, with what demo.json holds.
func Run(ctx context.Context, cfg Config, log *slog.Logger, onReady func(Demo)) error {
	cfg.fill()
	s := &Stack{cfg: cfg, log: log, chaos: map[string]*chaos.Chaos{}}
	defer s.close()
	return s.run(ctx, onReady)
}

func (s *Stack) addCloser(f func()) {
	s.mu.Lock()
	s.closer = append(s.closer, f)
	s.mu.Unlock()
}

func (s *Stack) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.closer) - 1; i >= 0; i-- {
		s.closer[i]()
	}
}

func (s *Stack) listen(port int) (net.Listener, error) {
	addr := net.JoinHostPort(s.cfg.Host, strconv.Itoa(port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w (is another `passport up` running? stop it, or free the port)", addr, err)
	}
	return ln, nil
}

func (s *Stack) urlOf(ln net.Listener) string { return s.scheme() + "://" + ln.Addr().String() }

func (s *Stack) run(ctx context.Context, onReady func(Demo)) error {
	cfg := s.cfg
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	prev := readDemo(cfg.DataDir)
	if cfg.TLS {
		dir, err := filepath.Abs(filepath.Join(cfg.DataDir, TLSDir))
		if err != nil {
			return fmt.Errorf("tls dir: %w", err)
		}
		if s.tls, err = ensureTLS(dir, cfg.Host, time.Now()); err != nil {
			return err
		}
	}
	if cfg.Witness != "" {
		ws, err := audit.OpenWitnesses([]string{cfg.Witness}, cfg.WitnessToken)
		if err != nil {
			return err
		}
		s.witnesses = ws
	}

	// Secure by default: the signing keys are encrypted at rest, and the
	// private Redis requires a password, so that no other local process
	// can read the keys or mint state. Both secrets live in the data
	// directory (mode 0600) so a restart reuses them.
	kek := cfg.KeyEncryptionKey
	if kek == "" {
		var err error
		if kek, err = localSecret(filepath.Join(cfg.DataDir, KeyEncryptionKeyFile)); err != nil {
			return fmt.Errorf("key encryption key: %w", err)
		}
	}

	// Redis first: everything else keeps its state there.
	redisURL := cfg.RedisURL
	if redisURL == "" && len(cfg.RedisAddrs) == 0 {
		password, err := localSecret(filepath.Join(cfg.DataDir, RedisPasswordFile))
		if err != nil {
			return fmt.Errorf("redis password: %w", err)
		}
		r, err := startRedis(ctx, cfg.Host, filepath.Join(cfg.DataDir, "redis"), password)
		if err != nil {
			return err
		}
		s.addCloser(r.stop)
		redisURL = r.url
		s.log.Info("redis started", "url", redisx.Redact(redisURL), "dir", filepath.Join(cfg.DataDir, "redis"), "appendonly", "yes", "appendfsync", "always")
	}
	rc, err := redisConfig(redisURL, cfg.RedisAddrs, cfg.RedisMaster)
	if err != nil {
		return err
	}
	rdb, err := redisx.New(rc)
	if err != nil {
		return err
	}
	s.rdb = rdb
	s.addCloser(func() { _ = rdb.Close() })
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err = redisx.Ping(pctx, rdb)
	cancel()
	if err != nil {
		return fmt.Errorf("redis %s: %w", redisWhere(redisURL, cfg.RedisAddrs), err)
	}

	adminToken := cfg.AdminToken
	if adminToken == "" && prev != nil {
		adminToken = prev.AdminToken
	}
	if len(adminToken) < authority.MinAdminTokenLength {
		adminToken = randomToken()
	}

	// Listeners up front, so that every URL is known before anything starts
	// (tests ask for free ports).
	lns := map[string]net.Listener{}
	for name, port := range map[string]int{
		"authority": cfg.AuthorityPort, "proxy": cfg.ProxyPort, "proxy_admin": cfg.ProxyAdminPort,
		"dashboard": cfg.DashboardPort,
	} {
		ln, err := s.listen(port)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return err
		}
		lns[name] = ln
		s.addCloser(func() { _ = ln.Close() }) // a no-op once a server has closed it
	}
	s.demo = Demo{
		URLs: URLs{
			Proxy: s.urlOf(lns["proxy"]), ProxyAdmin: s.urlOf(lns["proxy_admin"]),
			Authority: s.urlOf(lns["authority"]), Dashboard: s.urlOf(lns["dashboard"]),
		},
		RedisURL:    redisURL,
		RedisAddrs:  cfg.RedisAddrs,
		RedisMaster: cfg.RedisMaster,
		AdminToken:  adminToken,
		Tenants:     cfg.Tenants,
		HealerAPIs:  map[string]string{},
		StartedAt:   time.Now().UTC(),
		Witness:     cfg.Witness,
		CAFile:      s.caFile(),
	}

	// Each component's service runs its own audit writer and stops it
	// only after the component has drained (assemble.Service.Run).
	g, gctx := errgroup.WithContext(ctx)

	// The authority.
	acfg := authority.DefaultConfig()
	acfg.Listen = lns["authority"].Addr().String()
	acfg.Issuer = s.demo.URLs.Authority
	acfg.TLS = s.serverTLS()
	acfg.AdminToken = adminToken
	// The proxy reports policy denials with a token that can do nothing
	// else; it lives as long as this run.
	reporterToken := rand.Text()
	acfg.ReporterTokens = []string{reporterToken}
	acfg.Redis = rc
	acfg.Keys.EncryptionKey = kek
	if cfg.BcryptCost > 0 {
		acfg.Clients.BcryptCost = cfg.BcryptCost
	}
	demoIssuer, err := s.demoIssuer(&acfg) // a stand-in for Kubernetes (enroll.go)
	if err != nil {
		return s.failed(g, err)
	}
	authSvc, auth, err := assemble.Authority(ctx, acfg, s.env(), lns["authority"])
	if err != nil {
		return s.failed(g, err)
	}
	if err := auth.Init(ctx); err != nil {
		return s.failed(g, err)
	}
	g.Go(func() error { return authSvc.Run(gctx) })
	s.admin, err = client.NewAdmin(s.demo.URLs.Authority, passport.Secret(adminToken), client.Options{CAFile: s.caFile()})
	if err != nil {
		return s.failed(g, err)
	}

	// The fleet. Its control API takes only calls that came through the
	// proxy: the API key only the proxy holds (the agents never see it),
	// and the proxy's signed assertion of each call.
	fleetKey := filepath.Join(cfg.DataDir, FleetAPIKeyFile)
	if _, err := localSecret(fleetKey); err != nil {
		return s.failed(g, fmt.Errorf("fleet api key: %w", err))
	}
	fcfg := fleet.Default()
	fcfg.Listen = net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.FleetPort))
	fcfg.TLS = s.serverTLS()
	for i := range fcfg.Services {
		fcfg.Services[i].Listen = net.JoinHostPort(cfg.Host, "0")
	}
	fcfg.Caller = fleet.CallerConfig{APIKeyFile: fleetKey,
		AssertionJWKSURL:  s.demo.URLs.ProxyAdmin + proxy.AssertionJWKSPath,
		AssertionAudience: FleetAssertionAudience, CAFile: s.caFile()}
	flSvc, fl, err := assemble.Fleet(fcfg, s.env())
	if err != nil {
		return s.failed(g, err)
	}
	s.fleet = fl
	s.demo.URLs.Fleet = fl.URL()
	g.Go(func() error { return flSvc.Run(gctx) })

	// The demo MCP server in front of the fleet, on a free port: the
	// proxy fronts it at /mcp.
	mcpLn, err := net.Listen("tcp", net.JoinHostPort(cfg.Host, "0"))
	if err != nil {
		return s.failed(g, fmt.Errorf("mcp server: %w", err))
	}
	mcpSrv, err := mcpserver.New(mcpFleet{fl}, s.log.With("component", "mcp-server"))
	if err != nil {
		mcpLn.Close()
		return s.failed(g, err)
	}
	mcpURL := s.urlOf(mcpLn)
	if s.tls != nil {
		mtc, err := s.serverTLS().Config(tlsx.Options{Name: "mcp-server", Logger: s.log})
		if err != nil {
			mcpLn.Close()
			return s.failed(g, err)
		}
		mcpLn = tls.NewListener(mcpLn, mtc)
	}
	g.Go(func() error { return mcpSrv.Serve(gctx, mcpLn) })

	// The proxy in front of the fleet.
	pcfg := DemoProxyConfig(s.demo.URLs.Authority, s.demo.URLs.Fleet, mcpURL)
	pcfg.TLS = s.serverTLS()
	if s.tls != nil {
		pcfg.AuthorityTLS = s.tls.client()
		for name, u := range pcfg.Upstreams {
			u.TLS = s.tls.client()
			pcfg.Upstreams[name] = u
		}
	}
	up := pcfg.Upstreams["fleet"]
	up.Credential = &proxy.Credential{Type: "header", Header: "X-Api-Key", File: fleetKey}
	up.Assertion, up.AssertionAudience = true, FleetAssertionAudience
	pcfg.Upstreams["fleet"] = up
	pcfg.Listen = lns["proxy"].Addr().String()
	pcfg.AdminListen = lns["proxy_admin"].Addr().String()
	pcfg.ReportToken = passport.Secret(reporterToken)
	pcfg.Policy.Dir = cfg.PolicyDir
	pcfg.Approvals.DashboardURL = s.demo.URLs.Dashboard
	lib, err := demoLibrary(cfg.RestartBudget)
	if err != nil {
		return s.failed(g, err)
	}
	pxSvc, _, err := assemble.Proxy(ctx, pcfg, s.env(), assemble.ProxyOptions{
		Listener: lns["proxy"], AdminListener: lns["proxy_admin"], Policies: lib,
	})
	if err != nil {
		return s.failed(g, err)
	}
	g.Go(func() error { return pxSvc.Run(gctx) })

	// Wait for the authority and the proxy to answer before agents use them.
	if err := waitReady(gctx, s.httpClient(time.Second), s.demo.URLs.Authority+"/readyz"); err != nil {
		return s.failed(g, fmt.Errorf("authority not ready: %w", err))
	}
	if err := waitReady(gctx, s.httpClient(time.Second), s.demo.URLs.ProxyAdmin+"/readyz"); err != nil {
		return s.failed(g, fmt.Errorf("proxy not ready: %w", err))
	}

	agents, err := s.registerAgents(gctx, prev)
	if err != nil {
		return s.failed(g, err)
	}
	s.demo.Agents = agents
	if err := s.enrollDemo(gctx, g, demoIssuer); err != nil {
		return s.failed(g, err)
	}

	// Per tenant: a healer, a chaos simulator and a rogue agent.
	for i, tenant := range cfg.Tenants {
		if err := s.startTenant(gctx, g, i, tenant); err != nil {
			return s.failed(g, err)
		}
	}

	// The dashboard and its feed.
	dcfg := dashboard.DefaultConfig()
	dcfg.Listen = lns["dashboard"].Addr().String()
	dcfg.Tenants = cfg.Tenants
	dcfg.AuthorityURL = s.demo.URLs.Authority
	dcfg.TLS = s.serverTLS()
	dashSvc, _, err := assemble.Dashboard(ctx, dcfg, s.env(), assemble.DashboardDeps{
		AdminToken: adminToken, Actions: &actions{AdminAgents: dashboard.AdminAgents{Admin: s.admin}, s: s},
		Chaos: s.dashChaos,
	}, lns["dashboard"])
	if err != nil {
		return s.failed(g, err)
	}
	g.Go(func() error { return dashSvc.Run(gctx) })
	s.demo.DashboardLogin = dashboard.SignInURL(s.demo.URLs.Dashboard, adminToken, "")

	if err := writeDemo(cfg.DataDir, s.demo); err != nil {
		return s.failed(g, err)
	}
	if onReady != nil {
		onReady(s.demo)
	}
	err = g.Wait()
	if err == nil {
		s.log.Info("passport up stopped", "data", cfg.DataDir)
	}
	return err
}

// failed stops what started and returns err.
func (s *Stack) failed(g *errgroup.Group, err error) error {
	// The caller's ctx is still alive; the errgroup is cancelled by
	// returning an error from a goroutine.
	g.Go(func() error { return err })
	_ = g.Wait()
	return err
}

// env is what every component of the stack is assembled with: the shared
// Redis client, the witnesses, and writer identities kept in the data
// directory (DataDir/audit-keys), so that a restart resumes each writer's
// chain instead of starting a new writer.
func (s *Stack) env() assemble.Env {
	return assemble.Env{
		Logger: s.log, Redis: s.rdb, Witnesses: s.witnesses,
		KeyDir: filepath.Join(s.cfg.DataDir, AuditKeysDir), SpoolDir: filepath.Join(s.cfg.DataDir, "spool"),
	}
}

// AuditKeysDir is where `passport up` keeps its audit writers' keys, under
// its data directory; one-shot commands given --data DIR keep theirs there
// too.
const AuditKeysDir = "audit-keys"

func (s *Stack) startTenant(ctx context.Context, g *errgroup.Group, i int, tenant string) error {
	agentClient := func(role string, opts client.Options) (*client.Client, DemoAgent, error) {
		for _, a := range s.demo.Agents {
			if a.Tenant == tenant && a.Role == role {
				opts.CAFile = s.caFile()
				c, err := client.New(s.demo.URLs.Authority, a.ClientID, passport.Secret(a.ClientSecret), opts)
				return c, a, err
			}
		}
		return nil, DemoAgent{}, fmt.Errorf("no %s agent for %s", role, tenant)
	}

	// Healer. Its passports are bound to a key it makes now (DPoP, RFC
	// 9449): a copy of one, in a log or a heap dump, is worthless.
	_, dpopKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	hc, ha, err := agentClient("healer", client.Options{DPoPKey: dpopKey})
	if err != nil {
		return err
	}
	hcfg := healer.Default()
	hcfg.Tenant = tenant
	hcfg.ProxyURL = s.demo.URLs.Proxy
	hport := 0
	if s.cfg.HealerPort != 0 {
		hport = s.cfg.HealerPort + i
	}
	hcfg.Listen = net.JoinHostPort(s.cfg.Host, strconv.Itoa(hport))
	hcfg.TLS = s.serverTLS()
	var targets []string
	for _, st := range s.fleet.Services() {
		if st.Tenant == tenant {
			hcfg.Checks = append(hcfg.Checks, healer.CheckConfig{Target: st.Name, URL: st.HealthURL})
			targets = append(targets, st.Name)
		}
	}
	// The fleet announces its changes: faults are confirmed as they happen.
	hcfg.Announcements.URL = s.fleet.URL() + "/events?tenant=" + url.QueryEscape(tenant)
	hsvc, h, err := assemble.Healer(ctx, hcfg, s.env(), assemble.HealerDeps{
		Agent:      assemble.Agent{Passports: agentcall.AuthorityPassports{Client: hc, DPoPKey: dpopKey}, TLS: s.clientTLS()},
		Reputation: agentcall.AdminReputation{Admin: s.admin, Tenant: tenant, AgentID: ha.ID},
		AdminToken: s.demo.AdminToken,
	})
	if err != nil {
		return err
	}
	s.demo.HealerAPIs[tenant] = s.scheme() + "://" + h.APIAddr()
	g.Go(func() error { return hsvc.Run(ctx) })

	// Chaos.
	cc, _, err := agentClient("chaos", client.Options{})
	if err != nil {
		return err
	}
	ccfg := chaos.Config{Tenant: tenant, ProxyURL: s.demo.URLs.Proxy, Interval: max(s.cfg.ChaosInterval, time.Second), Seed: s.cfg.ChaosSeed, Targets: targets}
	csvc, ch, err := assemble.Chaos(ctx, ccfg, s.env(), assemble.ChaosOptions{
		Agent: assemble.Agent{Passports: agentcall.AuthorityPassports{Client: cc}, TLS: s.clientTLS()}, Loop: s.cfg.ChaosInterval > 0,
	})
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.chaos[tenant] = ch
	s.mu.Unlock()
	// Run even without random chaos: its writer records the faults the
	// dashboard's buttons fire through it.
	if i == 0 {
		s.dashChaos = csvc // run by the dashboard
	} else {
		g.Go(func() error { return csvc.Run(ctx) })
	}

	// The observer of the first tenant acts through the MCP server.
	if i == 0 {
		oc, _, err := agentClient("observer", client.Options{})
		if err != nil {
			return err
		}
		op := agentcall.AuthorityPassports{Client: oc}
		ag := &mcpserver.Agent{Endpoint: s.demo.URLs.Proxy + "/mcp", Log: s.log.With("component", "mcp-agent", "tenant", tenant),
			HTTPClient: s.httpClient(0),
			Passport:   func(ctx context.Context) (string, error) { return op.Passport(ctx, nil, nil) }}
		g.Go(func() error { return ag.Run(ctx) })
	}

	// The rogue.
	if !s.cfg.NoRogue {
		rc, _, err := agentClient("rogue", client.Options{})
		if err != nil {
			return err
		}
		r, err := rogue.New(rogue.Config{Tenant: tenant, ProxyURL: s.demo.URLs.Proxy, Targets: targets, Interval: 2 * time.Second},
			rogue.Deps{Logger: s.log, Passports: agentcall.AuthorityPassports{Client: rc}, HTTP: s.httpClient(5 * time.Second)})
		if err != nil {
			return fmt.Errorf("rogue %s: %w", tenant, err)
		}
		g.Go(func() error { return r.Run(ctx) })
	}
	return nil
}

// registerAgents reuses the agents of a previous run (they live in the
// persisted Redis) when they still exist, and registers the missing ones.
// Every reused agent gets its baseline reputation back and is unblocked
// (restore), so that every start shows the whole story and no mistake made
// in a tour outlives a restart.
func (s *Stack) registerAgents(ctx context.Context, prev *Demo) ([]DemoAgent, error) {
	var out []DemoAgent
	for _, tenant := range s.cfg.Tenants {
		for _, r := range demoRoles {
			name := r.role + "-" + tenant
			if a, ok := s.reuse(ctx, prev, tenant, r.role); ok {
				note, err := s.restore(ctx, a)
				if err != nil {
					return nil, err
				}
				if note != "" {
					s.demo.Restored = append(s.demo.Restored, note)
				}
				out = append(out, a)
				continue
			}
			if r.role == "rogue" && s.cfg.NoRogue {
				continue
			}
			reg, err := s.admin.RegisterAgent(ctx, tenant, client.AgentSpec{Name: name + "-" + randomToken()[:6], Type: r.typ, TrustLevel: r.trust, Owner: r.owner})
			if err != nil {
				return nil, fmt.Errorf("register %s: %w", name, err)
			}
			out = append(out, DemoAgent{
				Name: reg.Name, Type: reg.Type, Tenant: tenant, TrustLevel: string(reg.TrustLevel),
				ID: reg.ID, ClientID: reg.ClientID, ClientSecret: reg.ClientSecret, Role: r.role,
			})
		}
	}
	return out, nil
}

// restore resets a to its baseline reputation and lifts its block when it
// lost reputation (half a point of slack: reputation drifts back to the
// baseline continuously) or is blocked. It returns what it restored, ""
// for nothing.
func (s *Stack) restore(ctx context.Context, a DemoAgent) (string, error) {
	ag, err := s.admin.GetAgent(ctx, a.Tenant, a.ID)
	if errors.Is(err, client.ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read %s: %w", a.Name, err)
	}
	if !ag.Blocked && ag.Reputation >= ag.ReputationBaseline-0.5 {
		return "", nil
	}
	if _, err := s.admin.Unblock(ctx, a.Tenant, a.ID); err != nil && !errors.Is(err, client.ErrNotFound) {
		return "", fmt.Errorf("restore %s: %w", a.Name, err)
	}
	note := fmt.Sprintf("%s (%s, %s): reputation %.1f -> %.1f", a.Name, a.Role, a.Tenant, ag.Reputation, ag.ReputationBaseline)
	if ag.Blocked {
		note += ", unblocked"
	}
	return note, nil
}

func (s *Stack) reuse(ctx context.Context, prev *Demo, tenant, role string) (DemoAgent, bool) {
	if prev == nil || prev.AdminToken != s.demo.AdminToken {
		return DemoAgent{}, false
	}
	for _, a := range prev.Agents {
		if a.Tenant == tenant && a.Role == role && a.ClientSecret != "" {
			if _, err := s.admin.GetAgent(ctx, tenant, a.ID); err == nil {
				return a, true
			}
		}
	}
	return DemoAgent{}, false
}

// actions adapts the authority's admin API and the chaos simulators to the
// dashboard's buttons.
type actions struct {
	dashboard.AdminAgents
	s *Stack
}

func (a *actions) FireChaos(ctx context.Context, tenant, typ, target string) error {
	a.s.mu.Lock()
	ch := a.s.chaos[tenant]
	a.s.mu.Unlock()
	if ch == nil {
		return dashboard.ErrNotFound
	}
	_, err := ch.Fire(ctx, typ, target)
	return err
}

func (a *actions) Targets(_ context.Context, tenant string) ([]string, error) {
	var out []string
	for _, st := range a.s.fleet.Services() {
		if st.Tenant == tenant {
			out = append(out, st.Name)
		}
	}
	slices.Sort(out)
	return out, nil
}

var (
	_ dashboard.Actions   = (*actions)(nil)
	_ dashboard.Approvals = (*actions)(nil) // through dashboard.AdminAgents
)

// waitReady polls url with c until it answers 200 or ctx ends.
func waitReady(ctx context.Context, c *http.Client, url string) error {
	deadline := time.Now().Add(15 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		last = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return last
}

func randomToken() string {
	var b [24]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Files `passport up` keeps in its data directory besides demo.json, each
// mode 0600: the private Redis's password and the key that encrypts the
// signing keys at rest.
const (
	RedisPasswordFile = "redis-password"
	// FleetAPIKeyFile holds the demo fleet's API key (mode 0600), which
	// the proxy injects and no agent holds.
	FleetAPIKeyFile = "fleet-api-key"
	// FleetAssertionAudience is the aud of the proxy's assertions to the
	// demo fleet.
	FleetAssertionAudience = "passport-demo-fleet"
	KeyEncryptionKeyFile   = "key-encryption-key"
)

// DemoFile is the path of demo.json in dir.
func DemoFile(dir string) string { return filepath.Join(dir, "demo.json") }

func readDemo(dir string) *Demo {
	b, err := os.ReadFile(DemoFile(dir))
	if err != nil {
		return nil
	}
	var d Demo
	if json.Unmarshal(b, &d) != nil {
		return nil
	}
	return &d
}

// ReadDemo reads DIR/demo.json written by a running stack.
func ReadDemo(dir string) (Demo, error) {
	b, err := os.ReadFile(DemoFile(dir))
	if err != nil {
		return Demo{}, err
	}
	var d Demo
	if err := json.Unmarshal(b, &d); err != nil {
		return Demo{}, fmt.Errorf("%s: %w", DemoFile(dir), err)
	}
	return d, nil
}

// writeDemo writes demo.json with mode 0600: it holds credentials.
func writeDemo(dir string, d Demo) error {
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return err
	}
	tmp := DemoFile(dir) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write demo.json: %w", err)
	}
	return os.Rename(tmp, DemoFile(dir))
}
