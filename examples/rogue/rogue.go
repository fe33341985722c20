// Package rogue is an example of a misbehaving agent, for the demo and the
// end-to-end tests: a LOW-trust observer that keeps trying to restart
// services through the proxy.
//
// Each attempt is denied by policy and recorded in the audit stream; the
// proxy reports every deny to the authority's reputation API, the rogue's
// reputation falls until the authority blocks it, and from then on its
// passport requests are refused (and any passport it still holds is
// rejected by the proxy). The rogue logs every refusal and keeps trying,
// but slowly: its delay doubles up to MaxInterval, so a blocked agent
// does not hammer the authority.
package rogue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/agentpassport/passport/internal/agentcall"
)

// Config configures the rogue agent. Zero fields take the defaults.
type Config struct {
	// Tenant is informational (logs). Default acme.
	Tenant string `yaml:"tenant"`
	// ProxyURL is the proxy. Default http://127.0.0.1:8080.
	ProxyURL string `yaml:"proxy_url"`
	// Targets the rogue tries to restart, in turn. Default [checkout].
	Targets []string `yaml:"targets"`
	// Interval between attempts while it still gets passports. Default 1s.
	Interval time.Duration `yaml:"interval"`
	// MaxInterval caps the doubling delay once it is refused. Default 30s.
	MaxInterval time.Duration `yaml:"max_interval"`
	// MaxAttempts stops the rogue after that many attempts; 0 means until
	// the context ends.
	MaxAttempts int `yaml:"max_attempts"`
}

func (c Config) withDefaults() Config {
	if c.Tenant == "" {
		c.Tenant = "acme"
	}
	if c.ProxyURL == "" {
		c.ProxyURL = "http://127.0.0.1:8080"
	}
	if len(c.Targets) == 0 {
		c.Targets = []string{"checkout"}
	}
	if c.Interval == 0 {
		c.Interval = time.Second
	}
	if c.MaxInterval == 0 {
		c.MaxInterval = 30 * time.Second
	}
	return c
}

// Deps are the rogue's collaborators.
type Deps struct {
	Logger    *slog.Logger        // required
	Passports agentcall.Passports // required: the rogue agent's passports
	HTTP      *http.Client        // nil: a client with a 5s timeout
}

// Stats counts what happened to the rogue's attempts.
type Stats struct {
	Attempts int // loop iterations
	Denied   int // 403 from the proxy (policy deny)
	Rejected int // 401 from the proxy (passport refused: revoked, blocked)
	Refused  int // no passport: the authority refused it
	Allowed  int // the proxy let it through: should stay 0
	Errors   int // anything else
}

// Rogue is the running rogue agent.
type Rogue struct {
	cfg    Config
	deps   Deps
	log    *slog.Logger
	client *agentcall.Client

	mu    sync.Mutex
	stats Stats
}

// New builds the rogue agent.
func New(cfg Config, deps Deps) (*Rogue, error) {
	if deps.Logger == nil || deps.Passports == nil {
		return nil, errors.New("rogue: logger and passports are required")
	}
	cfg = cfg.withDefaults()
	if cfg.Interval <= 0 || cfg.MaxInterval < cfg.Interval || cfg.MaxAttempts < 0 {
		return nil, errors.New("rogue config: interval > 0, max_interval ≥ interval, max_attempts ≥ 0")
	}
	return &Rogue{cfg: cfg, deps: deps, log: deps.Logger.With("component", "rogue", "tenant", cfg.Tenant),
		client: &agentcall.Client{BaseURL: cfg.ProxyURL, HTTP: deps.HTTP, UserAgent: "passport-rogue-example"}}, nil
}

// Stats returns the counts so far.
func (r *Rogue) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats
}

func (r *Rogue) count(f func(*Stats)) {
	r.mu.Lock()
	f(&r.stats)
	r.mu.Unlock()
}

// Run keeps trying until ctx ends or MaxAttempts is reached.
func (r *Rogue) Run(ctx context.Context) error {
	delay := r.cfg.Interval
	for i := 0; r.cfg.MaxAttempts == 0 || i < r.cfg.MaxAttempts; i++ {
		target := r.cfg.Targets[i%len(r.cfg.Targets)]
		refused := r.attempt(ctx, target)
		if ctx.Err() != nil {
			return nil
		}
		if refused {
			delay = min(delay*2, r.cfg.MaxInterval)
		} else {
			delay = r.cfg.Interval
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
	return nil
}

// attempt tries one restart; it reports whether the rogue was refused
// outright (no passport, or its passport rejected), which slows it down.
func (r *Rogue) attempt(ctx context.Context, target string) (refused bool) {
	r.count(func(s *Stats) { s.Attempts++ })
	// The rogue asks for its ordinary observer passport (no scope): asking
	// for service.restart would be refused by the authority before the
	// proxy ever saw the attempt.
	tok, err := r.deps.Passports.Passport(ctx, nil, nil)
	if err != nil {
		if ctx.Err() != nil {
			return false
		}
		r.count(func(s *Stats) { s.Refused++ })
		r.log.Warn("rogue: passport refused", "err", err)
		return true
	}
	_, err = r.client.Do(ctx, tok, http.MethodPost, fmt.Sprintf("/services/%s/restart", target), nil)
	var ae *agentcall.Error
	switch {
	case err == nil:
		r.count(func(s *Stats) { s.Allowed++ })
		r.log.Error("rogue: restart was ALLOWED", "target", target)
	case errors.Is(err, agentcall.ErrDenied):
		r.count(func(s *Stats) { s.Denied++ })
		reasons := []string(nil)
		if errors.As(err, &ae) {
			reasons = ae.Resp.Reasons
		}
		r.log.Info("rogue: restart denied", "target", target, "reasons", reasons)
	case errors.Is(err, agentcall.ErrUnauthorized):
		r.count(func(s *Stats) { s.Rejected++ })
		r.log.Warn("rogue: passport rejected by the proxy", "target", target)
		// A revoked or blocked agent's cached passport is useless: drop it
		// so the next attempt asks the authority again (and is refused).
		if inv, ok := r.deps.Passports.(interface{ Invalidate() }); ok {
			inv.Invalidate()
		}
		return true
	default:
		if ctx.Err() != nil {
			return false
		}
		r.count(func(s *Stats) { s.Errors++ })
		r.log.Warn("rogue: call failed", "target", target, "err", err)
	}
	return false
}
