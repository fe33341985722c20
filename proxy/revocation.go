package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/singleflight"

	"github.com/agentpassport/passport/passport"
)

// ErrStateUnavailable means revocation or agent state could not be read;
// the call is refused (503), never allowed on stale data.
var ErrStateUnavailable = errors.New("revocation state unavailable")

// revocations mirrors the revoked-passport and blocked-agent sets of Redis.
//
// It subscribes to the revocation channel first and only then loads both
// sets in full, so no event can fall between the load and the
// subscription. The same happens after every reconnect. While the
// subscription is not live, check asks Redis directly on every call, and
// when Redis does not answer either, the call is refused: a proxy never
// allows on a state it cannot vouch for.
type revocations struct {
	rdb   redis.UniversalClient
	log   *slog.Logger
	clock func() time.Time
	m     *metrics

	live    atomic.Bool
	mu      sync.RWMutex
	revoked map[string]int64 // jti -> exp (unix s)
	blocked map[string]struct{}
}

func newRevocations(rdb redis.UniversalClient, log *slog.Logger, clock func() time.Time, m *metrics) *revocations {
	return &revocations{rdb: rdb, log: log, clock: clock, m: m, revoked: map[string]int64{}, blocked: map[string]struct{}{}}
}

// check returns nil, ErrRevoked, ErrBlocked or ErrStateUnavailable.
func (rv *revocations) check(ctx context.Context, jti, tenant, agentID string) error {
	member := passport.BlockedMember(tenant, agentID)
	if rv.live.Load() {
		rv.mu.RLock()
		_, revoked := rv.revoked[jti]
		_, blocked := rv.blocked[member]
		rv.mu.RUnlock()
		// The subscription may have died while we looked; then ask Redis.
		if rv.live.Load() {
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

// Run follows the channel until ctx ends, reconnecting with backoff.
func (rv *revocations) Run(ctx context.Context) error {
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		err := rv.follow(ctx)
		rv.live.Store(false)
		rv.m.subscriptionUp.Set(0)
		if ctx.Err() != nil {
			return nil
		}
		rv.log.WarnContext(ctx, "revocation subscription down; checking Redis per call", "error", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 2*time.Second)
		if err == nil {
			backoff = 50 * time.Millisecond
		}
	}
	return nil
}

func (rv *revocations) follow(ctx context.Context) error {
	ps := rv.rdb.Subscribe(ctx, passport.RevocationChannel)
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil { // the subscription confirmation
		return fmt.Errorf("subscribe %s: %w", passport.RevocationChannel, err)
	}
	if err := rv.load(ctx); err != nil {
		return err
	}
	rv.live.Store(true)
	rv.m.subscriptionUp.Set(1)
	rv.m.revocationLoads.Inc()
	rv.log.InfoContext(ctx, "revocation subscription live", "revoked", rv.size())

	// A watchdog pings the subscription every second and closes it when
	// nothing (not even a pong) arrived for three: a dead connection is
	// noticed within seconds even without a TCP reset, and closing also
	// unblocks the receive below when ctx ends.
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-wctx.Done():
				_ = ps.Close()
				return
			case <-t.C:
			}
			if time.Since(time.Unix(0, last.Load())) > 3*time.Second {
				_ = ps.Close()
				return
			}
			_ = ps.Ping(wctx)
			rv.prune()
		}
	}()
	for {
		msg, err := ps.Receive(wctx)
		if err != nil {
			return fmt.Errorf("receive revocations: %w", err)
		}
		last.Store(time.Now().UnixNano())
		if m, ok := msg.(*redis.Message); ok {
			rv.apply(ctx, m.Payload)
		}
	}
}

func (rv *revocations) load(ctx context.Context) error {
	now := rv.clock().Unix()
	zs, err := rv.rdb.ZRangeByScoreWithScores(ctx, passport.RevokedKey, &redis.ZRangeBy{
		Min: strconv.FormatInt(now-int64(passport.MaxLeeway/time.Second), 10), Max: "+inf",
	}).Result()
	if err != nil {
		return fmt.Errorf("load revoked passports: %w", err)
	}
	members, err := rv.rdb.SMembers(ctx, passport.BlockedKey).Result()
	if err != nil {
		return fmt.Errorf("load blocked agents: %w", err)
	}
	revoked := make(map[string]int64, len(zs))
	for _, z := range zs {
		if s, ok := z.Member.(string); ok {
			revoked[s] = int64(z.Score)
		}
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
	rv.mu.Lock()
	defer rv.mu.Unlock()
	switch ev.Type {
	case passport.EventRevoke:
		exp := ev.Exp
		if exp == 0 {
			exp = rv.clock().Add(passport.MaxLifetime).Unix()
		}
		rv.revoked[ev.JTI] = exp
	case passport.EventBlock:
		rv.blocked[passport.BlockedMember(ev.Tenant, ev.AgentID)] = struct{}{}
	case passport.EventUnblock:
		delete(rv.blocked, passport.BlockedMember(ev.Tenant, ev.AgentID))
	}
}

// prune forgets revocations of passports that have expired anyway.
func (rv *revocations) prune() {
	cut := rv.clock().Add(-passport.MaxLeeway).Unix()
	rv.mu.Lock()
	for j, exp := range rv.revoked {
		if exp < cut {
			delete(rv.revoked, j)
		}
	}
	rv.mu.Unlock()
}

func (rv *revocations) size() int {
	rv.mu.RLock()
	defer rv.mu.RUnlock()
	return len(rv.revoked)
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
