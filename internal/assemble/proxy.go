package assemble

import (
	"context"
	"fmt"
	"io/fs"
	"net"

	"github.com/agentpassport/passport/internal/alert"
	"github.com/agentpassport/passport/policies"
	"github.com/agentpassport/passport/proxy"
)

// ProxyOptions are what the proxy's host decides beside its config.
type ProxyOptions struct {
	// Listener and AdminListener serve agents and /metrics, /healthz,
	// /readyz; nil: cfg.Listen and cfg.AdminListen.
	Listener, AdminListener net.Listener
	// Policies is the embedded library; nil: the one built into the
	// binary (policies.FS). passport up passes its demo library.
	Policies fs.FS
}

// Proxy assembles the enforcing proxy: Redis from cfg.Redis (or
// env.Redis), its audit writer from cfg.Audit, the approval alerts from
// cfg.Approvals.Alerts, the proxy, and a runner that serves it. The writer
// and the alerts outlive the proxy's drain, so the outcome records of
// calls in flight at shutdown are written, and approvals announced while
// draining go out.
func Proxy(ctx context.Context, cfg proxy.Config, env Env, opts ProxyOptions) (*Service, *proxy.Proxy, error) {
	if env.Logger == nil {
		return nil, nil, errNoLogger
	}
	if err := cfg.Validate(); err != nil {
		return nil, nil, fmt.Errorf("proxy config: %w", err)
	}
	s := newService("proxy", env)
	p, err := s.proxy(ctx, cfg, env, opts)
	if err != nil {
		s.Close()
		return nil, nil, err
	}
	return s, p, nil
}

func (s *Service) proxy(ctx context.Context, cfg proxy.Config, env Env, opts ProxyOptions) (*proxy.Proxy, error) {
	rdb, err := s.redisFor(ctx, env, cfg.Redis)
	if err != nil {
		return nil, err
	}
	w, err := s.writer(rdb, env, cfg.Audit)
	if err != nil {
		return nil, err
	}
	al, err := alert.New(cfg.Approvals.Alerts, alert.Deps{Logger: s.log, Registry: s.Registry})
	if err != nil {
		return nil, err
	}
	lib := opts.Policies
	if lib == nil {
		lib = policies.FS
	}
	p, err := proxy.New(cfg, proxy.Deps{Redis: rdb, Audit: w, Logger: s.log.With("component", "proxy"), Registry: s.Registry,
		Policies: lib, Alerts: al})
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	s.addTail("alerts", al.Run)
	s.add("proxy", func(ctx context.Context) error {
		if opts.Listener == nil && opts.AdminListener == nil {
			return p.Run(ctx)
		}
		return p.Serve(ctx, opts.Listener, opts.AdminListener)
	})
	return p, nil
}
