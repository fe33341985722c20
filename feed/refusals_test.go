package feed

import (
	"encoding/json"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/agentpassport/passport/audit"
)

// TestRefusalSummaryEvents: refusals summary records reach the feed by
// default, with their count in details, and follow the decision filter.
func TestRefusalSummaryEvents(t *testing.T) {
	e := newEnv(t, Config{})
	sum, _ := json.Marshal(audit.RefusalSummary{Reason: "no_passport", Count: 412, First: time.Now(), Last: time.Now(), Source: "10.0.0.9"})
	ref := add(t, e.rdb, audit.Record{Kind: audit.KindRefusals, Tenant: "acme", Decision: audit.DecisionError,
		Reasons: []string{"no_passport"}, Status: 401, Route: "restart", Details: sum})
	allow := add(t, e.rdb, decision("acme", "a1", "allow"))

	evs := untilLive(t, e.dial(adminToken, "acme", url.Values{"since": {"0"}}))
	if got := ids(evs); fmt.Sprint(got) != fmt.Sprint([]string{ref, allow}) {
		t.Fatalf("default types: got %v", got)
	}
	var d audit.RefusalSummary
	if evs[0].Type != TypeRefusals || json.Unmarshal(evs[0].Details, &d) != nil || d.Count != 412 || evs[0].Status != 401 {
		t.Fatalf("refusals event: %+v", evs[0])
	}
	evs = untilLive(t, e.dial(adminToken, "acme", url.Values{"since": {"0"}, "decision": {"allow"}}))
	if got := ids(evs); fmt.Sprint(got) != fmt.Sprint([]string{allow}) {
		t.Fatalf("decision=allow: got %v", got)
	}
}
