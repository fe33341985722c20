// Package run runs the long-lived parts of a component as a group with
// owners: each part is a func(ctx) error, the first failure cancels the
// others, Wait waits for all of them, and a panic in a part is recovered,
// logged with its stack and counted (passport_panics_total{part}) and
// ends the group with an error instead of killing the process unlogged.
package run

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
)

// Panics counts and logs recovered panics. The zero value and nil still
// recover (and log nothing).
type Panics struct {
	log   *slog.Logger
	count *prometheus.CounterVec
}

// NewPanics registers passport_panics_total on reg (nil: not exported).
func NewPanics(reg prometheus.Registerer, log *slog.Logger) *Panics {
	p := &Panics{log: log, count: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "passport_panics_total",
		Help: "Panics recovered in long-lived goroutines, by part. Each one stopped its component with an error.",
	}, []string{"part"})}
	if reg != nil {
		if err := reg.Register(p.count); err != nil {
			if are, ok := err.(prometheus.AlreadyRegisteredError); ok {
				p.count = are.ExistingCollector.(*prometheus.CounterVec)
			}
		}
	}
	return p
}

// watch shows part's count (0) before any panic, so that dashboards and
// alerts see the series from the start.
func (p *Panics) watch(part string) {
	if p != nil && p.count != nil {
		p.count.WithLabelValues(part)
	}
}

// Guard calls fn and turns a panic in it into an error naming part.
func (p *Panics) Guard(part string, fn func() error) (err error) {
	p.watch(part)
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("%s: panic: %v", part, v)
			if p != nil && p.count != nil {
				p.count.WithLabelValues(part).Inc()
			}
			if p != nil && p.log != nil {
				p.log.Error("panic recovered", "part", part, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			}
		}
	}()
	return fn()
}

type panicsKey struct{}

// WithPanics returns ctx carrying p: the goroutines a part starts inside
// its component (Guarded) are then recovered and counted like the part.
func WithPanics(ctx context.Context, p *Panics) context.Context {
	return context.WithValue(ctx, panicsKey{}, p)
}

// PanicsFrom returns the Panics ctx carries, or nil, which still recovers
// (and logs and counts nothing).
func PanicsFrom(ctx context.Context) *Panics {
	p, _ := ctx.Value(panicsKey{}).(*Panics)
	return p
}

// Guarded wraps fn, a goroutine a component starts, for an errgroup (or a
// plain go statement): a panic in it is recovered, logged and counted
// under part by the Panics ctx carries, and returned as an error.
func Guarded(ctx context.Context, part string, fn func() error) func() error {
	p := PanicsFrom(ctx)
	p.watch(part)
	return func() error { return p.Guard(part, fn) }
}

// Group runs parts until the first fails or its context ends.
type Group struct {
	g      *errgroup.Group
	ctx    context.Context
	panics *Panics
}

// NewGroup returns a group whose parts get a context derived from ctx
// that ends when any part fails.
func NewGroup(ctx context.Context, panics *Panics) *Group {
	g, gctx := errgroup.WithContext(WithPanics(ctx, panics))
	return &Group{g: g, ctx: gctx, panics: panics}
}

// Context is the context the parts run with.
func (g *Group) Context() context.Context { return g.ctx }

// Go starts fn as the part named part.
func (g *Group) Go(part string, fn func(ctx context.Context) error) {
	g.g.Go(func() error { return g.panics.Guard(part, func() error { return fn(g.ctx) }) })
}

// Wait waits for every part and returns the first error.
func (g *Group) Wait() error { return g.g.Wait() }
