package authority

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strings"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/passport"
	"github.com/redis/go-redis/v9"
)

// decodeBody decodes a JSON request body strictly.
func decodeBody(r *http.Request, dst any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after JSON object")
	}
	return nil
}

// logFailure logs a request that failed on the authority's side. When the
// request's context is already done (the caller went away, or the server
// is shutting down) the failure is expected and logged at Info.
func (a *Authority) logFailure(ctx context.Context, msg string, args ...any) {
	level := slog.LevelError
	if ctx.Err() != nil {
		level, args = slog.LevelInfo, append(args, "cause", context.Cause(ctx))
	}
	a.log.Log(ctx, level, msg, args...)
}

func (a *Authority) fail(w http.ResponseWriter, r *http.Request, err error) {
	var mbe *http.MaxBytesError
	switch {
	case errors.Is(err, ErrAgentNotFound):
		writeProblem(w, http.StatusNotFound, "agent_not_found", "no such agent in this tenant")
	case errors.As(err, &mbe):
		writeProblem(w, http.StatusRequestEntityTooLarge, "body_too_large", "request body too large")
	case errors.Is(err, ErrRotationInProgress):
		writeProblem(w, http.StatusConflict, "rotation_in_progress", "another key rotation is in progress")
	default:
		a.logFailure(r.Context(), "admin request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		writeProblem(w, http.StatusServiceUnavailable, "unavailable", "the authority cannot serve this request right now")
	}
}

func (a *Authority) handleRegister(w http.ResponseWriter, r *http.Request, p principal) {
	var spec client.AgentSpec
	if err := decodeBody(r, &spec); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			a.fail(w, r, err)
			return
		}
		writeProblem(w, http.StatusBadRequest, "invalid_json", "body must be a JSON object {name, type, trust_level, capabilities, public_key}")
		return
	}
	rec, secret, err := a.createAgent(r.Context(), r.PathValue("tenant"), spec)
	if errors.Is(err, ErrInvalidAgent) {
		writeProblem(w, http.StatusBadRequest, "invalid_agent", strings.TrimPrefix(err.Error(), ErrInvalidAgent.Error()+": "))
		return
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.log.InfoContext(r.Context(), "agent registered", "tenant", rec.Tenant, "agent_id", rec.ID, "name", rec.Name,
		"type", rec.Type, "trust_level", rec.Trust, "by_global_admin", p.global)
	w.Header().Set("Location", "/v1/tenants/"+rec.Tenant+"/agents/"+rec.ID)
	writeJSON(w, http.StatusCreated, client.Registration{Agent: a.toAPI(rec), ClientSecret: secret})
}

// RegisterAgent registers an agent in-process, exactly as
// POST /v1/tenants/{tenant}/agents does (for `passport up`, which creates
// the demo agents before anything listens). The answer holds the client
// secret, which exists nowhere else.
func (a *Authority) RegisterAgent(ctx context.Context, tenant string, spec client.AgentSpec) (client.Registration, error) {
	rec, secret, err := a.createAgent(ctx, tenant, spec)
	if err != nil {
		return client.Registration{}, err
	}
	a.log.InfoContext(ctx, "agent registered", "tenant", rec.Tenant, "agent_id", rec.ID, "name", rec.Name,
		"type", rec.Type, "trust_level", rec.Trust, "in_process", true)
	return client.Registration{Agent: a.toAPI(rec), ClientSecret: secret}, nil
}

func (a *Authority) handleList(w http.ResponseWriter, r *http.Request, _ principal) {
	recs, err := a.listAgents(r.Context(), r.PathValue("tenant"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out := client.AgentList{Agents: make([]client.Agent, 0, len(recs))}
	for _, rec := range recs {
		out.Agents = append(out.Agents, a.toAPI(rec))
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *Authority) handleGet(w http.ResponseWriter, r *http.Request, _ principal) {
	rec, err := a.getAgent(r.Context(), r.PathValue("tenant"), r.PathValue("id"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, a.toAPI(rec))
}

func (a *Authority) handleDelete(w http.ResponseWriter, r *http.Request, _ principal) {
	rec, err := a.getAgent(r.Context(), r.PathValue("tenant"), r.PathValue("id"))
	if err == nil {
		err = a.deleteAgent(r.Context(), rec)
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *Authority) handleBlock(w http.ResponseWriter, r *http.Request, p principal) {
	var req client.BlockRequest
	if r.ContentLength != 0 {
		if err := decodeBody(r, &req); err != nil && !errors.Is(err, io.EOF) {
			writeProblem(w, http.StatusBadRequest, "invalid_json", `body must be {"reason": "..."} or empty`)
			return
		}
	}
	if len(req.Reason) > 256 {
		writeProblem(w, http.StatusBadRequest, "invalid_reason", "reason: at most 256 characters")
		return
	}
	if req.Reason == "" {
		req.Reason = "blocked by an administrator"
	}
	rec, err := a.getAgent(r.Context(), r.PathValue("tenant"), r.PathValue("id"))
	if err == nil {
		err = a.blockAgent(r.Context(), rec, req.Reason, "admin", "blocked by an administrator")
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, a.toAPI(rec))
}

func (a *Authority) handleUnblock(w http.ResponseWriter, r *http.Request, p principal) {
	rec, err := a.getAgent(r.Context(), r.PathValue("tenant"), r.PathValue("id"))
	if err == nil {
		by := "global_admin"
		if !p.global {
			by = "tenant_admin"
		}
		err = a.unblockAgent(r.Context(), rec, by)
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, a.toAPI(rec))
}

func (a *Authority) handleOutcome(w http.ResponseWriter, r *http.Request, _ principal) {
	var req client.OutcomeRequest
	if err := decodeBody(r, &req); err != nil {
		writeProblem(w, http.StatusBadRequest, "invalid_json", `body must be {"outcome": "success"|"failure"|"denied"}`)
		return
	}
	if _, ok := a.weight(req.Outcome); !ok {
		writeProblem(w, http.StatusBadRequest, "invalid_outcome", `outcome: want "success", "failure" or "denied"`)
		return
	}
	if len(req.Detail) > 256 {
		req.Detail = req.Detail[:256]
	}
	res, err := a.RecordOutcome(r.Context(), r.PathValue("tenant"), r.PathValue("id"), req.Outcome, req.Detail)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (a *Authority) handleRotate(w http.ResponseWriter, r *http.Request, p principal) {
	if !p.global {
		writeProblem(w, http.StatusForbidden, "forbidden", "only the global admin token may rotate keys")
		return
	}
	if err := a.RotateKeys(r.Context()); err != nil {
		a.fail(w, r, err)
		return
	}
	s := a.keys.set.Load()
	out := client.RotateResult{CurrentKID: s.current.stored.KID}
	for _, k := range s.ordered {
		if k.stored.State == stateNext {
			out.NextKID = k.stored.KID
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *Authority) weight(outcome string) (float64, bool) {
	switch outcome {
	case client.OutcomeSuccess:
		return a.cfg.Reputation.Success, true
	case client.OutcomeFailure:
		return a.cfg.Reputation.Failure, true
	case client.OutcomeDenied:
		return a.cfg.Reputation.Denied, true
	}
	return 0, false
}

// RecordOutcome applies one outcome to an agent's reputation: the score
// decays toward its baseline since the last update, then the outcome's
// weight is added, clamped to 0–100. The read-modify-write runs in a
// WATCH transaction so concurrent reports from several proxies and
// replicas never lose an update. When the score falls below the block
// threshold, the agent is blocked with the cause recorded.
func (a *Authority) RecordOutcome(ctx context.Context, tenant, agentID, outcome, detail string) (*client.OutcomeResult, error) {
	w, ok := a.weight(outcome)
	if !ok {
		return nil, fmt.Errorf("record outcome %q: unknown outcome", outcome)
	}
	if !ValidTenant(tenant) || !validAgentID(agentID) {
		return nil, ErrAgentNotFound
	}
	key := passport.AgentKey(tenant, agentID)
	var rec *agentRecord
	var prev, next float64
	txf := func(tx *redis.Tx) error {
		m, err := tx.HGetAll(ctx, key).Result()
		if err != nil {
			return err
		}
		if rec, err = decodeAgent(m); err != nil {
			return err
		}
		now := a.now()
		prev = rec.Reputation.At(now)
		next = math.Max(0, math.Min(100, prev+w))
		rep := passport.Reputation{Score: next, Baseline: rec.Reputation.Baseline, UpdatedAt: now, HalfLife: a.cfg.Reputation.HalfLife}
		_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.HSet(ctx, key, reputationFields(rep))
			return nil
		})
		rec.Reputation = rep
		return err
	}
	var err error
	for range 20 {
		err = a.rdb.Watch(ctx, txf, key)
		if !errors.Is(err, redis.TxFailedErr) {
			break
		}
	}
	if err != nil {
		if errors.Is(err, ErrAgentNotFound) {
			return nil, err
		}
		return nil, fmt.Errorf("record outcome for %s: %w", agentID, err)
	}
	a.m.reputation.WithLabelValues(outcome).Inc()
	trust := rec.Trust.Min(a.cfg.Reputation.allowed(next))
	a.log.InfoContext(ctx, "reputation updated", "tenant", tenant, "agent_id", agentID, "outcome", outcome,
		"previous", round2(prev), "score", round2(next), "trust_level", trust)
	details := map[string]any{"agent_id": agentID, "score": round2(next), "previous": round2(prev), "outcome": outcome, "trust_level": trust}
	if detail != "" {
		details["detail"] = detail
	}
	r := a.auditRecord(tenant, rec, audit.KindReputation, details)
	r.Reputation = round2(next)
	a.audit.Enqueue(r)
	res := &client.OutcomeResult{Previous: round2(prev)}
	if !rec.Blocked && next < a.cfg.Reputation.BlockBelow {
		reason := fmt.Sprintf("reputation %.1f fell below %.1f", next, a.cfg.Reputation.BlockBelow)
		cause := fmt.Sprintf("reputation: %s outcome took the score from %.1f to %.1f (block threshold %.1f)", outcome, prev, next, a.cfg.Reputation.BlockBelow)
		if err := a.blockAgent(ctx, rec, reason, "reputation", cause); err != nil {
			return nil, err
		}
		res.AutoBlocked = true
	}
	res.Agent = a.toAPI(rec)
	return res, nil
}
