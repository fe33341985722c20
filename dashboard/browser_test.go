package dashboard

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/agentpassport/passport/feed"
	"github.com/agentpassport/passport/internal/browsertest"
)

// page drives one headless Chromium tab.
type page struct {
	t   *testing.T
	ctx context.Context
}

func newPage(t *testing.T) *page { return &page{t: t, ctx: browsertest.New(t)} }

func (p *page) do(what string, timeout time.Duration, steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	c, cancel := context.WithTimeout(p.ctx, timeout)
	defer cancel()
	if err := chromedp.Do(c, steps...); err != nil {
		p.t.Fatalf("%s: %v", what, err)
	}
}

func (p *page) eval(expr string) string {
	p.t.Helper()
	c, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(c, chromedp.Evaluate[string](expr))
	if err != nil {
		p.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// poll waits until the JavaScript condition holds.
func (p *page) poll(what, cond string) {
	p.t.Helper()
	c, cancel := context.WithTimeout(p.ctx, 20*time.Second)
	defer cancel()
	if _, err := chromedp.Run(c, chromedp.Poll[bool](cond)); err != nil {
		p.t.Fatalf("%s (%s): %v; page says %s", what, cond, err, p.eval(`document.getElementById("headline").innerText.replace(/\s+/g, " ")`))
	}
}

func css(s string) chromedp.CSS { return chromedp.CSS(s) }

// signIn opens the dashboard signed in (token in the URL fragment) and
// waits for the feed to be live.
func (p *page) signIn(url, token, tenant string) {
	p.t.Helper()
	p.do("load and sign in", 30*time.Second,
		chromedp.Navigate(url+"/#token="+token+"&tenant="+tenant),
		chromedp.WaitVisible(css(`#feed-status[data-state="live"]`)),
	)
}

// TestBrowserChaosToResolved loads the dashboard in headless Chromium, signs
// in through the URL fragment, fires a chaos event from the page and waits
// for the incident to reach RESOLVED and a decision row to appear, all
// through the real feed on a real redis-server.
func TestBrowserChaosToResolved(t *testing.T) {
	st := startStack(t, Config{})
	p := newPage(t)
	p.signIn(st.url, adminToken, "acme")
	if h := p.eval(`location.hash`); h != "" {
		t.Fatalf("location.hash %q after sign-in, want the token stripped", h)
	}
	if p.eval(`sessionStorage.getItem("passport.token")`) != adminToken {
		t.Fatal("token not kept in sessionStorage")
	}

	p.do("agents and targets listed", 15*time.Second,
		chromedp.WaitVisible(css(`tr[data-testid="agent"][data-agent-id="ag-rogue"]`)),
		chromedp.WaitReady(css(`#chaos-target option[value="payments"]`)),
		chromedp.WaitVisible(css(`#chaos-service_down`)),
	)
	p.do("fire chaos from the page", 15*time.Second,
		chromedp.SetValue(css(`#chaos-target`), "payments"),
		chromedp.Click(css(`#chaos-service_down`)),
	)
	p.do("incident reaches RESOLVED, decisions appear", 30*time.Second,
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
	// The timeline starts at the fault's injection and every step is
	// measured from there; so is the time to resolve (850 ms, where the
	// detection-based figure would be 810 ms).
	steps := p.eval(`[...document.querySelectorAll('tr[data-testid="incident"] .step.done')].map(s => s.dataset.step + " " + s.querySelector('.at').textContent).join(" | ")`)
	parts := strings.Split(steps, " | ")
	if len(parts) != 4 || !strings.HasPrefix(parts[0], "INJECTED ") || parts[1] != "DETECTED +40 ms" ||
		parts[2] != "DISPATCHED +90 ms" || parts[3] != "RESOLVED +850 ms" {
		t.Fatalf("timeline steps %q", steps)
	}
	if ttr := p.eval(`document.querySelector('tr[data-testid="incident"] [data-testid="incident-ttr"]').textContent`); ttr != "850 ms" {
		t.Fatalf("resolution shown %q, want 850 ms (from the injection)", ttr)
	}
	// Headline figures: calls/s over the last minute (2 decisions: 0.03,
	// where a 10 s window read 0.2 now and 0.0 ten seconds later), the
	// deny rate and time to resolve from the fault.
	p.poll("headline figures", `document.getElementById("stat-ttr-p50").textContent === "850 ms" &&
		document.getElementById("stat-ttr-p95").textContent === "850 ms" &&
		document.getElementById("stat-deny-rate").textContent === "50.0 %" &&
		document.getElementById("stat-cps").textContent === "0.03"`)
	// The chart's current bar holds the two decisions; the histogram the
	// one resolution, in the <1s bin.
	p.poll("decision chart", `(() => { const b = [...document.querySelectorAll('[data-testid="chart-bucket"]')];
		return b.length === 30 && b.reduce((n, g) => n + +g.dataset.allow, 0) === 1 && b.reduce((n, g) => n + +g.dataset.deny, 0) === 1 &&
			document.getElementById("sum-allow").textContent === "1" && document.getElementById("sum-deny").textContent === "1"; })()`)
	if bins := p.eval(`[...document.querySelectorAll('[data-testid="ttr-bin"]')].map(b => b.dataset.count).join(",")`); bins != "0,0,0,0,0,1,0,0" {
		t.Fatalf("time-to-resolve histogram %s, want the one incident in <1s", bins)
	}

	// Filters: deny only.
	p.do("filter the decision log", 10*time.Second,
		chromedp.SetValue(css(`#filter-decision`), "deny"),
		chromedp.Evaluate[chromedp.Void](`document.getElementById("filter-decision").dispatchEvent(new Event("input"))`),
	)
	if n := p.eval(`String(document.querySelectorAll('tr[data-testid="decision"]').length)`); n != "1" {
		t.Fatalf("deny filter shows %s rows, want 1", n)
	}

	// Block the rogue agent from the page; the feed confirms it.
	p.do("block an agent", 15*time.Second,
		chromedp.Click(css(`[data-testid="block-rogue"]`)),
		chromedp.WaitVisible(css(`tr[data-agent-id="ag-rogue"][data-blocked="true"]`)),
		chromedp.WaitVisible(css(`li[data-testid="activity-agent_blocked"]`)),
		chromedp.WaitVisible(css(`[data-testid="unblock-rogue"]`)),
	)

	// The connection drops: the page reconnects by itself and resumes after
	// the last stream id it saw, so what happened meanwhile arrives once.
	lastID := p.eval(`state.lastId`)
	p.eval(`(state.ws.close(4000), "closed")`)
	if err := st.actions.FireChaos(context.Background(), "acme", "cache_miss", "checkout"); err != nil {
		t.Fatal(err)
	}
	p.do("reconnect and resume", 30*time.Second,
		chromedp.WaitVisible(css(`tr[data-testid="incident"][data-incident-id="inc-2"][data-state="RESOLVED"]`)),
		chromedp.WaitVisible(css(`#feed-status[data-state="live"]`)),
	)
	if got := p.eval(`state.lastId`); got == lastID {
		t.Fatalf("lastId did not move past %s", lastID)
	}
	p.do("show all decisions again", 10*time.Second,
		chromedp.SetValue(css(`#filter-decision`), ""),
		chromedp.Evaluate[chromedp.Void](`document.getElementById("filter-decision").dispatchEvent(new Event("input"))`),
	)
	if n := p.eval(`String(new Set([...document.querySelectorAll('tr[data-testid="decision"]')].map(r => r.dataset.id)).size) + "/" + document.querySelectorAll('tr[data-testid="decision"]').length`); n != "4/4" {
		t.Fatalf("after the reconnect the log has %s distinct/total decisions, want 4/4 (nothing lost, nothing twice)", n)
	}

	// Reload: the page signs in again from sessionStorage and replays the
	// history from the stream.
	p.do("reload replays", 30*time.Second,
		chromedp.Reload(),
		chromedp.WaitVisible(css(`#feed-status[data-state="live"]`)),
		chromedp.WaitVisible(css(`tr[data-testid="incident"][data-state="RESOLVED"]`)),
		chromedp.WaitVisible(css(`li[data-testid="activity-agent_blocked"]`)),
	)

	// Sign out, then in through the form with a tenant-scoped token.
	p.do("sign out and in with the form", 30*time.Second,
		chromedp.Click(css(`#sign-out`)),
		chromedp.WaitVisible(css(`#signin-form`)),
		chromedp.SetValue(css(`#signin-token`), acmeToken),
		chromedp.Click(css(`#signin-submit`)),
		chromedp.WaitVisible(css(`#feed-status[data-state="live"]`)),
	)
	if got := p.eval(`[...document.querySelectorAll("#tenant option")].map(o => o.value).join(",")`); got != "acme" {
		t.Fatalf("tenant-scoped token offered tenants %q, want acme", got)
	}
	// Revoking the credential closes the feed (1008) and the page asks to
	// sign in again instead of reconnecting.
	if n := st.srv.Feed().CloseCredential(feed.Fingerprint(acmeToken)); n != 1 {
		t.Fatalf("CloseCredential closed %d connections, want 1", n)
	}
	p.do("revoked credential signs the page out", 15*time.Second,
		chromedp.WaitVisible(css(`#signin-form`)),
		chromedp.WaitVisible(css(`#feed-status[data-state="signed-out"]`)),
	)
	if msg := p.eval(`document.getElementById("signin-error").textContent`); !strings.Contains(msg, "credential revoked") {
		t.Fatalf("sign-in message %q, want it to say the credential was revoked", msg)
	}
}

// The page dates events on the server's clock: with the browser's clock
// five minutes fast, calls/s and the chart still count the decisions
// that just happened (on the browser's clock they are all old).
func TestBrowserRateOnTheServerClock(t *testing.T) {
	st := startStack(t, Config{})
	p := newPage(t)
	p.do("open the sign-in form with a clock five minutes fast", 30*time.Second,
		chromedp.Navigate(st.url+"/"),
		chromedp.WaitVisible(css(`#signin-form`)),
		chromedp.Evaluate[chromedp.Void](`Date.now = ((now) => () => now() + 5 * 60 * 1000)(Date.now)`),
		chromedp.SetValue(css(`#signin-token`), adminToken),
		chromedp.Click(css(`#signin-submit`)),
		chromedp.WaitVisible(css(`#feed-status[data-state="live"]`)),
	)
	if err := st.actions.FireChaos(context.Background(), "acme", "bad_deploy", "checkout"); err != nil {
		t.Fatal(err)
	}
	p.poll("calls/s and the chart on the server's clock", `document.getElementById("stat-cps").textContent === "0.03" &&
		document.getElementById("sum-allow").textContent === "1" && document.getElementById("sum-deny").textContent === "1"`)
}

// A value read from the API is never replaced by an older event of the
// replayed history: the API said 60.0, the feed replays an older 40.0.
func TestBrowserFreshValuesWinOverReplayedHistory(t *testing.T) {
	st := startStack(t, Config{})
	ctx := context.Background()
	// Written before the page loads: the replay sends it after (or
	// before) the API's answer; either way the answer is newer.
	if err := st.actions.reputation(ctx, "acme", "ag-observer", 40, time.Now().Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	p := newPage(t)
	p.signIn(st.url, adminToken, "acme")
	rep := `document.querySelector('tr[data-agent-id="ag-observer"] [data-testid="reputation"]').textContent`
	p.poll("observer listed with the API's reputation", rep+` === "60.0"`)
	// Replayed again (as after a reconnect from an old id): still 60.0,
	// and the blocked state is not taken from an old event either.
	old := time.Now().Add(-30 * time.Second).UTC().Format(time.RFC3339Nano)
	p.eval(fmt.Sprintf(`handle({v: 1, type: "reputation", time: %q, agent_id: "ag-observer", details: {agent_id: "ag-observer", score: 40}});
		handle({v: 1, type: "agent_blocked", time: %q, agent_id: "ag-observer", details: {agent_id: "ag-observer", reason: "old"}}); "ok"`, old, old))
	time.Sleep(50 * time.Millisecond) // one animation frame; nothing to wait for if the page is right
	if got := p.eval(rep); got != "60.0" {
		t.Fatalf("reputation %s after a replayed older event, want the API's 60.0", got)
	}
	if got := p.eval(`document.querySelector('tr[data-agent-id="ag-observer"]').dataset.blocked`); got != "false" {
		t.Fatalf("blocked %s after a replayed older agent_blocked, want false", got)
	}
	// A newer event does replace it.
	if err := st.actions.reputation(ctx, "acme", "ag-observer", 50, time.Time{}); err != nil {
		t.Fatal(err)
	}
	p.poll("a newer reputation event applies", rep+` === "50.0"`)
	// And an API answer older than an event the page already has does not
	// undo it (an event written while the answer was on its way).
	future := time.Now().Add(time.Minute).UTC().Format(time.RFC3339Nano)
	p.eval(fmt.Sprintf(`handle({v: 1, type: "reputation", time: %q, agent_id: "ag-observer", details: {agent_id: "ag-observer", score: 45}});
		window.loaded = false; loadAgents().then(() => { window.loaded = true; }); "ok"`, future))
	p.poll("agents reloaded", `window.loaded === true`)
	if got := p.eval(rep); got != "45.0" {
		t.Fatalf("reputation %s after an older API answer, want the newer event's 45.0", got)
	}
}

// A chaos button the policy refuses shows the refusal's code and reasons.
func TestBrowserChaosRefusalShowsReasons(t *testing.T) {
	st := startStack(t, Config{})
	st.actions.refuse = proxyAnswer(t, 403, `{"code":"policy_denied","reasons":["reputation_too_low","agent_blocked"]}`)
	p := newPage(t)
	p.signIn(st.url, adminToken, "acme")
	p.do("fire a refused chaos button", 15*time.Second,
		chromedp.WaitVisible(css(`#chaos-service_down`)),
		chromedp.Click(css(`#chaos-service_down`)),
		chromedp.WaitVisible(css(`[data-testid="chaos-reasons"]`)),
	)
	if got := p.eval(`document.querySelector('[data-testid="chaos-refusal"]').textContent`); !strings.Contains(got, "policy_denied") {
		t.Fatalf("refusal %q, want the code", got)
	}
	if got := p.eval(`[...document.querySelectorAll('[data-testid="chaos-reasons"] li')].map(l => l.textContent).join(",")`); got != "reputation_too_low,agent_blocked" {
		t.Fatalf("reasons shown %q", got)
	}
}

// The approvals panel stays hidden until the API offers approvals, and
// is filled from {id, agent, method, path, reasons, expires_at}.
func TestBrowserApprovalsPanel(t *testing.T) {
	st := startStack(t, Config{})
	p := newPage(t)
	p.signIn(st.url, adminToken, "acme")
	if got := p.eval(`String(document.getElementById("approvals").hidden)`); got != "true" {
		t.Fatalf("approvals panel hidden=%s without approvals on offer", got)
	}
	list := []Approval{{ID: "apr-1", Agent: "deployer-acme", Method: "POST", Path: "/deployments/payments",
		Reasons: []string{"approval_required"}, ExpiresAt: time.Now().Add(5 * time.Minute)}}
	st2 := startStackWith(t, Config{}, func(f *fakeActions) Actions { return withApprovals{fakeActions: f, list: list} })
	p.signIn(st2.url, adminToken, "acme")
	p.do("approvals listed", 15*time.Second, chromedp.WaitVisible(css(`li[data-testid="approval"][data-approval-id="apr-1"]`)))
	if got := p.eval(`document.querySelector('li[data-testid="approval"] .what').textContent`); got != "/deployments/payments · deployer-acme" {
		t.Fatalf("approval shown as %q", got)
	}
}

// The story fits the first screen: at 1280x800 and 1920x1080, in normal
// and large type, the decision chart, the incidents and the agents are
// visible without scrolling; the incidents show the open ones and the
// last five (the rest behind "show all"), the timeline is not clipped,
// and agent names stay on one line. Screenshots of each are saved.
func TestBrowserLayoutFitsTheScreen(t *testing.T) {
	st := startStack(t, Config{})
	ctx := context.Background()
	for i := range 8 {
		if err := st.actions.FireChaos(ctx, "acme", "memory_leak", []string{"checkout", "payments"}[i%2]); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.actions.openIncident(ctx, "acme", "inc-open", "service_down", "checkout"); err != nil {
		t.Fatal(err)
	}
	p := newPage(t)
	p.signIn(st.url, adminToken, "acme")
	p.poll("incidents replayed", `document.querySelectorAll('tr[data-testid="incident"]').length === 6`)
	// The chaos calls' decisions reach the chart through the feed, on their own time.
	p.poll("decisions on the chart", `[...document.querySelectorAll('[data-testid="chart-bucket"]')].some(b => +b.dataset.allow + +b.dataset.deny + +b.dataset.error > 0)`)
	if got := p.eval(`[...document.querySelectorAll('tr[data-testid="incident"]')].map(r => r.dataset.state).join(",")`); got != "DETECTED,RESOLVED,RESOLVED,RESOLVED,RESOLVED,RESOLVED" {
		t.Fatalf("incidents shown %s, want the open one then the last five", got)
	}
	p.do("show all", 10*time.Second, chromedp.Click(css(`[data-testid="incidents-show-all"]`)))
	if n := p.eval(`String(document.querySelectorAll('tr[data-testid="incident"]').length)`); n != "9" {
		t.Fatalf("show all: %s incidents, want 9", n)
	}
	p.do("show fewer", 10*time.Second, chromedp.Click(css(`[data-testid="incidents-show-all"]`)))

	for _, large := range []bool{false, true} {
		for _, l := range browsertest.Layouts {
			name := l.String()
			if large {
				name += "-large"
			}
			t.Run(name, func(t *testing.T) {
				p.do("resize", 10*time.Second,
					chromedp.EmulateViewport(l.Width, l.Height),
					chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`setLarge(%t)`, large)),
				)
				p.poll("layout settled", `document.readyState === "complete"`)
				file := browsertest.Screenshot(t, p.ctx, "")
				t.Logf("screenshot: %s", file)
				off, err := browsertest.OffScreen(p.ctx, "#rate", "#decision-chart", "#incidents", "#agents", ".figures")
				if err != nil {
					t.Fatal(err)
				}
				if len(off) > 0 {
					t.Errorf("not visible without scrolling at %s: %v", name, off)
				}
				// The panels show content, not just a frame: the chart has
				// height, and the first incident and agent rows are on screen.
				// The newest bucket with decisions in it (an empty bucket,
				// the current one once a new 30 s window starts, has no box).
				p.eval(`(() => { const bs = [...document.querySelectorAll('[data-testid="chart-bucket"]')].filter(b => +b.dataset.allow + +b.dataset.deny + +b.dataset.error > 0); if (bs.length) bs[bs.length - 1].setAttribute("data-newest", ""); return ""; })()`)
				off, err = browsertest.OffScreen(p.ctx, `tr[data-testid="incident"]`, `tr[data-testid="agent"]`, `[data-testid="chart-bucket"][data-newest]`)
				if err != nil {
					t.Fatal(err)
				}
				if len(off) > 0 {
					t.Errorf("first rows not visible at %s: %v", name, off)
				}
				if h, _ := strconv.Atoi(p.eval(`String(Math.round(document.getElementById("decision-chart").getBoundingClientRect().height))`)); h < 40 {
					t.Errorf("decision chart only %dpx high at %s", h, name)
				}
				// The timeline wraps rather than being clipped.
				if clip := p.eval(`(() => { const s = document.querySelector("#incidents .scroll"); return s.scrollWidth > s.clientWidth + 1 ? s.scrollWidth + ">" + s.clientWidth : ""; })()`); clip != "" {
					t.Errorf("incidents overflow sideways at %s: %s", name, clip)
				}
				// Agent names on one line, with an ellipsis and the full name in the title.
				one := p.eval(`(() => { const c = document.querySelector('tr[data-agent-id="ag-long"] [data-testid="agent-name"]');
					const lh = parseFloat(getComputedStyle(c).lineHeight) || 20;
					return [c.clientHeight <= 2 * lh, getComputedStyle(c).textOverflow === "ellipsis" && getComputedStyle(c).whiteSpace === "nowrap", c.title.startsWith(c.textContent), c.clientWidth >= 100].join(","); })()`)
				if one != "true,true,true,true" {
					t.Errorf("long agent name (one line, ellipsis, title, at least 100px shown) = %s at %s", one, name)
				}
				// Every figure shows its whole value.
				if cut := p.eval(`[...document.querySelectorAll(".figure .value")].filter(v => v.scrollWidth > v.clientWidth + 1).map(v => v.id).join(",")`); cut != "" {
					t.Errorf("figures cut at %s: %s", name, cut)
				}
			})
		}
	}
}
