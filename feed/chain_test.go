package feed

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
)

// TestDelegatedDecisionEvent: the feed names a delegated call's chain, so
// a dashboard can show "healer-1 on behalf of commander-1".
func TestDelegatedDecisionEvent(t *testing.T) {
	rec := audit.Record{V: 1, Kind: audit.KindDecision, Tenant: "acme", AgentID: "agt_b", AgentName: "healer-1", Decision: "allow",
		Chain: []audit.ChainLink{{ID: "agt_a", Name: "commander-1"}, {ID: "agt_b", Name: "healer-1"}}, Subject: "agt_a"}
	b, _ := json.Marshal(rec)
	ev, err := decodeEntry(redis.XMessage{ID: "1-0", Values: map[string]any{RecordField: string(b)}})
	if err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(ev)
	if !strings.Contains(string(out), `"chain":[{"id":"agt_a","name":"commander-1"},{"id":"agt_b","name":"healer-1"}],"subject":"agt_a"`) {
		t.Fatalf("event: %s", out)
	}
	rec.Chain, rec.Subject = nil, ""
	b, _ = json.Marshal(rec)
	ev, _ = decodeEntry(redis.XMessage{ID: "1-0", Values: map[string]any{RecordField: string(b)}})
	if out, _ := json.Marshal(ev); strings.Contains(string(out), "chain") || strings.Contains(string(out), "subject") {
		t.Fatalf("undelegated event: %s", out)
	}
}
