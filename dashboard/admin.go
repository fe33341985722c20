package dashboard

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/agentpassport/passport/approval"
	"github.com/agentpassport/passport/authority/client"
)

// AdminAgents is the agent part of Actions (ListAgents, Block, Unblock)
// and the approvals (Approvals) on the authority's admin API. A host
// embeds it and adds the chaos part.
type AdminAgents struct {
	Admin *client.Admin
}

// ListAgents lists the tenant's agents with their live reputation.
func (a AdminAgents) ListAgents(ctx context.Context, tenant string) ([]Agent, error) {
	list, err := a.Admin.ListAgents(ctx, tenant)
	if err != nil {
		return nil, err
	}
	out := make([]Agent, 0, len(list))
	for _, ag := range list {
		out = append(out, Agent{ID: ag.ID, Name: ag.Name, Type: ag.Type, TrustLevel: string(ag.EffectiveTrustLevel),
			Reputation: ag.Reputation, Blocked: ag.Blocked})
	}
	return out, nil
}

// Block blocks the agent; an unknown agent is ErrNotFound.
func (a AdminAgents) Block(ctx context.Context, tenant, id, reason string) error {
	_, err := a.Admin.Block(ctx, tenant, id, reason)
	return notFound(err)
}

// Unblock unblocks the agent; an unknown agent is ErrNotFound.
func (a AdminAgents) Unblock(ctx context.Context, tenant, id string) error {
	_, err := a.Admin.Unblock(ctx, tenant, id)
	return notFound(err)
}

func notFound(err error) error {
	if errors.Is(err, client.ErrNotFound) {
		return ErrNotFound
	}
	return err
}

// PendingApprovals lists the tenant's pending approvals, newest first,
// with what a person must see escaped (approval.Visible).
func (a AdminAgents) PendingApprovals(ctx context.Context, tenant string) ([]Approval, error) {
	list, err := a.Admin.ListApprovals(ctx, tenant, approval.StatePending)
	if err != nil {
		return nil, err
	}
	out := make([]Approval, 0, len(list))
	for _, ap := range list {
		out = append(out, pageApproval(ap))
	}
	return out, nil
}

// DecideApproval approves or denies with the admin credential; via names
// the operator in the recorded decision. A refusal of the authority
// (the approval was denied, used, expired...) comes back with its code.
func (a AdminAgents) DecideApproval(ctx context.Context, tenant, id string, approve bool, comment, via string) (Approval, error) {
	decide := a.Admin.Deny
	if approve {
		decide = a.Admin.Approve
	}
	ap, err := decide(ctx, tenant, id, approval.DecisionRequest{Comment: comment, Via: via})
	var ce *client.Error
	switch {
	case err == nil:
		return pageApproval(ap), nil
	case errors.Is(err, client.ErrNotFound):
		return Approval{}, ErrNotFound
	case errors.As(err, &ce) && (ce.Status == http.StatusConflict || ce.Status == http.StatusForbidden) && codeRE.MatchString(ce.Code):
		return Approval{}, &Refusal{Status: ce.Status, Code: ce.Code,
			Detail:  "the authority refused the decision: " + strings.ReplaceAll(strings.TrimPrefix(ce.Code, "approval_"), "_", " "),
			Reasons: []string{ce.Code}}
	}
	return Approval{}, err
}

func pageApproval(ap approval.Approval) Approval {
	out := Approval{
		ID: ap.ID, Agent: approval.Visible(ap.AgentName), AgentID: ap.AgentID,
		Method: ap.Method, Path: approval.Visible(ap.Path), Query: approval.Visible(ap.Query),
		Body: approval.Visible(ap.Body), BodyEncoding: ap.BodyEncoding, BodyBytes: ap.BodyBytes,
		BodyTruncated: ap.BodyTruncated, BodySHA256: ap.BodySHA256,
		Action: ap.Action, Resource: approval.Visible(ap.Resource), Reasons: ap.Reasons, Reason: approval.Visible(ap.Reason),
		RequiredApprovers: ap.RequiredApprovers, State: string(ap.State), ExpiresAt: ap.ExpiresAt,
	}
	if out.Agent == "" {
		out.Agent = ap.AgentID
	}
	for _, v := range ap.Approvers {
		out.Approvers = append(out.Approvers, v.Approver)
	}
	return out
}
