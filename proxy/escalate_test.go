package proxy

import (
	"context"
	"encoding/json"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentpassport/passport/approval"
	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/budget"
	"github.com/agentpassport/passport/internal/alert"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
	"github.com/agentpassport/passport/policies"
	"github.com/agentpassport/passport/proxy/internal/testkeys"
)

// The approval and budget tests run the policy of testdata/escalate:
// scaling needs one person; restarts (3 per service per hour), reads (2
// per agent per 400ms) and lists (1 per tenant per hour, then two people)
// have budgets.

func escalateConfig(c *Config) {
	c.Policy.Dir = "testdata/escalate"
	c.Approvals.DashboardURL = "https://dash.example"
	// Fifty concurrent calls on two shared cores (under -race) can hold one
	// evaluation past the default deadline: these tests count answers.
	c.Policy.Timeout = 10 * time.Second
}

func newEscalateHarness(t *testing.T) *harness {
	t.Helper()
	return newHarness(t, escalateConfig)
}

// token is a passport of a HIGH healer of tenant for agentID, registered.
func (h *harness) token(tenant, agentID string) string {
	h.t.Helper()
	h.agent(tenant, agentID, 90)
	c := testkeys.Claims(h.now(), tenant, agentID, "healer", passport.TrustHigh,
		"service.list", "service.get", "service.restart", "service.scale")
	return h.keys.Sign(h.t, c)
}

type problemBody struct {
	Code        string   `json:"code"`
	Reasons     []string `json:"reasons"`
	ApprovalID  string   `json:"approval_id"`
	ApprovalURL string   `json:"approval_url"`
	ExpiresAt   string   `json:"expires_at"`
	Detail      string   `json:"detail"`
}

func parseProblem(t *testing.T, r resp) problemBody {
	t.Helper()
	var p problemBody
	if err := json.Unmarshal([]byte(r.body), &p); err != nil {
		t.Fatalf("answer %d is not JSON: %s", r.status, r.body)
	}
	return p
}

const scaleBody = `{"replicas": 3}`

// askScale makes the call that needs a person and returns its approval.
func askScale(t *testing.T, h *harness, tok string) problemBody {
	t.Helper()
	r := h.do("POST", "/services/checkout/scale?dry=0", tok, nil, scaleBody)
	p := parseProblem(t, r)
	if r.status != http.StatusForbidden || p.Code != "approval_required" || !approval.ValidID(p.ApprovalID) {
		t.Fatalf("want 403 approval_required with an id, got %d %s", r.status, r.body)
	}
	return p
}

func approve(t *testing.T, h *harness, tenant, id string, approvers ...string) {
	t.Helper()
	st := approval.NewStore(h.rdb, approval.Options{Clock: h.now})
	for _, a := range approvers {
		if _, err := st.Approve(context.Background(), tenant, id, approval.Vote{Approver: a}); err != nil {
			t.Fatalf("approve %s by %s: %v", id, a, err)
		}
	}
}

func withApproval(id string) map[string]string { return map[string]string{approval.Header: id} }

func TestApprovalOpensTheExactCallOnce(t *testing.T) {
	h := newEscalateHarness(t)
	tok := h.token("acme", "healer-1")

	p := askScale(t, h, tok)
	if h.up.hits.Load() != 0 {
		t.Fatal("a call that needs a person reached the upstream")
	}
	if want := approval.PageURL("https://dash.example", "acme", p.ApprovalID); p.ApprovalURL != want {
		t.Fatalf("approval_url %q, want %q", p.ApprovalURL, want)
	}
	exp, err := time.Parse(time.RFC3339, p.ExpiresAt)
	if err != nil || exp.Sub(h.now()) < 14*time.Minute || exp.Sub(h.now()) > 16*time.Minute {
		t.Fatalf("expires_at %q: want about 15 minutes from now", p.ExpiresAt)
	}
	// The pending approval holds the exact call.
	st := approval.NewStore(h.rdb, approval.Options{Clock: h.now})
	ap, err := st.Get(context.Background(), "acme", p.ApprovalID)
	if err != nil {
		t.Fatal(err)
	}
	if ap.State != approval.StatePending || ap.AgentID != "healer-1" || ap.Method != "POST" || ap.Path != "/services/checkout/scale" ||
		ap.Query != "dry=0" || ap.BodySHA256 != approval.Digest([]byte(scaleBody)) || ap.Action != "service.scale" ||
		ap.Resource != "checkout" || ap.Reason != "scaling needs a person" || ap.RequiredApprovers != 1 || ap.JTI == "" {
		t.Fatalf("stored approval %+v", ap)
	}
	// Audited: the decision (deny, naming the approval) and approval_requested.
	var requested *audit.Record
	for _, rec := range h.sink.all() {
		if rec.Kind == audit.KindApprovalRequested {
			requested = rec
		}
	}
	if requested == nil || requested.AgentID != "healer-1" || requested.Tenant != "acme" ||
		!strings.Contains(string(requested.Details), p.ApprovalID) || !strings.Contains(string(requested.Details), ap.BodySHA256) {
		t.Fatalf("approval_requested record %+v", requested)
	}
	kinds := map[audit.Kind]string{}
	for _, rec := range h.sink.byRequest(requested.RequestID) {
		kinds[rec.Kind] = rec.Decision + " " + string(rec.Details)
	}
	if len(kinds) != 2 || kinds[audit.KindDecision] != `deny {"approval_id":"`+p.ApprovalID+`"}` {
		t.Fatalf("records of the call: %v", kinds)
	}

	// Asking again gives the same approval, not a new one.
	if again := askScale(t, h, tok); again.ApprovalID != p.ApprovalID {
		t.Fatalf("a repeated call got a new approval %s, want %s", again.ApprovalID, p.ApprovalID)
	}
	// Pending: refused with its own code.
	r := h.do("POST", "/services/checkout/scale?dry=0", tok, withApproval(p.ApprovalID), scaleBody)
	if pb := parseProblem(t, r); r.status != http.StatusForbidden || pb.Code != approval.CodePending {
		t.Fatalf("pending approval: %d %s", r.status, r.body)
	}

	approve(t, h, "acme", p.ApprovalID, "alice@example.com")
	r = h.do("POST", "/services/checkout/scale?dry=0", tok, withApproval(p.ApprovalID), scaleBody)
	if r.status != http.StatusOK || h.up.hits.Load() != 1 {
		t.Fatalf("approved call: %d %s (upstream hits %d)", r.status, r.body, h.up.hits.Load())
	}
	if _, body := h.up.lastReq(); body != scaleBody {
		t.Fatalf("upstream got body %q", body)
	}
	// The decision record names the approval and its approvers; the
	// policy saw input.approval.
	id := r.header.Get(HeaderXRequest)
	recs := h.sink.byRequest(id)
	if len(recs) == 0 || recs[0].Decision != audit.DecisionAllow {
		t.Fatalf("records %+v", recs)
	}
	var d struct {
		ID        string   `json:"approval_id"`
		Approvers []string `json:"approvers"`
	}
	if err := json.Unmarshal(recs[0].Details, &d); err != nil || d.ID != p.ApprovalID || len(d.Approvers) != 1 || d.Approvers[0] != "alice@example.com" {
		t.Fatalf("decision details %s", recs[0].Details)
	}
	if !strings.Contains(string(recs[0].Input), `"approval":{"approvers":["alice@example.com"]`) {
		t.Fatalf("input without the approval: %s", recs[0].Input)
	}
	if ap, _ := st.Get(context.Background(), "acme", p.ApprovalID); ap.State != approval.StateUsed || ap.UsedRequestID != id {
		t.Fatalf("after use: %+v", ap)
	}

	// Replay: used.
	r = h.do("POST", "/services/checkout/scale?dry=0", tok, withApproval(p.ApprovalID), scaleBody)
	if pb := parseProblem(t, r); r.status != http.StatusForbidden || pb.Code != approval.CodeUsed || h.up.hits.Load() != 1 {
		t.Fatalf("replay: %d %s (hits %d)", r.status, r.body, h.up.hits.Load())
	}
}

func TestApprovalRefusesAnyOtherCall(t *testing.T) {
	h := newEscalateHarness(t)
	tok := h.token("acme", "healer-1")
	other := h.token("acme", "healer-2")
	foreign := h.token("globex", "healer-1") // same agent id, another tenant
	p := askScale(t, h, tok)
	approve(t, h, "acme", p.ApprovalID, "alice")
	path := "/services/checkout/scale?dry=0"

	for _, tc := range []struct {
		name, method, path, token, body string
		hdr                             map[string]string
		code                            string
	}{
		{"changed body byte", "POST", path, tok, `{"replicas": 4}`, nil, approval.CodeMismatch},
		{"same JSON, other bytes", "POST", path, tok, `{"replicas":3}`, nil, approval.CodeMismatch},
		{"other service", "POST", "/services/payments/scale?dry=0", tok, scaleBody, nil, approval.CodeMismatch},
		{"other query", "POST", "/services/checkout/scale?dry=1", tok, scaleBody, nil, approval.CodeMismatch},
		{"no query", "POST", "/services/checkout/scale", tok, scaleBody, nil, approval.CodeMismatch},
		{"encoded slash", "POST", "/services/check%2Fout/scale?dry=0", tok, scaleBody, nil, ""},
		{"other method", "GET", "/services/checkout", tok, "", nil, approval.CodeMismatch},
		{"other agent", "POST", path, other, scaleBody, nil, approval.CodeMismatch},
		{"other tenant", "POST", path, foreign, scaleBody, nil, approval.CodeUnknown},
		{"two headers", "POST", path, tok, scaleBody, map[string]string{"Passport-Approval": p.ApprovalID + ", " + p.ApprovalID}, approval.CodeUnknown},
		{"unknown id", "POST", path, tok, scaleBody, withApproval("apr_AAAAAAAAAAAAAAAAAAAAAAAAAAA"), approval.CodeUnknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := tc.hdr
			if hdr == nil {
				hdr = withApproval(p.ApprovalID)
			}
			r := h.do(tc.method, tc.path, tc.token, hdr, tc.body)
			if r.status < 400 || r.status >= 500 {
				t.Fatalf("%d %s: want a refusal", r.status, r.body)
			}
			if pb := parseProblem(t, r); tc.code != "" && pb.Code != tc.code {
				t.Fatalf("code %s (%s), want %s", pb.Code, pb.Detail, tc.code)
			}
			if h.up.hits.Load() != 0 {
				t.Fatal("forwarded")
			}
		})
	}
	// None of them used it up: the exact call still goes through, once.
	if r := h.do("POST", path, tok, withApproval(p.ApprovalID), scaleBody); r.status != http.StatusOK {
		t.Fatalf("the approved call after the refusals: %d %s", r.status, r.body)
	}
}

// The other spelling of the path reaches the upstream as the path the
// approval names, or not at all.
func TestApprovalOtherSpellingOfThePath(t *testing.T) {
	h := newEscalateHarness(t)
	tok := h.token("acme", "healer-1")
	for i, spelling := range []string{"/services/%63heckout/scale", "/services//checkout/scale",
		"/services/checkout/scale/", "/services/./checkout/scale", "/services/checkout/../checkout/scale",
		"/services/checkout%2Fscale", "/services/checkout/scale;x=1", "/SERVICES/checkout/scale"} {
		query := "dry=" + strconv.Itoa(i)
		r := h.do("POST", "/services/checkout/scale?"+query, tok, nil, scaleBody)
		p := parseProblem(t, r)
		approve(t, h, "acme", p.ApprovalID, "alice")
		before := h.up.hits.Load()
		r = h.do("POST", spelling+"?"+query, tok, withApproval(p.ApprovalID), scaleBody)
		t.Logf("%s: %d", spelling, r.status)
		switch {
		case r.status == http.StatusOK:
			if got, _ := h.up.lastReq(); got.URL.Path != "/services/checkout/scale" || got.URL.RawQuery != query {
				t.Fatalf("%s reached the upstream as %s?%s", spelling, got.URL.Path, got.URL.RawQuery)
			}
		case r.status >= 400 && r.status < 500:
			if h.up.hits.Load() != before {
				t.Fatalf("%s: refused %d but forwarded", spelling, r.status)
			}
		default:
			t.Fatalf("%s: %d %s", spelling, r.status, r.body)
		}
	}
}

func TestApprovalDeniedAndExpired(t *testing.T) {
	h := newEscalateHarness(t)
	tok := h.token("acme", "healer-1")
	p := askScale(t, h, tok)
	st := approval.NewStore(h.rdb, approval.Options{Clock: h.now})
	if _, err := st.Deny(context.Background(), "acme", p.ApprovalID, approval.Vote{Approver: "bob"}); err != nil {
		t.Fatal(err)
	}
	r := h.do("POST", "/services/checkout/scale?dry=0", tok, withApproval(p.ApprovalID), scaleBody)
	if pb := parseProblem(t, r); r.status != http.StatusForbidden || pb.Code != approval.CodeDenied {
		t.Fatalf("denied approval: %d %s", r.status, r.body)
	}

	// A granted approval that expired before it was used.
	q := h.do("POST", "/services/payments/scale", tok, nil, scaleBody)
	pq := parseProblem(t, q)
	approve(t, h, "acme", pq.ApprovalID, "alice")
	h.offset.Add(int64(16 * time.Minute))
	tok = h.token("acme", "healer-1") // the old passport expired too
	r = h.do("POST", "/services/payments/scale", tok, withApproval(pq.ApprovalID), scaleBody)
	if pb := parseProblem(t, r); r.status != http.StatusForbidden || pb.Code != approval.CodeExpired {
		t.Fatalf("expired approval: %d %s", r.status, r.body)
	}
	if h.up.hits.Load() != 0 {
		t.Fatal("forwarded")
	}
}

// concurrently sends n copies of a call, spread over the harnesses, and
// returns the statuses.
func concurrently(t *testing.T, n int, hs []*harness, toks []string, method, path string, hdr map[string]string, body string) map[int]int {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := map[int]int{}
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := hs[i%len(hs)]
			req, _ := http.NewRequest(method, h.url+path, strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+toks[i%len(toks)])
			req.Header.Set("Content-Type", "application/json")
			for k, v := range hdr {
				req.Header.Set(k, v)
			}
			<-start
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			res.Body.Close()
			mu.Lock()
			got[res.StatusCode]++
			mu.Unlock()
		}()
	}
	close(start)
	wg.Wait()
	return got
}

// twoProxies are two proxies sharing one Redis, each with its own keys
// (and so its own passport for the same agent).
func twoProxies(t *testing.T) ([]*harness, []string) {
	srv := redistest.Start(t)
	a, b := newHarnessWith(t, srv, escalateConfig), newHarnessWith(t, srv, escalateConfig)
	return []*harness{a, b}, []string{a.token("acme", "healer-1"), b.token("acme", "healer-1")}
}

func TestApprovalConcurrentRetriesForwardOne(t *testing.T) {
	for _, split := range []bool{false, true} {
		t.Run("two proxies="+strconv.FormatBool(split), func(t *testing.T) {
			hs, toks := twoProxies(t)
			if !split {
				hs, toks = hs[:1], toks[:1]
			}
			p := askScale(t, hs[0], toks[0])
			approve(t, hs[0], "acme", p.ApprovalID, "alice")
			got := concurrently(t, 50, hs, toks, "POST", "/services/checkout/scale?dry=0", withApproval(p.ApprovalID), scaleBody)
			hits := hs[0].up.hits.Load()
			if split {
				hits += hs[1].up.hits.Load()
			}
			if got[http.StatusOK] != 1 || got[http.StatusForbidden] != 49 || hits != 1 {
				t.Fatalf("statuses %v, upstream hits %d: want exactly one forwarded", got, hits)
			}
		})
	}
}

func TestBudgetCapsCallsAndAnswers429(t *testing.T) {
	h := newEscalateHarness(t)
	tok := h.token("acme", "healer-1")
	for i := range 3 {
		if r := h.do("POST", "/services/checkout/restart", tok, nil, ""); r.status != http.StatusOK {
			t.Fatalf("restart %d: %d %s", i, r.status, r.body)
		}
	}
	r := h.do("POST", "/services/checkout/restart", tok, nil, "")
	pb := parseProblem(t, r)
	if r.status != http.StatusTooManyRequests || pb.Code != "budget_exhausted" || len(pb.Reasons) != 1 || pb.Reasons[0] != "budget_exhausted" {
		t.Fatalf("fourth restart: %d %s", r.status, r.body)
	}
	if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 3500 || ra > 3600 {
		t.Fatalf("Retry-After %q: want about an hour", r.header.Get("Retry-After"))
	}
	if h.up.hits.Load() != 3 {
		t.Fatalf("upstream hits %d, want 3", h.up.hits.Load())
	}
	// Per resource: another service has its own count, whoever asks.
	if r := h.do("POST", "/services/payments/restart", h.token("acme", "healer-9"), nil, ""); r.status != http.StatusOK {
		t.Fatalf("restart of another service: %d %s", r.status, r.body)
	}
	// The policy saw the budget.
	recs := h.sink.byRequest(r.header.Get(HeaderXRequest))
	if len(recs) == 0 || !strings.Contains(string(recs[0].Input),
		`"budgets":{"restarts":{"limit":3,"remaining":0,"reserved":false,"used":3,"window":"1h0m0s"}}`) {
		t.Fatalf("input of the refused call: %+v", recs)
	}
}

// A call that is not forwarded gives its unit back.
func TestBudgetReleasedWhenRefused(t *testing.T) {
	h := newEscalateHarness(t)
	h.agent("acme", "healer-1", 90)
	noRestart := h.keys.Sign(t, testkeys.Claims(h.now(), "acme", "healer-1", "healer", passport.TrustHigh, "service.get"))
	for range 5 {
		if r := h.do("POST", "/services/checkout/restart", noRestart, nil, ""); r.status != http.StatusForbidden {
			t.Fatalf("ungranted restart: %d %s", r.status, r.body)
		}
	}
	h.sink.setErr(errAuditDown) // refused after the policy allowed: not forwarded
	if r := h.do("POST", "/services/checkout/restart", h.token("acme", "healer-1"), nil, ""); r.status != http.StatusServiceUnavailable {
		t.Fatalf("restart with the audit store down: %d %s", r.status, r.body)
	}
	h.sink.setErr(nil)
	tok := h.token("acme", "healer-1")
	for i := range 3 {
		if r := h.do("POST", "/services/checkout/restart", tok, nil, ""); r.status != http.StatusOK {
			t.Fatalf("restart %d after refusals: %d %s", i, r.status, r.body)
		}
	}
	if n, _ := h.rdb.ZCard(context.Background(), budgetKeyFor("acme", "restarts", budget.PerResource, "checkout")).Result(); n != 3 {
		t.Fatalf("%d units held, want 3", n)
	}
}

// budgetKeyFor is the key of a budget's count for who (an agent id or a
// resource).
func budgetKeyFor(tenant, name string, per budget.Per, who string) string {
	return budgetKey(tenant, budget.Budget{Name: name, Per: per}, who, who)
}

func TestBudgetWindowFreesUnits(t *testing.T) {
	h := newEscalateHarness(t)
	tok := h.token("acme", "healer-1")
	for range 2 {
		if r := h.do("GET", "/services/checkout", tok, nil, ""); r.status != http.StatusOK {
			t.Fatalf("read: %d %s", r.status, r.body)
		}
	}
	r := h.do("GET", "/services/checkout", tok, nil, "")
	if r.status != http.StatusTooManyRequests || r.header.Get("Retry-After") != "1" {
		t.Fatalf("third read: %d Retry-After %q %s", r.status, r.header.Get("Retry-After"), r.body)
	}
	// Per agent: another agent reads.
	if r := h.do("GET", "/services/checkout", h.token("acme", "healer-2"), nil, ""); r.status != http.StatusOK {
		t.Fatalf("another agent's read: %d", r.status)
	}
	waitFor(t, "the window to free a unit", func() bool {
		return h.do("GET", "/services/checkout", tok, nil, "").status == http.StatusOK
	})
}

// Exactly the limit goes through, whatever the concurrency, through one
// proxy or two sharing Redis.
func TestBudgetExactUnderConcurrency(t *testing.T) {
	for _, split := range []bool{false, true} {
		t.Run("two proxies="+strconv.FormatBool(split), func(t *testing.T) {
			hs, toks := twoProxies(t)
			if !split {
				hs, toks = hs[:1], toks[:1]
			}
			got := concurrently(t, 50, hs, toks, "POST", "/services/checkout/restart", nil, "")
			hits := hs[0].up.hits.Load()
			if split {
				hits += hs[1].up.hits.Load()
			}
			if got[http.StatusOK] != 3 || got[http.StatusTooManyRequests] != 47 || hits != 3 {
				t.Fatalf("statuses %v, upstream hits %d: want exactly 3 forwarded", got, hits)
			}
		})
	}
}

// An exhausted budget that the policy escalates asks people instead; their
// approval opens the call once, without a unit.
func TestBudgetEscalatesToApproval(t *testing.T) {
	h := newEscalateHarness(t)
	tok := h.token("acme", "healer-1")
	if r := h.do("GET", "/services", tok, nil, ""); r.status != http.StatusOK {
		t.Fatalf("first list: %d %s", r.status, r.body)
	}
	r := h.do("GET", "/services", tok, nil, "")
	p := parseProblem(t, r)
	if r.status != http.StatusForbidden || p.Code != "approval_required" {
		t.Fatalf("second list: %d %s", r.status, r.body)
	}
	approve(t, h, "acme", p.ApprovalID, "alice")
	r = h.do("GET", "/services", tok, withApproval(p.ApprovalID), "")
	if pb := parseProblem(t, r); r.status != http.StatusForbidden || pb.Code != approval.CodePending {
		t.Fatalf("one of two approvers: %d %s", r.status, r.body)
	}
	approve(t, h, "acme", p.ApprovalID, "bob")
	if r := h.do("GET", "/services", tok, withApproval(p.ApprovalID), ""); r.status != http.StatusOK {
		t.Fatalf("approved list: %d %s", r.status, r.body)
	}
	if h.up.hits.Load() != 2 {
		t.Fatalf("upstream hits %d, want 2", h.up.hits.Load())
	}
}

// A store that fails refuses the call: 503, nothing forwarded.
func TestEscalationsFailClosed(t *testing.T) {
	h := newEscalateHarness(t)
	tok := h.token("acme", "healer-1")
	ctx := context.Background()

	// The budget's key of another type: the reservation script fails.
	if err := h.rdb.Set(ctx, budgetKeyFor("acme", "restarts", budget.PerResource, "checkout"), "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	r := h.do("POST", "/services/checkout/restart", tok, nil, "")
	if pb := parseProblem(t, r); r.status != http.StatusServiceUnavailable || pb.Code != "budget_unavailable" {
		t.Fatalf("budget store failing: %d %s", r.status, r.body)
	}

	// The approval's key of another type: reading it fails.
	p := askScale(t, h, tok)
	approve(t, h, "acme", p.ApprovalID, "alice")
	if err := h.rdb.Del(ctx, approval.Key("acme", p.ApprovalID)).Err(); err != nil {
		t.Fatal(err)
	}
	if err := h.rdb.Set(ctx, approval.Key("acme", p.ApprovalID), "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	r = h.do("POST", "/services/checkout/scale?dry=0", tok, withApproval(p.ApprovalID), scaleBody)
	if pb := parseProblem(t, r); r.status != http.StatusServiceUnavailable || pb.Code != "approval_unavailable" {
		t.Fatalf("approval store failing: %d %s", r.status, r.body)
	}

	// Redis gone: every such call is refused.
	h.redis.Kill()
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/services/payments/restart", ""},
		{"POST", "/services/payments/scale", scaleBody},
		{"POST", "/services/checkout/scale?dry=0", scaleBody},
	} {
		if r := h.do(c.method, c.path, tok, withApproval(p.ApprovalID), c.body); r.status != http.StatusServiceUnavailable {
			t.Fatalf("%s %s with Redis down: %d %s", c.method, c.path, r.status, r.body)
		}
	}
	if h.up.hits.Load() != 0 {
		t.Fatal("forwarded")
	}
}

// libraryDir writes the shipped library (policies.FS) to a directory, its
// data's budgets replaced by budgets (YAML list lines).
func libraryDir(t *testing.T, budgets string) string {
	t.Helper()
	dir := t.TempDir()
	err := fs.WalkDir(policies.FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !(strings.HasSuffix(p, ".rego") || strings.HasSuffix(p, ".yaml")) || strings.Contains(p, "/") {
			return err
		}
		b, err := fs.ReadFile(policies.FS, p)
		if err != nil {
			return err
		}
		if p == "data.yaml" {
			if !strings.Contains(string(b), "\n  budgets: []\n") {
				t.Fatal("data.yaml: no `budgets: []` to replace")
			}
			b = []byte(strings.Replace(string(b), "\n  budgets: []\n", "\n  budgets:\n"+budgets, 1))
		}
		return os.WriteFile(filepath.Join(dir, p), b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// The shipped library: a deploy to payments outside a task needs a person;
// a restart budget that runs out asks a person too (budget_escalations).
func TestLibraryApprovalsAndBudgets(t *testing.T) {
	dir := libraryDir(t, "    - {name: restarts-per-service, actions: [service.restart], per: resource, limit: 2, window: 10m}\n")
	h := newHarness(t, func(c *Config) {
		c.Policy.Dir = dir
		c.Routes = append(c.Routes, Route{Match: "POST /deployments/{name}", Action: "deployment.deploy", Resource: "{name}", PolicyBody: true})
	})
	h.agent("acme", "deployer-1", 90)
	deployer := h.keys.Sign(t, testkeys.Claims(h.now(), "acme", "deployer-1", "deployer", passport.TrustMedium, "deployment.deploy"))
	body := `{"version": "v2.4.1"}`
	if r := h.do("POST", "/deployments/checkout", deployer, nil, body); r.status != http.StatusOK {
		t.Fatalf("deploy to checkout: %d %s", r.status, r.body)
	}
	r := h.do("POST", "/deployments/payments", deployer, nil, body)
	p := parseProblem(t, r)
	if r.status != http.StatusForbidden || p.Code != "approval_required" || len(p.Reasons) != 1 || p.Reasons[0] != "approval_required" {
		t.Fatalf("deploy to payments: %d %s", r.status, r.body)
	}
	approve(t, h, "acme", p.ApprovalID, "alice")
	if r := h.do("POST", "/deployments/payments", deployer, withApproval(p.ApprovalID), body); r.status != http.StatusOK {
		t.Fatalf("approved deploy to payments: %d %s", r.status, r.body)
	}

	tok := h.token("acme", "healer-1")
	for i := range 2 {
		if r := h.do("POST", "/services/checkout/restart", tok, nil, ""); r.status != http.StatusOK {
			t.Fatalf("restart %d: %d %s", i, r.status, r.body)
		}
	}
	r = h.do("POST", "/services/checkout/restart", tok, nil, "")
	p = parseProblem(t, r)
	if r.status != http.StatusForbidden || p.Code != "approval_required" || strings.Join(p.Reasons, ",") != "approval_required,budget_exhausted" {
		t.Fatalf("third restart: %d %s", r.status, r.body)
	}
	approve(t, h, "acme", p.ApprovalID, "oncall")
	if r := h.do("POST", "/services/checkout/restart", tok, withApproval(p.ApprovalID), ""); r.status != http.StatusOK {
		t.Fatalf("approved restart: %d %s", r.status, r.body)
	}
	if h.up.hits.Load() != 5 {
		t.Fatalf("upstream hits %d, want 5", h.up.hits.Load())
	}
}

// fakeNotifier keeps the alerts it is given.
type fakeNotifier struct {
	mu     sync.Mutex
	alerts []alert.Alert
}

func (f *fakeNotifier) Notify(a alert.Alert) {
	f.mu.Lock()
	f.alerts = append(f.alerts, a)
	f.mu.Unlock()
}

func (f *fakeNotifier) all() []alert.Alert {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]alert.Alert(nil), f.alerts...)
}

// A new approval goes to the chat webhooks, once.
func TestApprovalAnnouncedToChat(t *testing.T) {
	h := newEscalateHarness(t)
	cfg := testConfig(h.up.srv.URL, h.keys.URL())
	escalateConfig(&cfg)
	notes := &fakeNotifier{}
	p, err := New(cfg, Deps{Redis: h.rdb, Audit: h.sink, Logger: slog.New(slog.DiscardHandler),
		Registry: prometheus.NewRegistry(), Clock: h.now, Alerts: notes})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(p.Handler())
	t.Cleanup(srv.Close)
	h.url = srv.URL
	tok := h.token("acme", "healer-1")
	ap := askScale(t, h, tok)
	askScale(t, h, tok) // the same approval: no second message
	got := notes.all()
	if len(got) != 1 || got[0].Kind != alert.KindApprovalRequested || got[0].Tenant != "acme" ||
		!strings.Contains(got[0].Text, "POST /services/checkout/scale") || !strings.Contains(got[0].Text, ap.ApprovalURL) {
		t.Fatalf("alerts %+v", got)
	}
}

// Every key of a call's budgets is in its tenant's hash slot, so one script
// reserves them all on a Redis Cluster, and gives them back.
func TestBudgetScriptsOnCluster(t *testing.T) {
	c := redistest.StartCluster(t)
	rdb := c.Client()
	ctx := context.Background()
	keys := []string{
		budgetKey("acme", budget.Budget{Name: "a", Per: budget.PerAgent}, "healer-1", "checkout"),
		budgetKey("acme", budget.Budget{Name: "b", Per: budget.PerResource}, "healer-1", "checkout"),
		budgetKey("acme", budget.Budget{Name: "c", Per: budget.PerTenant}, "healer-1", "checkout"),
	}
	for i := range 3 {
		res, err := reserveScript.Run(ctx, rdb, keys, "req-"+strconv.Itoa(i), 2, 60000, 1, 60000, 5, 60000).Int64Slice()
		if err != nil {
			t.Fatal(err)
		}
		// limit 2, 1, 5: the first takes a unit of each; the second of a
		// and c; the third of c only.
		want := [][]int64{{1, 1, 1}, {1, 0, 1}, {0, 0, 1}}[i]
		if got := []int64{res[0], res[3], res[6]}; !slices.Equal(got, want) {
			t.Fatalf("call %d reserved %v, want %v", i, got, want)
		}
	}
	if err := releaseScript.Run(ctx, rdb, keys, "req-0").Err(); err != nil {
		t.Fatal(err)
	}
	if n, _ := rdb.ZCard(ctx, keys[1]).Result(); n != 0 {
		t.Fatalf("b holds %d units after the release, want 0", n)
	}
}

// A budget with refund_on_5xx gives a forwarded call's unit back when the
// upstream failed; the others keep it.
func TestBudgetRefundOn5xx(t *testing.T) {
	h := newEscalateHarness(t)
	tok := h.token("acme", "healer-1")
	h.up.mu.Lock()
	h.up.delay = time.Second // past GET /slow's 200ms timeout: 504
	h.up.mu.Unlock()
	for i := range 4 {
		if r := h.do("GET", "/slow", tok, nil, ""); r.status != http.StatusGatewayTimeout {
			t.Fatalf("slow read %d: %d %s", i, r.status, r.body)
		}
	}
	if n, _ := h.rdb.ZCard(context.Background(), budgetKeyFor("acme", "reads", budget.PerAgent, "healer-1")).Result(); n != 0 {
		t.Fatalf("%d units held after four 504s, want 0 (refunded)", n)
	}
}
