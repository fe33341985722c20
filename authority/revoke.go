package authority

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/passport"
	"github.com/redis/go-redis/v9"
)

// revokeJTI stores a revoked jti until the passport would have expired and
// announces it to the proxies. cause is a metrics label: revoke, block or
// delete.
func (a *Authority) revokeJTI(ctx context.Context, tenant, agentID, jti string, exp time.Time, cause string) error {
	ev := passport.RevocationEvent{Type: passport.EventRevoke, JTI: jti, Exp: exp.Unix(), Tenant: tenant, AgentID: agentID, Reason: cause}
	pipe := a.rdb.Pipeline()
	pipe.ZAdd(ctx, passport.RevokedKey, redis.Z{Score: float64(exp.Unix()), Member: jti})
	a.pruneRevoked(ctx, pipe)
	pipe.Publish(ctx, passport.RevocationChannel, ev.Marshal())
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("revoke %s: %w", jti, err)
	}
	a.m.revocations.WithLabelValues(cause).Inc()
	a.log.InfoContext(ctx, "passport revoked", "tenant", tenant, "agent_id", agentID, "jti", jti, "cause", cause)
	a.auditEnqueue(tenant, agentID, audit.KindRevocation, map[string]any{"agent_id": agentID, "jti": jti, "exp": exp.Unix(), "cause": cause})
	return nil
}

// pruneRevoked queues the removal of revocations whose passports have
// expired anyway. The cutoff allows the largest leeway any verifier may
// use (passport.MaxLeeway), not this authority's own: a proxy configured
// with more skew still accepts a passport that long after its exp, so its
// revocation must outlive that.
func (a *Authority) pruneRevoked(ctx context.Context, p redis.Pipeliner) {
	cutoff := a.now().Add(-passport.MaxLeeway).Unix()
	p.ZRemRangeByScore(ctx, passport.RevokedKey, "-inf", "("+strconv.FormatInt(cutoff, 10))
}

// revokeBatch is the largest number of jtis revoked in one round trip.
const revokeBatch = 1000

// revokeOutstanding revokes every passport of an agent that may still be
// accepted somewhere, in batches of one round trip each (one ZADD, one
// event per passport so proxies apply them as single revocations). It is
// for unblock and delete, never for block: the number of live passports is
// bounded by the issuance limit (about issue_burst + lifetime /
// issue_interval). The audit record names the count and the first jtis.
func (a *Authority) revokeOutstanding(ctx context.Context, tenant, agentID, cause string) (int, error) {
	now := a.now()
	zs, err := a.rdb.ZRangeByScoreWithScores(ctx, issuedKey(tenant, agentID), &redis.ZRangeBy{
		Min: strconv.FormatInt(now.Add(-passport.MaxLeeway).Unix(), 10), Max: "+inf",
	}).Result()
	if err != nil {
		return 0, fmt.Errorf("list passports of %s: %w", agentID, err)
	}
	for start := 0; start < len(zs); start += revokeBatch {
		batch := zs[start:min(start+revokeBatch, len(zs))]
		pipe := a.rdb.Pipeline()
		pipe.ZAdd(ctx, passport.RevokedKey, batch...)
		if start == 0 {
			a.pruneRevoked(ctx, pipe)
		}
		for _, z := range batch {
			jti, _ := z.Member.(string)
			ev := passport.RevocationEvent{Type: passport.EventRevoke, JTI: jti, Exp: int64(z.Score), Tenant: tenant, AgentID: agentID, Reason: cause}
			pipe.Publish(ctx, passport.RevocationChannel, ev.Marshal())
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return start, fmt.Errorf("revoke passports of %s: %w", agentID, err)
		}
		a.m.revocations.WithLabelValues(cause).Add(float64(len(batch)))
	}
	if len(zs) > 0 {
		jtis := make([]string, 0, min(len(zs), 100))
		for _, z := range zs[:min(len(zs), 100)] {
			jti, _ := z.Member.(string)
			jtis = append(jtis, jti)
		}
		a.log.InfoContext(ctx, "passports revoked", "tenant", tenant, "agent_id", agentID, "count", len(zs), "cause", cause)
		a.auditEnqueue(tenant, agentID, audit.KindRevocation, map[string]any{
			"agent_id": agentID, "count": len(zs), "jtis": jtis, "jtis_truncated": len(zs) > len(jtis), "cause": cause,
		})
	}
	return len(zs), nil
}

// blockAgent blocks an agent: the flag in its hash and the blocked set
// (both read by proxies), an event on the revocation channel, and an
// agent_blocked audit record with the cause. It takes constant time
// whatever the agent holds: the block itself refuses every passport of the
// agent at every proxy (and at introspection), so none is enumerated or
// revoked here. Passports still alive are revoked when the block is lifted
// (unblockAgent), so an unblock never brings them back.
// trigger is "admin" or "reputation" (a metrics label); cause is the
// human-readable story kept in the audit record. A block must happen even
// if the audit store is down, so an audit failure is logged and counted,
// not returned.
func (a *Authority) blockAgent(ctx context.Context, rec *agentRecord, reason, trigger, cause string) error {
	now := a.now()
	// The blocked set is global and the agent hash is in the tenant's
	// slot, so in Redis Cluster they cannot share a MULTI. A plain
	// pipeline sends both; on any error the caller gets it and may retry
	// (both writes are idempotent).
	pipe := a.rdb.Pipeline()
	pipe.SAdd(ctx, passport.BlockedKey, passport.BlockedMember(rec.Tenant, rec.ID))
	pipe.HSet(ctx, passport.AgentKey(rec.Tenant, rec.ID), passport.FieldBlocked, "1",
		fieldBlockedReason, reason, fieldBlockedAt, now.UTC().Format(time.RFC3339Nano))
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("block agent %s: %w", rec.ID, err)
	}
	ev := passport.RevocationEvent{Type: passport.EventBlock, Tenant: rec.Tenant, AgentID: rec.ID, Reason: reason}
	if err := a.rdb.Publish(ctx, passport.RevocationChannel, ev.Marshal()).Err(); err != nil {
		a.log.WarnContext(ctx, "publish block", "agent_id", rec.ID, "err", err)
	}
	a.m.blocks.WithLabelValues(trigger).Inc()
	a.log.WarnContext(ctx, "agent blocked", "tenant", rec.Tenant, "agent_id", rec.ID, "reason", reason, "trigger", trigger, "cause", cause)
	a.auditAppend(ctx, rec.Tenant, rec, audit.KindAgentBlocked, map[string]any{
		"agent_id": rec.ID, "reason": reason, "cause": cause, "trigger": trigger,
	})
	rec.Blocked, rec.BlockedReason, rec.BlockedAt = true, reason, now
	return nil
}

// unblockAgent lifts a block. Every passport the agent got before the
// block and that is still alive is revoked first (and announced before the
// unblock event, so every proxy applies the revocations first): lifting
// the block must not bring them back, the agent asks for new ones. If that
// fails, the agent stays blocked. The reputation is reset to the agent's
// baseline: the admin has decided the agent may act again, and leaving the
// score below the block threshold would block it again on its next denied
// call.
func (a *Authority) unblockAgent(ctx context.Context, rec *agentRecord, by string) error {
	if rec.Blocked {
		if _, err := a.revokeOutstanding(ctx, rec.Tenant, rec.ID, "block"); err != nil {
			return fmt.Errorf("unblock agent %s: %w", rec.ID, err)
		}
	}
	now := a.now()
	rep := passport.Reputation{Score: rec.Reputation.Baseline, Baseline: rec.Reputation.Baseline, UpdatedAt: now, HalfLife: a.cfg.Reputation.HalfLife}
	fields := reputationFields(rep)
	fields[passport.FieldBlocked] = "0"
	pipe := a.rdb.TxPipeline() // one slot: the agent hash
	pipe.HSet(ctx, passport.AgentKey(rec.Tenant, rec.ID), fields)
	pipe.HDel(ctx, passport.AgentKey(rec.Tenant, rec.ID), fieldBlockedReason, fieldBlockedAt)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("unblock agent %s: %w", rec.ID, err)
	}
	if err := a.rdb.SRem(ctx, passport.BlockedKey, passport.BlockedMember(rec.Tenant, rec.ID)).Err(); err != nil {
		return fmt.Errorf("unblock agent %s: %w", rec.ID, err)
	}
	ev := passport.RevocationEvent{Type: passport.EventUnblock, Tenant: rec.Tenant, AgentID: rec.ID}
	if err := a.rdb.Publish(ctx, passport.RevocationChannel, ev.Marshal()).Err(); err != nil {
		a.log.WarnContext(ctx, "publish unblock", "agent_id", rec.ID, "err", err)
	}
	a.m.unblocks.Inc()
	a.log.InfoContext(ctx, "agent unblocked", "tenant", rec.Tenant, "agent_id", rec.ID, "by", by)
	a.auditAppend(ctx, rec.Tenant, rec, audit.KindAgentUnblocked, map[string]any{
		"agent_id": rec.ID, "by": by, "reputation": rep.Score,
	})
	rec.Blocked, rec.BlockedReason, rec.BlockedAt, rec.Reputation = false, "", time.Time{}, rep
	return nil
}

// deleteAgent removes an agent and revokes its passports still alive
// (bounded by the issuance limit). Proxies refuse a deleted agent's
// passports anyway (no agent record), the revocations make it immediate.
func (a *Authority) deleteAgent(ctx context.Context, rec *agentRecord) error {
	if _, err := a.revokeOutstanding(ctx, rec.Tenant, rec.ID, "delete"); err != nil {
		return err
	}
	pipe := a.rdb.TxPipeline()
	pipe.Del(ctx, passport.AgentKey(rec.Tenant, rec.ID))
	pipe.SRem(ctx, tenantAgentsKey(rec.Tenant), rec.ID)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("delete agent %s: %w", rec.ID, err)
	}
	if err := a.rdb.HDel(ctx, clientsKey, rec.ID).Err(); err != nil {
		return fmt.Errorf("delete agent %s: %w", rec.ID, err)
	}
	a.log.InfoContext(ctx, "agent deleted", "tenant", rec.Tenant, "agent_id", rec.ID)
	return nil
}

func (a *Authority) auditRecord(tenant string, rec *agentRecord, kind audit.Kind, details any) *audit.Record {
	b, _ := json.Marshal(details)
	r := &audit.Record{V: audit.Version, Kind: kind, Time: a.now().UTC(), Tenant: tenant, Details: b}
	if rec != nil {
		r.AgentID, r.AgentName, r.AgentType, r.TrustLevel = rec.ID, rec.Name, rec.Type, string(rec.Trust)
	}
	return r
}

func (a *Authority) auditAppend(ctx context.Context, tenant string, rec *agentRecord, kind audit.Kind, details any) {
	// Bounded: a block or unblock has already happened in Redis and must
	// not hang on a slow audit store.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := a.audit.Append(actx, a.auditRecord(tenant, rec, kind, details)); err != nil {
		a.m.auditErrors.Inc()
		a.log.ErrorContext(ctx, "audit record not written", "kind", kind, "tenant", tenant, "err", err)
	}
}

func (a *Authority) auditEnqueue(tenant, agentID string, kind audit.Kind, details any) {
	r := a.auditRecord(tenant, nil, kind, details)
	r.AgentID = agentID
	a.audit.Enqueue(r)
}

// caller is who called introspection or revocation: an admin (global or
// tenant) or an authenticated agent.
type caller struct {
	admin *principal
	agent *agentRecord
}

// authCaller authenticates introspection and revocation callers: a
// Bearer admin token, or the client's own credentials (any method the
// token endpoint accepts). It returns the remaining form.
func (a *Authority) authCaller(r *http.Request) (*caller, url.Values, error) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return nil, nil, &oauthError{http.StatusRequestEntityTooLarge, "invalid_request", "request body too large", 0}
	}
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != "application/x-www-form-urlencoded" {
		return nil, nil, errInvalidRequest("content type must be application/x-www-form-urlencoded")
	}
	vals, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, nil, errInvalidRequest("malformed form body")
	}
	if tok := bearer(r); tok != "" {
		p, ok := a.admins.check(tok)
		if !ok {
			return nil, nil, errInvalidClient
		}
		return &caller{admin: &p}, vals, nil
	}
	user, pass, hasBasic := basicAuth(r)
	clean := url.Values{}
	for k, v := range vals {
		if k != "token" && k != "token_type_hint" {
			clean[k] = v
		}
	}
	clean.Set("grant_type", "client_credentials") // parseTokenForm wants one; unused here
	f, err := parseTokenForm("application/x-www-form-urlencoded", []byte(clean.Encode()), user, pass, hasBasic, false)
	if err != nil {
		return nil, nil, err
	}
	if err := a.Init(r.Context()); err != nil {
		return nil, nil, err
	}
	agent, err := a.authenticate(r.Context(), f, sourceOf(r, a.trusted))
	if err != nil {
		return nil, nil, err
	}
	return &caller{agent: agent}, vals, nil
}

func (a *Authority) oauthFail(w http.ResponseWriter, r *http.Request, err error) {
	var oe *oauthError
	if !errors.As(err, &oe) {
		a.logFailure(r.Context(), "request failed", "path", r.URL.Path, "err", err)
		oe = &oauthError{http.StatusServiceUnavailable, "temporarily_unavailable", "try again later", 0}
	}
	writeOAuthErr(w, oe)
}

// handleIntrospect answers RFC 7662. Only the passport's own tenant may
// learn about it: a caller from another tenant gets active:false, exactly
// as for an unknown token.
func (a *Authority) handleIntrospect(w http.ResponseWriter, r *http.Request) {
	who, vals, err := a.authCaller(r)
	if err != nil {
		a.oauthFail(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	inactive := map[string]any{"active": false}
	raw := vals.Get("token")
	if raw == "" {
		writeOAuthError(w, http.StatusBadRequest, "invalid_request", "token is required")
		return
	}
	if err := a.Init(r.Context()); err != nil {
		a.oauthFail(w, r, err)
		return
	}
	c, err := a.verify(r.Context(), raw)
	if err != nil || !who.mayAccess(c) {
		writeJSON(w, http.StatusOK, inactive)
		return
	}
	active, err := a.live(r.Context(), c)
	if err != nil {
		a.oauthFail(w, r, fmt.Errorf("introspect: %w", err))
		return
	}
	if !active {
		writeJSON(w, http.StatusOK, inactive)
		return
	}
	tokenType := "Bearer"
	if c.BoundKey() != "" {
		tokenType = passport.TokenTypeDPoP // RFC 9449 §6.2; a certificate-bound one stays Bearer (RFC 8705 §3.2)
	}
	out := map[string]any{
		"active": true, "token_type": tokenType, "scope": c.Scope, "client_id": c.ClientID,
		"sub": c.Subject, "aud": c.Audience, "iss": c.Issuer, "jti": c.ID,
		"exp": c.ExpiresAt.Unix(), "iat": c.IssuedAt.Unix(),
		"tenant": c.Tenant, "agent": c.Agent, "authorization_details": c.AuthorizationDetails,
	}
	if c.NotBefore != nil { // optional: the verifier requires exp and iat only
		out["nbf"] = c.NotBefore.Unix()
	}
	if c.Task != nil {
		out["task"] = c.Task
	}
	if c.Delegation != nil {
		out["act"], out["delegation"] = c.Act, c.Delegation
	}
	if c.Cnf != nil {
		out["cnf"] = c.Cnf
	}
	writeJSON(w, http.StatusOK, out)
}

// live reports whether a verified passport is still good: neither it nor
// any passport before it in its chain revoked, and neither its agent nor
// any agent before it in its chain blocked or deleted. One round trip.
func (a *Authority) live(ctx context.Context, c *passport.Claims) (bool, error) {
	jtis, agents := []string{c.ID}, []string{c.Subject}
	if c.Delegation != nil {
		for _, l := range c.Delegation.Links {
			jtis, agents = append(jtis, l.JTI), append(agents, l.Sub)
		}
	}
	pipe := a.rdb.Pipeline()
	revoked := make([]*redis.FloatCmd, len(jtis))
	for i, jti := range jtis {
		revoked[i] = pipe.ZScore(ctx, passport.RevokedKey, jti)
	}
	blocked := make([]*redis.StringCmd, len(agents))
	for i, id := range agents {
		blocked[i] = pipe.HGet(ctx, passport.AgentKey(c.Tenant, id), passport.FieldBlocked)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return false, err
	}
	for _, rc := range revoked {
		if rc.Err() == nil {
			return false, nil
		}
	}
	for _, bc := range blocked {
		if v, _ := bc.Result(); v != "0" { // blocked, or the agent was deleted
			return false, nil
		}
	}
	return true, nil
}

func (c *caller) mayAccess(cl *passport.Claims) bool {
	switch {
	case c.admin != nil:
		return c.admin.may(cl.Tenant)
	case c.agent != nil:
		return c.agent.Tenant == cl.Tenant
	}
	return false
}

// handleRevoke answers RFC 7009: 200 for an unknown, invalid or expired
// token (the client cannot do anything useful with a difference). An agent
// may revoke only its own passports; an admin those of its tenants.
func (a *Authority) handleRevoke(w http.ResponseWriter, r *http.Request) {
	who, vals, err := a.authCaller(r)
	if err != nil {
		a.oauthFail(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	raw := vals.Get("token")
	if raw == "" {
		writeOAuthError(w, http.StatusBadRequest, "invalid_request", "token is required")
		return
	}
	if err := a.Init(r.Context()); err != nil {
		a.oauthFail(w, r, err)
		return
	}
	c, err := a.verify(r.Context(), raw)
	if err != nil {
		w.WriteHeader(http.StatusOK)
		return
	}
	// An agent may revoke its own passports, and the delegated passports
	// that act on its behalf (it appears in their chain).
	if who.agent != nil && who.agent.ID != c.Subject && (c.Delegation == nil || !slices.Contains(c.Delegation.Chain, who.agent.ID)) {
		writeOAuthError(w, http.StatusBadRequest, "unauthorized_client", "a client may revoke only its own passports and those acting on its behalf")
		return
	}
	if who.admin != nil && !who.admin.may(c.Tenant) {
		w.WriteHeader(http.StatusOK) // as unknown: says nothing about other tenants
		return
	}
	if err := a.revokeJTI(r.Context(), c.Tenant, c.Subject, c.ID, c.ExpiresAt.Time, "revoke"); err != nil {
		a.oauthFail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusOK)
}
