package proxy

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/agentpassport/passport/audit"
)

// errAborted is the cause with which the drain cancels the calls still
// running at its deadline.
var errAborted = errors.New("call aborted at the drain deadline")

// inflight tracks the calls between their arrival and their answer, so
// that a drain can wait for them, and record and cut the ones still
// running at its deadline.
type inflight struct {
	mu       sync.Mutex
	calls    map[*call]struct{}
	draining bool
	idle     chan struct{} // closed once draining and no call is left
}

func newInflight() *inflight {
	return &inflight{calls: map[*call]struct{}{}, idle: make(chan struct{})}
}

// enter registers c; false once the drain has begun (the call is then
// answered 503 draining and not registered).
func (f *inflight) enter(c *call) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.draining {
		return false
	}
	f.calls[c] = struct{}{}
	return true
}

func (f *inflight) leave(c *call) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.calls, c)
	if f.draining && len(f.calls) == 0 {
		select {
		case <-f.idle:
		default:
			close(f.idle)
		}
	}
}

// drain refuses new calls from now on and returns a channel closed once
// the calls in flight have all answered.
func (f *inflight) drain() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.draining {
		f.draining = true
		if len(f.calls) == 0 {
			close(f.idle)
		}
	}
	return f.idle
}

func (f *inflight) snapshot() []*call {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]*call, 0, len(f.calls))
	for c := range f.calls {
		out = append(out, c)
	}
	return out
}

// forwarding is what a call that reached the forward step keeps for its
// outcome record, which either the call or the drain writes (once).
type forwarding struct {
	recorded atomic.Bool
	outcome  func(status int) *audit.Record
}

// recordOutcome enqueues the call's outcome record with status unless it
// was already written; edit adjusts it first (the drain marks it aborted).
func (p *Proxy) recordOutcome(c *call, status int, edit func(*audit.Record)) {
	fw := c.fw.Load()
	if fw == nil || !fw.recorded.CompareAndSwap(false, true) {
		return
	}
	rec := fw.outcome(status)
	if edit != nil {
		edit(rec)
	}
	p.audit.Enqueue(rec)
}

// cut ends the calls still running at the drain deadline: a call that was
// forwarded gets its outcome record now, marked aborted, before its
// context is cancelled (its upstream request ends, its agent gets 503
// aborted when nothing was sent yet); a call not yet forwarded is
// cancelled, so it cannot be forwarded after the drain. It returns how
// many calls it cut.
func (p *Proxy) cut() int {
	calls := p.flight.snapshot()
	for _, c := range calls {
		// The status the agent gets when no answer had begun; the upstream's
		// own status, if it had, is not read here (the call owns it).
		p.recordOutcome(c, 503, func(rec *audit.Record) { rec.Reasons = []string{"aborted"} })
		c.cancel(errAborted)
	}
	return len(calls)
}

// aborted reports whether the drain cut the call of ctx.
func aborted(ctx context.Context) bool { return errors.Is(context.Cause(ctx), errAborted) }
