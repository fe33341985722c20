package stack_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/agentpassport/passport/dashboard"
	"github.com/agentpassport/passport/internal/browsertest"
	"github.com/agentpassport/passport/internal/stack"
)

// TestBrowserFullStack opens the dashboard of a real stack in headless
// Chromium, fires a fault from the page and follows it: the real chaos agent
// breaks the fleet through the proxy, the real healer repairs it, and the
// page shows the incident RESOLVED and the decisions as they happen. The
// stack serves TLS, as `passport up` does; Chromium trusts the demo's
// server key (a pin, as a user importing the CA would trust it) and no
// other certificate its roots do not know.
func TestBrowserFullStack(t *testing.T) {
	r := startStack(t, stack.Config{ChaosInterval: -1, TLS: true})
	ctx := browsertest.New(t, browsertest.TrustSPKI(t, filepath.Join(r.dataDir, stack.TLSDir, stack.ServerCertFile)))
	do := func(what string, timeout time.Duration, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		c, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		if err := chromedp.Do(c, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }
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

	do("load the sign-in link", 30*time.Second,
		chromedp.Navigate(dashboard.SignInURL(r.demo.URLs.Dashboard, r.demo.AdminToken, "acme")),
		chromedp.WaitVisible(css(`#feed-status[data-state="live"]`)),
		chromedp.WaitReady(css(`#chaos-target option[value="checkout"]`)),
	)
	// The page and its live feed came over TLS (the feed is live: wss).
	if got := eval(`location.protocol`); got != "https:" {
		t.Fatalf("the dashboard was served over %s", got)
	}
	// The pin is not a blanket bypass: a certificate of another CA is
	// still refused.
	other := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "other") }))
	defer other.Close()
	{
		c, cancel := context.WithTimeout(ctx, 15*time.Second)
		_, err := chromedp.Run(c, chromedp.Navigate(other.URL))
		cancel()
		if err == nil || !strings.Contains(err.Error(), "ERR_CERT") {
			t.Fatalf("Chromium opened a server with another CA's certificate: %v", err)
		}
	}
	do("back to the dashboard", 30*time.Second,
		chromedp.Navigate(dashboard.SignInURL(r.demo.URLs.Dashboard, r.demo.AdminToken, "acme")),
		chromedp.WaitVisible(css(`#feed-status[data-state="live"]`)),
		chromedp.WaitReady(css(`#chaos-target option[value="checkout"]`)),
	)
	do("fire service_down at checkout from the page", 15*time.Second,
		chromedp.SetValue(css(`#chaos-target`), "checkout"),
		chromedp.Click(css(`#chaos-service_down`)),
	)
	do("the incident reaches RESOLVED and the repair's decision appears", 45*time.Second,
		chromedp.WaitVisible(css(`tr[data-testid="incident"][data-state="RESOLVED"]`)),
		chromedp.WaitVisible(css(`tr[data-testid="decision"][data-decision="allow"]`)),
	)
	// The page shows what the stack recorded: the incident is RESOLVED in
	// the audit stream too.
	var resolved bool
	for _, d := range r.incidents(t, "acme") {
		if d.Target == "checkout" && d.Type == "service_down" && d.State == "RESOLVED" {
			resolved = true
		}
	}
	if !resolved {
		t.Fatal("the page shows RESOLVED but the audit stream has no resolved service_down incident on checkout")
	}
	// The rogue's refusals show up as they happen.
	do("the rogue's denials appear", 30*time.Second,
		chromedp.WaitVisible(css(`tr[data-testid="decision"][data-decision="deny"]`)),
	)
	// The incident is dated from the fault: the fleet announced it.
	if got := eval(`document.querySelector('tr[data-testid="incident"][data-state="RESOLVED"] .step.done').dataset.step`); got != "INJECTED" {
		t.Errorf("the resolved incident's timeline starts at %s, want INJECTED", got)
	}

	// The story fits the first screen at both sizes, in normal and large
	// type: the decision chart, the incidents and the agents are visible
	// without scrolling. Screenshots of each are saved.
	for _, large := range []bool{false, true} {
		for _, l := range browsertest.Layouts {
			name := l.String()
			if large {
				name += "-large"
			}
			do("resize to "+name, 10*time.Second,
				chromedp.EmulateViewport(l.Width, l.Height),
				chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`setLarge(%t)`, large)),
			)
			t.Logf("screenshot: %s", browsertest.Screenshot(t, ctx, name))
			off, err := browsertest.OffScreen(ctx, "#rate", "#decision-chart", "#incidents", `tr[data-testid="incident"]`, "#agents", `tr[data-testid="agent"]`)
			if err != nil {
				t.Fatal(err)
			}
			if len(off) > 0 {
				t.Errorf("not visible without scrolling at %s: %v", name, off)
			}
		}
	}

	// A chaos button the demo refuses says why: with the chaos agent
	// blocked, the page shows agent_blocked instead of a bare failure.
	ch := r.agent(t, "acme", "chaos")
	if _, err := r.admin.Block(context.Background(), "acme", ch.ID, "test: refuse the chaos button"); err != nil {
		t.Fatal(err)
	}
	do("a refused chaos button shows the reason", 20*time.Second,
		chromedp.SetValue(css(`#chaos-target`), "payments"),
		chromedp.Click(css(`#chaos-cache_miss`)),
		chromedp.WaitVisible(css(`[data-testid="chaos-reasons"]`)),
	)
	if got := eval(`document.getElementById("chaos-result").textContent`); !strings.Contains(got, "agent_blocked") {
		t.Errorf("refused chaos button shows %q, want agent_blocked", got)
	}
}
