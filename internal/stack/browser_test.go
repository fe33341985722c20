package stack_test

import (
	"context"
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
// page shows the incident RESOLVED and the decisions as they happen.
func TestBrowserFullStack(t *testing.T) {
	r := startStack(t, stack.Config{ChaosInterval: -1})
	ctx := browsertest.New(t)
	do := func(what string, timeout time.Duration, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		c, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		if err := chromedp.Do(c, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }

	do("load the sign-in link", 30*time.Second,
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
}
