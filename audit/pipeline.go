package audit

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
)

// maxInFlight is how many batches the committer has on their way to Redis
// at once: the next batch is staged and sent while one is in flight. (A
// variable for the benchmarks, which compare it with 1.)
var maxInFlight = 2

// pipelineBelow is how many Appends may wait for the next batch to go
// while one is in flight. With more, the writer is saturated: the next
// batch waits for the one in flight and takes everything queued meanwhile,
// since at saturation fewer, larger batches cost less CPU per record than
// more round trips (docs/performance.md, "Fewer hand-overs").
const pipelineBelow = 8

// errStoredNoReceipt answers a write-ahead record whose refused batch had,
// the re-read head says, been stored after all (a client-side retry of a
// write whose reply was lost): stored, but without the stream id a receipt
// needs, so the caller fails closed.
var errStoredNoReceipt = errors.New("audit record stored without an acknowledgement")

// flight is one batch on its way to Redis. Flights settle (their results
// are applied to the chains and handed to the callers) in the order they
// were sent, so a chain's acknowledgements and failures apply in chain order.
type flight struct {
	groups   []*group
	n        int
	start    time.Time
	ctx      context.Context
	cancel   context.CancelFunc
	prev     *flight       // settles first; nil once it has
	sending  chan struct{} // closed once this flight's pipeline is written (or failed)
	sendOnce sync.Once
	settled  chan struct{} // closed when its results are applied
}

// written marks f's pipeline as handed to the connection.
func (f *flight) written() { f.sendOnce.Do(func() { close(f.sending) }) }

// lastArg is the last argument of a flight's pipeline. go-redis marshals it
// (encoding.BinaryMarshaler) as the last thing before it flushes the
// pipeline to the socket: the next flight, which waits for that, then
// almost never reaches Redis first on another connection of the pool.
type lastArg struct {
	raw string
	f   *flight
}

// MarshalBinary implements encoding.BinaryMarshaler.
func (a lastArg) MarshalBinary() ([]byte, error) {
	a.f.written()
	return []byte(a.raw), nil
}

// commitLoop is the committer: it takes the queued records, waits a little
// for company, stages each batch (chain fields computed from the heads the
// batches before it will leave) and sends it while the one before it may
// still be in flight.
func (s *Stream) commitLoop() {
	defer close(s.done)
	// Long-lived senders: a goroutine per batch would grow a fresh stack
	// through go-redis's pipeline for every batch.
	send := make(chan *flight, cap(s.slots))
	defer close(send)
	for range cap(s.slots) {
		go func() {
			for f := range send {
				s.fly(f)
			}
		}()
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		// A slot first: a batch formed while the slots are taken then
		// takes everything queued meanwhile.
		select {
		case s.slots <- struct{}{}:
		case <-s.stop:
			s.stopCommitter()
			return
		}
		if len(s.slots) > 1 && s.appending.Load() >= pipelineBelow {
			s.mu.Lock()
			last := s.last
			s.mu.Unlock()
			select {
			case <-last.settled:
			case <-s.stop:
				<-s.slots
				s.stopCommitter()
				return
			}
		}
		var first *item
		select {
		case first = <-s.reqs:
		case <-s.kick: // records to send again, no new one
		case <-s.stop:
			<-s.slots
			s.stopCommitter()
			return
		}
		var batch []*item
		if first != nil {
			batch = s.collect(first, timer)
		}
		if f := s.dispatch(batch); f != nil {
			send <- f
		} else {
			<-s.slots
		}
	}
}

// collect forms a batch from first and what else is queued: outcomes alone
// wait (OutcomeDelay) for a record someone waits for and go with it; two or
// more such records linger up to MaxWait, since more are likely on the way.
func (s *Stream) collect(first *item, timer *time.Timer) []*item {
	batch := []*item{first}
	waited := 0 // records someone waits for
	if !first.background {
		waited = 1
	}
fill:
	for len(batch) < s.cfg.MaxBatch {
		select {
		case it := <-s.reqs:
			batch = append(batch, it)
			if !it.background {
				waited++
			}
			continue
		default:
		}
		if waited >= 2 {
			if s.cfg.MaxWait > 0 {
				batch = s.linger(batch, time.Now().Add(s.cfg.MaxWait))
			}
			break fill
		}
		if waited != 0 || s.cfg.OutcomeDelay <= 0 {
			break fill
		}
		timer.Reset(s.cfg.OutcomeDelay)
		for len(batch) < s.cfg.MaxBatch {
			select {
			case it := <-s.reqs:
				batch = append(batch, it)
				if !it.background {
					waited++
					if waited == 1 {
						// The record the outcomes waited for: send
						// it now, with whatever else is queued.
						timer.Stop()
						continue fill
					}
				}
				continue
			case <-timer.C:
			case <-s.stop:
				timer.Stop()
			}
			break fill
		}
		timer.Stop()
	}
	return batch
}

// dispatch stages batch as the newest flight, for a sender to send and
// settle; nil when nothing is left to send.
func (s *Stream) dispatch(batch []*item) *flight {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.WriteTimeout)
	s.mu.Lock()
	f := s.stage(ctx, batch)
	if f == nil {
		s.mu.Unlock()
		cancel()
		return nil
	}
	f.cancel = cancel
	f.prev, s.last = s.last, f
	s.flying++
	s.mu.Unlock()
	s.flights.Add(1)
	return f
}

// fly sends f, waits for the flight before it to settle, and settles f.
func (s *Stream) fly(f *flight) {
	defer s.flights.Done()
	defer f.cancel()
	if p := f.prev; p != nil {
		// The earlier batch's pipeline is written first, so Redis almost
		// always runs them in order; when not (two connections of the
		// pool), the script refuses the later one and it is sent again.
		<-p.sending
	}
	s.transmit(f)
	if p := f.prev; p != nil {
		<-p.settled
		f.prev = nil
	}
	s.mu.Lock()
	s.settle(f)
	s.flying--
	kick := len(s.retry) > 0
	s.mu.Unlock()
	close(f.settled)
	<-s.slots
	if kick {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
}

// stopCommitter waits for the flights, then answers what is left: records to
// send again and the queue.
func (s *Stream) stopCommitter() {
	s.flights.Wait()
	s.mu.Lock()
	retry := s.retry
	s.retry = nil
	s.mu.Unlock()
	for _, it := range retry {
		s.m.failures.WithLabelValues("closed").Inc()
		s.finish(it, result{err: ErrClosed})
	}
	s.failQueued()
}

// stage prepares one batch with s.mu held: resync the chains whose head is
// unknown (waiting first for the flights before it: a head read while a
// batch is in flight would be stale at once), assign chain fields from the
// heads the earlier batches will leave, and build one script call per chain.
// Records to send again go first. It returns nil when nothing is left to
// send (every item answered).
func (s *Stream) stage(ctx context.Context, batch []*item) *flight {
	for s.flying > 0 && (len(s.retry) > 0 || s.needResync(batch)) {
		last := s.last
		s.mu.Unlock()
		<-last.settled
		s.mu.Lock()
	}
	if len(s.retry) > 0 {
		// Every flight has settled, so these are all the refused records,
		// in the order they were first staged, and they go first.
		batch = append(s.retry, batch...)
		s.retry = nil
	}
	start := time.Now()
	// Callers that gave up are not written: they have already answered
	// (fail closed), and writing would only add an orphan record.
	live := batch[:0]
	for _, it := range batch {
		if it.ctx != nil && it.ctx.Err() != nil {
			s.m.failures.WithLabelValues("timeout").Inc()
			s.finish(it, result{err: ErrTimeout})
			continue
		}
		live = append(live, it)
	}
	batch = live
	if len(batch) == 0 {
		return nil
	}
	if !s.registered {
		if err := s.register(ctx); err != nil {
			s.failAll(batch, err)
			return nil
		}
	}
	if err := s.resync(ctx, batch); err != nil {
		s.failAll(batch, err)
		return nil
	}

	now := s.cfg.Clock().UTC()
	groups := map[string]*group{}
	var order []*group
	add := func(it *item, rec *Record, c *chain) error {
		g := groups[c.tenant]
		if g == nil {
			g = &group{c: c, expect: headValue(c.seq, c.hash), pipelined: c.flying > 0}
			groups[c.tenant] = g
			order = append(order, g)
		}
		rec.Writer = s.cfg.WriterID
		rec.Seq = c.seq + 1
		rec.Prev = c.hash
		b := it.body
		if b == nil || it.checkpoint != "" {
			var err error
			if b, err = encodeBody(rec); err != nil {
				return err
			}
		}
		var raw []byte
		rec.Hash, raw = b.seal(rec.Writer, rec.Seq, rec.Prev)
		g.items, g.recs, g.raws = append(g.items, it), append(g.recs, rec), append(g.raws, string(raw))
		it.attempt = rec.Seq
		c.seq, c.hash = rec.Seq, rec.Hash
		c.sinceCkpt++
		if rec.Kind == KindCheckpoint {
			c.sinceCkpt = 0
		}
		return nil
	}
	for _, it := range batch {
		// A chain that lost acknowledged records says so first.
		c := s.chainFor(it.rec.Tenant, s.generatedID())
		if c.lost == nil || groups[c.tenant] != nil {
			continue
		}
		ck := &item{rec: &Record{Tenant: c.tenant}, checkpoint: CheckpointLoss, lost: c.lost}
		if rec, err := s.checkpointRecord(ck, c, now); err == nil {
			_ = add(ck, rec, c)
		}
	}
	for _, it := range batch {
		c := s.chainFor(it.rec.Tenant, s.generatedID())
		if it.settled && it.stored {
			// A retried outcome whose first write did reach Redis.
			it.settled = false
			if it.background {
				s.finish(it, result{rec: *it.rec})
			} else {
				s.m.failures.WithLabelValues("chain").Inc()
				s.finish(it, result{err: errStoredNoReceipt})
			}
			continue
		}
		it.settled = false
		rec := it.rec
		if it.checkpoint != "" {
			// Nothing to seal since the last checkpoint, unless that one is
			// still in flight: answering now would let the caller (the
			// shutdown's witness statement) act before it is stored, or on
			// a chain it did not in the end seal; the chain's next
			// checkpoint is then written behind it.
			if c.sinceCkpt == 0 && c.flying == 0 && it.checkpoint != CheckpointRetention {
				s.finish(it, result{})
				continue
			}
			var err error
			rec, err = s.checkpointRecord(it, c, now)
			if err != nil {
				s.finish(it, result{err: err})
				continue
			}
		}
		if err := add(it, rec, c); err != nil {
			s.finish(it, result{err: err})
			continue
		}
		if it.checkpoint == "" && c.sinceCkpt >= uint64(s.cfg.CheckpointEvery) {
			ck := &item{rec: &Record{Tenant: rec.Tenant}, checkpoint: CheckpointPeriodic}
			if ckRec, err := s.checkpointRecord(ck, c, now); err == nil {
				_ = add(ck, ckRec, c)
			}
		}
	}
	if len(order) == 0 {
		return nil
	}
	f := &flight{groups: order, start: start, ctx: ctx, sending: make(chan struct{}), settled: make(chan struct{})}
	g := order[len(order)-1]
	g.raws[len(g.raws)-1] = lastArg{raw: g.raws[len(g.raws)-1].(string), f: f}
	for _, g := range order {
		last := g.recs[len(g.recs)-1]
		g.head = headValue(last.Seq, last.Hash)
		if g.pipelined {
			s.pipelined.Add(1)
		}
		g.c.flying++
		f.n += len(g.items)
	}
	return f
}

// needResync reports whether staging batch needs a head read from Redis.
func (s *Stream) needResync(batch []*item) bool {
	if !s.registered {
		return true
	}
	for _, it := range batch {
		if c := s.chains[it.rec.Tenant]; c == nil || !c.known {
			return true
		}
	}
	return false
}

// transmit sends f's groups in one round trip (per primary on a Cluster
// with wait_replicas).
func (s *Stream) transmit(f *flight) {
	s.send(f.ctx, f.groups)
	f.written() // if the pipeline never got to a connection
	s.batches.Add(1)
	s.m.batches.Inc()
	s.m.batchSize.Observe(float64(f.n))
	s.m.latency.Observe(time.Since(f.start).Seconds())
}

// settle applies f's results with s.mu held and answers its callers. A
// group the script refused because the batch before it had not reached
// Redis yet (or had failed) stored nothing: its waiting records are sent
// again once, after the head is re-read.
func (s *Stream) settle(f *flight) {
	for _, g := range f.groups {
		g.c.flying--
		ids, err := g.cmd.StringSlice()
		if err == nil && len(ids) != len(g.items) {
			err = fmt.Errorf("audit append: %d ids for %d records", len(ids), len(g.items))
		}
		if err == nil && g.replErr != nil {
			err = g.replErr
		}
		if err == nil {
			last := g.recs[len(g.recs)-1]
			g.c.acked, g.c.ackedHash = last.Seq, last.Hash
			for i, it := range g.items {
				rec := g.recs[i]
				if it.checkpoint == CheckpointLoss {
					g.c.lost = nil // said
				}
				s.written.Add(1)
				s.m.written.WithLabelValues(string(rec.Kind)).Inc()
				if rec.Kind == KindCheckpoint {
					s.m.checkpoints.Inc()
					s.wit.noteCheckpoint(rec, it.checkpoint)
				}
				s.finish(it, result{id: ids[i], rec: *rec})
			}
			continue
		}
		// The group may or may not be stored (a lost reply). The chain head
		// is unknown until re-read; the script stores all of a group or
		// nothing, and the head says which.
		reason := "redis"
		switch {
		case strings.Contains(err.Error(), "PASSPORTCHAIN"):
			reason = "chain"
			err = errChainMoved
		case errors.Is(err, ErrNotReplicated):
			reason = "replication"
		case errors.Is(err, context.DeadlineExceeded) || isNetTimeout(err):
			// The client's own read timeout can fire before the context's
			// deadline: either way the write was not acknowledged in time.
			reason = "timeout"
			err = fmt.Errorf("%w: %v", ErrTimeout, err)
		}
		g.c.known = false
		g.c.sinceCkpt = max(g.c.sinceCkpt, 1) // the next checkpoint tick must not skip this chain
		for _, it := range g.items {
			g.c.ambiguous = append(g.c.ambiguous, it)
			if reason == "chain" && g.pipelined && it.done != nil && !it.retried {
				// The resync settles whether it is stored (a client-side
				// retry of a lost reply); only if not is it sent again.
				it.retried = true
				s.retry = append(s.retry, it)
				s.resent.Add(1)
				s.m.resent.Inc()
				continue
			}
			s.m.failures.WithLabelValues(reason).Inc()
			s.finish(it, result{err: err})
		}
	}
}
