package audit

import (
	"context"
	"errors"
	"time"
)

// Run writes the Enqueued (outcome) records with retry and backoff, writes
// periodic signed checkpoints, trims when retention is configured and
// re-checks the durability settings. When ctx is done it flushes what is
// buffered (bounded by ShutdownTimeout; what cannot be written is counted as
// dropped), writes a final checkpoint for every chain, hands the witnesses
// a closing statement and returns nil. With witnesses configured it also
// sends them a signed statement after each checkpoint round (or a
// heartbeat while nothing is new).
func (s *Stream) Run(ctx context.Context) error {
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

	var retry []*item
	backoff := s.cfg.RetryMin
	var retryAt <-chan time.Time
	for {
		var pull chan *Record
		if retry == nil {
			pull = s.outq // new records only when nothing waits for a retry
		}
		select {
		case <-ctx.Done():
			return s.shutdown(retry)
		case rec := <-pull:
			retry = s.flushOutcomes(ctx, []*item{{rec: rec}})
		case <-retryAt:
			retryAt = nil
			retry = s.flushOutcomes(ctx, retry)
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
		if retry == nil {
			backoff = s.cfg.RetryMin
		} else if retryAt == nil {
			retryAt = time.After(backoff)
			backoff = min(backoff*2, s.cfg.RetryMax)
		}
	}
}

// flushOutcomes writes items plus whatever else is buffered, in batches,
// and returns the items that failed (to retry).
func (s *Stream) flushOutcomes(ctx context.Context, items []*item) []*item {
	for len(items) < s.cfg.MaxBatch {
		select {
		case rec := <-s.outq:
			items = append(items, &item{rec: rec})
			continue
		default:
		}
		break
	}
	s.inflight.Store(int64(len(items)))
	s.m.bufferDepth.Set(float64(len(s.outq) + len(items)))
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
	s.inflight.Store(int64(len(failed)))
	s.m.bufferDepth.Set(float64(len(s.outq) + len(failed)))
	return failed
}

// shutdown flushes the buffer and writes the final checkpoints.
func (s *Stream) shutdown(retry []*item) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	items := retry
	for ctx.Err() == nil {
		if len(items) == 0 {
			select {
			case rec := <-s.outq:
				items = []*item{{rec: rec}}
			default:
			}
		}
		if len(items) == 0 {
			break
		}
		failed := s.flushOutcomes(ctx, items)
		if len(failed) > 0 {
			// Redis is refusing: wait a little before the next attempt, but
			// never past the shutdown deadline.
			select {
			case <-ctx.Done():
			case <-time.After(s.cfg.RetryMin):
			}
		}
		items = failed
	}
	lost := len(items) + len(s.outq)
	for len(s.outq) > 0 {
		<-s.outq
	}
	if lost > 0 {
		s.drop(lost)
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
