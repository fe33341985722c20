package authority

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/bcrypt"

	"github.com/agentpassport/passport/passport"
)

// Client authentication is throttled per source address, and per client
// id *at* a source address, never per client id alone: a client id is
// public (it is every passport's sub), so a limit keyed on it alone would
// let anyone lock the real agent out without knowing its secret. Both
// counters live in Redis, so every replica shares them, and both are
// checked before any secret is hashed, so a refused attempt costs one
// Redis round trip and no bcrypt.

// sourceOf is the address a request comes from: the connection's remote
// address, or, when that is a trusted proxy, the nearest X-Forwarded-For
// hop that is not one (read right to left, so a client cannot choose its
// own address by sending the header through a proxy that appends to it).
// An unreadable hop ends the walk at the last address known.
func sourceOf(r *http.Request, trusted []netip.Prefix) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{} // not TCP (tests, unix sockets): one shared "unknown" source
	}
	addr := ap.Addr().Unmap().WithZone("")
	if !isTrusted(addr, trusted) {
		return addr
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		h, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			return addr
		}
		h = h.Unmap().WithZone("")
		if !isTrusted(h, trusted) {
			return h
		}
		addr = h
	}
	return addr
}

func isTrusted(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// sourceKey names a source in Redis keys. An IPv6 source counts as its
// /64: one host usually holds a whole /64, so counting single addresses
// would give an attacker 2^64 budgets.
func sourceKey(a netip.Addr) string {
	switch {
	case !a.IsValid():
		return "unknown"
	case a.Is6():
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}

// parseTrustedProxies reads CIDRs or single addresses.
func parseTrustedProxies(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	var errs []error
	for i, s := range list {
		s = strings.TrimSpace(s)
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("clients.trusted_proxies[%d] %q: want an address or a CIDR", i, s))
			continue
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, errors.Join(errs...)
}

// Both keys of one source share a hash tag, so the script below touches
// one slot in Redis Cluster.
func sourceFailKey(src string) string { return "passport:{authfail:" + src + "}:source" }
func clientFailKey(src, clientID string) string {
	return "passport:{authfail:" + src + "}:client:" + clientID
}

// reserveScript counts an authentication attempt before its credentials
// are checked, atomically, so that concurrent attempts cannot all slip
// under a limit: it refuses (1 = source, 2 = client id at source, with
// the milliseconds until the window ends) or takes one from both budgets.
// A successful attempt gives its reservation back (releaseScript), so
// only failures use the budget up.
var reserveScript = redis.NewScript(`
local s = tonumber(redis.call('GET', KEYS[1]) or '0')
if s >= tonumber(ARGV[1]) then return {1, redis.call('PTTL', KEYS[1])} end
local c = tonumber(redis.call('GET', KEYS[2]) or '0')
if c >= tonumber(ARGV[2]) then return {2, redis.call('PTTL', KEYS[2])} end
redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3], 'NX')
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3], 'NX')
return {0, 0}
`)

// releaseScript gives a reservation back; a counter that expired meanwhile
// is left alone (DECR would create it anew, without a TTL).
var releaseScript = redis.NewScript(`
for _, k in ipairs(KEYS) do
  if tonumber(redis.call('GET', k) or '0') > 0 then redis.call('DECR', k) end
end
return 0
`)

// attempt is one reserved authentication attempt.
type attempt struct {
	keys []string
}

// reserve takes an attempt from the source's and the client id's budgets,
// or refuses with 429 and Retry-After.
func (a *Authority) reserve(ctx context.Context, src netip.Addr, clientID, method string) (*attempt, error) {
	sk := sourceKey(src)
	keys := []string{sourceFailKey(sk), clientFailKey(sk, clientID)}
	window := a.cfg.Clients.AuthFailureWindow.Milliseconds()
	res, err := reserveScript.Run(ctx, a.rdb, keys, a.cfg.Clients.SourceFailureLimit, a.cfg.Clients.AuthFailureLimit, window).Int64Slice()
	if err != nil {
		return nil, fmt.Errorf("count authentication attempt: %w", err)
	}
	if len(res) != 2 {
		return nil, fmt.Errorf("count authentication attempt: unexpected answer %v", res)
	}
	retry := time.Duration(res[1]) * time.Millisecond
	if retry <= 0 {
		retry = a.cfg.Clients.AuthFailureWindow
	}
	switch res[0] {
	case 1:
		a.m.authFailures.WithLabelValues(method, "source_limited").Inc()
		return nil, &oauthError{status: http.StatusTooManyRequests, code: "invalid_client", desc: "too many failed authentication attempts from this address; retry later", retryAfter: retry}
	case 2:
		a.m.authFailures.WithLabelValues(method, "client_limited").Inc()
		return nil, &oauthError{status: http.StatusTooManyRequests, code: "invalid_client", desc: "too many failed authentication attempts for this client from this address; retry later", retryAfter: retry}
	}
	return &attempt{keys: keys}, nil
}

// release gives a successful attempt's reservation back.
func (a *Authority) release(ctx context.Context, at *attempt) {
	if err := releaseScript.Run(context.WithoutCancel(ctx), a.rdb, at.keys).Err(); err != nil {
		// The attempt then counts as a failure until the window ends: a
		// lost release can only make the limit stricter.
		a.log.WarnContext(ctx, "release authentication attempt", "err", err)
	}
}

// errBusy answers when every bcrypt slot stayed taken for HashWait.
var errBusy = &oauthError{status: http.StatusServiceUnavailable, code: "temporarily_unavailable", desc: "the authority is busy; retry shortly", retryAfter: time.Second}

// compareSecret runs one bcrypt comparison in one of a bounded number of
// slots, so a flood spread over many sources (each within its own limit)
// still costs at most MaxConcurrentHashes cores; a request that waits
// longer than HashWait for a slot is answered 503 rather than queued
// without bound.
func (a *Authority) compareSecret(ctx context.Context, hash []byte, secret string) (bool, error) {
	t := time.NewTimer(a.cfg.Clients.HashWait)
	defer t.Stop()
	select {
	case a.hashSlots <- struct{}{}:
	case <-t.C:
		a.m.hashBusy.Inc()
		return false, errBusy
	case <-ctx.Done():
		return false, ctx.Err()
	}
	defer func() { <-a.hashSlots }()
	a.m.hashes.Inc()
	return bcrypt.CompareHashAndPassword(hash, []byte(secret)) == nil, nil
}

func retryAfterSeconds(d time.Duration) string {
	s := int64((d + time.Second - 1) / time.Second)
	return strconv.FormatInt(max(s, 1), 10)
}

// issueScript is a GCRA token bucket: KEYS[1] holds the theoretical
// arrival time (unix ms) of the next passport. It refuses with the
// milliseconds to wait, or records the passport and answers 0. One key per
// agent in the tenant's slot, so it is Cluster-safe; the key expires once
// the bucket is full again.
var issueScript = redis.NewScript(`
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local nxt = tat + interval
local wait = nxt - now - burst * interval
if wait > 0 then return wait end
redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX', string.format('%.0f', nxt - now))
return 0
`)

func issueRateKey(tenant, agentID string) string {
	return passport.TenantKey(tenant, "agent", agentID, "issue-rate")
}

// takeIssuance takes one passport from the agent's bucket (shared by
// every replica), or refuses with 429 and Retry-After. The time is the
// authority's clock: replicas' clocks differ by far less than an interval.
func (a *Authority) takeIssuance(ctx context.Context, agent *agentRecord) error {
	p := a.cfg.Passport
	wait, err := issueScript.Run(ctx, a.rdb, []string{issueRateKey(agent.Tenant, agent.ID)},
		a.now().UnixMilli(), p.IssueInterval.Milliseconds(), p.IssueBurst).Int64()
	if err != nil {
		return fmt.Errorf("issuance limit of %s: %w", agent.ID, err)
	}
	if wait > 0 {
		after := time.Duration(wait) * time.Millisecond
		return &oauthError{status: http.StatusTooManyRequests, code: "slow_down",
			desc: "too many passports for this agent; retry after " + retryAfterSeconds(after) + "s", retryAfter: after}
	}
	return nil
}
