package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/agentpassport/passport/chaos"
	"github.com/agentpassport/passport/internal/assemble"
	"github.com/agentpassport/passport/internal/config"
	"github.com/agentpassport/passport/internal/redisx"
	"github.com/agentpassport/passport/internal/stack"
	"github.com/agentpassport/passport/passport"
)

func (a *app) chaosCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "chaos",
		Short: "Inject faults into the fleet, as a chaos agent going through the proxy",
		Long: `Chaos is an agent of type chaos: it holds a passport (scope chaos.inject) and injects
faults with POST /faults/{name} through the proxy, so every fault is authorised by
policy and recorded in the audit stream (kind chaos).

Credentials: --data DIR (the chaos agent of the tenant in DIR/demo.json), or
PASSPORT_CLIENT_ID and PASSPORT_CLIENT_SECRET, or else it registers a new chaos
agent with PASSPORT_ADMIN_TOKEN.`,
	}
	cmd.AddCommand(a.chaosFireCmd(), a.chaosRunCmd())
	return cmd
}

// chaosFlags are shared by fire and run.
type chaosFlags struct {
	cfgPath string
	ao      agentOpts
}

func (c *chaosFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&c.cfgPath, "config", "", "chaos YAML (chaos.Config)")
	c.ao.register(cmd.Flags())
}

// chaosSetup assembles the simulator from the chaos flags and config;
// mutate, when not nil, adjusts the config before the agent's environment
// fills tenant and proxy. oneShot names the writer chaos-cli-<tenant> and
// keeps its identity (see oneShotIdentity), so that repeated fires reuse
// one writer.
func (a *app) chaosSetup(ctx context.Context, c *chaosFlags, mutate func(*chaos.Config), opts assemble.ChaosOptions, oneShot bool) (*assemble.Service, *chaos.Chaos, chaos.Config, error) {
	log, err := a.logger()
	if err != nil {
		return nil, nil, chaos.Config{}, err
	}
	var cfg chaos.Config
	if err := config.Load(c.cfgPath, &cfg); err != nil {
		return nil, nil, cfg, err
	}
	if mutate != nil {
		mutate(&cfg)
	}
	env, err := a.agentEnv(ctx, c.ao, passport.TypeChaos, cfg.Tenant, cfg.ProxyURL, log)
	if err != nil {
		return nil, nil, cfg, err
	}
	cfg.Tenant, cfg.ProxyURL = env.tenant, env.proxyURL
	tc, err := a.clientTLS()
	if err != nil {
		return nil, nil, cfg, err
	}
	aenv := a.assembleEnv(log, env)
	if oneShot {
		opts.Name = "chaos-cli-" + env.tenant
		if aenv.KeyDir == "" {
			aenv.KeyDir, aenv.SpoolDir = a.oneShotIdentity(c.ao, log)
		}
	}
	opts.Passports, opts.TLS = env.passports, tc
	opts.Redis = a.redisConfig(firstNonEmpty(env.redisURL, redisx.DefaultURL))
	svc, ch, err := assemble.Chaos(ctx, cfg, aenv, opts)
	if err != nil {
		return nil, nil, cfg, fmt.Errorf("chaos: %w", err)
	}
	return svc, ch, cfg, nil
}

// oneShotIdentity is where a one-shot command keeps its audit writer's
// key and spool when it has no --data DIR: beside --credentials when set,
// else in the user's configuration directory. "" when there is none (a
// writer per run, as before).
func (a *app) oneShotIdentity(o agentOpts, log *slog.Logger) (keyDir, spoolDir string) {
	base := ""
	if cred := firstNonEmpty(o.credentials, a.getenv("PASSPORT_CREDENTIALS_FILE")); cred != "" {
		base = filepath.Dir(cred)
	} else if dir, err := os.UserConfigDir(); err == nil {
		base = filepath.Join(dir, "passport")
	}
	if base == "" {
		log.Warn("no directory for the audit writer's identity: this run registers a new writer")
		return "", ""
	}
	return filepath.Join(base, stack.AuditKeysDir), filepath.Join(base, "audit-spool")
}

func (a *app) chaosFireCmd() *cobra.Command {
	var (
		c      chaosFlags
		target string
		clear  bool
	)
	cmd := &cobra.Command{
		Use:   "fire service_down|bad_deploy|memory_leak|cache_miss --target NAME",
		Short: "Inject one fault (or --clear a target's fault) through the proxy",
		Args: func(cmd *cobra.Command, args []string) error {
			if clear {
				return cobra.NoArgs(cmd, args)
			}
			return cobra.ExactArgs(1)(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if target == "" {
				return errors.New("--target NAME is required")
			}
			svc, ch, _, err := a.chaosSetup(cmd.Context(), &c, nil, assemble.ChaosOptions{}, true)
			if err != nil {
				return err
			}
			// The event is appended synchronously before Fire returns;
			// Do then stops the writer, which seals it.
			var ev chaos.Event
			err = svc.Do(cmd.Context(), func(ctx context.Context) error {
				var err error
				if clear {
					ev, err = ch.Clear(ctx, target)
				} else {
					ev, err = ch.Fire(ctx, args[0], target)
				}
				return err
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%s %s %s %s\n", ev.ID, ev.Action, ev.Type, ev.Target)
			return nil
		},
	}
	c.register(cmd)
	cmd.Flags().StringVar(&target, "target", "", "service to break (required)")
	cmd.Flags().BoolVar(&clear, "clear", false, "clear the target's active fault instead (DELETE /faults/{name})")
	return cmd
}

func (a *app) chaosRunCmd() *cobra.Command {
	var (
		c         chaosFlags
		interval  time.Duration
		seed      uint64
		maxActive int
		listen    string
	)
	cmd := &cobra.Command{
		Use:   "run --interval D [--seed N] [--max-active K]",
		Short: "Fire random faults at an interval with a blast-radius limit",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			svc, _, _, err := a.chaosSetup(cmd.Context(), &c, func(cfg *chaos.Config) {
				if cmd.Flags().Changed("interval") || cfg.Interval == 0 {
					cfg.Interval = interval
				}
				if cmd.Flags().Changed("seed") {
					cfg.Seed = seed
				}
				if cmd.Flags().Changed("max-active") {
					cfg.MaxActive = maxActive
				}
			}, assemble.ChaosOptions{Loop: true, MetricsListen: listen}, false)
			if err != nil {
				return err
			}
			return svc.Run(cmd.Context())
		},
	}
	c.register(cmd)
	cmd.Flags().DurationVar(&interval, "interval", chaos.DefaultInterval, "time between random events")
	cmd.Flags().Uint64Var(&seed, "seed", 0, "random seed for a reproducible run (0: from the clock)")
	cmd.Flags().IntVar(&maxActive, "max-active", 1, "most faults active at once across the targets (blast radius)")
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:9092", "address of /metrics and /healthz (\"\" to disable)")
	return cmd
}
