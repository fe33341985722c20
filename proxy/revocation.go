package proxy

import (
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/singleflight"

	"github.com/agentpassport/passport/internal/backoff"
	"github.com/agentpassport/passport/passport"
)

// ErrStateUnavailable means revocation or agent state could not be read;
// the call is refused (503), never allowed on stale data.
var ErrStateUnavailable = errors.New("revocation state unavailable")

// How the revocation subscription proves it is current. Every
// heartbeatEvery the proxy sends PING on its subscription connection,
// carrying the send time. Redis answers a subscribed connection's PING in
// the same output stream as the channel's messages, in the order it ran
// the commands; so a pong for a PING sent at S proves that every
// revocation Redis took before S has been delivered and applied. The
// local sets are trusted only while such a proof is younger than
// staleAfter; past it, every call asks Redis itself (and is refused when
// Redis does not answer), and past resubscribeAfter the subscription is
// torn down and rebuilt.
//
// The proxies send their own heartbeats rather than the authority: a
// proxy then does not depend on the authority running to trust its sets,
// needs no PUBLISH permission (with which it could forge unblock events to
// every other proxy), and N proxies cost N pings, not N² messages.
const (
	heartbeatEvery   = 150 * time.Millisecond
	staleAfter       = 500 * time.Millisecond
	resubscribeAfter = 1500 * time.Millisecond
	// loadChunk is how many revocations one load command reads, so a
	// million live ones never sit in one reply.
	loadChunk = 10000
)

// revocations mirrors the revoked-passport and blocked-agent sets of Redis.
//
// It subscribes to the revocation channel first and only then loads both
// sets in full, so no event can fall between the load and the
// subscription. The same happens after every reconnect. While the
// subscription is not live or not fresh (see heartbeatEvery), check asks
// Redis directly on every call, and when Redis does not answer either,
// the call is refused: a proxy never allows on a state it cannot vouch for.
type revocations struct {
	rdb   redis.UniversalClient
	log   *slog.Logger
	clock func() time.Time
	m     *metrics

	base      time.Time    // origin of the monotonic times below
	live      atomic.Bool  // subscribed and loaded
	confirmed atomic.Int64 // ns since base: the newest moment the sets are proven current
	stale     atomic.Bool  // last seen state, for logging transitions

	mu      sync.RWMutex
	revoked *revokedSet
	blocked map[string]struct{}
}

func newRevocations(rdb redis.UniversalClient, log *slog.Logger, clock func() time.Time, m *metrics) *revocations {
	return &revocations{rdb: rdb, log: log, clock: clock, m: m, base: time.Now(),
		revoked: newRevokedSet(0), blocked: map[string]struct{}{}}
}

// mono is the monotonic time since rv.base, in ns. Freshness is measured
// on the real clock, never the injected one: it is about the network.
func (rv *revocations) mono() int64 { return int64(time.Since(rv.base)) }

// fresh reports whether the local sets may be trusted now.
func (rv *revocations) fresh() bool {
	return rv.live.Load() && rv.mono()-rv.confirmed.Load() < int64(staleAfter)
}

// staleness is how old the newest proof of currency is.
func (rv *revocations) staleness() time.Duration {
	return time.Duration(rv.mono() - rv.confirmed.Load())
}

// check returns nil, ErrRevoked, ErrBlocked or ErrStateUnavailable.
func (rv *revocations) check(ctx context.Context, jti, tenant, agentID string) error {
	member := passport.BlockedMember(tenant, agentID)
	if rv.fresh() {
		rv.mu.RLock()
		revoked := rv.revoked.has(jti)
		_, blocked := rv.blocked[member]
		rv.mu.RUnlock()
		// The subscription may have gone quiet while we looked; then ask Redis.
		if rv.fresh() {
			switch {
			case revoked:
				return ErrRevoked
			case blocked:
				return ErrBlocked
			}
			return nil
		}
	}
	rv.m.revocationFallback.Inc()
	ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	var score *redis.FloatCmd
	var isBlocked *redis.BoolCmd
	_, err := rv.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		score = p.ZScore(ctx, passport.RevokedKey, jti)
		isBlocked = p.SIsMember(ctx, passport.BlockedKey, member)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("%w: %w", ErrStateUnavailable, err)
	}
	if score.Err() == nil {
		return ErrRevoked
	}
	if isBlocked.Err() != nil {
		return fmt.Errorf("%w: %w", ErrStateUnavailable, isBlocked.Err())
	}
	if isBlocked.Val() {
		return ErrBlocked
	}
	return nil
}

// Run follows the channel until ctx ends, reconnecting with a jittered
// backoff, so that a fleet of proxies that lost Redis together does not
// come back in lockstep.
func (rv *revocations) Run(ctx context.Context) error {
	bo := backoff.Backoff{Min: 50 * time.Millisecond, Max: 2 * time.Second}
	for ctx.Err() == nil {
		err := rv.follow(ctx)
		rv.live.Store(false)
		rv.m.subscriptionUp.Set(0)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			bo.Reset() // the subscription had been up: retry soon
		}
		wait := bo.Next()
		rv.log.WarnContext(ctx, "revocation subscription down; checking Redis per call", "error", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
	return nil
}

const heartbeatPrefix = "passport-heartbeat:"

func (rv *revocations) follow(ctx context.Context) error {
	ps := rv.rdb.Subscribe(ctx, passport.RevocationChannel)
	defer ps.Close()
	// The confirmation is bounded: on a silent network it never comes.
	if _, err := ps.ReceiveTimeout(ctx, resubscribeAfter); err != nil {
		return fmt.Errorf("subscribe %s: %w", passport.RevocationChannel, err)
	}
	// Every revocation answered before the load starts is in what it reads;
	// every later one comes on the subscription.
	loadStart := rv.mono()
	if err := rv.load(ctx); err != nil {
		return err
	}
	rv.confirmed.Store(loadStart)
	rv.live.Store(true)
	rv.m.subscriptionUp.Set(1)
	rv.m.revocationLoads.Inc()
	rv.log.InfoContext(ctx, "revocation subscription live", "revoked", rv.size())

	wctx, stop := context.WithCancel(ctx)
	defer stop()
	go rv.heartbeat(wctx, ps, rv.mono())
	for {
		msg, err := ps.Receive(wctx)
		if err != nil {
			return fmt.Errorf("receive revocations: %w", err)
		}
		switch m := msg.(type) {
		case *redis.Message:
			rv.apply(ctx, m.Payload)
		case *redis.Pong:
			if v, ok := strings.CutPrefix(m.Payload, heartbeatPrefix); ok {
				if sent, err := strconv.ParseInt(v, 10, 64); err == nil && sent > rv.confirmed.Load() {
					rv.confirmed.Store(sent) // only this goroutine stores after the load
				}
			}
		}
	}
}

// heartbeat pings the subscription, prunes expired revocations, and closes
// the subscription (which ends follow's receive) when ctx ends or no pong
// came back for resubscribeAfter since it went live at liveAt (a load of a
// large set may itself take longer than that: it must not loop).
func (rv *revocations) heartbeat(ctx context.Context, ps *redis.PubSub, liveAt int64) {
	defer ps.Close()
	t := time.NewTicker(heartbeatEvery)
	defer t.Stop()
	ping := func() {
		pctx, cancel := context.WithTimeout(ctx, heartbeatEvery)
		_ = ps.Ping(pctx, heartbeatPrefix+strconv.FormatInt(rv.mono(), 10))
		cancel()
	}
	ping() // at once: the load may have taken a while
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		age := rv.staleness()
		stale := age >= staleAfter
		if stale != rv.stale.Swap(stale) {
			if stale {
				rv.log.WarnContext(ctx, "revocation subscription silent; checking Redis per call", "silent_for", age)
			} else {
				rv.log.InfoContext(ctx, "revocation subscription current again")
			}
		}
		if stale {
			rv.m.subscriptionUp.Set(0)
		} else {
			rv.m.subscriptionUp.Set(1)
		}
		if rv.mono()-max(rv.confirmed.Load(), liveAt) >= int64(resubscribeAfter) {
			return
		}
		ping()
		rv.prune()
	}
}

// load reads both sets in full, the revocations in chunks by score (the
// passport's expiry), and swaps them in.
func (rv *revocations) load(ctx context.Context) error {
	now := rv.clock().Unix()
	from := strconv.FormatInt(now-int64(passport.MaxLeeway/time.Second), 10)
	revoked := newRevokedSet(0)
	var skip int64 // members already read at score from
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		zs, err := rv.rdb.ZRangeByScoreWithScores(cctx, passport.RevokedKey, &redis.ZRangeBy{
			Min: from, Max: "+inf", Offset: skip, Count: loadChunk,
		}).Result()
		cancel()
		if err != nil {
			return fmt.Errorf("load revoked passports: %w", err)
		}
		for _, z := range zs {
			if s, ok := z.Member.(string); ok {
				revoked.add(s, int64(z.Score))
			}
		}
		if len(zs) < loadChunk {
			break
		}
		// Continue from the last score read, skipping the members at that
		// score already read: one short seek per chunk, however large the
		// set, and nothing missed or read twice.
		last := zs[len(zs)-1].Score
		lastS := strconv.FormatFloat(last, 'f', -1, 64)
		if lastS == from {
			skip += int64(len(zs))
		} else {
			from, skip = lastS, 0
			for i := len(zs) - 1; i >= 0 && zs[i].Score == last; i-- {
				skip++
			}
		}
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	members, err := rv.rdb.SMembers(cctx, passport.BlockedKey).Result()
	cancel()
	if err != nil {
		return fmt.Errorf("load blocked agents: %w", err)
	}
	blocked := make(map[string]struct{}, len(members))
	for _, m := range members {
		blocked[m] = struct{}{}
	}
	rv.mu.Lock()
	rv.revoked, rv.blocked = revoked, blocked
	rv.mu.Unlock()
	return nil
}

func (rv *revocations) apply(ctx context.Context, payload string) {
	var ev passport.RevocationEvent
	if err := json.Unmarshal([]byte(payload), &ev); err != nil {
		// An event we cannot read could be a revocation: reload in full.
		rv.log.WarnContext(ctx, "unreadable revocation event; reloading", "error", err)
		if err := rv.load(ctx); err != nil {
			rv.live.Store(false)
		}
		return
	}
	switch ev.Type {
	case passport.EventRevoke:
		exp := ev.Exp
		if exp == 0 {
			exp = rv.clock().Add(passport.MaxLifetime).Unix()
		}
		rv.mu.Lock()
		rv.revoked.add(ev.JTI, exp)
		rv.mu.Unlock()
	case passport.EventBlock, passport.EventUnblock:
		member := passport.BlockedMember(ev.Tenant, ev.AgentID)
		if ev.Type == passport.EventBlock {
			rv.setBlocked(member, true) // at once: refusing is the safe side
		}
		// Block and unblock events can overtake each other (on a Cluster a
		// PUBLISH goes through any node): the event is a hint, and the set
		// in Redis says which came last. Unread, a block stays and an
		// unblock waits for the next full load.
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		is, err := rv.rdb.SIsMember(cctx, passport.BlockedKey, member).Result()
		cancel()
		if err != nil {
			rv.log.WarnContext(ctx, "block state unread; keeping the safer one", "tenant", ev.Tenant, "agent_id", ev.AgentID, "error", err)
			return
		}
		rv.setBlocked(member, is)
	}
}

func (rv *revocations) setBlocked(member string, blocked bool) {
	rv.mu.Lock()
	defer rv.mu.Unlock()
	if blocked {
		rv.blocked[member] = struct{}{}
	} else {
		delete(rv.blocked, member)
	}
}

// prune forgets revocations of passports that have expired anyway. It
// visits only the expired ones, so the lock is held for them alone.
func (rv *revocations) prune() {
	cut := rv.clock().Add(-passport.MaxLeeway).Unix()
	rv.mu.Lock()
	rv.revoked.prune(cut)
	rv.mu.Unlock()
}

func (rv *revocations) size() int {
	rv.mu.RLock()
	defer rv.mu.RUnlock()
	return rv.revoked.len()
}

// revokedSet holds revoked passport ids with their expiry. Ids are kept as
// seeded 64-bit hashes (16 bytes an entry instead of a string and its
// header): a collision could only refuse a passport, never admit one, and
// with a million entries its chance is about 1 in 10^13. Entries are also
// filed by expiry second, so pruning visits the expired ones only.
type revokedSet struct {
	seed  maphash.Seed
	m     map[uint64]int64   // id hash -> exp (unix s)
	byExp map[int64][]uint64 // exp -> id hashes
	secs  expHeap            // the keys of byExp, soonest first
}

func newRevokedSet(n int) *revokedSet {
	return &revokedSet{seed: maphash.MakeSeed(), m: make(map[uint64]int64, n), byExp: map[int64][]uint64{}}
}

func (s *revokedSet) has(jti string) bool {
	_, ok := s.m[maphash.String(s.seed, jti)]
	return ok
}

func (s *revokedSet) add(jti string, exp int64) {
	h := maphash.String(s.seed, jti)
	if old, ok := s.m[h]; ok && old >= exp {
		return
	}
	s.m[h] = exp
	b, ok := s.byExp[exp]
	if !ok {
		heap.Push(&s.secs, exp)
	}
	s.byExp[exp] = append(b, h)
}

// prune removes the entries that expired before cut.
func (s *revokedSet) prune(cut int64) {
	for len(s.secs) > 0 && s.secs[0] < cut {
		exp := heap.Pop(&s.secs).(int64)
		for _, h := range s.byExp[exp] {
			if s.m[h] == exp { // not re-filed under a later expiry
				delete(s.m, h)
			}
		}
		delete(s.byExp, exp)
	}
}

func (s *revokedSet) len() int { return len(s.m) }

// expHeap is a min-heap of expiry seconds.
type expHeap []int64

func (h expHeap) Len() int           { return len(h) }
func (h expHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h expHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expHeap) Push(x any)        { *h = append(*h, x.(int64)) }
func (h *expHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// agentState is the live part of an agent read from its Redis hash.
type agentState struct {
	exists     bool
	blocked    bool
	reputation passport.Reputation
	hasRep     bool
	fetched    time.Time
}

// reputations reads agent hashes, reusing a read for at most ttl (≤ 1s),
// with one Redis round trip per agent at a time.
type reputations struct {
	rdb   redis.UniversalClient
	ttl   time.Duration
	clock func() time.Time
	mu    sync.RWMutex
	m     map[string]*agentState
	sf    singleflight.Group
}

func newReputations(rdb redis.UniversalClient, ttl time.Duration, clock func() time.Time) *reputations {
	return &reputations{rdb: rdb, ttl: ttl, clock: clock, m: map[string]*agentState{}}
}

func (rp *reputations) get(ctx context.Context, tenant, agentID string) (*agentState, error) {
	key := passport.AgentKey(tenant, agentID)
	now := rp.clock()
	rp.mu.RLock()
	st := rp.m[key]
	rp.mu.RUnlock()
	if st != nil && now.Sub(st.fetched) < rp.ttl && !now.Before(st.fetched) {
		return st, nil
	}
	v, err, _ := rp.sf.Do(key, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 500*time.Millisecond)
		defer cancel()
		var ex *redis.IntCmd
		var hm *redis.SliceCmd
		_, err := rp.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			ex = p.Exists(ctx, key)
			hm = p.HMGet(ctx, key, passport.FieldBlocked, passport.FieldReputation, passport.FieldReputationBaseline,
				passport.FieldReputationAt, passport.FieldReputationHalfLife)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("%w: read agent: %w", ErrStateUnavailable, err)
		}
		vals := hm.Val()
		s := &agentState{exists: ex.Val() == 1, fetched: rp.clock()}
		str := func(i int) string { v, _ := vals[i].(string); return v }
		s.blocked = str(0) == "1" || str(0) == "true"
		if score, err := strconv.ParseFloat(str(1), 64); err == nil {
			s.hasRep = true
			s.reputation.Score = score
			s.reputation.Baseline = score
			if b, err := strconv.ParseFloat(str(2), 64); err == nil {
				s.reputation.Baseline = b
			}
			if at, err := strconv.ParseInt(str(3), 10, 64); err == nil {
				s.reputation.UpdatedAt = time.UnixMilli(at)
			}
			if hl, err := strconv.ParseInt(str(4), 10, 64); err == nil {
				s.reputation.HalfLife = time.Duration(hl) * time.Millisecond
			}
		}
		rp.mu.Lock()
		if len(rp.m) > 100000 {
			clear(rp.m) // bounded: agents are few, keys of deleted ones age out
		}
		rp.m[key] = s
		rp.mu.Unlock()
		return s, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*agentState), nil
}
