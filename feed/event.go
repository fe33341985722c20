package feed

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
)

// SchemaVersion is the version of the event schema, written in every
// event's "v". It changes only when a field changes meaning or goes away;
// new fields may appear within a version.
const SchemaVersion = 1

// Event types. They are the audit record kinds the feed exposes.
const (
	TypeDecision       = string(audit.KindDecision)
	TypeOutcome        = string(audit.KindOutcome)
	TypeIncident       = string(audit.KindIncident)
	TypeReputation     = string(audit.KindReputation)
	TypeAgentBlocked   = string(audit.KindAgentBlocked)
	TypeAgentUnblocked = string(audit.KindAgentUnblocked)
	TypeRevocation     = string(audit.KindRevocation)
	TypeChaos          = string(audit.KindChaos)
	// TypeRefusals summarises refused calls of one source, reason and
	// second (details: audit.RefusalSummary, with "count").
	TypeRefusals = string(audit.KindRefusals)
	// Approvals: a call waits for a person, an approver approved or
	// denied it (details: approval_id, approver, comment, state).
	TypeApprovalRequested = string(audit.KindApprovalRequested)
	TypeApprovalApproved  = string(audit.KindApprovalApproved)
	TypeApprovalDenied    = string(audit.KindApprovalDenied)
	// TypeLive is a control message, not a stream entry: it is sent once
	// the replay asked for with since= or tail= is complete and the
	// connection is following the stream live. It carries no "id".
	TypeLive = "live"
)

// knownTypes are the types a client may ask for with types=.
var knownTypes = map[string]bool{
	TypeDecision: true, TypeOutcome: true, TypeIncident: true, TypeReputation: true,
	TypeAgentBlocked: true, TypeAgentUnblocked: true, TypeRevocation: true, TypeChaos: true,
	TypeRefusals: true, TypeApprovalRequested: true, TypeApprovalApproved: true, TypeApprovalDenied: true,
}

// defaultTypes are sent when the client does not say types=. Outcome
// records double the volume of decisions and revocations carry passport
// ids, so both are opt-in.
var defaultTypes = map[string]bool{
	TypeDecision: true, TypeIncident: true, TypeReputation: true,
	TypeAgentBlocked: true, TypeAgentUnblocked: true, TypeChaos: true, TypeRefusals: true,
	TypeApprovalRequested: true, TypeApprovalApproved: true, TypeApprovalDenied: true,
}

// Event is one message of the feed (schema v1, documented in doc.go).
// It is built from an audit.Record; the policy input and the passport id
// are deliberately left out: the feed is for watching, the audit stream
// (passport audit tail) is for forensics.
type Event struct {
	V      int       `json:"v"`
	ID     string    `json:"id,omitempty"`
	Type   string    `json:"type"`
	Tenant string    `json:"tenant"`
	Time   time.Time `json:"time,omitzero"`

	AgentID    string  `json:"agent_id,omitempty"`
	AgentName  string  `json:"agent_name,omitempty"`
	AgentType  string  `json:"agent_type,omitempty"`
	TrustLevel string  `json:"trust_level,omitempty"`
	Reputation float64 `json:"reputation,omitempty"`
	RequestID  string  `json:"request_id,omitempty"`
	TaskID     string  `json:"task_id,omitempty"`
	// Chain is a delegated call's chain, root first, the acting agent
	// last: "agent_name on behalf of chain[len-2] ... on behalf of
	// chain[0]". Subject is its root.
	Chain   []audit.ChainLink `json:"chain,omitempty"`
	Subject string            `json:"subject,omitempty"`

	Method   string `json:"method,omitempty"`
	Path     string `json:"path,omitempty"`
	Route    string `json:"route,omitempty"`
	Action   string `json:"action,omitempty"`
	Resource string `json:"resource,omitempty"`

	Decision       string   `json:"decision,omitempty"`
	Reasons        []string `json:"reasons,omitempty"`
	PolicyRevision string   `json:"policy_revision,omitempty"`

	Status    int     `json:"status,omitempty"`
	LatencyMS float64 `json:"latency_ms,omitempty"`

	Details json.RawMessage `json:"details,omitempty"`

	Writer string `json:"writer,omitempty"`
	Seq    uint64 `json:"seq,omitempty"`

	// LastID is set on TypeLive only: the stream id the connection is at.
	LastID string `json:"last_id,omitempty"`
}

// RecordField is the stream entry field that holds the JSON of the
// audit.Record (audit's layout).
const RecordField = audit.FieldRecord

// errSkip marks a stream entry that is valid but not for the feed
// (checkpoints, kinds unknown to this version).
var errSkip = errors.New("not a feed event")

// decodeEntry turns one stream entry into an event. It is the only place
// that knows how records sit in stream entries.
func decodeEntry(msg redis.XMessage) (*Event, error) {
	rec, _, err := audit.ParseMessage(msg)
	if err != nil {
		return nil, fmt.Errorf("decode feed event: %w", err)
	}
	if !knownTypes[string(rec.Kind)] {
		return nil, errSkip
	}
	ev := &Event{
		V: SchemaVersion, ID: msg.ID, Type: string(rec.Kind), Tenant: rec.Tenant, Time: rec.Time,
		AgentID: rec.AgentID, AgentName: rec.AgentName, AgentType: rec.AgentType,
		TrustLevel: rec.TrustLevel, Reputation: rec.Reputation, RequestID: rec.RequestID, TaskID: rec.TaskID,
		Chain: rec.Chain, Subject: rec.Subject,
		Method: rec.Method, Path: rec.Path, Route: rec.Route, Action: rec.Action, Resource: rec.Resource,
		Decision: rec.Decision, Reasons: rec.Reasons, PolicyRevision: rec.PolicyRevision,
		Status: rec.Status, LatencyMS: rec.LatencyMS, Details: rec.Details,
		Writer: rec.Writer, Seq: rec.Seq,
	}
	if ev.AgentID == "" && len(rec.Details) > 0 {
		// reputation, agent_blocked and agent_unblocked name the agent in
		// their details; lift it so that the agent filter sees it.
		var d struct {
			AgentID string `json:"agent_id"`
		}
		if json.Unmarshal(rec.Details, &d) == nil {
			ev.AgentID = d.AgentID
		}
	}
	return ev, nil
}

// Filter selects the events a connection receives. The zero Filter passes
// the default types.
type Filter struct {
	Types     map[string]bool // nil: defaultTypes
	Agents    map[string]bool // nil: every agent
	Decisions map[string]bool // nil: every decision; applies to decision, outcome and refusals events
}

// Match reports whether ev passes the filter.
func (f *Filter) Match(ev *Event) bool {
	types := f.Types
	if types == nil {
		types = defaultTypes
	}
	if !types[ev.Type] {
		return false
	}
	if f.Agents != nil && !f.Agents[ev.AgentID] {
		return false
	}
	if f.Decisions != nil && (ev.Type == TypeDecision || ev.Type == TypeOutcome || ev.Type == TypeRefusals) && !f.Decisions[ev.Decision] {
		return false
	}
	return true
}

// parseFilter reads types=, agent= and decision= (comma-separated, or
// repeated).
func parseFilter(q map[string][]string) (Filter, error) {
	var f Filter
	var errs []error
	list := func(key string) map[string]bool {
		vals := q[key]
		if len(vals) == 0 {
			return nil
		}
		m := map[string]bool{}
		for _, v := range vals {
			for _, s := range strings.Split(v, ",") {
				if s = strings.TrimSpace(s); s != "" {
					if len(s) > 128 || len(m) >= 64 {
						errs = append(errs, fmt.Errorf("%s: too long", key))
						return nil
					}
					m[s] = true
				}
			}
		}
		if len(m) == 0 {
			return nil
		}
		return m
	}
	f.Types = list("types")
	for t := range f.Types {
		if !knownTypes[t] {
			errs = append(errs, fmt.Errorf("types: unknown event type %q", t))
		}
	}
	f.Agents = list("agent")
	f.Decisions = list("decision")
	for d := range f.Decisions {
		if d != audit.DecisionAllow && d != audit.DecisionDeny && d != audit.DecisionError {
			errs = append(errs, fmt.Errorf("decision: unknown decision %q", d))
		}
	}
	return f, errors.Join(errs...)
}

// streamID is a parsed Redis stream id, ordered as Redis orders them.
type streamID struct{ ms, seq uint64 }

// parseID parses "ms-seq" or "ms" (seq 0).
func parseID(s string) (streamID, error) {
	if s == "" || len(s) > 41 {
		return streamID{}, fmt.Errorf("bad stream id %q", s)
	}
	msPart, seqPart, hasSeq := strings.Cut(s, "-")
	ms, err := strconv.ParseUint(msPart, 10, 64)
	if err != nil {
		return streamID{}, fmt.Errorf("bad stream id %q", s)
	}
	var seq uint64
	if hasSeq {
		if seq, err = strconv.ParseUint(seqPart, 10, 64); err != nil {
			return streamID{}, fmt.Errorf("bad stream id %q", s)
		}
	}
	return streamID{ms, seq}, nil
}

func (a streamID) less(b streamID) bool {
	return a.ms < b.ms || (a.ms == b.ms && a.seq < b.seq)
}

func (a streamID) String() string {
	return strconv.FormatUint(a.ms, 10) + "-" + strconv.FormatUint(a.seq, 10)
}
