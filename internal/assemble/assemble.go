// Package assemble builds each component of Agent Passport from its config:
// its Redis client, its metrics registry (with the Go and process
// collectors), its audit writer, the component itself and the runner that
// owns them all. `passport <component>` (cmd/passport) and `passport up`
// (internal/stack) both call these functions, so that the demo and a
// production deployment run the same wiring.
//
// A Service's Run owns every part: the component stops when its context
// ends, then the audit writer drains what the component left (outcome
// records of calls still in flight) and stops, then Redis is closed.
package assemble

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redisx"
	"github.com/agentpassport/passport/internal/run"
)

// Env is what every assembly takes from the process besides the
// component's own config.
type Env struct {
	// Logger is the process logger; each component adds its name.
	Logger *slog.Logger
	// Redis, when set, is the client to use (passport up shares one);
	// otherwise the assembly opens one from the component's config and
	// closes it when the service stops.
	Redis redis.UniversalClient
	// Witnesses are the process's audit witnesses (PASSPORT_WITNESS,
	// --witness), for writers whose audit.witnesses is empty.
	Witnesses []audit.Witness
	// WitnessToken is sent to HTTP witnesses named in audit.witnesses.
	WitnessToken string
	// KeyDir, when set, keeps the signing key of every writer whose audit
	// section names none, as KeyDir/<service name>.key (made on first use),
	// and names the writer <service name>-<key fingerprint>: one identity
	// across restarts and across one-shot runs (passport up, --data DIR).
	KeyDir string
	// SpoolDir, when set, is the parent of the spool of every writer that
	// has no audit.spool_dir: SpoolDir/<writer id>.
	SpoolDir string
	// Registry, when set, is the registry to use instead of a new one with
	// the Go and process collectors (tests that run several components in
	// one process give each its own).
	Registry *prometheus.Registry
}

func (e Env) logger() *slog.Logger {
	if e.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return e.Logger
}

// Service is an assembled component, ready to Run.
type Service struct {
	// Name is the component's name (authority, proxy, healer-acme, ...).
	Name string
	// Registry holds the component's metrics, the audit writer's, the Go
	// and process collectors and passport_panics_total: what its /metrics
	// serves.
	Registry *prometheus.Registry
	// Writer is the audit writer, nil for a component that writes no
	// records (fleet, dashboard without chaos).
	Writer *audit.Stream

	log    *slog.Logger
	panics *run.Panics
	parts  []part
	// tail parts run beside the audit writer: they outlive the parts'
	// drain and stop with the writer (the proxy's approval alerts).
	tail    []part
	closers []func()
}

type part struct {
	name string
	run  func(context.Context) error
}

func newService(name string, env Env) *Service {
	log := env.logger()
	reg := env.Registry
	if reg == nil {
		reg = NewRegistry()
	}
	return &Service{Name: name, Registry: reg, log: log, panics: run.NewPanics(reg, log.With("component", name))}
}

// NewRegistry is a metrics registry with the Go and process collectors,
// which every component's /metrics serves beside its passport_* names.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

func (s *Service) add(name string, fn func(context.Context) error) {
	s.parts = append(s.parts, part{name, fn})
}

func (s *Service) addTail(name string, fn func(context.Context) error) {
	s.tail = append(s.tail, part{name, fn})
}

func (s *Service) onClose(f func()) { s.closers = append(s.closers, f) }

// Close releases what the assembly opened (the writer's committer,
// Redis) for a service that is never Run. Run calls it itself.
func (s *Service) Close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
	s.closers = nil
}

// Run runs every part of the service until ctx ends or a part fails. The
// audit writer runs beside them and is stopped only after all of them
// have returned, so the records they wrote last are flushed (or spooled),
// sealed and handed to the witnesses; then the writer and Redis are
// closed. A panic in a part is recovered, logged and counted
// (passport_panics_total) and stops the service with an error.
func (s *Service) Run(ctx context.Context) error {
	defer s.Close()
	// The writer and the tail parts stop only once the parts have
	// returned: what the parts write while they drain still goes out.
	tctx, stopTail := context.WithCancel(context.WithoutCancel(ctx))
	defer stopTail()
	tail := run.NewGroup(tctx, s.panics)
	if s.Writer != nil {
		tail.Go(s.Name+"/audit", s.Writer.Run)
	}
	for _, p := range s.tail {
		tail.Go(p.name, p.run)
	}
	g := run.NewGroup(ctx, s.panics)
	for _, p := range s.parts {
		g.Go(p.name, p.run)
	}
	err := g.Wait()
	stopTail()
	if terr := tail.Wait(); err == nil {
		err = terr
	}
	return err
}

// redisFor is env's client, or a new one from cfg that the service closes.
// An unreachable Redis is logged, not fatal: the component says not ready
// (and refuses what needs Redis) until it answers.
func (s *Service) redisFor(ctx context.Context, env Env, cfg redisx.Config) (redis.UniversalClient, error) {
	if env.Redis != nil {
		return env.Redis, nil
	}
	rdb, err := redisx.New(cfg)
	if err != nil {
		return nil, err
	}
	s.onClose(func() { _ = rdb.Close() })
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := redisx.Ping(pctx, rdb); err != nil {
		s.log.Warn("redis not reachable yet", "component", s.Name, "url", redisx.Redact(cfg.URL), "err", err)
	}
	return rdb, nil
}

// writer builds the service's audit writer from its audit section. The
// writer is named after the service unless the section names it.
func (s *Service) writer(rdb redis.UniversalClient, env Env, wc audit.WriterConfig) (*audit.Stream, error) {
	sc, err := wc.StreamConfig("", env.Witnesses, env.WitnessToken)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.Name, err)
	}
	switch {
	case sc.WriterID != "":
	case env.KeyDir != "":
		// The identity is the key: the same key file gives the same id
		// on every start, and a new key (a wiped directory) a new id, never
		// one registered in Redis with another key.
		if sc.SigningKey, err = audit.LoadOrCreateSigningKey(filepath.Join(env.KeyDir, s.Name+".key")); err != nil {
			return nil, fmt.Errorf("%s: %w", s.Name, err)
		}
		sum := sha256.Sum256(sc.SigningKey.Public().(ed25519.PublicKey))
		sc.WriterID = s.Name + "-" + hex.EncodeToString(sum[:4])
	default:
		sc.WriterID = s.Name + "-" + strings.ToLower(rand.Text()[:8])
	}
	if sc.SpoolDir == "" && env.SpoolDir != "" {
		sc.SpoolDir = filepath.Join(env.SpoolDir, sc.WriterID)
	}
	st, err := audit.NewStream(rdb, sc, s.log.With("component", s.Name, "sub", "audit"), s.Registry)
	if err != nil {
		return nil, fmt.Errorf("%s audit writer: %w", s.Name, err)
	}
	s.onClose(func() { _ = st.Close() })
	s.Writer = st
	if wc.Archive.Enabled() {
		// Beside the writer, whose retention checkpoints it writes; one
		// archiver per stream at a time (a lock key in its slot).
		ar, err := audit.NewArchiver(rdb, st, wc.Archive, s.log.With("component", s.Name), s.Registry)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.Name, err)
		}
		s.addTail(s.Name+"/audit-archive", ar.Run)
	}
	return st, nil
}

var errNoLogger = errors.New("assemble: Env.Logger is required")
