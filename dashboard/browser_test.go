package dashboard

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/agentpassport/passport/feed"
	"github.com/agentpassport/passport/internal/browsertest"
)

// TestBrowserChaosToResolved loads the dashboard in headless Chromium, signs
// in through the URL fragment, fires a chaos event from the page and waits
// for the incident to reach RESOLVED and a decision row to appear, all
// through the real feed on a real redis-server.
func TestBrowserChaosToResolved(t *testing.T) {
	st := startStack(t, Config{})
	ctx := browsertest.New(t)
	do := func(what string, timeout time.Duration, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		c, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		if err := chromedp.Do(c, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	eval := func(expr string) string {
		t.Helper()
		c, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		v, err := chromedp.Run(c, chromedp.Evaluate[string](expr))
		if err != nil {
			t.Fatalf("evaluate %s: %v", expr, err)
		}
		return v
	}
	// poll waits until the JavaScript condition holds.
	poll := func(what, cond string) {
		t.Helper()
		c, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if _, err := chromedp.Run(c, chromedp.Poll[bool](cond)); err != nil {
			t.Fatalf("%s (%s): %v", what, cond, err)
		}
	}
	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }

	do("load and sign in", 30*time.Second,
		chromedp.Navigate(st.url+"/#token="+adminToken+"&tenant=acme"),
		chromedp.WaitVisible(css(`#feed-status[data-state="live"]`)),
	)
	if h := eval(`location.hash`); h != "" {
		t.Fatalf("location.hash %q after sign-in, want the token stripped", h)
	}
	if eval(`sessionStorage.getItem("passport.token")`) != adminToken {
		t.Fatal("token not kept in sessionStorage")
	}

	do("agents and targets listed", 15*time.Second,
		chromedp.WaitVisible(css(`tr[data-testid="agent"][data-agent-id="ag-rogue"]`)),
		chromedp.WaitReady(css(`#chaos-target option[value="payments"]`)),
		chromedp.WaitVisible(css(`#chaos-service_down`)),
	)
	do("fire chaos from the page", 15*time.Second,
		chromedp.SetValue(css(`#chaos-target`), "payments"),
		chromedp.Click(css(`#chaos-service_down`)),
	)
	do("incident reaches RESOLVED, decisions appear", 30*time.Second,
		chromedp.WaitVisible(css(`tr[data-testid="incident"][data-state="RESOLVED"]`)),
		chromedp.WaitVisible(css(`tr[data-testid="decision"][data-decision="allow"]`)),
		chromedp.WaitVisible(css(`tr[data-testid="decision"][data-decision="deny"]`)),
	)
	st.actions.mu.Lock()
	fired := slices.Clone(st.actions.fired)
	st.actions.mu.Unlock()
	if len(fired) != 1 || fired[0] != "acme/service_down/payments" {
		t.Fatalf("fired %v, want acme/service_down/payments", fired)
	}
	steps := eval(`[...document.querySelectorAll('tr[data-testid="incident"] .step.done')].map(s => s.dataset.step + " " + s.querySelector('.at').textContent).join(" | ")`)
	parts := strings.Split(steps, " | ")
	if len(parts) != 3 || !strings.HasPrefix(parts[0], "DETECTED ") || !strings.HasPrefix(parts[1], "DISPATCHED ") ||
		!strings.HasPrefix(parts[2], "RESOLVED ") || !strings.Contains(parts[1], "(+50 ms)") || !strings.Contains(parts[2], "(+810 ms)") {
		t.Fatalf("timeline steps %q", steps)
	}
	if ttr := eval(`document.querySelector('tr[data-testid="incident"] [data-testid="incident-ttr"]').textContent`); ttr != "810 ms" {
		t.Fatalf("resolution shown %q, want 810 ms", ttr)
	}
	poll("headline figures", `document.getElementById("stat-ttr-mean").textContent === "810 ms" &&
		document.getElementById("stat-ttr-p95").textContent === "810 ms" &&
		document.getElementById("stat-deny-rate").textContent === "50.0 %" &&
		document.getElementById("stat-cps").textContent === "0.2"`)

	// Filters: deny only.
	do("filter the decision log", 10*time.Second,
		chromedp.SetValue(css(`#filter-decision`), "deny"),
		chromedp.Evaluate[chromedp.Void](`document.getElementById("filter-decision").dispatchEvent(new Event("input"))`),
	)
	if n := eval(`String(document.querySelectorAll('tr[data-testid="decision"]').length)`); n != "1" {
		t.Fatalf("deny filter shows %s rows, want 1", n)
	}

	// Block the rogue agent from the page; the feed confirms it.
	do("block an agent", 15*time.Second,
		chromedp.Click(css(`[data-testid="block-rogue"]`)),
		chromedp.WaitVisible(css(`tr[data-agent-id="ag-rogue"][data-blocked="true"]`)),
		chromedp.WaitVisible(css(`li[data-testid="activity-agent_blocked"]`)),
		chromedp.WaitVisible(css(`[data-testid="unblock-rogue"]`)),
	)

	// The connection drops: the page reconnects by itself and resumes after
	// the last stream id it saw, so what happened meanwhile arrives once.
	lastID := eval(`state.lastId`)
	eval(`(state.ws.close(4000), "closed")`)
	if err := st.actions.FireChaos(context.Background(), "acme", "cache_miss", "checkout"); err != nil {
		t.Fatal(err)
	}
	do("reconnect and resume", 30*time.Second,
		chromedp.WaitVisible(css(`tr[data-testid="incident"][data-incident-id="inc-2"][data-state="RESOLVED"]`)),
		chromedp.WaitVisible(css(`#feed-status[data-state="live"]`)),
	)
	if got := eval(`state.lastId`); got == lastID {
		t.Fatalf("lastId did not move past %s", lastID)
	}
	do("show all decisions again", 10*time.Second,
		chromedp.SetValue(css(`#filter-decision`), ""),
		chromedp.Evaluate[chromedp.Void](`document.getElementById("filter-decision").dispatchEvent(new Event("input"))`),
	)
	if n := eval(`String(new Set([...document.querySelectorAll('tr[data-testid="decision"]')].map(r => r.dataset.id)).size) + "/" + document.querySelectorAll('tr[data-testid="decision"]').length`); n != "4/4" {
		t.Fatalf("after the reconnect the log has %s distinct/total decisions, want 4/4 (nothing lost, nothing twice)", n)
	}

	// Reload: the page signs in again from sessionStorage and replays the
	// history from the stream.
	do("reload replays", 30*time.Second,
		chromedp.Reload(),
		chromedp.WaitVisible(css(`#feed-status[data-state="live"]`)),
		chromedp.WaitVisible(css(`tr[data-testid="incident"][data-state="RESOLVED"]`)),
		chromedp.WaitVisible(css(`li[data-testid="activity-agent_blocked"]`)),
	)

	// Sign out, then in through the form with a tenant-scoped token.
	do("sign out and in with the form", 30*time.Second,
		chromedp.Click(css(`#sign-out`)),
		chromedp.WaitVisible(css(`#signin-form`)),
		chromedp.SetValue(css(`#signin-token`), acmeToken),
		chromedp.Click(css(`#signin-submit`)),
		chromedp.WaitVisible(css(`#feed-status[data-state="live"]`)),
	)
	if got := eval(`[...document.querySelectorAll("#tenant option")].map(o => o.value).join(",")`); got != "acme" {
		t.Fatalf("tenant-scoped token offered tenants %q, want acme", got)
	}
	// Revoking the credential closes the feed (1008) and the page asks to
	// sign in again instead of reconnecting.
	if n := st.srv.Feed().CloseCredential(feed.Fingerprint(acmeToken)); n != 1 {
		t.Fatalf("CloseCredential closed %d connections, want 1", n)
	}
	do("revoked credential signs the page out", 15*time.Second,
		chromedp.WaitVisible(css(`#signin-form`)),
		chromedp.WaitVisible(css(`#feed-status[data-state="signed-out"]`)),
	)
	if msg := eval(`document.getElementById("signin-error").textContent`); !strings.Contains(msg, "credential revoked") {
		t.Fatalf("sign-in message %q, want it to say the credential was revoked", msg)
	}
}
