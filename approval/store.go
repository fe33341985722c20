package approval

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/passport"
)

// Redis layout, every key in the tenant's hash slot:
//
//	passport:{t:<tenant>}:approval:<id>        hash: one approval (fields below)
//	passport:{t:<tenant>}:approvals            sorted set: ids scored by expiry (unix ms)
//	passport:{t:<tenant>}:approval-call:<hex>  string: the approval of one agent's exact call
//
// The hash and its index entry are dropped Retention after the approval
// expires; the call key lives until the approval expires.

// Key is the hash holding one approval.
func Key(tenant, id string) string { return passport.TenantKey(tenant, "approval", id) }

// IndexKey is the sorted set of a tenant's approvals, scored by expiry.
func IndexKey(tenant string) string { return passport.TenantKey(tenant, "approvals") }

// CallKey maps one agent's exact call to its live approval, so that an
// agent repeating a call that waits for a person gets the same approval
// instead of a new one each time.
func CallKey(tenant, callDigest string) string {
	return passport.TenantKey(tenant, "approval-call", callDigest)
}

// Fields of the approval hash.
const (
	fID            = "id"
	fTenant        = "tenant"
	fState         = "state"
	fAgentID       = "agent_id"
	fAgentName     = "agent_name"
	fAgentType     = "agent_type"
	fJTI           = "jti"
	fRequestID     = "request_id"
	fMethod        = "method"
	fPath          = "path"
	fQuery         = "query"
	fBodySHA256    = "body_sha256"
	fBody          = "body"
	fBodyBytes     = "body_bytes"
	fAction        = "action"
	fResource      = "resource"
	fReasons       = "reasons"  // JSON array
	fReason        = "reason"   // the policy's explanation
	fRequired      = "required" // distinct approvers needed
	fExcludeOwner  = "exclude_owner"
	fApprovals     = "approvals" // approvers counted so far
	fCreatedAt     = "created_at"
	fExpiresAt     = "expires_at" // unix ms, like every time field
	fGrantedAt     = "granted_at"
	fUsedAt        = "used_at"
	fUsedRequestID = "used_request_id"
	fDenied        = "denied" // JSON Vote
	fDeniedAt      = "denied_at"
	votePrefix     = "vote:" // + lower-case approver: JSON Vote
)

// Request is what the proxy knows when the policy asks for a person.
type Request struct {
	Tenant    string
	AgentID   string
	AgentName string
	AgentType string
	JTI       string
	RequestID string
	// Method, Path (normalised, as routed), Query (raw) and Body (exact
	// bytes) are the call the approval will open.
	Method string
	Path   string
	Query  string
	Body   []byte
	// Action and Resource as routed.
	Action   string
	Resource string
	// Reasons of the refusal, and the policy's explanation
	// (decision.approval.reason).
	Reasons []string
	Reason  string
	// Approvers is how many distinct approvers must approve. Default 1.
	Approvers int
	// ExcludeOwner: the agent's registered owner may not approve.
	ExcludeOwner bool
	// TTL is how long it may be decided and used. Default DefaultTTL.
	TTL time.Duration
}

// Call is the call an agent presents an approval with.
type Call struct {
	Tenant  string
	AgentID string
	Method  string
	Path    string
	Query   string
	Body    []byte
	// RequestID is the proxy's id of this call, kept as used_request_id.
	RequestID string
}

// Options tune a Store.
type Options struct {
	// Clock is the time source. Default time.Now. Every script is given
	// the caller's time, so expiry is judged by one clock per decision.
	Clock func() time.Time
	// MaxLive caps the unexpired approvals of one tenant. Default
	// DefaultMaxLive.
	MaxLive int
}

// Store keeps approvals in Redis. It is safe for concurrent use and holds
// no state of its own: any number of proxies and authority replicas may
// share one Redis.
type Store struct {
	rdb     redis.UniversalClient
	now     func() time.Time
	maxLive int
}

// NewStore returns a store on rdb.
func NewStore(rdb redis.UniversalClient, opts Options) *Store {
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.MaxLive <= 0 {
		opts.MaxLive = DefaultMaxLive
	}
	return &Store{rdb: rdb, now: opts.Clock, maxLive: opts.MaxLive}
}

// ErrInvalid wraps every problem with a Request.
var ErrInvalid = errors.New("invalid approval request")

var (
	methodRE = regexp.MustCompile(`^[A-Z]{1,16}$`)
	agentRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$`)
	reasonRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`)
)

// plain reports whether s is at most max bytes of UTF-8 without control
// or invisible formatting characters: these fields are shown to the
// people who approve, who must see what they approve.
func plain(s string, max int) bool {
	return len(s) <= max && utf8.ValidString(s) && Visible(s) == s && !strings.ContainsAny(s, "\n\t")
}

func (r *Request) validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if !passport.ValidTenant(r.Tenant) {
		bad("tenant %q", r.Tenant)
	}
	if !agentRE.MatchString(r.AgentID) {
		bad("agent id")
	}
	for name, v := range map[string]string{"agent name": r.AgentName, "agent type": r.AgentType, "jti": r.JTI, "request id": r.RequestID} {
		if !plain(v, 128) {
			bad("%s: at most 128 bytes without control characters", name)
		}
	}
	if !methodRE.MatchString(r.Method) {
		bad("method %q", r.Method)
	}
	if !strings.HasPrefix(r.Path, "/") || !plain(r.Path, 4096) {
		bad("path: want / and at most 4096 bytes without control characters")
	}
	if !plain(r.Query, 4096) {
		bad("query: at most 4096 bytes without control characters")
	}
	if !passport.ValidAction(r.Action) {
		bad("action %q", r.Action)
	}
	if r.Resource == "" || !plain(r.Resource, 256) {
		bad("resource: 1-256 bytes without control characters")
	}
	if len(r.Reasons) > 32 {
		bad("reasons: at most 32")
	}
	for _, c := range r.Reasons {
		if !reasonRE.MatchString(c) {
			bad("reason %q: not a reason code", c)
		}
	}
	if !plain(r.Reason, 512) {
		bad("reason: at most 512 bytes without control characters")
	}
	if r.Approvers < 0 || r.Approvers > MaxApprovers {
		bad("approvers %d: want 1 to %d", r.Approvers, MaxApprovers)
	}
	if r.TTL < 0 || (r.TTL > 0 && r.TTL < time.Second) || r.TTL > MaxTTL {
		bad("ttl %v: want 1s to %v", r.TTL, MaxTTL)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

// callDigest identifies one agent's exact call.
func callDigest(agentID, method, path, query, bodySHA string) string {
	h := sha256.New()
	for _, s := range []string{agentID, method, path, query, bodySHA} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

func newID() string {
	b := make([]byte, 20)
	_, _ = rand.Read(b) // never fails since Go 1.24
	return IDPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// createScript stores a new approval, unless the same agent's identical
// call already has one that is pending or granted and unexpired: then it
// answers that one. KEYS: the new hash, the index, the call key, the hash
// of the approval the call key named when the caller read it (or the new
// hash). ARGV: now, expires, max live, retention (ms), the id the call
// key held ("" none), the new id, then the hash's field/value pairs. If
// the call key changed since it was read, the caller retries. The keys'
// lifetimes are relative (PEXPIRE, PX): Redis's clock then counts them,
// and a caller whose clock is off cannot make them vanish early.
var createScript = redis.NewScript(`
local now = tonumber(ARGV[1])
local cur = redis.call('GET', KEYS[3]) or ''
if cur ~= ARGV[5] then return {'retry'} end
if cur ~= '' then
  local f = redis.call('HMGET', KEYS[4], 'state', 'expires_at')
  if (f[1] == 'pending' or f[1] == 'granted') and now < tonumber(f[2]) then
    return {'exists', redis.call('HGETALL', KEYS[4])}
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('%.0f', now - tonumber(ARGV[4])))
if redis.call('ZCOUNT', KEYS[2], '(' .. ARGV[1], '+inf') >= tonumber(ARGV[3]) then return {'` + CodeLimit + `'} end
if redis.call('EXISTS', KEYS[1]) == 1 then return {'retry'} end
local exp = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', exp - now + tonumber(ARGV[4])))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[6])
redis.call('SET', KEYS[3], ARGV[6], 'PX', string.format('%.0f', exp - now))
return {'created', redis.call('HGETALL', KEYS[1])}
`)

// Create stores a pending approval for r, or returns the live one (pending
// or granted, unexpired) that the same agent's identical call already has;
// created says which. It refuses with ErrLimit when the tenant holds
// Options.MaxLive unexpired approvals, and with an error wrapping
// ErrInvalid when r is malformed.
func (s *Store) Create(ctx context.Context, r Request) (a Approval, created bool, err error) {
	if err := r.validate(); err != nil {
		return Approval{}, false, err
	}
	if r.Approvers == 0 {
		r.Approvers = 1
	}
	if r.TTL == 0 {
		r.TTL = DefaultTTL
	}
	now := s.now()
	exp := now.Add(r.TTL)
	sum := Digest(r.Body)
	preview, enc := bodyPreview(r.Body)
	if r.Reasons == nil {
		r.Reasons = []string{}
	}
	reasons, _ := json.Marshal(r.Reasons)
	id := newID()
	fields := []any{
		fID, id, fTenant, r.Tenant, fState, string(StatePending),
		fAgentID, r.AgentID, fAgentName, r.AgentName, fAgentType, r.AgentType, fJTI, r.JTI, fRequestID, r.RequestID,
		fMethod, r.Method, fPath, r.Path, fQuery, r.Query, fBodySHA256, sum,
		fBody, preview, fBodyBytes, len(r.Body),
		fAction, r.Action, fResource, r.Resource, fReasons, string(reasons), fReason, r.Reason,
		fRequired, r.Approvers, fExcludeOwner, boolField(r.ExcludeOwner), fApprovals, 0,
		fCreatedAt, now.UnixMilli(), fExpiresAt, exp.UnixMilli(),
	}
	if enc != "" {
		fields = append(fields, "body_encoding", enc)
	}
	callKey := CallKey(r.Tenant, callDigest(r.AgentID, r.Method, r.Path, r.Query, sum))
	for range 8 {
		prev, err := s.rdb.Get(ctx, callKey).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return Approval{}, false, fmt.Errorf("create approval: %w", err)
		}
		prevKey := Key(r.Tenant, id)
		if prev != "" && ValidID(prev) {
			prevKey = Key(r.Tenant, prev)
		}
		args := append([]any{now.UnixMilli(), exp.UnixMilli(), s.maxLive, Retention.Milliseconds(), prev, id}, fields...)
		res, err := createScript.Run(ctx, s.rdb, []string{Key(r.Tenant, id), IndexKey(r.Tenant), callKey, prevKey}, args...).Slice()
		if err != nil {
			return Approval{}, false, fmt.Errorf("create approval: %w", err)
		}
		code, hash, err := reply(res)
		if err != nil {
			return Approval{}, false, fmt.Errorf("create approval: %w", err)
		}
		switch code {
		case "retry":
			continue
		case "created", "exists":
			a, err := s.decode(hash)
			return a, code == "created", err
		default:
			return Approval{}, false, &Error{Code: code}
		}
	}
	return Approval{}, false, errors.New("create approval: the call's approval kept changing; retry")
}

// approveScript counts one approver once. KEYS: the approval, its agent's
// hash (for the registered owner). ARGV: now, approver (lower case), the
// vote's JSON, the agent id the caller read, the owner field's name.
var approveScript = redis.NewScript(`
local f = redis.call('HMGET', KEYS[1], 'state', 'expires_at', 'required', 'exclude_owner', 'agent_id')
if not f[1] then return {'` + CodeUnknown + `'} end
if f[5] ~= ARGV[4] then return {'retry'} end
if f[1] == 'denied' then return {'` + CodeDenied + `'} end
if f[1] == 'used' then return {'` + CodeUsed + `'} end
if tonumber(ARGV[1]) >= tonumber(f[2]) then return {'` + CodeExpired + `'} end
if f[1] == 'granted' then return {'` + CodeGranted + `'} end
if f[4] == '1' then
  local owner = redis.call('HGET', KEYS[2], ARGV[5])
  if owner and string.lower(owner) == ARGV[2] then return {'` + CodeOwnerExcluded + `'} end
end
if redis.call('HSETNX', KEYS[1], 'vote:' .. ARGV[2], ARGV[3]) == 0 then return {'` + CodeAlreadyApproved + `'} end
if redis.call('HINCRBY', KEYS[1], 'approvals', 1) >= tonumber(f[3]) then
  redis.call('HSET', KEYS[1], 'state', 'granted', 'granted_at', ARGV[1])
end
return {'ok', redis.call('HGETALL', KEYS[1])}
`)

// denyScript denies a pending or granted (not yet used) approval. KEYS:
// the approval. ARGV: now, the vote's JSON.
var denyScript = redis.NewScript(`
local f = redis.call('HMGET', KEYS[1], 'state', 'expires_at')
if not f[1] then return {'` + CodeUnknown + `'} end
if f[1] == 'denied' then return {'` + CodeDenied + `'} end
if f[1] == 'used' then return {'` + CodeUsed + `'} end
if tonumber(ARGV[1]) >= tonumber(f[2]) then return {'` + CodeExpired + `'} end
redis.call('HSET', KEYS[1], 'state', 'denied', 'denied', ARGV[2], 'denied_at', ARGV[1])
return {'ok', redis.call('HGETALL', KEYS[1])}
`)

// consumeScript uses a granted approval once. KEYS: the approval. ARGV:
// now, tenant, agent id, method, path, query, body digest, request id.
// The agent is checked before anything else is said about the approval.
var consumeScript = redis.NewScript(`
local f = redis.call('HMGET', KEYS[1], 'state', 'expires_at', 'tenant', 'agent_id', 'method', 'path', 'query', 'body_sha256')
if not f[1] then return {'` + CodeUnknown + `'} end
if f[3] ~= ARGV[2] then return {'` + CodeMismatch + `', 'tenant'} end
if f[4] ~= ARGV[3] then return {'` + CodeMismatch + `', 'agent'} end
if f[1] == 'used' then return {'` + CodeUsed + `'} end
if f[1] == 'denied' then return {'` + CodeDenied + `'} end
if tonumber(ARGV[1]) >= tonumber(f[2]) then return {'` + CodeExpired + `'} end
if f[1] ~= 'granted' then return {'` + CodePending + `'} end
if f[5] ~= ARGV[4] then return {'` + CodeMismatch + `', 'method'} end
if f[6] ~= ARGV[5] then return {'` + CodeMismatch + `', 'path'} end
if f[7] ~= ARGV[6] then return {'` + CodeMismatch + `', 'query'} end
if f[8] ~= ARGV[7] then return {'` + CodeMismatch + `', 'body'} end
redis.call('HSET', KEYS[1], 'state', 'used', 'used_at', ARGV[1], 'used_request_id', ARGV[8])
return {'ok', redis.call('HGETALL', KEYS[1])}
`)

// Approve records approver's approval. The approval is granted once
// RequiredApprovers distinct approvers (compared without case) approved.
// It refuses with ErrUnknown, ErrDenied, ErrUsed, ErrExpired, ErrGranted
// (already granted), ErrAlreadyApproved (this approver counted already)
// or ErrOwnerExcluded (ExcludeOwner and approver is the agent's registered
// owner).
func (s *Store) Approve(ctx context.Context, tenant, id string, v Vote) (Approval, error) {
	if err := checkVote(v); err != nil {
		return Approval{}, err
	}
	if !passport.ValidTenant(tenant) || !ValidID(id) {
		return Approval{}, ErrUnknown
	}
	agentID, err := s.rdb.HGet(ctx, Key(tenant, id), fAgentID).Result()
	if errors.Is(err, redis.Nil) {
		return Approval{}, ErrUnknown
	}
	if err != nil {
		return Approval{}, fmt.Errorf("approve %s: %w", id, err)
	}
	now := s.now()
	v.At = now.UTC()
	vote, _ := json.Marshal(v)
	res, err := approveScript.Run(ctx, s.rdb, []string{Key(tenant, id), passport.AgentKey(tenant, agentID)},
		now.UnixMilli(), strings.ToLower(v.Approver), vote, agentID, passport.FieldOwner).Slice()
	if err != nil {
		return Approval{}, fmt.Errorf("approve %s: %w", id, err)
	}
	return s.result(res, "approve "+id)
}

// Deny records approver's denial: one denial is enough. A granted
// approval that was not used yet may still be denied.
func (s *Store) Deny(ctx context.Context, tenant, id string, v Vote) (Approval, error) {
	if err := checkVote(v); err != nil {
		return Approval{}, err
	}
	if !passport.ValidTenant(tenant) || !ValidID(id) {
		return Approval{}, ErrUnknown
	}
	now := s.now()
	v.At = now.UTC()
	vote, _ := json.Marshal(v)
	res, err := denyScript.Run(ctx, s.rdb, []string{Key(tenant, id)}, now.UnixMilli(), vote).Slice()
	if err != nil {
		return Approval{}, fmt.Errorf("deny %s: %w", id, err)
	}
	return s.result(res, "deny "+id)
}

// Consume uses the granted approval id for call, once: it must be granted,
// unexpired, and for the same tenant, agent, method, path, query and body.
// Of concurrent consumers exactly one succeeds. It refuses with an *Error:
// CodeUnknown, CodeMismatch (Field says what differs), CodeUsed,
// CodeDenied, CodeExpired or CodePending. A mismatch or a refusal does not
// use the approval up.
func (s *Store) Consume(ctx context.Context, id string, call Call) (Approval, error) {
	if !passport.ValidTenant(call.Tenant) || !ValidID(id) {
		return Approval{}, ErrUnknown
	}
	now := s.now()
	res, err := consumeScript.Run(ctx, s.rdb, []string{Key(call.Tenant, id)}, now.UnixMilli(), call.Tenant,
		call.AgentID, call.Method, call.Path, call.Query, Digest(call.Body), call.RequestID).Slice()
	if err != nil {
		return Approval{}, fmt.Errorf("consume approval %s: %w", id, err)
	}
	return s.result(res, "consume "+id)
}

func checkVote(v Vote) error {
	if !ValidApprover(v.Approver) {
		return fmt.Errorf("%w: approver %q", ErrInvalid, v.Approver)
	}
	if !ValidComment(v.Comment) || !ValidComment(v.Via) || len(v.Via) > 128 {
		return fmt.Errorf("%w: comment or via: at most %d bytes of printable text", ErrInvalid, MaxCommentLen)
	}
	return nil
}

// result turns a script's answer into an approval or a refusal.
func (s *Store) result(res []any, what string) (Approval, error) {
	code, rest, err := reply(res)
	if err != nil {
		return Approval{}, fmt.Errorf("%s: %w", what, err)
	}
	if code != "ok" {
		e := &Error{Code: code}
		if len(res) > 1 {
			e.Field, _ = res[1].(string)
		}
		if code == "retry" {
			return Approval{}, fmt.Errorf("%s: the approval changed while it was read; retry", what)
		}
		return Approval{}, e
	}
	return s.decode(rest)
}

// reply splits a script's answer {code, [HGETALL]}.
func reply(res []any) (string, map[string]string, error) {
	if len(res) == 0 {
		return "", nil, errors.New("empty script answer")
	}
	code, ok := res[0].(string)
	if !ok {
		return "", nil, fmt.Errorf("unexpected script answer %v", res)
	}
	if len(res) < 2 {
		return code, nil, nil
	}
	flat, ok := res[1].([]any)
	if !ok {
		return code, nil, nil
	}
	m := make(map[string]string, len(flat)/2)
	for i := 0; i+1 < len(flat); i += 2 {
		k, _ := flat[i].(string)
		v, _ := flat[i+1].(string)
		m[k] = v
	}
	return code, m, nil
}

// Get returns one approval; ErrUnknown when there is none (or it was
// dropped Retention after it expired).
func (s *Store) Get(ctx context.Context, tenant, id string) (Approval, error) {
	if !passport.ValidTenant(tenant) || !ValidID(id) {
		return Approval{}, ErrUnknown
	}
	m, err := s.rdb.HGetAll(ctx, Key(tenant, id)).Result()
	if err != nil {
		return Approval{}, fmt.Errorf("get approval %s: %w", id, err)
	}
	if len(m) == 0 {
		return Approval{}, ErrUnknown
	}
	return s.decode(m)
}

// MaxList bounds one List.
const MaxList = 1000

// List returns a tenant's approvals in state (any state when ""), newest
// first, at most limit (default 100, at most MaxList). Pending and granted
// ones are those not expired yet; the others are kept for Retention.
func (s *Store) List(ctx context.Context, tenant string, state State, limit int) ([]Approval, error) {
	if !passport.ValidTenant(tenant) {
		return nil, fmt.Errorf("list approvals: tenant %q", tenant)
	}
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, MaxList)
	now := s.now()
	by := &redis.ZRangeBy{Max: "+inf", Min: strconv.FormatInt(now.Add(-Retention).UnixMilli(), 10), Count: MaxList}
	if state == StatePending || state == StateGranted {
		by.Min = "(" + strconv.FormatInt(now.UnixMilli(), 10)
	}
	ids, err := s.rdb.ZRevRangeByScore(ctx, IndexKey(tenant), by).Result()
	if err != nil {
		return nil, fmt.Errorf("list approvals: %w", err)
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, 0, len(ids))
	for _, id := range ids {
		if ValidID(id) {
			cmds = append(cmds, pipe.HGetAll(ctx, Key(tenant, id)))
		}
	}
	if len(cmds) > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, fmt.Errorf("list approvals: %w", err)
		}
	}
	out := make([]Approval, 0, min(len(cmds), limit))
	for _, c := range cmds {
		if len(c.Val()) == 0 {
			continue // dropped meanwhile
		}
		a, err := s.decode(c.Val())
		if err != nil {
			return nil, err
		}
		if state == "" || a.State == state {
			out = append(out, a)
		}
	}
	slices.SortStableFunc(out, func(x, y Approval) int {
		if c := y.CreatedAt.Compare(x.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(x.ID, y.ID)
	})
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// decode reads an approval hash; its state is as of the store's clock.
func (s *Store) decode(m map[string]string) (Approval, error) {
	if m[fID] == "" {
		return Approval{}, ErrUnknown
	}
	ms := func(k string) time.Time {
		v, err := strconv.ParseInt(m[k], 10, 64)
		if err != nil || v == 0 {
			return time.Time{}
		}
		return time.UnixMilli(v).UTC()
	}
	opt := func(k string) *time.Time {
		if t := ms(k); !t.IsZero() {
			return &t
		}
		return nil
	}
	n := func(k string) int { v, _ := strconv.Atoi(m[k]); return v }
	a := Approval{
		ID: m[fID], Tenant: m[fTenant], State: State(m[fState]),
		AgentID: m[fAgentID], AgentName: m[fAgentName], AgentType: m[fAgentType], JTI: m[fJTI], RequestID: m[fRequestID],
		Method: m[fMethod], Path: m[fPath], Query: m[fQuery], BodySHA256: m[fBodySHA256],
		Body: m[fBody], BodyEncoding: m["body_encoding"], BodyBytes: n(fBodyBytes),
		Action: m[fAction], Resource: m[fResource], Reason: m[fReason],
		RequiredApprovers: n(fRequired), ExcludeOwner: m[fExcludeOwner] == "1",
		Approvers: []Vote{},
		CreatedAt: ms(fCreatedAt), ExpiresAt: ms(fExpiresAt), GrantedAt: opt(fGrantedAt), UsedAt: opt(fUsedAt),
		UsedRequestID: m[fUsedRequestID],
	}
	a.BodyTruncated = a.BodyBytes > MaxBodyPreview
	if err := json.Unmarshal([]byte(m[fReasons]), &a.Reasons); err != nil {
		return Approval{}, fmt.Errorf("decode approval %s reasons: %w", a.ID, err)
	}
	if a.Reasons == nil {
		a.Reasons = []string{}
	}
	for k, v := range m {
		if !strings.HasPrefix(k, votePrefix) {
			continue
		}
		var vt Vote
		if err := json.Unmarshal([]byte(v), &vt); err != nil {
			return Approval{}, fmt.Errorf("decode approval %s vote: %w", a.ID, err)
		}
		a.Approvers = append(a.Approvers, vt)
	}
	slices.SortFunc(a.Approvers, func(x, y Vote) int {
		if c := x.At.Compare(y.At); c != 0 {
			return c
		}
		return strings.Compare(x.Approver, y.Approver)
	})
	if d := m[fDenied]; d != "" {
		var vt Vote
		if err := json.Unmarshal([]byte(d), &vt); err != nil {
			return Approval{}, fmt.Errorf("decode approval %s denial: %w", a.ID, err)
		}
		a.DeniedBy = &vt
	}
	if (a.State == StatePending || a.State == StateGranted) && !s.now().Before(a.ExpiresAt) {
		a.State = StateExpired
	}
	return a, nil
}

// bodyPreview keeps the start of the body for people: as text when it is
// UTF-8, else base64.
func bodyPreview(b []byte) (string, string) {
	if len(b) > MaxBodyPreview {
		b = b[:MaxBodyPreview]
		// Do not cut a character in half: drop an incomplete last one.
		for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
			if utf8.RuneStart(b[i]) {
				if !utf8.FullRune(b[i:]) {
					b = b[:i]
				}
				break
			}
		}
	}
	if utf8.Valid(b) {
		return string(b), ""
	}
	return base64.StdEncoding.EncodeToString(b), "base64"
}

func boolField(b bool) string {
	if b {
		return "1"
	}
	return "0"
}
