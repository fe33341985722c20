package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"

	"github.com/spf13/cobra"

	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/chaos"
	"github.com/agentpassport/passport/dashboard"
	"github.com/agentpassport/passport/internal/assemble"
	"github.com/agentpassport/passport/internal/config"
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
			// Fail closed (the assembly refuses it): without an admin token
			// nobody could sign in, and a dashboard must never fall back to
			// a well-known one.
			adminToken := firstNonEmpty(dAdmin, a.getenv("PASSPORT_ADMIN_TOKEN"))
			if err := assemble.CheckAdminToken(adminToken); err != nil {
				return err
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
			var chaosSvc *assemble.Service
			if c.cfgPath != "" {
				// The chaos agent talks to the same authority as the buttons.
				c.ao.authority = cfg.AuthorityURL
				if chaosSvc, err = a.dashboardChaos(ctx, &c, act); err != nil {
					return err
				}
			} else {
				log.Info("no --chaos-config: the chaos buttons are off")
			}
			var ln net.Listener
			if ready != nil {
				if ln, err = net.Listen("tcp", cfg.Listen); err != nil {
					return fmt.Errorf("dashboard listen: %w", err)
				}
				ready(ln.Addr())
			}
			svc, _, err := assemble.Dashboard(ctx, cfg, assemble.Env{Logger: log}, assemble.DashboardDeps{
				Redis: a.redisConfig(firstNonEmpty(dRedis, a.getenv("PASSPORT_REDIS_URL"))), AdminToken: adminToken,
				Actions: act, Chaos: chaosSvc,
			}, ln)
			if err != nil {
				if chaosSvc != nil {
					chaosSvc.Close()
				}
				if ln != nil {
					ln.Close()
				}
				return err
			}
			return svc.Run(ctx)
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

// dashboardChaos assembles the chaos simulator behind the buttons with
// chaosSetup, so that the config, credentials and self-registration rules
// are those of `passport chaos fire`, and fills act's chaos fields.
func (a *app) dashboardChaos(ctx context.Context, c *chaosFlags, act *dashboardActions) (*assemble.Service, error) {
	// The buttons offer exactly the targets the chaos config lists (its
	// documented meaning: the services chaos may break). Without a list,
	// the simulator discovers its targets through the proxy with its own
	// passport, which chaosSetup keeps inside the simulator; listing them
	// here instead keeps the page truthful. Checked before chaosSetup, which
	// may register an agent.
	var pre chaos.Config
	if err := config.Load(c.cfgPath, &pre); err != nil {
		return nil, err
	}
	if len(pre.Targets) == 0 {
		return nil, fmt.Errorf("--chaos-config %s lists no targets: name the services the chaos buttons may hit (targets: [...])", c.cfgPath)
	}
	// Its own writer name: with --data DIR it must not take the identity
	// of the demo's own chaos writer.
	svc, ch, cfg, err := a.chaosSetup(ctx, c, nil, assemble.ChaosOptions{Name: "chaos-dashboard-" + firstNonEmpty(c.ao.tenant, pre.Tenant, "acme")}, false)
	if err != nil {
		return nil, err
	}
	act.chaos, act.chaosTenant, act.targets = ch, cfg.Tenant, slices.Sorted(slices.Values(cfg.Targets))
	return svc, nil
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

var (
	_ dashboard.Actions   = (*dashboardActions)(nil)
	_ dashboard.Approvals = (*dashboardActions)(nil) // through dashboard.AdminAgents
)
