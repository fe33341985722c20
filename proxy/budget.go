package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/budget"
	"github.com/agentpassport/passport/passport"
)

// Budgets: how often actions may run in a sliding window, whatever the
// passports say (docs/approvals.md, "Budgets").
//
// Before the policy runs, the call reserves one unit of every budget that
// counts its action, all in one Lua script (every key is in the tenant's
// hash slot, so it runs on one Redis Cluster node). The policy sees
// input.budgets[name] = {limit, used, remaining, window, reserved} and
// decides: the library refuses with budget_exhausted, or asks a person,
// when a reservation failed. A call that is not forwarded gives its units
// back (answer.go calls releaseBudgets on every refusal); a forwarded one
// keeps them for the window. Redis failing refuses the call (503
// budget_unavailable): a budget that cannot be counted is not enforced by
// letting calls through.

// budgetHold is one budget's reservation for a call.
type budgetHold struct {
	b        budget.Budget
	key      string
	reserved bool
	used     int       // units in the window, this call's included when reserved
	freeAt   time.Time // when the oldest unit leaves the window (not reserved)
}

// budgetKey is the sorted set of one budget's units in the window: one
// member per reserving call (its request id), scored by time. A resource
// is a path parameter the client chose, so it is hashed: bounded, and no
// byte of it reaches a key name.
func budgetKey(tenant string, b budget.Budget, agentID, resource string) string {
	var who string
	switch b.Per {
	case budget.PerAgent:
		sum := sha256.Sum256([]byte(agentID))
		who = "agent:" + hex.EncodeToString(sum[:16])
	case budget.PerResource:
		sum := sha256.Sum256([]byte(resource))
		who = "resource:" + hex.EncodeToString(sum[:16])
	default:
		who = "tenant"
	}
	return passport.TenantKey(tenant, "budget", b.Name, who)
}

// reserveScript reserves one unit in each budget of the call, each on its
// own: a budget with room takes the unit whatever the others say (the
// policy sees them all; a refused call gives its units back). Redis's own
// clock (TIME) judges the window, so that proxies whose clocks differ
// count the same window. KEYS: one sorted set per budget. ARGV: the
// member (request id), then limit and window (ms) per key. Returns, per
// key: reserved (0/1), used, the oldest unit's time (ms), and last Redis's
// now (ms).
var reserveScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i, k in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i])
  local win = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now - win)
  local used = redis.call('ZCARD', k)
  local reserved = 0
  if used < limit then
    redis.call('ZADD', k, now, ARGV[1])
    redis.call('PEXPIRE', k, win)
    used = used + 1
    reserved = 1
  end
  local oldest = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
  local first = now
  if oldest[2] then first = tonumber(oldest[2]) end
  table.insert(out, reserved)
  table.insert(out, used)
  table.insert(out, first)
end
table.insert(out, now)
return out
`)

// releaseScript gives a refused call's units back. KEYS: the sorted sets
// it reserved in. ARGV: its member.
var releaseScript = redis.NewScript(`
for _, k in ipairs(KEYS) do redis.call('ZREM', k, ARGV[1]) end
return 0
`)

var refuseBudgetUnavailable = &refusal{status: http.StatusServiceUnavailable, code: "budget_unavailable",
	detail: "the budget store is unavailable, so the call is refused", retryAfter: "1"}

// reserveBudgets is the step that reserves the call's budgets (before the
// policy, which sees them).
func (p *Proxy) reserveBudgets(_ http.ResponseWriter, r *http.Request, c *call) *refusal {
	all := p.enforced.Budgets()
	if len(all) == 0 {
		return nil
	}
	resource := c.route.resource(c.params)
	var keys []string
	args := []any{c.id}
	for _, b := range all {
		if !b.Matches(c.route.Action) {
			continue
		}
		k := budgetKey(c.tenant, b, c.agentID, resource)
		c.budgets = append(c.budgets, budgetHold{b: b, key: k})
		keys = append(keys, k)
		args = append(args, b.Limit, b.Window.Milliseconds())
	}
	if len(keys) == 0 {
		return nil
	}
	res, err := reserveScript.Run(r.Context(), p.rdb, keys, args...).Int64Slice()
	if err == nil && len(res) != 3*len(keys)+1 {
		err = fmt.Errorf("unexpected answer of %d values", len(res))
	}
	if err != nil {
		c.budgets = nil // nothing is known to be held; the members expire with their window
		p.log.ErrorContext(r.Context(), "budget reservation failed; refusing", "request_id", c.id, "tenant", c.tenant, "error", err)
		return refuseBudgetUnavailable
	}
	now := time.UnixMilli(res[len(res)-1])
	for i := range c.budgets {
		h := &c.budgets[i]
		h.reserved, h.used = res[3*i] == 1, int(res[3*i+1])
		if !h.reserved {
			h.freeAt = time.UnixMilli(res[3*i+2]).Add(h.b.Window)
			if !h.freeAt.After(now) {
				h.freeAt = now.Add(time.Millisecond)
			}
			h.freeAt = h.freeAt.Add(p.clock().Sub(now)) // on the proxy's clock, for Retry-After
		}
		p.esc.budgetReservations.WithLabelValues(boolLabel(h.reserved)).Inc()
	}
	return nil
}

// releaseBudgets gives back the units of a call that is not forwarded. It
// runs after the answer's cause is known, whatever the client does: the
// request's context may be gone.
func (p *Proxy) releaseBudgets(r *http.Request, c *call) {
	p.giveBack(r, c, func(budget.Budget) bool { return true })
}

// refundBudgets gives back, after a forwarded call the upstream answered
// with a 5xx, the units of the budgets that say so (refund_on_5xx).
func (p *Proxy) refundBudgets(r *http.Request, c *call) {
	if c.status >= 500 && len(c.budgets) > 0 {
		p.giveBack(r, c, func(b budget.Budget) bool { return b.RefundOn5xx })
	}
}

// giveBack releases the call's reserved units of the budgets which.
func (p *Proxy) giveBack(r *http.Request, c *call, which func(budget.Budget) bool) {
	var keys []string
	for _, h := range c.budgets {
		if h.reserved && which(h.b) {
			keys = append(keys, h.key)
		}
	}
	c.budgets = nil
	if len(keys) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 2*time.Second)
	defer cancel()
	if err := releaseScript.Run(ctx, p.rdb, keys, c.id).Err(); err != nil {
		// The unit stays counted until its window ends: stricter, never looser.
		p.esc.budgetReleaseErrors.Inc()
		p.log.WarnContext(r.Context(), "budget release failed; the unit stays counted for its window", "request_id", c.id, "error", err)
	}
}

// budgetRetryAfter is Retry-After, in whole seconds, for a call refused
// because a budget had no unit: when the soonest exhausted budget frees
// one. "" when no budget was exhausted.
func (p *Proxy) budgetRetryAfter(c *call) string {
	var at time.Time
	for _, h := range c.budgets {
		if !h.reserved && (at.IsZero() || h.freeAt.Before(at)) {
			at = h.freeAt
		}
	}
	if at.IsZero() {
		return ""
	}
	secs := int64((at.Sub(p.clock()) + time.Second - 1) / time.Second)
	return strconv.FormatInt(max(secs, 1), 10)
}

// inputBudget is input.budgets[name], fields in the order of their names
// (the audit record's copy of the input is canonical JSON).
type inputBudget struct {
	Limit     int    `json:"limit"`
	Remaining int    `json:"remaining"`
	Reserved  bool   `json:"reserved"`
	Used      int    `json:"used"`
	Window    string `json:"window"`
}

var (
	kBudgets, kLimit, kRemaining = ast.StringTerm("budgets"), ast.StringTerm("limit"), ast.StringTerm("remaining")
	kReserved, kUsed, kWindow    = ast.StringTerm("reserved"), ast.StringTerm("used"), ast.StringTerm("window")
)

// budgetsInput is input.budgets as Go (for the record) and as a term.
func budgetsInput(hs []budgetHold) (map[string]inputBudget, *ast.Term) {
	doc := make(map[string]inputBudget, len(hs))
	obj := ast.NewObject()
	for _, h := range hs {
		ib := inputBudget{Limit: h.b.Limit, Used: h.used, Remaining: max(h.b.Limit-h.used, 0),
			Reserved: h.reserved, Window: h.b.Window.String()}
		doc[h.b.Name] = ib
		obj.Insert(ast.StringTerm(h.b.Name), ast.ObjectTerm(
			ast.Item(kLimit, ast.IntNumberTerm(ib.Limit)),
			ast.Item(kRemaining, ast.IntNumberTerm(ib.Remaining)),
			ast.Item(kReserved, ast.BooleanTerm(ib.Reserved)),
			ast.Item(kUsed, ast.IntNumberTerm(ib.Used)),
			ast.Item(kWindow, ast.StringTerm(ib.Window)),
		))
	}
	return doc, ast.NewTerm(obj)
}

func boolLabel(b bool) string {
	if b {
		return "reserved"
	}
	return "exhausted"
}
