package assemble

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/agentpassport/passport/chaos"
	"github.com/agentpassport/passport/healer"
	"github.com/agentpassport/passport/internal/agentcall"
	"github.com/agentpassport/passport/internal/alert"
	"github.com/agentpassport/passport/internal/redisx"
)

// Agent is what the healer and chaos, both agents going through the
// proxy, need beside their config: who they are and where Redis is.
type Agent struct {
	// Passports are the agent's passports from the authority. Required.
	Passports agentcall.Passports
	// Redis is where the writer (and the healer's incidents) go, when
	// Env.Redis is not set.
	Redis redisx.Config
	// TLS verifies the https servers the agent calls; nil: system roots.
	TLS *tls.Config
}

// HealerDeps are the healer's own collaborators.
type HealerDeps struct {
	Agent
	// Reputation receives remediation outcomes; nil reports none.
	Reputation healer.Reputation
	// AdminToken protects the incidents API.
	AdminToken string
}

// Healer assembles the healer of cfg.Tenant: Redis, its audit writer
// (cfg.Audit, named healer-<tenant>), its alert webhooks and the watch on
// blocks that alerts them, the incident store and the healer, which
// serves its incidents API and /metrics on cfg.Listen.
func Healer(ctx context.Context, cfg healer.Config, env Env, deps HealerDeps) (*Service, *healer.Healer, error) {
	if env.Logger == nil {
		return nil, nil, errNoLogger
	}
	if deps.Passports == nil {
		return nil, nil, errors.New("healer: no passports")
	}
	if err := cfg.Validate(); err != nil {
		return nil, nil, fmt.Errorf("healer config: %w", err)
	}
	s := newService("healer-"+firstOr(cfg.Tenant, healer.DefaultTenant), env)
	h, err := s.healer(ctx, cfg, env, deps)
	if err != nil {
		s.Close()
		return nil, nil, err
	}
	return s, h, nil
}

func (s *Service) healer(ctx context.Context, cfg healer.Config, env Env, deps HealerDeps) (*healer.Healer, error) {
	rdb, err := s.redisFor(ctx, env, deps.Redis)
	if err != nil {
		return nil, err
	}
	w, err := s.writer(rdb, env, cfg.Audit)
	if err != nil {
		return nil, err
	}
	al, err := alert.New(cfg.Alerts, alert.Deps{Logger: s.log, Registry: s.Registry})
	if err != nil {
		return nil, err
	}
	h, err := healer.New(cfg, healer.Deps{Logger: s.log, Passports: deps.Passports, Store: healer.NewStore(rdb, cfg.MaxIncidents),
		Reputation: deps.Reputation, Sink: w, Registry: s.Registry, Alerts: al, AdminToken: deps.AdminToken, TLS: deps.TLS})
	if err != nil {
		return nil, err
	}
	s.add("alerts", al.Run)
	s.add("healer", h.Run)
	s.add("block-alerts", func(ctx context.Context) error { return alert.WatchBlocks(ctx, rdb, al, s.log) })
	return h, nil
}

// ChaosOptions say how the chaos simulator runs.
type ChaosOptions struct {
	Agent
	// Loop fires random faults at cfg.Interval (`passport chaos run`);
	// otherwise faults are fired only by Fire (`chaos fire`, the
	// dashboard's buttons).
	Loop bool
	// MetricsListen serves /metrics and /healthz there; "" serves none.
	MetricsListen string
	// Name is the service's name, and so its writer's (default
	// chaos-<tenant>). One-shot commands use their own, so that they
	// never share a writer with a running simulator.
	Name string
}

// Chaos assembles the chaos simulator of cfg.Tenant: Redis, its audit
// writer (cfg.Audit), its alert webhooks and the simulator.
func Chaos(ctx context.Context, cfg chaos.Config, env Env, opts ChaosOptions) (*Service, *chaos.Chaos, error) {
	if env.Logger == nil {
		return nil, nil, errNoLogger
	}
	if opts.Passports == nil {
		return nil, nil, errors.New("chaos: no passports")
	}
	if err := cfg.Validate(); err != nil {
		return nil, nil, fmt.Errorf("chaos config: %w", err)
	}
	name := firstOr(opts.Name, "chaos-"+firstOr(cfg.Tenant, "acme"))
	s := newService(name, env)
	ch, err := s.chaos(ctx, cfg, env, opts)
	if err != nil {
		s.Close()
		return nil, nil, err
	}
	return s, ch, nil
}

func (s *Service) chaos(ctx context.Context, cfg chaos.Config, env Env, opts ChaosOptions) (*chaos.Chaos, error) {
	rdb, err := s.redisFor(ctx, env, opts.Redis)
	if err != nil {
		return nil, err
	}
	w, err := s.writer(rdb, env, cfg.Audit)
	if err != nil {
		return nil, err
	}
	al, err := alert.New(cfg.Alerts, alert.Deps{Logger: s.log, Registry: s.Registry})
	if err != nil {
		return nil, err
	}
	ch, err := chaos.New(cfg, chaos.Deps{Logger: s.log, Passports: opts.Passports, Sink: w, Registry: s.Registry, Alerts: al, TLS: opts.TLS})
	if err != nil {
		return nil, err
	}
	s.add("alerts", al.Run)
	if opts.Loop {
		s.add("chaos", ch.Run)
	}
	if opts.MetricsListen != "" {
		ln, err := net.Listen("tcp", opts.MetricsListen)
		if err != nil {
			return nil, fmt.Errorf("listen %s: %w", opts.MetricsListen, err)
		}
		s.onClose(func() { _ = ln.Close() })
		s.add("metrics", func(ctx context.Context) error { return ServeMetrics(ctx, ln, s.Registry) })
	}
	return ch, nil
}

// Do runs the service while fn runs, and stops it when fn returns: a
// one-shot command (`chaos fire`) gets its writer's checkpoint and
// witness statement written before the process exits.
func (s *Service) Do(ctx context.Context, fn func(ctx context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var ferr error
	s.add("do", func(ctx context.Context) error {
		ferr = fn(ctx)
		cancel()
		return nil
	})
	err := s.Run(ctx)
	if ferr != nil {
		return ferr
	}
	return err
}

// ServeMetrics serves /metrics (reg) and /healthz on ln until ctx ends.
func ServeMetrics(ctx context.Context, ln net.Listener, reg prometheus.Gatherer) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	// Longer than net/http's 5 s wait for a connection that sent nothing yet.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	<-errc
	return nil
}

func firstOr(v, def string) string {
	if v != "" {
		return v
	}
	return def
}
