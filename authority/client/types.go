package client

import (
	"time"

	"github.com/agentpassport/passport/passport"
)

// Outcomes an agent's reported calls can have (POST .../outcomes).
const (
	OutcomeSuccess = "success"
	OutcomeFailure = "failure"
	OutcomeDenied  = "denied"
)

// AgentSpec is the body of POST /v1/tenants/{tenant}/agents.
type AgentSpec struct {
	Name       string              `json:"name"`
	Type       string              `json:"type"`
	TrustLevel passport.TrustLevel `json:"trust_level"`
	// Capabilities the agent may ever be granted. Default: its type's.
	Capabilities []string `json:"capabilities,omitempty"`
	// PublicKey (PEM "PUBLIC KEY" or a JWK as JSON text) enables
	// private_key_jwt client authentication.
	PublicKey string `json:"public_key,omitempty"`
	// Owner names who is accountable for the agent (a team, an on-call
	// rotation, a person): its passports carry it as oversight.owner.
	// Optional; at most 128 printable characters.
	Owner string `json:"owner,omitempty"`
	// RequireDPoP: the agent gets only DPoP-bound passports (RFC 9449);
	// a token request without a proof is refused.
	RequireDPoP bool `json:"require_dpop,omitempty"`
	// MayDelegateTo lists who may exchange this agent's passports for
	// delegated ones (RFC 8693 token exchange): agent ids, or
	// "type:<agent type>" for every agent of a type in the same tenant.
	// Default none: nobody may act on this agent's behalf. At most 32.
	MayDelegateTo []string `json:"may_delegate_to,omitempty"`
	// Mutual TLS client authentication (RFC 8705): the certificate subject
	// the agent authenticates with (one of a SAN URI such as a SPIFFE ID,
	// a SAN DNS name or a subject DN; the certificate must chain to the
	// authority's client CA), or a self-signed certificate (PEM) of its
	// own. Its passports are then bound to the certificate.
	TLSClientAuthSANURI    string `json:"tls_client_auth_san_uri,omitempty"`
	TLSClientAuthSANDNS    string `json:"tls_client_auth_san_dns,omitempty"`
	TLSClientAuthSubjectDN string `json:"tls_client_auth_subject_dn,omitempty"`
	TLSClientCertificate   string `json:"tls_client_certificate,omitempty"`
}

// Agent is an agent as the admin API shows it. The secret never appears.
type Agent struct {
	ID       string `json:"id"`
	ClientID string `json:"client_id"`
	Tenant   string `json:"tenant"`
	Name     string `json:"name"`
	Type     string `json:"type"`
	Owner    string `json:"owner,omitempty"`
	// TrustLevel is the registered ceiling.
	TrustLevel   passport.TrustLevel `json:"trust_level"`
	Capabilities []string            `json:"capabilities"`
	// Reputation is the live score (0–100) at the time of the answer.
	Reputation         float64 `json:"reputation"`
	ReputationBaseline float64 `json:"reputation_baseline"`
	// EffectiveTrustLevel is what a passport issued now would carry:
	// the ceiling lowered by reputation.
	EffectiveTrustLevel passport.TrustLevel `json:"effective_trust_level"`
	Blocked             bool                `json:"blocked"`
	BlockedReason       string              `json:"blocked_reason,omitempty"`
	BlockedAt           *time.Time          `json:"blocked_at,omitempty"`
	HasPublicKey        bool                `json:"has_public_key"`
	RequireDPoP         bool                `json:"require_dpop"`
	MayDelegateTo       []string            `json:"may_delegate_to"`
	// TLSClientAuth is the registered certificate subject ("san_uri:...",
	// "san_dns:...", "subject_dn:..."); HasTLSClientCert says a
	// self-signed certificate is registered.
	TLSClientAuth    string    `json:"tls_client_auth,omitempty"`
	HasTLSClientCert bool      `json:"has_tls_client_cert,omitempty"`
	CreatedAt        time.Time `json:"created_at"`
	// Enrollment is set on an agent registered on first use of an
	// external workload identity (docs/enrollment.md).
	Enrollment *Enrollment `json:"enrollment,omitempty"`
}

// Enrollment names the external identity an agent was registered for.
type Enrollment struct {
	// Issuer is the trusted issuer's configured name.
	Issuer string `json:"issuer"`
	// Subject is the verified subject (a service account, a repository
	// and ref, a SPIFFE ID).
	Subject string `json:"subject"`
}

// Registration is the 201 answer of POST /v1/tenants/{tenant}/agents: the
// agent plus its client secret, which is shown this once only.
type Registration struct {
	Agent
	ClientSecret string `json:"client_secret"`
}

// AgentList is the answer of GET /v1/tenants/{tenant}/agents.
type AgentList struct {
	Agents []Agent `json:"agents"`
}

// BlockRequest is the body of POST .../agents/{id}/block.
type BlockRequest struct {
	Reason string `json:"reason,omitempty"`
}

// OutcomeRequest is the body of POST .../agents/{id}/outcomes.
type OutcomeRequest struct {
	Outcome string `json:"outcome"`
	// Detail is a short free-text note kept in the reputation audit record.
	Detail string `json:"detail,omitempty"`
}

// OutcomeResult is the answer of POST .../agents/{id}/outcomes.
type OutcomeResult struct {
	Agent
	Previous float64 `json:"previous"`
	// AutoBlocked is true when this outcome blocked the agent.
	AutoBlocked bool `json:"auto_blocked"`
}

// RotateResult is the answer of POST /v1/keys/rotate.
type RotateResult struct {
	CurrentKID string `json:"current_kid"`
	NextKID    string `json:"next_kid"`
}

// Problem is an RFC 9457 problem+json body, as the admin API answers errors.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Code   string `json:"code,omitempty"` // stable snake_case, e.g. agent_not_found
	Detail string `json:"detail,omitempty"`
}

// TokenResponse is the RFC 6749 §5.1 answer of POST /oauth2/token.
type TokenResponse struct {
	AccessToken string `json:"access_token"`
	// TokenType is "Bearer", or "DPoP" for a passport bound to the key
	// of the request's DPoP proof (RFC 9449 §5).
	TokenType string `json:"token_type"`
	ExpiresIn int64  `json:"expires_in"`
	Scope     string `json:"scope,omitempty"`
	// IssuedTokenType is set by a token exchange (RFC 8693 §2.2.1):
	// urn:ietf:params:oauth:token-type:access_token.
	IssuedTokenType string `json:"issued_token_type,omitempty"`
}

// OAuthError is the RFC 6749 §5.2 error body.
type OAuthError struct {
	Code        string `json:"error"`
	Description string `json:"error_description,omitempty"`
}
