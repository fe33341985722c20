package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/agentpassport/passport/authority"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/chaos"
	"github.com/agentpassport/passport/dashboard"
	"github.com/agentpassport/passport/feed"
	"github.com/agentpassport/passport/internal/config"
	"github.com/agentpassport/passport/internal/redisx"
	"github.com/agentpassport/passport/internal/tlsx"
	"github.com/agentpassport/passport/passport"
)

func (a *app) dashboardCmd() *cobra.Command { return a.dashboardCmdWith(nil) }

// dashboardCmdWith builds the command; ready, when not nil, is called with
// the address the dashboard listens on (tests listen on port 0).
func (a *app) dashboardCmdWith(ready func(net.Addr)) *cobra.Command {
	var (
		cfgPath, listen, publicAuthority string
		c                                chaosFlags // --chaos-config and the agent flags of `passport chaos`
		tf                               tlsFlags
	)
	cmd := &cobra.Command{
		Use:   "dashboard",
		Short: "Run the live dashboard: the page, its API and the WebSocket feed",
		Long: `Run the dashboard on its own (what 'passport up' runs inside): the embedded page,
its API, the live feed of each tenant's audit stream from Redis, /healthz and
/metrics. Operators sign in with PASSPORT_ADMIN_TOKEN, which is required; Block
and Unblock go to the authority's admin API with it.

The chaos buttons are off unless --chaos-config names a chaos YAML (chaos.Config)
that lists its targets: they then fire through the proxy as a chaos agent, exactly
like 'passport chaos fire', with the same credentials rules (--data DIR, or
PASSPORT_CLIENT_ID and PASSPORT_CLIENT_SECRET, or else a new chaos agent
registered with the admin token).

Configuration: flags, then the environment (PASSPORT_REDIS_URL,
PASSPORT_ADMIN_TOKEN, PASSPORT_AUTHORITY_URL, PASSPORT_TLS_CERT_FILE and
PASSPORT_TLS_KEY_FILE to serve TLS, PASSPORT_CA_FILE to verify an https authority
and proxy), then --config YAML (dashboard.Config), then defaults.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := a.logger()
			if err != nil {
				return err
			}
			cfg := dashboard.DefaultConfig()
			cfg.AuthorityURL = "" // resolved below, after the file
			if err := config.Load(cfgPath, &cfg); err != nil {
				return err
			}
			var dAuth, dRedis, dAdmin string
			if c.ao.data != "" {
				demo, err := loadAgentDemoFile(c.ao.data)
				if err != nil {
					return err
				}
				dAuth, dRedis, dAdmin = demo.URLs.Authority, demo.RedisURL, demo.AdminToken
			}
			if cmd.Flags().Changed("listen") || cfg.Listen == "" {
				cfg.Listen = listen
			}
			if publicAuthority != "" {
				cfg.PublicAuthorityURL = publicAuthority
			}
			tf.apply(a, &cfg.TLS)
			// The same order as the agents' (agentEnv): flag, demo.json,
			// environment, file, default.
			cfg.AuthorityURL = firstNonEmpty(c.ao.authority, dAuth, a.getenv("PASSPORT_AUTHORITY_URL"), cfg.AuthorityURL, dashboard.DefaultAuthorityURL)
			if err := cfg.Validate(); err != nil {
				return fmt.Errorf("dashboard config: %w", err)
			}
			// Fail closed: without an admin token nobody could sign in, and
			// a dashboard must never fall back to a well-known one.
			adminToken := firstNonEmpty(dAdmin, a.getenv("PASSPORT_ADMIN_TOKEN"))
			if adminToken == "" {
				return errors.New("dashboard: no admin token: set PASSPORT_ADMIN_TOKEN (operators sign in with it, and Block/Unblock call the admin API with it)")
			}
			if len(adminToken) < authority.MinAdminTokenLength {
				return fmt.Errorf("dashboard: PASSPORT_ADMIN_TOKEN is shorter than %d characters", authority.MinAdminTokenLength)
			}
			opts, err := a.clientOptions()
			if err != nil {
				return err
			}
			admin, err := client.NewAdmin(cfg.AuthorityURL, passport.Secret(adminToken), opts)
			if err != nil {
				return fmt.Errorf("dashboard: %w", err)
			}
			ctx := cmd.Context()
			act := &dashboardActions{AdminAgents: dashboard.AdminAgents{Admin: admin}}
			gatherers := prometheus.Gatherers{}
			var runChaos func(context.Context) error
			if c.cfgPath != "" {
				// The chaos agent talks to the same authority as the buttons.
				c.ao.authority = cfg.AuthorityURL
				reg, run, closeChaos, err := a.dashboardChaos(ctx, &c, act)
				if err != nil {
					return err
				}
				defer closeChaos()
				gatherers = append(gatherers, reg)
				runChaos = run
			} else {
				log.Info("no --chaos-config: the chaos buttons are off")
			}

			rdb, err := redisx.New(a.redisConfig(firstNonEmpty(dRedis, a.getenv("PASSPORT_REDIS_URL"))))
			if err != nil {
				return err
			}
			defer rdb.Close()
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if err := redisx.Ping(pctx, rdb); err != nil {
				// Keep going: the feed answers 503 until Redis answers.
				log.Warn("redis not reachable yet", "error", err)
			}
			cancel()

			reg := prometheus.NewRegistry()
			reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
			gatherers = append(gatherers, reg)
			dash, err := dashboard.New(cfg, dashboard.Deps{
				Redis: rdb, Logger: log, Registry: reg,
				Auth:    feed.NewStaticAuth(feed.Token{Secret: passport.Secret(adminToken)}),
				Actions: act,
			})
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", cfg.Listen)
			if err != nil {
				return fmt.Errorf("dashboard listen: %w", err)
			}
			if ready != nil {
				ready(ln.Addr())
			}
			g, gctx := errgroup.WithContext(ctx)
			if runChaos != nil {
				g.Go(func() error { return runChaos(gctx) })
			}
			g.Go(func() error { return serveDashboard(gctx, ln, dash, gatherers, cfg.ShutdownTimeout, log) })
			return g.Wait()
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfgPath, "config", "", "dashboard YAML (dashboard.Config)")
	f.StringVar(&listen, "listen", dashboard.DefaultListen, "address of the page, its API, the feed, /healthz and /metrics")
	f.StringVar(&publicAuthority, "public-authority-url", "", "the authority link the page shows, when browsers reach it by another address than --authority")
	f.StringVar(&c.cfgPath, "chaos-config", "", "chaos YAML (chaos.Config) listing the targets the chaos buttons may hit (default: buttons off)")
	c.ao.register(f)
	tf.register(f)
	return cmd
}

// dashboardChaos builds the chaos simulator behind the buttons with
// chaosSetup, so that the config, credentials and self-registration rules
// are those of `passport chaos fire`, and fills act's chaos fields.
func (a *app) dashboardChaos(ctx context.Context, c *chaosFlags, act *dashboardActions) (*prometheus.Registry, func(context.Context) error, func(), error) {
	// The buttons offer exactly the targets the chaos config lists (its
	// documented meaning: the services chaos may break). Without a list,
	// the simulator discovers its targets through the proxy with its own
	// passport, which chaosSetup keeps inside the simulator; listing them
	// here instead keeps the page truthful. Checked before chaosSetup, which
	// may register an agent.
	var pre chaos.Config
	if err := config.Load(c.cfgPath, &pre); err != nil {
		return nil, nil, nil, err
	}
	if len(pre.Targets) == 0 {
		return nil, nil, nil, fmt.Errorf("--chaos-config %s lists no targets: name the services the chaos buttons may hit (targets: [...])", c.cfgPath)
	}
	var cfg *chaos.Config
	ch, reg, run, closeAll, err := a.chaosSetup(ctx, c, func(cc *chaos.Config) { cfg = cc })
	if err != nil {
		return nil, nil, nil, err
	}
	// chaosSetup fills Tenant and ProxyURL from the agent's environment
	// (--tenant, --data, ...) in the Config it handed to mutate; read them
	// once it has returned.
	act.chaos, act.chaosTenant, act.targets = ch, cfg.Tenant, slices.Sorted(slices.Values(cfg.Targets))
	return reg, run, closeAll, nil
}

// serveDashboard is dashboard.Server.Serve with /metrics beside the page:
// the dashboard's own handler has no metrics route, and Prometheus scrapes
// every component on its --listen port.
func serveDashboard(ctx context.Context, ln net.Listener, dash *dashboard.Server, metrics prometheus.Gatherer, shutdownTimeout time.Duration, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(metrics, promhttp.HandlerOpts{}))
	mux.Handle("/", dash.Handler())
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	g, gctx := errgroup.WithContext(ctx)
	// The feed's hub closes open WebSockets with 1001 when gctx ends, so
	// that pages reconnect; Shutdown does not wait for hijacked connections.
	g.Go(func() error { return dash.Feed().Run(gctx) })
	g.Go(func() error {
		log.InfoContext(gctx, "dashboard listening", "addr", ln.Addr().String(), "tls", dash.TLSConfig() != nil)
		if err := tlsx.Serve(srv, ln, dash.TLSConfig()); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("dashboard serve: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(gctx), shutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			return fmt.Errorf("dashboard shutdown: %w", err)
		}
		return nil
	})
	return g.Wait()
}

// dashboardActions adapts the authority's admin API and, when configured,
// one chaos simulator (one tenant) to the dashboard's buttons.
type dashboardActions struct {
	dashboard.AdminAgents
	// chaos is nil when the dashboard runs without --chaos-config.
	chaos       *chaos.Chaos
	chaosTenant string
	targets     []string
}

// errChaosOff is never shown to a client: with chaos off Targets is empty,
// so the API refuses the target before it calls FireChaos.
var errChaosOff = errors.New("chaos is off: start the dashboard with --chaos-config")

func (d *dashboardActions) FireChaos(ctx context.Context, tenant, faultType, target string) error {
	if d.chaos == nil {
		return errChaosOff
	}
	if tenant != d.chaosTenant {
		return dashboard.ErrNotFound
	}
	_, err := d.chaos.Fire(ctx, faultType, target)
	return err
}

// Targets lists the chaos config's targets for the chaos agent's tenant,
// and none for any other tenant or when chaos is off: the chaos agent holds
// passports for its own tenant only.
func (d *dashboardActions) Targets(_ context.Context, tenant string) ([]string, error) {
	if d.chaos == nil || tenant != d.chaosTenant {
		return nil, nil
	}
	return slices.Clone(d.targets), nil
}

var _ dashboard.Actions = (*dashboardActions)(nil)
