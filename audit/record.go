// Package audit is the append-only, tamper-evident audit stream of Agent
// Passport: the versioned Record, the Redis stream writer with group commit,
// the per-writer hash chain with signed checkpoints, and the verifier.
//
// Layout: one Redis stream per tenant (StreamKey), one field per entry
// (FieldRecord) holding the record's JSON; the chain heads per tenant
// (HeadsKey) and the writers' public keys (WritersKey). Each writer keeps
// its own hash chain per stream: Seq counts its records, Prev is the hash of
// its previous record, Hash is the SHA-256 of the canonical encoding (see
// Canonical). Checkpoint records carry an Ed25519 signature over the chain
// head. Writers also hand signed statements of their checkpoints' heads to
// witnesses outside Redis (Witness, DirWitness, HTTPWitness), which Redis
// cannot rewrite. VerifyStream, VerifyAll and `passport audit verify`
// check all of it.
//
// It is a leaf package: it imports nothing else from this module, so the
// proxy, the authority, the healer and the tools can all write and read it.
package audit

import (
	"context"
	"encoding/json"
	"time"
)

// Version is the record schema version written in every record's "v".
const Version = 1

// Kind says what a record is about.
type Kind string

// Record kinds.
const (
	KindDecision       Kind = "decision"        // proxy: a policy decision, written before forwarding
	KindOutcome        Kind = "outcome"         // proxy: what the upstream answered
	KindAgentBlocked   Kind = "agent_blocked"   // authority: an agent was blocked (with cause)
	KindAgentUnblocked Kind = "agent_unblocked" // authority: an admin unblocked an agent
	KindReputation     Kind = "reputation"      // authority: a reputation change
	KindRevocation     Kind = "revocation"      // authority: a passport was revoked
	KindAgentEnrolled  Kind = "agent_enrolled"  // authority: an agent was registered on first use of an external identity
	KindIncident       Kind = "incident"        // healer: an incident changed state
	KindChaos          Kind = "chaos"           // chaos: a fault was injected
	KindCheckpoint     Kind = "checkpoint"      // any writer: signed chain checkpoint
	KindPassport       Kind = "passport"        // proxy: a passport's claims, once, before its first decision (passport.go)

	// Approvals (package approval): details carry approval_id and, for a
	// decision, the approver, its comment and the approval's state after it.
	KindApprovalRequested Kind = "approval_requested" // proxy: the policy asked a person for this call
	KindApprovalApproved  Kind = "approval_approved"  // authority: an approver approved (state "granted" once enough did)
	KindApprovalDenied    Kind = "approval_denied"    // authority: an approver denied
)

// Decisions recorded in Record.Decision.
const (
	DecisionAllow = "allow"
	DecisionDeny  = "deny"
	DecisionError = "error" // failed closed: verification, policy or internal error
)

// Record is one entry of a tenant's audit stream. Fields are documented in
// docs/audit-stream.md ("The record"). Values taken from requests are stored as
// length-capped structured fields, never concatenated into text.
//
// The minimum audit fields of the IETF agent authentication and
// authorization framework (draft-klrc-aiagent-auth) map to: the
// authenticated agent identifier -> AgentID (with JTI, the passport used);
// the delegated subject -> Subject and TaskID; the resource or tool ->
// Resource, Method, Path, Route; the action and the authorization decision
// -> Action, Decision, Reasons, PolicyRevision; the timestamp and request
// correlation id -> Time, RequestID; the attestation or risk state behind
// the decision -> TrustLevel, Reputation; remediation and revocation events
// and their triggers -> the agent_blocked, agent_unblocked, revocation and
// reputation kinds with their cause in Details.
type Record struct {
	V         int       `json:"v"`
	Kind      Kind      `json:"kind"`
	Time      time.Time `json:"time"`
	RequestID string    `json:"request_id,omitempty"`
	// ClientRequestID is the X-Request-Id the client sent, sanitised and
	// bounded: kept for correlation, never a key or assumed unique.
	ClientRequestID string `json:"client_request_id,omitempty"`
	Tenant          string `json:"tenant"`

	// Who acted.
	AgentID    string  `json:"agent_id,omitempty"`
	AgentName  string  `json:"agent_name,omitempty"`
	AgentType  string  `json:"agent_type,omitempty"`
	TrustLevel string  `json:"trust_level,omitempty"`
	Reputation float64 `json:"reputation,omitempty"` // live score at decision
	JTI        string  `json:"jti,omitempty"`        // passport id; never the passport itself
	TaskID     string  `json:"task_id,omitempty"`
	// Subject is the delegated subject the agent acts for (the passport's
	// "sub", or the delegation's principal), when there is one.
	Subject string `json:"subject,omitempty"`
	// Chain names, in a record of a delegated call (RFC 8693 token
	// exchange), every agent of the passport's delegation chain: the root
	// first, the acting agent (AgentID) last, each agent acting on behalf
	// of the one before it. Subject is then the root. Empty otherwise.
	Chain []ChainLink `json:"chain,omitempty"`

	// What was asked.
	Method   string `json:"method,omitempty"`
	Path     string `json:"path,omitempty"`
	Route    string `json:"route,omitempty"`
	Action   string `json:"action,omitempty"`
	Resource string `json:"resource,omitempty"`

	// What was decided.
	Decision       string          `json:"decision,omitempty"`
	Reasons        []string        `json:"reasons,omitempty"`
	PolicyRevision string          `json:"policy_revision,omitempty"`
	Shadow         *Shadow         `json:"shadow,omitempty"`
	Input          json.RawMessage `json:"input,omitempty"` // policy input minus secrets, for replay
	// PassportID and PassportSHA256 reference the passport record that
	// holds the claims this decision's input leaves out (passport.go).
	PassportID     string `json:"passport_id,omitempty"`
	PassportSHA256 string `json:"passport_sha256,omitempty"`

	// What happened (outcome records).
	Status    int     `json:"status,omitempty"`
	LatencyMS float64 `json:"latency_ms,omitempty"`

	// Details carries the payload of non-request kinds (incident, chaos,
	// reputation, agent_blocked, checkpoint).
	Details json.RawMessage `json:"details,omitempty"`

	// The chain: each writer keeps its own.
	Writer string `json:"writer"`
	Seq    uint64 `json:"seq"`
	Prev   string `json:"prev"`
	Hash   string `json:"hash"`
}

// ChainLink is one agent of a delegation chain.
type ChainLink struct {
	ID   string `json:"id"`
	Name string `json:"name,omitempty"`
}

// Shadow is the decision of a candidate policy evaluated beside the
// enforced one.
type Shadow struct {
	Revision string   `json:"revision"`
	Allow    bool     `json:"allow"`
	Reasons  []string `json:"reasons,omitempty"`
	Disagree bool     `json:"disagree"`
}

// Sink is where records go.
type Sink interface {
	// Append records rec and returns only once Redis has acknowledged it:
	// the write-ahead path. It fills the chain fields and returns the
	// receipt (the stream id). An error means the record is not stored
	// and the caller must fail closed.
	Append(ctx context.Context, rec *Record) (Receipt, error)
	// Enqueue records rec in the background (outcome records): it is
	// buffered, retried and flushed at shutdown; a full buffer drops and
	// counts, never blocks.
	Enqueue(rec *Record)
}
