package healer

import (
	"crypto/rand"
	"encoding/hex"
	"slices"
	"time"
)

// Incident states.
const (
	StateDetected   = "DETECTED"
	StateDispatched = "DISPATCHED"
	StateResolved   = "RESOLVED"
	StateEscalated  = "ESCALATED"
)

// StepInjected marks the timeline entry of an announced fault's injection.
// It is a step of the timeline, never an incident state.
const StepInjected = "INJECTED"

// Incident is one detected failure and what the healer did about it. Its
// JSON is the incident details of the audit record and of the API.
type Incident struct {
	ID     string `json:"id"`
	Tenant string `json:"tenant"`
	Type   string `json:"type"`
	Target string `json:"target"`
	State  string `json:"state"`
	// Action is the playbook's action, once one is chosen.
	Action string `json:"action,omitempty"`
	// InjectedAt is when the fault hit, when the monitored system
	// announced it (see Announcements); nil when only the checks saw it.
	InjectedAt   *time.Time `json:"injected_at,omitempty"`
	DetectedAt   time.Time  `json:"detected_at"`
	DispatchedAt *time.Time `json:"dispatched_at"`
	ResolvedAt   *time.Time `json:"resolved_at"`
	EscalatedAt  *time.Time `json:"escalated_at,omitempty"`
	// ResolutionMS is ResolvedAt minus DetectedAt, in milliseconds.
	ResolutionMS int64 `json:"resolution_ms"`
	// TimeToResolveMS is ResolvedAt minus InjectedAt when the injection
	// time is known, else minus DetectedAt: how long the fault lasted.
	TimeToResolveMS int64   `json:"time_to_resolve_ms"`
	Attempts        int     `json:"attempts"`
	Timeline        []Event `json:"timeline"`
}

// Event is one entry of an incident's timeline.
type Event struct {
	State string    `json:"state"`
	At    time.Time `json:"at"`
	Note  string    `json:"note,omitempty"`
}

// Open reports whether the incident is still being handled.
func (in *Incident) Open() bool {
	return in.State == StateDetected || in.State == StateDispatched
}

// clone returns a deep copy, safe to hand to another goroutine.
func (in *Incident) clone() *Incident {
	c := *in
	c.Timeline = slices.Clone(in.Timeline)
	return &c
}

func (in *Incident) note(at time.Time, note string) {
	in.Timeline = append(in.Timeline, Event{State: in.State, At: at, Note: note})
}

func (in *Incident) transition(state string, at time.Time, note string) {
	in.State = state
	at = at.UTC()
	switch state {
	case StateDispatched:
		in.DispatchedAt = &at
	case StateResolved:
		in.ResolvedAt = &at
		in.ResolutionMS = at.Sub(in.DetectedAt).Milliseconds()
		from := in.DetectedAt
		if in.InjectedAt != nil {
			from = *in.InjectedAt
		}
		in.TimeToResolveMS = at.Sub(from).Milliseconds()
	case StateEscalated:
		in.EscalatedAt = &at
	}
	in.note(at, note)
}

// newIncidentID returns a random id such as "inc-1f2e3d4c5b6a".
func newIncidentID() string {
	var b [6]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return "inc-" + hex.EncodeToString(b[:])
}
