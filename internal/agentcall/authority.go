package agentcall

import (
	"context"
	"crypto"
	"fmt"
	"time"

	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/passport"
)

// AuthorityPassports gets passports from the authority with the agent's
// client credentials (authority/client). Passports are cached by the
// client until shortly before expiry, per identical request.
type AuthorityPassports struct {
	Client *client.Client
	// Audience is the resource server; "" means the authority's default
	// (passport-proxy).
	Audience string
	// DPoPKey, when set, is the key Client binds its passports to
	// (client.Options.DPoPKey); the passports are then shown with a proof
	// by that key on every call (Proof).
	DPoPKey crypto.Signer
}

// Proof implements Prover: a proof by DPoPKey, or none without a key.
func (p AuthorityPassports) Proof(method, target, token string) (string, error) {
	if p.DPoPKey == nil {
		return "", nil
	}
	return client.NewDPoPProof(p.DPoPKey, method, target, token, "", time.Now())
}

// Passport implements Passports.
func (p AuthorityPassports) Passport(ctx context.Context, task *passport.Task, scope []string) (string, error) {
	t, err := p.Client.Token(ctx, client.TokenRequest{Scope: scope, Task: task, Audience: p.Audience})
	if err != nil {
		return "", fmt.Errorf("passport for %s: %w", p.Client.ClientID(), err)
	}
	return t.Raw, nil
}

// Invalidate drops cached passports, e.g. after the proxy answered 401.
func (p AuthorityPassports) Invalidate() { p.Client.Invalidate() }

// AdminReputation reports an agent's outcomes to the authority's admin API
// (POST /v1/tenants/{t}/agents/{id}/outcomes).
type AdminReputation struct {
	Admin   *client.Admin
	Tenant  string
	AgentID string
}

// Report sends one outcome: "success", "failure" or "denied".
func (r AdminReputation) Report(ctx context.Context, outcome string) error {
	if _, err := r.Admin.ReportOutcome(ctx, r.Tenant, r.AgentID, outcome); err != nil {
		return fmt.Errorf("report %s for %s: %w", outcome, r.AgentID, err)
	}
	return nil
}

var (
	_ Passports = AuthorityPassports{}
	_ Prover    = AuthorityPassports{}
)
