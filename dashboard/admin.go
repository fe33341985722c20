package dashboard

import (
	"context"
	"errors"

	"github.com/agentpassport/passport/authority/client"
)

// AdminAgents is the agent part of Actions (ListAgents, Block, Unblock)
// on the authority's admin API. A host embeds it and adds the chaos part.
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
