package audit

import (
	"context"
	"errors"
	"time"

	"github.com/agentpassport/passport/internal/backoff"
	"github.com/agentpassport/passport/internal/run"
)

// Run writes the Enqueued (outcome) records with retry and backoff, writes
// periodic signed checkpoints, trims when retention is configured and
// re-checks the durability settings. With witnesses configured it also
// sends them a signed statement after each checkpoint round (or a
// heartbeat while nothing is new).
//
// Writes to Redis run one attempt at a time beside the loop, so the
// buffer keeps draining however long Redis takes. While Redis does not
// take outcome records, the batch that failed is retried as it is (the
// same items, so a write that did land is found by the chain-head check
// and not written twice) and everything enqueued behind it goes to the
// spool on disk; once Redis takes the batch, the spool is written back in
// order, and new records join its tail until it is empty.
//
// When ctx is done it flushes what it can within ShutdownTimeout, spools
// the rest (counted as dropped only if the spool cannot take it either),
// writes a final checkpoint for every chain, hands the witnesses a closing
// statement, stops the committer (Close) and returns nil. A writer runs
// once: Appends after Run has returned fail with ErrClosed.
func (s *Stream) Run(ctx context.Context) error {
	s.startCommitter()
	// Run owns the writer: once it has drained and sealed, the committer
	// stops too, so no caller has to order Run and Close by hand.
	defer s.Close()
	s.wit.start(ctx)
	ckpt := time.NewTicker(s.cfg.CheckpointInterval)
	defer ckpt.Stop()
	dur := time.NewTicker(s.cfg.DurabilityInterval)
	defer dur.Stop()
	var retention <-chan time.Time
	if s.cfg.Retention > 0 {
		t := time.NewTicker(s.cfg.RetentionInterval)
		defer t.Stop()
		retention = t.C
	}

	var (
		fl       flusher
		inFlight chan attempt     // the attempt under way, if any
		flying   int              // its records
		retryAt  <-chan time.Time // set after a failed attempt: wait before the next
		retry    = backoff.Backoff{Min: s.cfg.RetryMin, Max: s.cfg.RetryMax}
	)
	for {
		if inFlight == nil && retryAt == nil {
			if next := s.nextAttempt(&fl); next != nil {
				flying = len(next.items)
				inFlight = make(chan attempt, 1)
				go func(a attempt, done chan<- attempt) {
					err := run.Guarded(ctx, "audit.outcomes", func() error {
						a.failed = s.flushOutcomes(ctx, a.items)
						return nil
					})()
					if err != nil {
						a.failed = a.items // recovered from a panic: every record is retried
					}
					done <- a
				}(*next, inFlight)
			}
		}
		behind := fl.behind(s)
		s.bl.blocked.Store(behind)
		// Records taken from the buffer but not yet in Redis or the spool.
		s.inflight.Store(int64(flying + len(fl.retry) + len(fl.pending) + len(s.bl.held)))
		s.m.bufferDepth.Set(float64(len(s.outq)) + float64(s.inflight.Load()))
		select {
		case <-ctx.Done():
			if inFlight != nil {
				fl.settle(s, <-inFlight) // bounded by WriteTimeout
			}
			return s.shutdown(&fl)
		case rec := <-s.outq:
			recs := s.drain(rec)
			switch {
			case behind:
				s.spill(recs)
			default:
				fl.pending = append(fl.pending, recs...)
				if len(fl.pending) >= s.cfg.OutcomeBuffer/2 {
					// Redis is slow to take even one batch: do not hold
					// more than half a buffer in memory.
					s.spill(fl.pending)
					fl.pending = nil
				}
			}
		case a := <-inFlight:
			inFlight, flying = nil, 0
			if fl.settle(s, a) {
				retry.Reset()
			} else {
				retryAt = time.After(retry.Next())
			}
		case <-retryAt:
			retryAt = nil
		case <-ckpt.C:
			if err := s.Checkpoint(ctx, CheckpointPeriodic); err != nil && ctx.Err() == nil {
				s.log.Warn("audit checkpoint failed", "err", err)
			}
			s.wit.publish("")
			s.registerTenants(ctx)
		case <-dur.C:
			cctx, cancel := context.WithTimeout(ctx, s.cfg.WriteTimeout)
			s.checkDurability(cctx)
			cancel()
		case <-retention:
			if err := s.trimAll(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("audit retention failed", "err", err)
			}
		}
	}
}

// flusher is Run's state of the records Redis has not taken yet, oldest
// first: a failed batch (retry), records the spool could not take
// (s.bl.held), the spool, then records read from the buffer (pending).
type flusher struct {
	retry   []*item
	from    *spoolBatch // retry's place in the spool, when read from there
	pending []*Record
}

// attempt is one write of a batch to Redis.
type attempt struct {
	items  []*item
	from   *spoolBatch
	failed []*item
}

func (fl *flusher) behind(s *Stream) bool {
	return fl.retry != nil || len(s.bl.held) > 0 || s.spooled() > 0
}

// settle takes an attempt's result; it reports whether it went through.
func (fl *flusher) settle(s *Stream, a attempt) bool {
	if a.failed == nil {
		s.ackSpool(a.from)
		return true
	}
	fl.retry, fl.from = a.failed, a.from
	if len(fl.pending) > 0 {
		// Read while the attempt was under way, so newer than it: they
		// wait in the spool, where everything after a failure goes.
		s.spill(fl.pending)
		fl.pending = nil
	}
	return false
}

// nextAttempt picks the oldest records waiting: the failed batch, then
// records held in memory (into the spool if it works again, else straight
// to Redis), then the spool, then the buffer.
func (s *Stream) nextAttempt(fl *flusher) *attempt {
	if fl.retry != nil {
		a := &attempt{items: fl.retry, from: fl.from}
		fl.retry, fl.from = nil, nil
		return a
	}
	if len(s.bl.held) > 0 {
		held := s.bl.held
		s.bl.held = nil
		if !s.spoolAppend(held) {
			held, s.bl.held = s.bl.held, nil
			n := min(len(held), 4*s.cfg.MaxBatch)
			s.bl.held = held[n:]
			return &attempt{items: items(held[:n])}
		}
	}
	if sp := s.bl.spool.Load(); sp != nil && sp.len() > 0 {
		recs, pos, size, err := sp.read(4 * s.cfg.MaxBatch)
		if err != nil {
			s.sm.errors.Inc()
			s.log.Error("audit spool read failed", "err", err)
			return nil
		}
		if len(recs) > 0 {
			return &attempt{items: items(recs), from: &spoolBatch{pos: pos, n: len(recs), size: size}}
		}
	}
	if len(fl.pending) > 0 {
		n := min(len(fl.pending), s.cfg.MaxBatch)
		a := &attempt{items: items(fl.pending[:n])}
		fl.pending = fl.pending[n:]
		if len(fl.pending) == 0 {
			fl.pending = nil
		}
		return a
	}
	return nil
}

func items(recs []*Record) []*item {
	out := make([]*item, len(recs))
	for i, r := range recs {
		out[i] = &item{rec: r}
	}
	return out
}

// drain returns first and whatever else is queued.
func (s *Stream) drain(first *Record) []*Record {
	recs := []*Record{first}
	for len(recs) < s.cfg.OutcomeBuffer {
		select {
		case r := <-s.outq:
			recs = append(recs, r)
			continue
		default:
		}
		break
	}
	return recs
}

// flushOutcomes writes items in batches and returns the items that failed
// (to retry).
func (s *Stream) flushOutcomes(ctx context.Context, items []*item) []*item {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.WriteTimeout)
	defer cancel()
	chans := make([]chan result, len(items))
	for i, it := range items {
		if it.body == nil {
			// Encoded here, outside the committer, like Append does.
			it.body, _ = encodeBody(it.rec)
		}
		it.done = make(chan result, 1)
		it.ctx = wctx
		it.background = true
		chans[i] = it.done
		select {
		case s.reqs <- it:
		case <-s.stop:
			it.done <- result{err: ErrClosed}
		case <-wctx.Done():
			it.done <- result{err: ErrTimeout}
		}
	}
	var failed []*item
	for i, it := range items {
		// Always wait for the answer: the committer bounds every write by
		// WriteTimeout and answers every item it took, so this ends; and an
		// item must never be in the committer twice (a retry racing its
		// first attempt could store the record twice).
		if r := <-chans[i]; r.err != nil {
			failed = append(failed, it)
		}
	}
	if len(failed) > 0 && ctx.Err() == nil {
		s.log.Warn("audit outcome records not written; will retry", "count", len(failed))
	}
	return failed
}

// shutdown flushes what it can within ShutdownTimeout, spools the rest and
// writes the final checkpoints.
func (s *Stream) shutdown(fl *flusher) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	for len(s.outq) > 0 {
		if fl.behind(s) {
			s.spill(s.drain(<-s.outq))
		} else {
			fl.pending = append(fl.pending, s.drain(<-s.outq)...)
		}
	}
	for ctx.Err() == nil {
		a := s.nextAttempt(fl)
		if a == nil {
			break
		}
		a.failed = s.flushOutcomes(ctx, a.items)
		if !fl.settle(s, *a) {
			// Redis is refusing: wait a little before the next attempt, but
			// never past the shutdown deadline.
			select {
			case <-ctx.Done():
			case <-time.After(s.cfg.RetryMin):
			}
		}
	}
	// What Redis did not take waits in the spool for the next start. A
	// batch read from the spool is still there (not acknowledged).
	var rest []*Record
	if fl.from == nil {
		for _, it := range fl.retry {
			rest = append(rest, it.rec)
		}
	}
	rest = append(rest, s.bl.held...)
	rest = append(rest, fl.pending...)
	s.bl.held = nil
	for len(s.outq) > 0 {
		rest = append(rest, <-s.outq)
	}
	if len(rest) > 0 && !s.spoolAppend(rest) {
		s.bl.held = nil
		s.drop(len(rest))
	}
	s.inflight.Store(0)
	s.m.bufferDepth.Set(0)
	err := s.Checkpoint(ctx, CheckpointShutdown)
	if err != nil && !errors.Is(err, ErrClosed) {
		s.log.Warn("audit final checkpoint failed", "err", err)
	}
	s.registerTenants(ctx)
	s.wit.close(ctx, err == nil)
	return nil
}
