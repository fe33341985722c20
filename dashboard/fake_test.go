package dashboard

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/agentpassport/passport/audit"
)

// fakeActions stands in for the authority and the chaos simulator and
// healer: FireChaos writes, through the real audit stream writer, the
// records the real ones would (chaos, the healer's decision, the incident
// through DETECTED, DISPATCHED, RESOLVED, a reputation change), so that
// the page sees them only through the feed.
type fakeActions struct {
	sink audit.Sink

	mu     sync.Mutex
	agents map[string][]Agent
	fired  []string
	n      int
	// refuse, when set, is what FireChaos fails with (as the chaos agent
	// would: wrapped).
	refuse error
}

func newFakeActions(sink audit.Sink) *fakeActions {
	return &fakeActions{sink: sink, agents: map[string][]Agent{
		"acme": {
			{ID: "ag-healer", Name: "healer", Type: "healer", TrustLevel: "HIGH", Reputation: 90},
			{ID: "ag-chaos", Name: "chaos", Type: "chaos", TrustLevel: "HIGH", Reputation: 90},
			{ID: "ag-observer", Name: "observer", Type: "observer", TrustLevel: "LOW", Reputation: 60},
			{ID: "ag-rogue", Name: "rogue", Type: "observer", TrustLevel: "LOW", Reputation: 41.5},
			{ID: "ag-long", Name: longAgentName, Type: "observer", TrustLevel: "MEDIUM", Reputation: 75},
		},
		"globex": {{ID: "gx-healer", Name: "healer", Type: "healer", TrustLevel: "HIGH", Reputation: 90}},
	}}
}

func (f *fakeActions) ListAgents(_ context.Context, tenant string) ([]Agent, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.agents[tenant]), nil
}

func (f *fakeActions) setBlocked(ctx context.Context, tenant, id string, blocked bool, reason string) error {
	f.mu.Lock()
	i := slices.IndexFunc(f.agents[tenant], func(a Agent) bool { return a.ID == id })
	if i < 0 {
		f.mu.Unlock()
		return ErrNotFound
	}
	f.agents[tenant][i].Blocked = blocked
	f.mu.Unlock()
	kind := audit.KindAgentUnblocked
	if blocked {
		kind = audit.KindAgentBlocked
	}
	return f.add(ctx, &audit.Record{Kind: kind, Tenant: tenant, Details: mustJSON(map[string]any{
		"agent_id": id, "reason": reason, "cause": "operator",
	})})
}

func (f *fakeActions) Block(ctx context.Context, tenant, id, reason string) error {
	return f.setBlocked(ctx, tenant, id, true, reason)
}

func (f *fakeActions) Unblock(ctx context.Context, tenant, id string) error {
	return f.setBlocked(ctx, tenant, id, false, "")
}

func (f *fakeActions) Targets(_ context.Context, tenant string) ([]string, error) {
	switch tenant {
	case "acme":
		return []string{"checkout", "payments"}, nil
	case "globex":
		return []string{"search", "inventory"}, nil
	}
	return nil, nil
}

func (f *fakeActions) FireChaos(ctx context.Context, tenant, faultType, target string) error {
	f.mu.Lock()
	if f.refuse != nil {
		err := f.refuse
		f.mu.Unlock()
		return fmt.Errorf("inject %s into %s: %w", faultType, target, err)
	}
	f.n++
	n := f.n
	f.fired = append(f.fired, tenant+"/"+faultType+"/"+target)
	f.mu.Unlock()
	chaosID := fmt.Sprintf("chaos-%d", n)
	incID := fmt.Sprintf("inc-%d", n)
	// The fault hits at t0 (the fleet announces it); the healer detects
	// it 40 ms later, dispatches at 90 ms and resolves at 850 ms.
	t0 := time.Now().UTC()
	detected, dispatched, resolved := t0.Add(40*time.Millisecond), t0.Add(90*time.Millisecond), t0.Add(850*time.Millisecond)
	type step struct {
		State string    `json:"state"`
		At    time.Time `json:"at"`
		Note  string    `json:"note,omitempty"`
	}
	incident := func(state string, steps ...step) *audit.Record {
		d := map[string]any{"id": incID, "type": faultType, "target": target, "state": state,
			"injected_at": t0, "detected_at": detected, "attempts": 1, "timeline": steps}
		if state != "DETECTED" {
			d["dispatched_at"] = dispatched
		}
		if state == "RESOLVED" {
			d["resolved_at"] = resolved
			d["resolution_ms"] = resolved.Sub(detected).Milliseconds()
			d["time_to_resolve_ms"] = resolved.Sub(t0).Milliseconds()
		}
		return &audit.Record{Kind: audit.KindIncident, Tenant: tenant, AgentID: "ag-healer", AgentName: "healer", Details: mustJSON(d)}
	}
	s0 := step{"INJECTED", t0, "announced: " + faultType}
	s1 := step{"DETECTED", detected, "health check failed 3 times"}
	s2 := step{"DISPATCHED", dispatched, "playbook restart"}
	s3 := step{"RESOLVED", resolved, "healthy again"}
	recs := []*audit.Record{
		{Kind: audit.KindChaos, Tenant: tenant, AgentID: "ag-chaos", AgentName: "chaos", Details: mustJSON(map[string]any{
			"id": chaosID, "type": faultType, "target": target, "action": "inject", "injected_at": t0})},
		incident("DETECTED", s0, s1),
		incident("DISPATCHED", s0, s1, s2),
		{Kind: audit.KindDecision, Tenant: tenant, AgentID: "ag-healer", AgentName: "healer", AgentType: "healer",
			TrustLevel: "HIGH", Reputation: 90, Method: "POST", Path: "/services/" + target + "/restart",
			Action: "service.restart", Resource: target, Decision: audit.DecisionAllow, TaskID: incID},
		{Kind: audit.KindDecision, Tenant: tenant, AgentID: "ag-rogue", AgentName: "rogue", AgentType: "observer",
			TrustLevel: "LOW", Reputation: 41.5, Method: "POST", Path: "/services/" + target + "/restart",
			Action: "service.restart", Resource: target, Decision: audit.DecisionDeny, Reasons: []string{"trust_level_too_low", "action_not_in_capabilities"}},
		{Kind: audit.KindReputation, Tenant: tenant, Details: mustJSON(map[string]any{
			"agent_id": "ag-rogue", "score": 35.0, "previous": 41.5, "outcome": "denied", "trust_level": "LOW"})},
		incident("RESOLVED", s0, s1, s2, s3),
	}
	for _, r := range recs {
		if err := f.add(ctx, r); err != nil {
			return err
		}
	}
	return nil
}

// longAgentName is longer than the agents panel is wide.
const longAgentName = "observer-with-a-remarkably-long-name-for-one-line-acme-3f9a2c"

// openIncident records an incident that the healer has only detected
// (no injection time known: it was not announced).
func (f *fakeActions) openIncident(ctx context.Context, tenant, id, typ, target string) error {
	now := time.Now().UTC()
	return f.add(ctx, &audit.Record{Kind: audit.KindIncident, Tenant: tenant, AgentID: "ag-healer", AgentName: "healer", Details: mustJSON(map[string]any{
		"id": id, "type": typ, "target": target, "state": "DETECTED", "detected_at": now,
		"timeline": []map[string]any{{"state": "DETECTED", "at": now, "note": "connection refused"}}})})
}

// reputation records a reputation change of agent written at time at.
func (f *fakeActions) reputation(ctx context.Context, tenant, agent string, score float64, at time.Time) error {
	return f.add(ctx, &audit.Record{Kind: audit.KindReputation, Tenant: tenant, Time: at, Details: mustJSON(map[string]any{
		"agent_id": agent, "score": score, "previous": score + 10, "outcome": "denied", "trust_level": "LOW"})})
}

// withApprovals is a host that also offers approvals: it lists list and
// records decisions in decided ("approve <id> <comment> <via>").
type withApprovals struct {
	*fakeActions
	list    []Approval
	decided *[]string
}

func (w withApprovals) PendingApprovals(_ context.Context, tenant string) ([]Approval, error) {
	if tenant != "acme" {
		return nil, nil
	}
	return w.list, nil
}

func (w withApprovals) DecideApproval(_ context.Context, tenant, id string, approve bool, comment, via string) (Approval, error) {
	i := slices.IndexFunc(w.list, func(a Approval) bool { return a.ID == id })
	if tenant != "acme" || i < 0 {
		return Approval{}, ErrNotFound
	}
	verb, state := "deny", "denied"
	if approve {
		verb, state = "approve", "granted"
	}
	w.mu.Lock()
	if w.decided != nil {
		*w.decided = append(*w.decided, verb+" "+id+" "+comment+" "+via)
	}
	w.mu.Unlock()
	a := w.list[i]
	a.State = state
	return a, nil
}

var _ Approvals = withApprovals{}

func (f *fakeActions) add(ctx context.Context, r *audit.Record) error {
	if _, err := f.sink.Append(ctx, r); err != nil {
		return fmt.Errorf("append %s: %w", r.Kind, err)
	}
	return nil
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

var _ Actions = (*fakeActions)(nil)
