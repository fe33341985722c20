package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/chaos"
	"github.com/agentpassport/passport/internal/alert"
	"github.com/agentpassport/passport/internal/config"
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

// chaosSetup builds the simulator and what it needs; run starts them.
func (a *app) chaosSetup(ctx context.Context, c *chaosFlags, mutate func(*chaos.Config)) (*chaos.Chaos, *prometheus.Registry, func(context.Context) error, func(), error) {
	log, err := a.logger()
	if err != nil {
		return nil, nil, nil, nil, err
	}
	var cfg chaos.Config
	if err := config.Load(c.cfgPath, &cfg); err != nil {
		return nil, nil, nil, nil, err
	}
	if mutate != nil {
		mutate(&cfg)
	}
	env, err := a.agentEnv(ctx, c.ao, passport.TypeChaos, cfg.Tenant, cfg.ProxyURL, log)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	cfg.Tenant, cfg.ProxyURL = env.tenant, env.proxyURL
	if len(cfg.Targets) == 0 && c.ao.data != "" {
		// The demo's fleet lists its services without a passport, so a
		// mistyped target is refused before any passport is asked for.
		if targets, err := a.demoFleetTargets(ctx, c.ao.data, cfg.Tenant); err == nil {
			cfg.Targets = targets
		} else {
			log.Warn("the fleet's services are unknown: targets will be checked through the proxy", "err", err)
		}
	}
	rdb, err := a.agentRedis(ctx, env.redisURL)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("chaos: %w", err)
	}
	reg := prometheus.NewRegistry()
	stream, err := audit.NewStream(rdb, audit.StreamConfig{Witnesses: env.witnesses}, log, reg)
	if err != nil {
		_ = rdb.Close()
		return nil, nil, nil, nil, fmt.Errorf("chaos: audit stream: %w", err)
	}
	al, err := alert.New(cfg.Alerts, alert.Deps{Logger: log, Registry: reg})
	if err != nil {
		return nil, nil, nil, nil, err
	}
	tc, err := a.clientTLS()
	if err != nil {
		return nil, nil, nil, nil, err
	}
	ch, err := chaos.New(cfg, chaos.Deps{Logger: log, Passports: env.passports, Sink: stream, Registry: reg, Alerts: al, TLS: tc})
	if err != nil {
		return nil, nil, nil, nil, err
	}
	run := func(ctx context.Context) error {
		g, gctx := errgroup.WithContext(ctx)
		g.Go(func() error { return stream.Run(gctx) })
		g.Go(func() error { return al.Run(gctx) })
		return g.Wait()
	}
	closeAll := func() { _ = stream.Close(); _ = rdb.Close() }
	return ch, reg, run, closeAll, nil
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
			ch, _, run, closeAll, err := a.chaosSetup(cmd.Context(), &c, nil)
			if err != nil {
				return err
			}
			defer closeAll()
			// Run the writer's background work while firing; the event
			// itself is appended synchronously before Fire returns.
			rctx, cancel := context.WithCancel(cmd.Context())
			done := make(chan error, 1)
			go func() { done <- run(rctx) }()
			var ev chaos.Event
			if clear {
				ev, err = ch.Clear(cmd.Context(), target)
			} else {
				ev, err = ch.Fire(cmd.Context(), args[0], target)
			}
			cancel()
			<-done
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
			ch, reg, run, closeAll, err := a.chaosSetup(cmd.Context(), &c, func(cfg *chaos.Config) {
				if cmd.Flags().Changed("interval") || cfg.Interval == 0 {
					cfg.Interval = interval
				}
				if cmd.Flags().Changed("seed") {
					cfg.Seed = seed
				}
				if cmd.Flags().Changed("max-active") {
					cfg.MaxActive = maxActive
				}
			})
			if err != nil {
				return err
			}
			defer closeAll()
			g, ctx := errgroup.WithContext(cmd.Context())
			g.Go(func() error { return run(ctx) })
			g.Go(func() error { return ch.Run(ctx) })
			if listen != "" {
				g.Go(func() error { return chaosServeMetrics(ctx, listen, reg) })
			}
			return g.Wait()
		},
	}
	c.register(cmd)
	cmd.Flags().DurationVar(&interval, "interval", chaos.DefaultInterval, "time between random events")
	cmd.Flags().Uint64Var(&seed, "seed", 0, "random seed for a reproducible run (0: from the clock)")
	cmd.Flags().IntVar(&maxActive, "max-active", 1, "most faults active at once across the targets (blast radius)")
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:9092", "address of /metrics and /healthz (\"\" to disable)")
	return cmd
}

// chaosServeMetrics serves /metrics and /healthz until ctx is done.
func chaosServeMetrics(ctx context.Context, addr string, reg *prometheus.Registry) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // > net/http's 5 s wait for a connection that sent nothing yet
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// demoFleetTargets lists tenant's services on the fleet of a running
// passport up (DIR/demo.json), which answers without a passport on
// loopback.
func (a *app) demoFleetTargets(ctx context.Context, dir, tenant string) ([]string, error) {
	d, err := loadAgentDemoFile(dir)
	if err != nil {
		return nil, err
	}
	if d.URLs.Fleet == "" {
		return nil, errors.New("demo.json names no fleet")
	}
	hc, err := a.httpClient(5 * time.Second)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.URLs.Fleet+"/services", nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s/services: %s", d.URLs.Fleet, resp.Status)
	}
	var list struct {
		Services []struct {
			Name   string `json:"name"`
			Tenant string `json:"tenant"`
		} `json:"services"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&list); err != nil {
		return nil, fmt.Errorf("GET %s/services: %w", d.URLs.Fleet, err)
	}
	var out []string
	for _, s := range list.Services {
		if s.Tenant == tenant {
			out = append(out, s.Name)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("the fleet has no service of tenant %s", tenant)
	}
	return out, nil
}
