package assemble

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/agentpassport/passport/authority"
	"github.com/agentpassport/passport/dashboard"
	"github.com/agentpassport/passport/examples/fleet"
	"github.com/agentpassport/passport/feed"
	"github.com/agentpassport/passport/internal/redisx"
	"github.com/agentpassport/passport/passport"
)

// DashboardDeps are the dashboard's collaborators beside its config.
type DashboardDeps struct {
	// Redis is where the feed reads the audit streams, when Env.Redis is
	// not set.
	Redis redisx.Config
	// AdminToken is the token operators sign in with. Required: a
	// dashboard never falls back to a well-known one.
	AdminToken string
	// Actions carry out the buttons (block, unblock, chaos, approvals).
	Actions dashboard.Actions
	// Chaos, when set, is the assembled simulator behind the chaos
	// buttons: it runs as a part of the dashboard, which shares its
	// registry (one /metrics for both).
	Chaos *Service
}

// Dashboard assembles the dashboard: Redis for its feed, the page, its
// API, the feed and /metrics (with the feed's metrics and the Go and
// process collectors), served on ln (nil: cfg.Listen).
func Dashboard(ctx context.Context, cfg dashboard.Config, env Env, deps DashboardDeps, ln net.Listener) (*Service, *dashboard.Server, error) {
	if env.Logger == nil {
		return nil, nil, errNoLogger
	}
	if err := CheckAdminToken(deps.AdminToken); err != nil {
		return nil, nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, nil, fmt.Errorf("dashboard config: %w", err)
	}
	if deps.Chaos != nil {
		// One registry for both, so that /metrics has the Go and process
		// collectors once.
		env.Registry = deps.Chaos.Registry
	}
	s := newService("dashboard", env)
	rdb, err := s.redisFor(ctx, env, deps.Redis)
	if err != nil {
		s.Close()
		return nil, nil, err
	}
	dash, err := dashboard.New(cfg, dashboard.Deps{
		Redis: rdb, Logger: s.log.With("component", "dashboard"), Registry: s.Registry,
		Auth:    feed.NewStaticAuth(feed.Token{Secret: passport.Secret(deps.AdminToken)}),
		Actions: deps.Actions,
	})
	if err != nil {
		s.Close()
		return nil, nil, err
	}
	if deps.Chaos != nil {
		s.add("chaos", deps.Chaos.Run)
	}
	s.add("dashboard", func(ctx context.Context) error {
		if ln == nil {
			return dash.Run(ctx)
		}
		return dash.Serve(ctx, ln)
	})
	return s, dash, nil
}

// CheckAdminToken refuses a dashboard admin token that is missing or
// too short: a dashboard never runs with a well-known or guessable one.
func CheckAdminToken(tok string) error {
	if tok == "" {
		return errors.New("dashboard: no admin token: set PASSPORT_ADMIN_TOKEN (operators sign in with it, and Block/Unblock call the admin API with it)")
	}
	if len(tok) < authority.MinAdminTokenLength {
		return fmt.Errorf("dashboard: PASSPORT_ADMIN_TOKEN is shorter than %d characters", authority.MinAdminTokenLength)
	}
	return nil
}

// Fleet assembles the demo fleet (a control API with real faults) and
// serves its /metrics with the Go and process collectors.
func Fleet(cfg fleet.Config, env Env) (*Service, *fleet.Fleet, error) {
	if env.Logger == nil {
		return nil, nil, errNoLogger
	}
	s := newService("fleet", env)
	f, err := fleet.New(cfg, fleet.Deps{Logger: s.log.With("component", "fleet"), Registry: s.Registry})
	if err != nil {
		return nil, nil, fmt.Errorf("fleet: %w", err)
	}
	s.add("fleet", f.Run)
	return s, f, nil
}
