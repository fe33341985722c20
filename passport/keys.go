package passport

import (
	"encoding/json"
	"math"
	"strings"
	"time"
)

// Redis layout shared by the authority (writer) and the proxies (readers).
//
// Tenant keys carry the tenant in a hash tag, "passport:{t:acme}:...", so
// that in Redis Cluster every key of one tenant lives in one slot and
// multi-key commands and pipelines on a tenant stay valid.
const (
	// RevokedKey is a sorted set of revoked passport ids (jti), scored by
	// the passport's expiry (unix seconds), so that entries can be pruned
	// once the passport would have expired anyway.
	RevokedKey = "passport:revoked"
	// BlockedKey is a set of blocked agents, members "tenant/agent-id".
	BlockedKey = "passport:blocked"
	// RevocationChannel is the pub/sub channel on which the authority
	// announces revocations, blocks and unblocks (JSON RevocationEvent).
	RevocationChannel = "passport:revocations"
)

// TenantKey returns the key for a tenant-scoped object:
// TenantKey("acme", "agent", "a1") is "passport:{t:acme}:agent:a1".
func TenantKey(tenant string, parts ...string) string {
	var b strings.Builder
	b.WriteString("passport:{t:")
	b.WriteString(tenant)
	b.WriteString("}")
	for _, p := range parts {
		b.WriteByte(':')
		b.WriteString(p)
	}
	return b.String()
}

// AgentKey is the hash holding one agent's registration and state.
func AgentKey(tenant, agentID string) string { return TenantKey(tenant, "agent", agentID) }

// AuditStreamKey is the tenant's append-only audit stream.
func AuditStreamKey(tenant string) string { return TenantKey(tenant, "audit") }

// BlockedMember is the member of BlockedKey for one agent.
func BlockedMember(tenant, agentID string) string { return tenant + "/" + agentID }

// Fields of the agent hash (AgentKey) that other components read.
const (
	FieldBlocked            = "blocked"              // "1" when blocked
	FieldReputation         = "reputation"           // score at FieldReputationAt, float
	FieldReputationBaseline = "reputation_baseline"  // score it drifts back to, float
	FieldReputationAt       = "reputation_at"        // unix milliseconds of the last update
	FieldReputationHalfLife = "reputation_half_life" // drift half-life in milliseconds
	// FieldOwner names who is accountable for the agent; an approval may
	// exclude that owner from its approvers (package approval).
	FieldOwner = "owner"
)

// Revocation event types published on RevocationChannel.
const (
	EventRevoke  = "revoke"
	EventBlock   = "block"
	EventUnblock = "unblock"
)

// RevocationEvent is one message on RevocationChannel.
type RevocationEvent struct {
	Type    string `json:"type"`
	JTI     string `json:"jti,omitempty"`
	Exp     int64  `json:"exp,omitempty"` // unix seconds; for revoke
	Tenant  string `json:"tenant,omitempty"`
	AgentID string `json:"agent_id,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

// Marshal encodes the event for publishing.
func (e RevocationEvent) Marshal() string {
	b, _ := json.Marshal(e) // a struct of strings and ints cannot fail
	return string(b)
}

// Reputation is an agent's score with the time it was last changed. Between
// changes it drifts exponentially back toward Baseline, so an agent that
// failed once recovers with good behaviour and time.
type Reputation struct {
	Score     float64
	Baseline  float64
	UpdatedAt time.Time
	HalfLife  time.Duration
}

// At returns the score at time now, clamped to 0–100.
func (r Reputation) At(now time.Time) float64 {
	s := r.Score
	if r.HalfLife > 0 && now.After(r.UpdatedAt) {
		dt := now.Sub(r.UpdatedAt).Seconds()
		f := math.Exp2(-dt / r.HalfLife.Seconds())
		s = r.Baseline + (r.Score-r.Baseline)*f
	}
	return math.Max(0, math.Min(100, s))
}

// BaselineReputation is the starting score for each trust level.
func BaselineReputation(t TrustLevel) float64 {
	switch t {
	case TrustHigh:
		return 90
	case TrustMedium:
		return 75
	default:
		return 60
	}
}
