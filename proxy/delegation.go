package proxy

import (
	"context"
	"errors"
	"fmt"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/passport"
)

// Delegated passports (RFC 8693 token exchange): agent B holds a passport
// that says it acts on behalf of A. The shared verifier has checked the
// chain's shape (act nests the same agents as delegation.chain, the root
// is chain[0], sub ends it, no agent twice, no link more trusted than the
// one before); here the proxy adds what only live state can say: every
// passport exchanged on the way (delegation.links[].jti) is unrevoked and
// every agent of the chain unblocked and registered, on every call, from
// the same pub/sub-fed sets as the holder's own checks, so revoking or
// blocking an ancestor refuses every descendant within the second.

// DefaultDelegationDepth is the deepest chain accepted unless configured:
// the authority's own default.
const DefaultDelegationDepth = 2

// DelegationConfig says which delegated passports the proxy accepts.
type DelegationConfig struct {
	// MaxDepth is the longest chain accepted: delegation.depth, the
	// number of exchanges behind the passport. 0 refuses every delegated
	// passport (401 delegation_unsupported). Default 2, at most 8
	// (passport.MaxDelegationDepth). Set it to the authority's
	// delegation.max_depth, or lower to refuse longer chains here.
	MaxDepth int `yaml:"max_depth"`
}

func (d DelegationConfig) validate() error {
	if d.MaxDepth < 0 || d.MaxDepth > passport.MaxDelegationDepth {
		return fmt.Errorf("delegation.max_depth: %d is outside 0..%d", d.MaxDepth, passport.MaxDelegationDepth)
	}
	return nil
}

// Refusals of a delegated passport. Each names the cause for the agent
// and the audit trail; none says which link, which the holder can read
// from its own passport.
var (
	ErrDelegationTooDeep = authErr("delegation_too_deep", "the passport's delegation chain is longer than this proxy accepts")
	ErrAncestorRevoked   = authErr("ancestor_revoked", "a passport this one was exchanged from has been revoked")
	ErrAncestorBlocked   = authErr("ancestor_blocked", "an agent this passport acts on behalf of is blocked")
	ErrAncestorUnknown   = authErr("ancestor_unknown", "an agent this passport acts on behalf of is not registered")
)

// checkChain refuses a delegated passport whose chain is longer than
// configured, whose holder is not the chain's last agent, or any of whose
// links is revoked or whose agent is blocked, deleted or unknown. It
// returns nil for a passport that is not delegated, an *AuthError, or
// ErrStateUnavailable (503: never allowed on unknown state).
func (p *Proxy) checkChain(ctx context.Context, cl *passport.Claims) error {
	d := cl.Delegation
	if d == nil {
		return nil
	}
	if d.Depth > p.cfg.Delegation.MaxDepth {
		return ErrDelegationTooDeep
	}
	// The chain names agents by sub; the proxy's checks of the holder go
	// by agent.id. The authority makes them equal; a passport where they
	// differ would have its holder's block checked under one name and its
	// chain under another.
	if cl.Subject != cl.Agent.ID {
		return passport.ErrDelegation
	}
	for _, l := range d.Links {
		switch err := p.revoked.check(ctx, l.JTI, cl.Tenant, l.Sub); {
		case errors.Is(err, ErrRevoked):
			return ErrAncestorRevoked
		case errors.Is(err, ErrBlocked):
			return ErrAncestorBlocked
		case err != nil:
			return err
		}
	}
	for _, l := range d.Links {
		st, err := p.reps.get(ctx, cl.Tenant, l.Sub)
		if err != nil {
			return err
		}
		switch {
		case st.blocked:
			return ErrAncestorBlocked
		case !st.exists && *p.cfg.RequireAgentRecord:
			return ErrAncestorUnknown
		}
	}
	return nil
}

// setChain names a delegated passport's chain in an audit record: every
// agent, root first, the holder last, and the root as the subject the
// call was made for.
func setChain(rec *audit.Record, cl *passport.Claims) {
	d := cl.Delegation
	if d == nil {
		return
	}
	chain := make([]audit.ChainLink, 0, len(d.Links)+1)
	for _, l := range d.Links {
		chain = append(chain, audit.ChainLink{ID: l.Sub, Name: l.Name})
	}
	rec.Chain = append(chain, audit.ChainLink{ID: cl.Agent.ID, Name: cl.Agent.Name})
	rec.Subject = d.Root
}
