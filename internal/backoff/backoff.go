// Package backoff is the one retry wait of the project: exponential,
// capped, and jittered, so that a fleet of processes that lost Redis (or a
// witness, or a webhook) at the same moment does not come back in
// lockstep.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff is an exponential wait from Min, doubling up to Max. Each wait is
// drawn from [d/2, d] ("equal jitter"): never shorter than half the
// schedule, never in step with another process. The zero value waits
// 100ms doubling to 5s. Not safe for concurrent use.
type Backoff struct {
	Min, Max time.Duration
	cur      time.Duration
}

func (b *Backoff) bounds() (lo, hi time.Duration) {
	lo, hi = b.Min, b.Max
	if lo <= 0 {
		lo = 100 * time.Millisecond
	}
	if hi < lo {
		hi = max(lo, 5*time.Second)
	}
	return lo, hi
}

// Next returns the next wait and doubles the schedule.
func (b *Backoff) Next() time.Duration {
	lo, hi := b.bounds()
	if b.cur < lo {
		b.cur = lo
	}
	d := b.cur
	b.cur = min(b.cur*2, hi)
	return Jitter(d)
}

// Reset starts the schedule again from Min, after a success.
func (b *Backoff) Reset() { b.cur = 0 }

// Wait sleeps Next() or until ctx ends; it reports false when ctx ended.
func (b *Backoff) Wait(ctx context.Context) bool {
	t := time.NewTimer(b.Next())
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Jitter returns a duration drawn from [d/2, d].
func Jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	half := d / 2
	return half + rand.N(d-half+1)
}
