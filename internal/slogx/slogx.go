// Package slogx holds log/slog helpers shared by every component: a
// handler that keeps logs readable in a storm by letting one line per
// event per interval through and counting the rest.
package slogx

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// SuppressedKey is the attribute that carries, on the next line of an
// event, how many lines of that event were left out before it.
const SuppressedKey = "suppressed"

// maxEvents bounds the events tracked at once (messages are constants in
// the code, so a few hundred at most; the bound guards against a caller
// that formats data into its messages).
const maxEvents = 4096

// RateLimit wraps next so that records at level min or above pass at most
// once per every for each (level, message): the first line of an event in
// a window is written; the following ones are counted, and the count
// goes out as SuppressedKey on the event's next written line, or on a
// "log lines suppressed" line once the window has passed and any other
// line is logged. Records below min always pass. Metrics, not logs, keep
// exact counts; this only keeps a storm of refusals or Redis errors from
// drowning everything else.
func RateLimit(next slog.Handler, min slog.Level, every time.Duration) slog.Handler {
	return &limiter{next: next, min: min, st: &state{every: every, now: time.Now, events: map[event]*window{}}}
}

type event struct {
	level slog.Level
	msg   string
}

type window struct {
	start      time.Time
	suppressed int
}

// state is shared by a limiter and the handlers WithAttrs and WithGroup
// derive from it: the limit is per event, whichever logger logs it.
type state struct {
	every     time.Duration
	now       func() time.Time
	mu        sync.Mutex
	events    map[event]*window
	lastSweep time.Time
}

type limiter struct {
	next slog.Handler
	min  slog.Level
	st   *state
}

func (l *limiter) Enabled(ctx context.Context, level slog.Level) bool {
	return l.next.Enabled(ctx, level)
}

func (l *limiter) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < l.min {
		return l.next.Handle(ctx, r)
	}
	st := l.st
	now := st.now()
	k := event{r.Level, r.Message}
	st.mu.Lock()
	w := st.events[k]
	if w != nil && now.Sub(w.start) < st.every && !now.Before(w.start) {
		w.suppressed++
		st.mu.Unlock()
		return nil
	}
	prev := 0
	if w == nil {
		if len(st.events) >= maxEvents {
			st.sweepLocked(now, nil)
		}
		w = &window{}
		if len(st.events) < maxEvents {
			st.events[k] = w
		}
	} else {
		prev = w.suppressed
	}
	w.start, w.suppressed = now, 0
	var due []suppressed
	if now.Sub(st.lastSweep) >= st.every {
		st.lastSweep = now
		due = st.sweepLocked(now, &k)
	}
	st.mu.Unlock()

	for _, d := range due {
		s := slog.NewRecord(now, d.level, "log lines suppressed", 0)
		s.AddAttrs(slog.String("event", d.msg), slog.Int(SuppressedKey, d.n))
		_ = l.next.Handle(ctx, s)
	}
	if prev > 0 {
		r = r.Clone()
		r.AddAttrs(slog.Int(SuppressedKey, prev))
	}
	return l.next.Handle(ctx, r)
}

type suppressed struct {
	level slog.Level
	msg   string
	n     int
}

// sweepLocked forgets the events whose window has passed and returns the
// ones that left lines out (except skip, whose count goes on its own line).
func (st *state) sweepLocked(now time.Time, skip *event) []suppressed {
	var out []suppressed
	for k, w := range st.events {
		if now.Sub(w.start) < st.every {
			continue
		}
		if w.suppressed > 0 && (skip == nil || k != *skip) {
			out = append(out, suppressed{k.level, k.msg, w.suppressed})
		}
		if skip == nil || k != *skip {
			delete(st.events, k)
		}
	}
	return out
}

func (l *limiter) WithAttrs(as []slog.Attr) slog.Handler {
	return &limiter{next: l.next.WithAttrs(as), min: l.min, st: l.st}
}

func (l *limiter) WithGroup(name string) slog.Handler {
	return &limiter{next: l.next.WithGroup(name), min: l.min, st: l.st}
}

var _ slog.Handler = (*limiter)(nil)
