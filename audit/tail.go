package audit

import (
	"context"
	"errors"
	"sort"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/internal/backoff"
)

// TailConfig tunes a Tail. The zero value of every field means its default.
type TailConfig struct {
	// Block is how long one blocking XREAD waits (single node, Sentinel).
	// Default 2s.
	Block time.Duration
	// Poll is how often the followed streams are read on a Cluster, where
	// one XREAD may not name streams in several slots. Default 250ms.
	Poll time.Duration
	// Count bounds the entries one read returns per stream. Default 512.
	Count int
	// StreamsPerRead bounds the streams of one blocking XREAD; past it a
	// second reader (and connection) starts. Default 1000.
	StreamsPerRead int
	// OnError hears of every failed read. The tail retries after a
	// jittered backoff unless OnError returns an error, which Run returns.
	OnError func(error) error
}

// Defaults of TailConfig.
const (
	DefaultTailBlock          = 2 * time.Second
	DefaultTailPoll           = 250 * time.Millisecond
	DefaultTailCount          = 512
	DefaultTailStreamsPerRead = 1000
)

func (c TailConfig) withDefaults() TailConfig {
	if c.Block <= 0 {
		c.Block = DefaultTailBlock
	}
	if c.Poll <= 0 {
		c.Poll = DefaultTailPoll
	}
	if c.Count <= 0 {
		c.Count = DefaultTailCount
	}
	if c.StreamsPerRead <= 0 {
		c.StreamsPerRead = DefaultTailStreamsPerRead
	}
	return c
}

// Tail follows a changing set of streams with few connections, however
// many streams it follows: on a single node or a Sentinel primary one
// blocking XREAD names every stream (up to StreamsPerRead, then one more
// reader per that many); on a Cluster, where one XREAD may not span slots,
// each Poll one pipeline reads every stream (go-redis sends each primary
// its part). A stream added while a read blocks is taken into the next
// read at once: the blocked read is ended with CLIENT UNBLOCK.
//
// One blocking XREAD per stream, the obvious design, holds a pooled
// connection per stream: past the pool's size (10 per CPU) reads queue
// behind each other's blocks and events arrive seconds late or not at all
// (feed BenchmarkFeedManyTenants).
type Tail struct {
	rdb redis.UniversalClient
	cfg TailConfig

	mu       sync.Mutex
	streams  map[string]*followed
	shards   []*shard
	gen      uint64
	running  bool
	newShard chan struct{} // a shard was added: Run starts its reader
	added    chan struct{} // a stream was added: a Cluster poll reads now
}

type followed struct {
	gen   uint64
	last  string // id of the last entry handed over, or where to start
	shard *shard
}

// shard is the streams one blocking reader names.
type shard struct {
	n    int           // streams assigned; guarded by Tail.mu
	wake chan struct{} // a stream was added
	// While its XREAD blocks: the CLIENT ID of the reader's connection and
	// the count of its reads. Guarded by Tail.mu.
	blocked int64
	reads   uint64
}

// NewTail returns a tail of nothing; Add streams and Run it.
func NewTail(rdb redis.UniversalClient, cfg TailConfig) *Tail {
	return &Tail{rdb: rdb, cfg: cfg.withDefaults(), streams: map[string]*followed{}, newShard: make(chan struct{}, 1), added: make(chan struct{}, 1)}
}

// Add follows stream from the entry after id from ("0-0": from its
// start). It returns the function that stops following it; a later Add
// of the same stream replaces this one, and this stop then does nothing.
func (t *Tail) Add(stream, from string) (stop func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.gen++
	gen := t.gen
	f := t.streams[stream]
	if f == nil {
		f = &followed{shard: t.shardWithRoom()}
		f.shard.n++
		t.streams[stream] = f
	}
	f.gen, f.last = gen, from
	t.wakeLocked(f.shard)
	return func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if f := t.streams[stream]; f != nil && f.gen == gen {
			f.shard.n--
			delete(t.streams, stream)
		}
	}
}

// shardWithRoom is the first shard with room for one more stream, a new
// one if none has. Called with t.mu held.
func (t *Tail) shardWithRoom() *shard {
	for _, s := range t.shards {
		if s.n < t.cfg.StreamsPerRead {
			return s
		}
	}
	s := &shard{wake: make(chan struct{}, 1)}
	t.shards = append(t.shards, s)
	select {
	case t.newShard <- struct{}{}:
	default:
	}
	return s
}

// wakeLocked makes s's reader read again with what it now holds. Called
// with t.mu held.
func (t *Tail) wakeLocked(s *shard) {
	for _, ch := range []chan struct{}{s.wake, t.added} {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	if id := s.blocked; id != 0 {
		s.blocked = 0
		go t.unblock(s, id, s.reads)
	}
}

// unblock ends read number reads of shard s, blocking on connection id,
// so that its reader reads again with the streams added since. The
// command may reach Redis before the read does: it is sent again until
// it ends a read or the reader has read again by itself. If CLIENT
// UNBLOCK is refused (an ACL without it), an added stream waits for the
// read to end by itself (at most Block).
func (t *Tail) unblock(s *shard, id int64, reads uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), t.cfg.Block)
	defer cancel()
	retry := time.NewTicker(2 * time.Millisecond)
	defer retry.Stop()
	for {
		n, err := t.rdb.ClientUnblock(ctx, id).Result()
		if err != nil || n > 0 {
			return
		}
		t.mu.Lock()
		again := s.reads != reads
		t.mu.Unlock()
		if again {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-retry.C:
		}
	}
}

// unblockUntil ends the blocking reads of shard s until done is closed.
func (t *Tail) unblockUntil(s *shard, done <-chan struct{}) {
	ctx, cancel := context.WithTimeout(context.Background(), t.cfg.Block)
	defer cancel()
	retry := time.NewTicker(2 * time.Millisecond)
	defer retry.Stop()
	for {
		t.mu.Lock()
		id := s.blocked
		t.mu.Unlock()
		if id != 0 {
			_ = t.rdb.ClientUnblock(ctx, id).Err()
		}
		select {
		case <-done:
			return
		case <-ctx.Done():
			return
		case <-retry.C:
		}
	}
}

// Run reads until ctx ends, handing each stream's new entries to fn in
// order; fn is never called concurrently, and not for a stream once its
// stop has returned (but for a delivery already under way). It returns nil when ctx ends,
// or the error OnError returned.
func (t *Tail) Run(ctx context.Context, fn func(stream string, msgs []redis.XMessage)) error {
	t.mu.Lock()
	if t.running {
		t.mu.Unlock()
		return errors.New("audit: Tail.Run called twice")
	}
	t.running = true
	t.mu.Unlock()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var fnMu sync.Mutex
	deliver := func(res []redis.XStream) {
		fnMu.Lock()
		defer fnMu.Unlock()
		for _, s := range res {
			if msgs := t.news(s); len(msgs) > 0 {
				fn(s.Stream, msgs)
				t.advance(s.Stream, msgs[len(msgs)-1].ID)
			}
		}
	}
	fail := func(err error) bool {
		if t.cfg.OnError == nil {
			return false
		}
		if stop := t.cfg.OnError(err); stop != nil {
			cancel(stop)
			return true
		}
		return false
	}
	if cc, ok := t.rdb.(*redis.ClusterClient); ok {
		t.poll(ctx, cc, deliver, fail)
	} else {
		t.block(ctx, deliver, fail)
	}
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}

// news is what a read returned of a stream that is still followed, past
// its position: a read under way when a stream was stopped, or stopped
// and added again from a later entry, may return what is no longer
// wanted.
func (t *Tail) news(s redis.XStream) []redis.XMessage {
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.streams[s.Stream]
	if f == nil {
		return nil
	}
	msgs := s.Messages
	for len(msgs) > 0 && !IDLess(f.last, msgs[0].ID) {
		msgs = msgs[1:]
	}
	return msgs
}

// advance moves a stream's position past id, if it is still followed.
func (t *Tail) advance(stream, id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if f := t.streams[stream]; f != nil && IDLess(f.last, id) {
		f.last = id
	}
}

// positionsLocked returns the XREAD arguments (keys, then ids) of the streams
// of shard s, or of every stream when s is nil. Called with t.mu held.
func (t *Tail) positionsLocked(s *shard) []string {
	keys := make([]string, 0, len(t.streams))
	for k, f := range t.streams {
		if s == nil || f.shard == s {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys[:len(keys):len(keys)] {
		keys = append(keys, t.streams[k].last)
	}
	return keys
}

// block runs one blocking reader per shard, starting a reader for each
// shard as it appears.
func (t *Tail) block(ctx context.Context, deliver func([]redis.XStream), fail func(error) bool) {
	var wg sync.WaitGroup
	defer wg.Wait()
	started := 0
	for {
		t.mu.Lock()
		shards := t.shards[started:]
		started = len(t.shards)
		t.mu.Unlock()
		for _, s := range shards {
			wg.Go(func() { t.readShard(ctx, s, deliver, fail) })
		}
		select {
		case <-ctx.Done():
			return
		case <-t.newShard:
		}
	}
}

// readShard follows shard s with one blocking XREAD at a time on a
// connection of its own, whose CLIENT ID Add uses to end a read early.
func (t *Tail) readShard(ctx context.Context, s *shard, deliver func([]redis.XStream), fail func(error) bool) {
	retry := backoff.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}
	var conn *redis.Conn
	var id int64
	closeConn := func() {
		if conn != nil {
			_ = conn.Close()
			conn = nil
		}
	}
	defer closeConn()
	exited := make(chan struct{})
	defer close(exited)
	// A blocking read ignores ctx: end it, so that Run returns at once.
	defer context.AfterFunc(ctx, func() { t.unblockUntil(s, exited) })()
	for ctx.Err() == nil {
		if conn == nil {
			c, ok := t.rdb.(interface{ Conn() *redis.Conn })
			if !ok {
				fail(errors.New("audit: tail needs a single-node, Sentinel or Cluster client"))
				return
			}
			conn = c.Conn()
			var err error
			if id, err = conn.ClientID(ctx).Result(); err != nil {
				closeConn()
				if ctx.Err() != nil || fail(err) || !retry.Wait(ctx) {
					return
				}
				continue
			}
		}
		select {
		case <-s.wake:
		default:
		}
		t.mu.Lock()
		args := t.positionsLocked(s)
		s.reads++
		if len(args) > 0 {
			s.blocked = id
		}
		t.mu.Unlock()
		if len(args) == 0 {
			select {
			case <-ctx.Done():
			case <-s.wake:
			}
			continue
		}
		res, err := conn.XRead(ctx, &redis.XReadArgs{Streams: args, Count: int64(t.cfg.Count), Block: t.cfg.Block}).Result()
		t.mu.Lock()
		s.blocked = 0
		t.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		if err != nil && !errors.Is(err, redis.Nil) {
			closeConn()
			if fail(err) || !retry.Wait(ctx) {
				return
			}
			continue
		}
		retry.Reset()
		deliver(res)
	}
}

// poll follows every stream on a Cluster: each Poll (or at once when a
// stream is added or a read came back full) one pipeline of
// non-blocking single-stream XREADs, which go-redis splits by primary.
func (t *Tail) poll(ctx context.Context, cc *redis.ClusterClient, deliver func([]redis.XStream), fail func(error) bool) {
	retry := backoff.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}
	tick := time.NewTicker(t.cfg.Poll)
	defer tick.Stop()
	for {
		t.mu.Lock()
		args := t.positionsLocked(nil)
		t.mu.Unlock()
		full := false
		if len(args) > 0 {
			res, err := t.readEach(ctx, cc, args)
			deliver(res)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				if fail(err) || !retry.Wait(ctx) {
					return
				}
				continue
			}
			retry.Reset()
			for _, r := range res {
				full = full || len(r.Messages) >= t.cfg.Count
			}
		}
		if full {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-t.added:
		}
	}
}

// readEach reads what is new in each stream of args (keys, then ids), one
// XREAD a stream in one pipeline. It returns what it read and the first
// error other than "nothing new".
func (t *Tail) readEach(ctx context.Context, cc *redis.ClusterClient, args []string) ([]redis.XStream, error) {
	n := len(args) / 2
	p := cc.Pipeline()
	cmds := make([]*redis.XStreamSliceCmd, n)
	for i := range n {
		cmds[i] = p.XRead(ctx, &redis.XReadArgs{Streams: []string{args[i], args[n+i]}, Count: int64(t.cfg.Count), Block: -1})
	}
	_, _ = p.Exec(ctx)
	var res []redis.XStream
	var first error
	for _, c := range cmds {
		r, err := c.Result()
		switch {
		case err == nil:
			res = append(res, r...)
		case errors.Is(err, redis.Nil):
		case first == nil:
			first = err
		}
	}
	return res, first
}
