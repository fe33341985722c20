// Package passport is the shared vocabulary of Agent Passport: the claims a
// passport carries, trust levels, the Redis key and channel names that the
// authority and the proxy agree on, the reputation model, and the one
// strict passport verifier (Verifier) that the proxy, the authority's
// introspection and its check after signing all run.
//
// It is a leaf package: it imports nothing else from this module, so that the
// proxy (a sidecar that must never carry the issuer) can import it without
// pulling in the authority.
package passport

import (
	"crypto/sha256"
	"encoding/base64"
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Header and lifetime constants shared by the issuer and every verifier.
const (
	// TokenType is the JOSE "typ" header of every passport (RFC 9068).
	// Verifiers refuse any other value so that an ID token or another JWT
	// minted by the same keys can never be replayed as a passport.
	TokenType = "at+jwt"

	// AlgEdDSA and AlgES256 are the only signing algorithms a passport may
	// use. HMAC, RSA-PSS and "none" are never accepted.
	AlgEdDSA = "EdDSA"
	AlgES256 = "ES256"

	// DefaultLifetime is how long a passport lives unless configured.
	DefaultLifetime = 5 * time.Minute
	// MaxLifetime caps any configured lifetime: a stolen passport must
	// expire within the hour whatever the configuration says.
	MaxLifetime = time.Hour

	// MaxLeeway caps the clock-skew allowance of any verifier.
	MaxLeeway = 30 * time.Second

	// AuthorizationDetailType is the RFC 9396 "type" of the authorization
	// details entries a passport carries.
	AuthorizationDetailType = "agent_action"

	// GrantTypeTokenExchange is the RFC 8693 grant type with which an
	// agent exchanges another agent's passport for a delegated one.
	GrantTypeTokenExchange = "urn:ietf:params:oauth:grant-type:token-exchange"
	// TokenTypeAccessToken is the RFC 8693 token type of a passport, as a
	// subject_token, an actor_token and the issued token.
	TokenTypeAccessToken = "urn:ietf:params:oauth:token-type:access_token"

	// MaxDelegationDepth caps any delegation chain, whatever an authority
	// is configured to issue: a verifier refuses a passport whose chain is
	// longer, so the work a chain costs every proxy stays bounded.
	MaxDelegationDepth = 8
)

// Algorithms lists the signing algorithms a verifier may accept.
var Algorithms = []string{AlgEdDSA, AlgES256}

// Agent types known out of the box. Deployments may configure more.
const (
	TypeHealer   = "healer"
	TypeDeployer = "deployer"
	TypeScaler   = "scaler"
	TypeObserver = "observer"
	TypeChaos    = "chaos"
)

// BuiltinAgentTypes lists the agent types every authority knows.
var BuiltinAgentTypes = []string{TypeHealer, TypeDeployer, TypeScaler, TypeObserver, TypeChaos}

// Claims is the payload of a passport. Claim names follow the IETF Agent
// Authorization Profile draft where it names the thing (agent, task,
// authorization_details, oversight, delegation) and RFC 9068 for the rest.
type Claims struct {
	jwt.RegisteredClaims

	// ClientID is the OAuth client id of the agent (RFC 9068 §2.2); it
	// equals Subject.
	ClientID string `json:"client_id"`
	// Tenant is the organisation the agent belongs to. A passport is only
	// ever valid for calls in this tenant.
	Tenant string `json:"tenant"`
	// Scope is the space-separated list of granted actions (RFC 9068).
	Scope string `json:"scope,omitempty"`
	// Agent describes who holds the passport.
	Agent Agent `json:"agent"`
	// AuthorizationDetails says what the passport may do (RFC 9396).
	AuthorizationDetails []AuthorizationDetail `json:"authorization_details,omitempty"`
	// Task binds the passport to one piece of work, such as an incident.
	Task *Task `json:"task,omitempty"`
	// Oversight names who is accountable for the agent, when known.
	Oversight *Oversight `json:"oversight,omitempty"`
	// Act names, in a delegated passport, on whose behalf the holder acts
	// (RFC 8693 §4.1): act.sub is the agent whose passport was exchanged
	// for this one, its own act the agent before that, down to the root.
	Act *Actor `json:"act,omitempty"`
	// Delegation is the same chain as Act, in the order policies read it.
	// Act and Delegation are both present or both absent.
	Delegation *Delegation `json:"delegation,omitempty"`
	// Cnf binds the passport to a key (RFC 7800, RFC 9449 §6): it may only
	// be used with a DPoP proof signed by the key whose RFC 7638
	// thumbprint is cnf.jkt.
	Cnf *Confirmation `json:"cnf,omitempty"`
}

// Agent is the "agent" claim: who the agent is and how far it is trusted.
type Agent struct {
	ID         string     `json:"id"`
	Name       string     `json:"name"`
	Type       string     `json:"type"`
	TrustLevel TrustLevel `json:"trust_level"`
	// Reputation is the score (0–100) at the moment of issue. It is kept
	// for audit; the proxy decides on the live score.
	Reputation int `json:"reputation"`
}

// AuthorizationDetail is one RFC 9396 authorization details entry.
type AuthorizationDetail struct {
	Type string `json:"type"`
	// Actions are action names such as "service.restart".
	Actions []string `json:"actions"`
	// Locations are the audiences (resource servers) it applies to.
	Locations []string `json:"locations,omitempty"`
	// Identifier narrows the entry to one resource, such as a service name.
	Identifier string `json:"identifier,omitempty"`
}

// Task binds a passport to one piece of work.
type Task struct {
	// ID names the task, for example an incident id.
	ID string `json:"id"`
	// Purpose is a short human-readable description.
	Purpose string `json:"purpose,omitempty"`
	// Target is the only resource the passport may act on, when set.
	Target string `json:"target,omitempty"`
	// Actions are the only actions the task needs, when set.
	Actions []string `json:"actions,omitempty"`
}

// Oversight names the humans or systems accountable for the agent.
type Oversight struct {
	Owner string `json:"owner,omitempty"`
}

// Actor is an "act" claim (RFC 8693 §4.1). Unlike RFC 8693's own example,
// where sub is the principal and act.sub the actor, a passport's sub is
// always its holder (every proxy check — blocks, reputation, revocation
// by agent — is about the holder), so act.sub here is the agent the
// holder acts for, and a nested Act the agent that one acted for.
type Actor struct {
	// Sub is an agent id.
	Sub string `json:"sub"`
	// Act is the previous link, when the chain is longer.
	Act *Actor `json:"act,omitempty"`
}

// Delegation describes a delegated passport's chain.
type Delegation struct {
	// Depth is how many exchanges made this passport: 1 when an agent
	// exchanged the root's own passport.
	Depth int `json:"depth"`
	// Root is the agent at the start of the chain: Chain[0].
	Root string `json:"root"`
	// Chain is every agent id in order, the root first and the holder
	// (sub) last: Depth+1 entries.
	Chain []string `json:"chain"`
	// Links describe the passports exchanged on the way, root first
	// (Depth entries; Links[i] was held by Chain[i]). A verifier refuses
	// the passport when any link's jti is revoked or its agent blocked.
	Links []DelegationLink `json:"links"`
}

// DelegationLink is one passport exchanged on the way to a delegated one.
type DelegationLink struct {
	// Sub is the agent that held it.
	Sub string `json:"sub"`
	// Name and Type are that agent's, for audit trails and policies.
	Name string `json:"name"`
	Type string `json:"type"`
	// TrustLevel is the trust level that passport carried. A delegated
	// passport's own trust level is never higher than any link's.
	TrustLevel TrustLevel `json:"trust_level"`
	// JTI is that passport's id.
	JTI string `json:"jti"`
}

// Confirmation is the "cnf" claim (RFC 7800) with exactly one method: the
// RFC 9449 key thumbprint (jkt) or the RFC 8705 certificate thumbprint
// (x5t#S256). A verifier refuses any other member.
type Confirmation struct {
	// JKT is the base64url SHA-256 JWK thumbprint (RFC 7638) of the key
	// that must sign every DPoP proof presented with the passport.
	JKT string `json:"jkt,omitempty"`
	// X5T is the base64url SHA-256 of the DER client certificate the
	// passport must be presented over (mutual TLS, RFC 8705 §3).
	X5T string `json:"x5t#S256,omitempty"`
}

// CertThumbprint is the x5t#S256 of a DER certificate: unpadded base64url
// of its SHA-256 (RFC 8705 §3.1).
func CertThumbprint(der []byte) string {
	sum := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// Delegated reports whether the passport was obtained by token exchange.
func (c *Claims) Delegated() bool { return c.Delegation != nil }

// BoundKey returns cnf.jkt, or "" for a passport not bound to a key.
func (c *Claims) BoundKey() string {
	if c.Cnf == nil {
		return ""
	}
	return c.Cnf.JKT
}

// BoundCert returns cnf.x5t#S256, or "" for a passport not bound to a
// client certificate.
func (c *Claims) BoundCert() string {
	if c.Cnf == nil {
		return ""
	}
	return c.Cnf.X5T
}

// Actions returns every action the passport grants, without duplicates.
func (c *Claims) Actions() []string {
	var out []string
	for _, d := range c.AuthorizationDetails {
		for _, a := range d.Actions {
			if !slices.Contains(out, a) {
				out = append(out, a)
			}
		}
	}
	return out
}

// Grants reports whether the passport grants action.
func (c *Claims) Grants(action string) bool {
	for _, d := range c.AuthorizationDetails {
		if slices.Contains(d.Actions, action) {
			return true
		}
	}
	return false
}

// Secret is a string that must never be logged: its LogValue and String are
// "REDACTED". Use it for client secrets, admin tokens and raw passports.
type Secret string

// String implements fmt.Stringer.
func (Secret) String() string { return "REDACTED" }

// LogValue implements slog.LogValuer.
func (Secret) LogValue() slogValue { return redacted }

// Reveal returns the secret itself, for the one place that needs it.
func (s Secret) Reveal() string { return string(s) }
