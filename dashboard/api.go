package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"

	"github.com/agentpassport/passport/approval"
	"github.com/agentpassport/passport/feed"
	"github.com/agentpassport/passport/internal/problem"
)

// The API takes the operator token only from the Authorization header and
// sets no cookie, so a cross-site page cannot make the browser call it with
// the operator's authority (no CSRF surface).

// session answers who the token is and what the page may show:
// {"principal","tenants","all_tenants","chaos_types","authority_url","schema":1,
// "now","approvals"}. "now" is the server's clock: the page dates the feed's
// events (written with server time) against it, never against its own
// clock. "approvals" says whether GET .../approvals is offered.
func (s *Server) session(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	p, ok := s.hub.Authenticate(w, r)
	if !ok {
		return
	}
	tenants := p.Tenants
	if p.AllTenants {
		tenants = s.cfg.Tenants
	} else if len(s.cfg.Tenants) > 0 {
		tenants = slices.DeleteFunc(slices.Clone(tenants), func(t string) bool { return !slices.Contains(s.cfg.Tenants, t) })
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"principal": p.ID, "tenants": nonNil(tenants), "all_tenants": p.AllTenants,
		"chaos_types": ChaosTypes, "authority_url": s.publicAuthority(), "schema": feed.SchemaVersion,
		"now": s.now().UTC(), "approvals": s.approvals != nil,
	})
}

type tenantHandler func(ctx context.Context, w http.ResponseWriter, r *http.Request, p feed.Principal, tenant string)

// tenantAPI authenticates and checks the tenant scope before any action.
func (s *Server) tenantAPI(h tenantHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		p, ok := s.hub.Authenticate(w, r)
		if !ok {
			return
		}
		tenant := r.PathValue("tenant")
		if !namePattern.MatchString(tenant) || (len(s.cfg.Tenants) > 0 && !slices.Contains(s.cfg.Tenants, tenant)) {
			problem.Answer(w, http.StatusNotFound, "unknown_tenant", "unknown tenant")
			return
		}
		if !p.CanRead(tenant) {
			problem.Answer(w, http.StatusForbidden, "forbidden", "credential may not act on this tenant")
			return
		}
		h(r.Context(), w, r, p, tenant)
	}
}

// listAgents answers {"agents": [...], "as_of": time}. as_of is taken
// before the authority is asked, so any feed event written before it is
// already reflected in the answer: the page lets only later events
// replace these values (a replayed, older reputation must never
// overwrite a fresh one).
func (s *Server) listAgents(ctx context.Context, w http.ResponseWriter, _ *http.Request, _ feed.Principal, tenant string) {
	asOf := s.now().UTC()
	agents, err := s.actions.ListAgents(ctx, tenant)
	if err != nil {
		s.fail(ctx, w, "list_agents", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"agents": nonNil(agents), "as_of": asOf})
}

// listApprovals answers {"approvals": [...]} when the host offers
// approvals, 404 otherwise.
func (s *Server) listApprovals(ctx context.Context, w http.ResponseWriter, _ *http.Request, _ feed.Principal, tenant string) {
	if s.approvals == nil {
		problem.Answer(w, http.StatusNotFound, "not_found", "approvals are not offered")
		return
	}
	list, err := s.approvals.PendingApprovals(ctx, tenant)
	if err != nil {
		s.fail(ctx, w, "list_approvals", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"approvals": nonNil(list)})
}

// decideApproval approves or denies one approval with the operator's
// comment; the host decides with its own credential and names the
// operator as via, so the audit trail says who pressed the button.
func (s *Server) decideApproval(approve bool) tenantHandler {
	action := "deny"
	if approve {
		action = "approve"
	}
	return func(ctx context.Context, w http.ResponseWriter, r *http.Request, p feed.Principal, tenant string) {
		if s.approvals == nil {
			problem.Answer(w, http.StatusNotFound, "not_found", "approvals are not offered")
			return
		}
		id := r.PathValue("id")
		var body struct {
			Comment string `json:"comment"`
		}
		if !readJSON(w, r, &body) {
			return
		}
		if !namePattern.MatchString(id) || !approval.ValidComment(body.Comment) {
			problem.Answer(w, http.StatusBadRequest, "invalid_request", "bad approval id or comment")
			return
		}
		ap, err := s.approvals.DecideApproval(ctx, tenant, id, approve, body.Comment, "dashboard:"+p.ID)
		if err != nil {
			s.fail(ctx, w, action, err)
			return
		}
		s.done(ctx, action, p, tenant, "approval_id", id)
		writeJSON(w, http.StatusOK, map[string]any{"approval": ap})
	}
}

func (s *Server) block(ctx context.Context, w http.ResponseWriter, r *http.Request, p feed.Principal, tenant string) {
	id := r.PathValue("id")
	var body struct {
		Reason string `json:"reason"`
	}
	if !readJSON(w, r, &body) {
		return
	}
	if !namePattern.MatchString(id) || len(body.Reason) > 256 {
		problem.Answer(w, http.StatusBadRequest, "invalid_request", "bad agent id or reason")
		return
	}
	if body.Reason == "" {
		body.Reason = "blocked from the dashboard"
	}
	if err := s.actions.Block(ctx, tenant, id, body.Reason); err != nil {
		s.fail(ctx, w, "block", err)
		return
	}
	s.done(ctx, "block", p, tenant, "agent_id", id)
	writeJSON(w, http.StatusOK, map[string]any{"agent_id": id, "blocked": true})
}

func (s *Server) unblock(ctx context.Context, w http.ResponseWriter, r *http.Request, p feed.Principal, tenant string) {
	id := r.PathValue("id")
	if !namePattern.MatchString(id) {
		problem.Answer(w, http.StatusBadRequest, "invalid_request", "bad agent id")
		return
	}
	if err := s.actions.Unblock(ctx, tenant, id); err != nil {
		s.fail(ctx, w, "unblock", err)
		return
	}
	s.done(ctx, "unblock", p, tenant, "agent_id", id)
	writeJSON(w, http.StatusOK, map[string]any{"agent_id": id, "blocked": false})
}

func (s *Server) targets(ctx context.Context, w http.ResponseWriter, _ *http.Request, _ feed.Principal, tenant string) {
	ts, err := s.actions.Targets(ctx, tenant)
	if err != nil {
		s.fail(ctx, w, "targets", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"targets": nonNil(ts), "chaos_types": ChaosTypes})
}

// fireChaos: the target must be one of the tenant's own targets, so a
// tenant's operator can never aim chaos at another tenant's service.
func (s *Server) fireChaos(ctx context.Context, w http.ResponseWriter, r *http.Request, p feed.Principal, tenant string) {
	var body struct {
		Type   string `json:"type"`
		Target string `json:"target"`
	}
	if !readJSON(w, r, &body) {
		return
	}
	if !slices.Contains(ChaosTypes, body.Type) {
		problem.Answer(w, http.StatusBadRequest, "invalid_request", "type must be one of service_down, bad_deploy, memory_leak, cache_miss")
		return
	}
	ts, err := s.actions.Targets(ctx, tenant)
	if err != nil {
		s.fail(ctx, w, "chaos", err)
		return
	}
	if !slices.Contains(ts, body.Target) {
		problem.Answer(w, http.StatusBadRequest, "invalid_request", "target is not a service of this tenant")
		return
	}
	if err := s.actions.FireChaos(ctx, tenant, body.Type, body.Target); err != nil {
		s.fail(ctx, w, "chaos", err)
		return
	}
	s.done(ctx, "chaos", p, tenant, "type", body.Type, "target", body.Target)
	writeJSON(w, http.StatusAccepted, map[string]any{"type": body.Type, "target": body.Target, "tenant": tenant})
}

func (s *Server) done(ctx context.Context, action string, p feed.Principal, tenant string, kv ...any) {
	s.actionsTotal.WithLabelValues(action, "ok").Inc()
	s.log.InfoContext(ctx, "dashboard action", append([]any{"action", action, "principal", p.ID, "tenant", tenant}, kv...)...)
}

// fail logs the real error and answers a safe one. A refusal (the policy
// denied the agent's call, the authority would not give it a passport,
// the target was busy) is passed through with its code and reasons, so
// the operator sees why instead of a bare failure.
func (s *Server) fail(ctx context.Context, w http.ResponseWriter, action string, err error) {
	if errors.Is(err, ErrNotFound) {
		s.actionsTotal.WithLabelValues(action, "error").Inc()
		problem.Answer(w, http.StatusNotFound, "not_found", "not found")
		return
	}
	if r := refusalOf(action, err); r != nil {
		s.actionsTotal.WithLabelValues(action, "refused").Inc()
		s.log.WarnContext(ctx, "dashboard action refused", "action", action, "code", r.Code, "reasons", r.Reasons, "err", err)
		writeRefusal(w, r)
		return
	}
	s.actionsTotal.WithLabelValues(action, "error").Inc()
	s.log.ErrorContext(ctx, "dashboard action failed", "action", action, "err", err)
	problem.Answer(w, http.StatusBadGateway, "action_failed", action+" failed")
}

func readJSON(w http.ResponseWriter, r *http.Request, dst any) bool {
	if r.ContentLength == 0 {
		return true
	}
	dec := json.NewDecoder(io.LimitReader(r.Body, 8<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		problem.Answer(w, http.StatusBadRequest, "invalid_json", "body must be a JSON object")
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// publicAuthority is the authority link the page shows.
func (s *Server) publicAuthority() string {
	if s.cfg.PublicAuthorityURL != "" {
		return s.cfg.PublicAuthorityURL
	}
	return s.cfg.AuthorityURL
}
