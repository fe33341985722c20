package dashboard

import (
	"context"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/agentpassport/passport/audit"
)

// TestBrowserDelegatedDecision: a delegated call's decision row reads
// "agent B on behalf of A" (a longer chain: "C on behalf of B on behalf of
// A"), and the agent filter finds it by any agent of its chain.
func TestBrowserDelegatedDecision(t *testing.T) {
	st := startStack(t, Config{})
	ctx := context.Background()
	for _, rec := range []*audit.Record{
		{V: audit.Version, Kind: audit.KindDecision, Time: time.Now(), Tenant: "acme", AgentID: "agt_b", AgentName: "healer-1",
			Action: "service.restart", Resource: "checkout", Decision: audit.DecisionAllow, Subject: "agt_a",
			Chain: []audit.ChainLink{{ID: "agt_a", Name: "commander-1"}, {ID: "agt_b", Name: "healer-1"}}},
		{V: audit.Version, Kind: audit.KindDecision, Time: time.Now(), Tenant: "acme", AgentID: "agt_c", AgentName: "sub-1",
			Action: "service.get", Resource: "checkout", Decision: audit.DecisionDeny, Subject: "agt_a",
			Chain: []audit.ChainLink{{ID: "agt_a", Name: "commander-1"}, {ID: "agt_b", Name: "healer-1"}, {ID: "agt_c", Name: "sub-1"}}},
	} {
		if err := st.actions.add(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	p := newPage(t)
	p.signIn(st.url, adminToken, "acme")
	p.poll("delegated rows", `document.querySelectorAll('tr[data-testid="decision"]').length === 2`)
	rows := p.eval(`[...document.querySelectorAll('tr[data-testid="decision"] td:nth-child(2)')].map(td => td.textContent).join(" | ")`)
	if rows != "sub-1 on behalf of healer-1 on behalf of commander-1 | healer-1 on behalf of commander-1" {
		t.Fatalf("agent cells %q", rows)
	}
	p.do("filter by the root", 10*time.Second,
		chromedp.SetValue(css(`#filter-agent`), "commander"),
		chromedp.Evaluate[chromedp.Void](`document.getElementById("filter-agent").dispatchEvent(new Event("input"))`),
	)
	if n := p.eval(`String(document.querySelectorAll('tr[data-testid="decision"]').length)`); n != "2" {
		t.Fatalf("filter by the root shows %s rows, want 2", n)
	}
}
