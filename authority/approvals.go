package authority

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentpassport/passport/approval"
	"github.com/agentpassport/passport/audit"
)

// ApproverToken is one approver's bearer token for the approvals API.
type ApproverToken struct {
	// Approver names who holds the token (a person, an e-mail address, an
	// on-call rota): every decision made with it records this name, and N
	// distinct names make N approvers. Letters, digits and ". _ @ + -";
	// "admin" is taken by admin tokens.
	Approver string `yaml:"approver"`
	// Token is the bearer token, at least MinAdminTokenLength characters.
	Token string `yaml:"token"`
	// Tenants the approver decides for. Default none: every tenant.
	Tenants []string `yaml:"tenants"`
}

// ParseApproverTokens parses PASSPORT_APPROVER_TOKENS: entries separated
// by commas, each APPROVER=TOKEN (every tenant) or
// TENANT[+TENANT...]:APPROVER=TOKEN. Errors name the entry by position,
// never the token.
func ParseApproverTokens(s string) ([]ApproverToken, error) {
	var out []ApproverToken
	var errs []error
	for i, e := range strings.Split(s, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		who, tok, ok := strings.Cut(e, "=")
		if !ok || tok == "" {
			errs = append(errs, fmt.Errorf("PASSPORT_APPROVER_TOKENS entry %d: want [TENANT[+TENANT]:]APPROVER=TOKEN", i+1))
			continue
		}
		t := ApproverToken{Approver: who, Token: tok}
		if tenants, name, scoped := strings.Cut(who, ":"); scoped {
			t.Approver, t.Tenants = name, strings.Split(tenants, "+")
		}
		out = append(out, t)
	}
	return out, errors.Join(errs...)
}

// validateApproverTokens checks the approver tokens; tokens must differ
// from every other credential, so that one token never names two
// identities.
func (c Config) validateApproverTokens() []error {
	var errs []error
	others := map[string]bool{c.AdminToken: true}
	for _, toks := range c.TenantAdminTokens {
		for _, t := range toks {
			others[t] = true
		}
	}
	for _, t := range c.ReporterTokens {
		others[t] = true
	}
	seen := map[string]string{}
	for i, t := range c.ApproverTokens {
		at := fmt.Sprintf("approver_tokens[%d]", i)
		switch {
		case !approval.ValidApprover(t.Approver):
			errs = append(errs, fmt.Errorf("%s: approver %q: want 1-128 letters, digits, '.', '_', '@', '+' or '-'", at, t.Approver))
		case strings.EqualFold(t.Approver, approval.AdminApprover):
			errs = append(errs, fmt.Errorf("%s: approver %q is the name admin tokens decide under; pick another", at, t.Approver))
		}
		switch {
		case len(t.Token) < MinAdminTokenLength:
			errs = append(errs, fmt.Errorf("%s (%s): token shorter than %d characters", at, t.Approver, MinAdminTokenLength))
		case others[t.Token]:
			errs = append(errs, fmt.Errorf("%s (%s): token is also an admin or reporter token; an approver token must be its own", at, t.Approver))
		case seen[t.Token] != "" && !strings.EqualFold(seen[t.Token], t.Approver):
			errs = append(errs, fmt.Errorf("%s (%s): token also names approver %s", at, t.Approver, seen[t.Token]))
		}
		seen[t.Token] = t.Approver
		for _, tenant := range t.Tenants {
			if !ValidTenant(tenant) {
				errs = append(errs, fmt.Errorf("%s (%s): tenant %q: want lowercase letters, digits, '-' or '_'", at, t.Approver, tenant))
			}
		}
	}
	return errs
}

// approverTokens holds SHA-256 digests of the approver tokens, compared
// in constant time, every one on every call (as adminTokens).
type approverTokens []approverToken

type approverToken struct {
	sum     [32]byte
	name    string
	tenants []string
}

func newApproverTokens(list []ApproverToken) approverTokens {
	out := make(approverTokens, 0, len(list))
	for _, t := range list {
		out = append(out, approverToken{sha256.Sum256([]byte(t.Token)), t.Approver, slices.Clone(t.Tenants)})
	}
	return out
}

func (at approverTokens) check(tok string) (approverToken, bool) {
	if tok == "" {
		return approverToken{}, false
	}
	sum := sha256.Sum256([]byte(tok))
	var found approverToken
	ok := 0
	for _, t := range at {
		if subtle.ConstantTimeCompare(sum[:], t.sum[:]) == 1 {
			found, ok = t, 1
		}
	}
	return found, ok == 1
}

// approver is who calls the approvals API.
type approver struct {
	name  string // recorded with each decision
	admin bool   // an admin token (may say via)
}

type approverHandler func(w http.ResponseWriter, r *http.Request, who approver)

// approving authenticates the approvals API: an approver token (its
// tenants, or every tenant) or an admin token (global or the tenant's),
// recorded as "admin". A reporter token is refused. The tenant boundary is
// enforced before anything is read.
func (a *Authority) approving(h approverHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		tok := bearer(r)
		tenant := r.PathValue("tenant")
		var who approver
		var may bool
		if p, ok := a.admins.check(tok); ok {
			who, may = approver{name: approval.AdminApprover, admin: true}, p.may(tenant)
		} else if t, ok := a.approvers.check(tok); ok {
			who, may = approver{name: t.name}, len(t.tenants) == 0 || slices.Contains(t.tenants, tenant)
		} else if a.admins.reporter(tok) {
			writeProblem(w, http.StatusForbidden, "forbidden", "a reporter token may only report outcomes")
			return
		} else {
			w.Header().Set("WWW-Authenticate", `Bearer realm="passport-approvals"`)
			writeProblem(w, http.StatusUnauthorized, "unauthenticated", "an approver or admin token is required (Authorization: Bearer ...)")
			return
		}
		if !ValidTenant(tenant) {
			writeProblem(w, http.StatusBadRequest, "invalid_tenant", "tenant: want lowercase letters, digits, '-' or '_'")
			return
		}
		if !may {
			writeProblem(w, http.StatusForbidden, "forbidden", "this token may not decide approvals of tenant "+tenant)
			return
		}
		h(w, r, who)
	}
}

// approvalRoutes mounts the approvals API.
func (a *Authority) approvalRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/tenants/{tenant}/approvals", a.approving(a.handleListApprovals))
	mux.HandleFunc("GET /v1/tenants/{tenant}/approvals/{id}", a.approving(a.handleGetApproval))
	mux.HandleFunc("POST /v1/tenants/{tenant}/approvals/{id}/approve", a.approving(a.handleDecideApproval(true)))
	mux.HandleFunc("POST /v1/tenants/{tenant}/approvals/{id}/deny", a.approving(a.handleDecideApproval(false)))
}

func newApprovalMetrics(reg *prometheus.Registry) (*prometheus.CounterVec, error) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "passport_authority_approval_decisions_total",
		Help: "Approval decisions, by decision (approve, deny) and result (ok, or the refusal's code).",
	}, []string{"decision", "result"})
	return c, reg.Register(c)
}

func (a *Authority) handleListApprovals(w http.ResponseWriter, r *http.Request, _ approver) {
	q := r.URL.Query()
	state, err := approval.ParseState(q.Get("state"))
	if err != nil {
		writeProblem(w, http.StatusBadRequest, "invalid_state", err.Error())
		return
	}
	limit := 0
	if s := q.Get("limit"); s != "" {
		if limit, err = strconv.Atoi(s); err != nil || limit < 1 || limit > approval.MaxList {
			writeProblem(w, http.StatusBadRequest, "invalid_limit", fmt.Sprintf("limit: want 1 to %d", approval.MaxList))
			return
		}
	}
	list, err := a.approvals.List(r.Context(), r.PathValue("tenant"), state, limit)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, approval.List{Approvals: list})
}

func (a *Authority) handleGetApproval(w http.ResponseWriter, r *http.Request, _ approver) {
	ap, err := a.approvals.Get(r.Context(), r.PathValue("tenant"), r.PathValue("id"))
	if err != nil {
		a.approvalFail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, ap)
}

func (a *Authority) handleDecideApproval(approve bool) approverHandler {
	decision, kind := "deny", audit.KindApprovalDenied
	if approve {
		decision, kind = "approve", audit.KindApprovalApproved
	}
	return func(w http.ResponseWriter, r *http.Request, who approver) {
		var req approval.DecisionRequest
		if r.ContentLength != 0 {
			if err := decodeBody(r, &req); err != nil && !errors.Is(err, io.EOF) {
				var mbe *http.MaxBytesError
				if errors.As(err, &mbe) {
					a.fail(w, r, err)
					return
				}
				writeProblem(w, http.StatusBadRequest, "invalid_json", `body must be {"comment": "..."} or empty`)
				return
			}
		}
		if !approval.ValidComment(req.Comment) {
			writeProblem(w, http.StatusBadRequest, "invalid_comment", fmt.Sprintf("comment: at most %d bytes of printable text", approval.MaxCommentLen))
			return
		}
		if req.Via != "" && (!who.admin || !approval.ValidComment(req.Via) || len(req.Via) > 128) {
			writeProblem(w, http.StatusBadRequest, "invalid_via", "via: for admin tokens only, at most 128 bytes of printable text")
			return
		}
		tenant, id := r.PathValue("tenant"), r.PathValue("id")
		vote := approval.Vote{Approver: who.name, Comment: req.Comment, Via: req.Via}
		decide := a.approvals.Deny
		if approve {
			decide = a.approvals.Approve
		}
		ap, err := decide(r.Context(), tenant, id, vote)
		if err != nil {
			var ae *approval.Error
			if errors.As(err, &ae) {
				a.approvalMetric.WithLabelValues(decision, ae.Code).Inc()
			}
			a.approvalFail(w, r, err)
			return
		}
		a.approvalMetric.WithLabelValues(decision, "ok").Inc()
		a.log.InfoContext(r.Context(), "approval decided", "tenant", tenant, "approval_id", id, "decision", decision,
			"approver", who.name, "via", req.Via, "state", ap.State, "agent_id", ap.AgentID, "action", ap.Action, "resource", ap.Resource)
		a.auditApproval(r.Context(), kind, ap, vote)
		writeJSON(w, http.StatusOK, ap)
	}
}

// approvalFail answers a refusal of the store with its code: 404 for an
// unknown approval, 403 for an excluded owner, 409 for the wrong state.
func (a *Authority) approvalFail(w http.ResponseWriter, r *http.Request, err error) {
	var ae *approval.Error
	switch {
	case errors.Is(err, approval.ErrUnknown):
		writeProblem(w, http.StatusNotFound, approval.CodeUnknown, "no such approval in this tenant")
	case errors.Is(err, approval.ErrOwnerExcluded):
		writeProblem(w, http.StatusForbidden, approval.CodeOwnerExcluded, "the agent's registered owner may not approve this call")
	case errors.As(err, &ae):
		writeProblem(w, http.StatusConflict, ae.Code, "the approval cannot take this decision: "+strings.TrimPrefix(ae.Code, "approval_"))
	case errors.Is(err, approval.ErrInvalid):
		writeProblem(w, http.StatusBadRequest, "invalid_request", "malformed approver, comment or via")
	default:
		a.fail(w, r, err)
	}
}

// auditApproval records a decision with the approver's identity in the
// tenant's audit stream (the feed shows it). The decision already holds in
// Redis, so a slow audit store must not hang it: the append is bounded,
// and a failure is logged and counted. The call the approval opens is
// recorded write-ahead by the proxy, with its approvers, when it is used.
func (a *Authority) auditApproval(ctx context.Context, kind audit.Kind, ap approval.Approval, v approval.Vote) {
	details := map[string]any{
		"approval_id": ap.ID, "approver": v.Approver, "state": ap.State,
		"approvals": len(ap.Approvers), "required_approvers": ap.RequiredApprovers, "request_id": ap.RequestID,
	}
	if v.Comment != "" {
		details["comment"] = v.Comment
	}
	if v.Via != "" {
		details["via"] = v.Via
	}
	rec := a.auditRecord(ap.Tenant, nil, kind, details)
	rec.AgentID, rec.AgentName, rec.AgentType = ap.AgentID, ap.AgentName, ap.AgentType
	rec.Method, rec.Path, rec.Action, rec.Resource = ap.Method, ap.Path, ap.Action, ap.Resource
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := a.audit.Append(actx, rec); err != nil {
		a.m.auditErrors.Inc()
		a.log.ErrorContext(ctx, "audit record not written", "kind", kind, "tenant", ap.Tenant, "approval_id", ap.ID, "err", err)
	}
}
