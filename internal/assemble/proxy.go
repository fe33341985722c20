package assemble

import (
	"context"
	"fmt"
	"net"

	"github.com/agentpassport/passport/policies"
	"github.com/agentpassport/passport/proxy"
)

// Proxy assembles the enforcing proxy: Redis from cfg.Redis (or
// env.Redis), its audit writer from cfg.Audit, the proxy with the policy
// library built into the binary (or cfg.Policy.Dir), and a runner that
// serves agents on ln and /metrics, /healthz, /readyz on adminLn (nil:
// cfg.Listen and cfg.AdminListen). The writer outlives the proxy's drain,
// so the outcome records of calls in flight at shutdown are written too.
func Proxy(ctx context.Context, cfg proxy.Config, env Env, ln, adminLn net.Listener) (*Service, *proxy.Proxy, error) {
	if env.Logger == nil {
		return nil, nil, errNoLogger
	}
	if err := cfg.Validate(); err != nil {
		return nil, nil, fmt.Errorf("proxy config: %w", err)
	}
	s := newService("proxy", env)
	rdb, err := s.redisFor(ctx, env, cfg.Redis)
	if err != nil {
		s.Close()
		return nil, nil, err
	}
	w, err := s.writer(rdb, env, cfg.Audit)
	if err != nil {
		s.Close()
		return nil, nil, err
	}
	p, err := proxy.New(cfg, proxy.Deps{Redis: rdb, Audit: w, Logger: s.log.With("component", "proxy"), Registry: s.Registry, Policies: policies.FS})
	if err != nil {
		s.Close()
		return nil, nil, fmt.Errorf("proxy: %w", err)
	}
	s.add("proxy", func(ctx context.Context) error {
		if ln == nil && adminLn == nil {
			return p.Run(ctx)
		}
		return p.Serve(ctx, ln, adminLn)
	})
	return s, p, nil
}
