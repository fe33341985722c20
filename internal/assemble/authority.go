package assemble

import (
	"context"
	"fmt"
	"net"

	"github.com/agentpassport/passport/authority"
)

// Authority assembles the passport authority: Redis from cfg.Redis (or
// env.Redis), its audit writer from cfg.Audit, the authority, and a
// runner that serves on ln (nil: cfg.Listen). The authority records every
// block, unblock, reputation change, revocation, approval and enrollment.
func Authority(ctx context.Context, cfg authority.Config, env Env, ln net.Listener) (*Service, *authority.Authority, error) {
	if env.Logger == nil {
		return nil, nil, errNoLogger
	}
	if err := cfg.Validate(); err != nil {
		return nil, nil, fmt.Errorf("authority config: %w", err)
	}
	s := newService("authority", env)
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
	a, err := authority.New(cfg, authority.Deps{Redis: rdb, Logger: s.log.With("component", "authority"), Registry: s.Registry, Audit: w})
	if err != nil {
		s.Close()
		return nil, nil, err
	}
	s.add("authority", func(ctx context.Context) error { return a.Run(ctx, ln) })
	return s, a, nil
}
