package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/problem"
	"github.com/agentpassport/passport/passport"
)

// A value that cannot become part of the policy input denies the call as
// a policy error: it is never replaced by null or {}, which the policy
// would judge as if the agent had sent them.

// TestNaNReputationDenies: a reputation Redis holds as "nan" (anyone who
// can write the store can put it there) is no number the policy can
// compare; the call is refused, not judged on NaN.
func TestNaNReputationDenies(t *testing.T) {
	h := newHarness(t)
	_, tok := h.healer()
	if err := h.rdb.HSet(context.Background(), passport.AgentKey("acme", "healer-1"),
		passport.FieldReputation, "nan", passport.FieldReputationBaseline, "nan").Err(); err != nil {
		t.Fatal(err)
	}
	r := h.do("POST", "/services/checkout/restart", tok, nil, "")
	assertInputError(t, h, r)
}

// TestUnconvertiblePassportDenies: a passport claim OPA cannot hold (a
// number past its range) denies the call; the passport is not shown to
// the policy as {}.
func TestUnconvertiblePassportDenies(t *testing.T) {
	h := newHarness(t)
	_, tok := h.healer()
	vp, err := h.p.verifier.verify(context.Background(), tok)
	if err != nil {
		t.Fatal(err)
	}
	// The verifier refuses such a number in a signed passport; this one is
	// planted in the verified-passport cache, before the input is built.
	vp.Payload["x_big"] = json.Number("1e999999")
	r := h.do("POST", "/services/checkout/restart", tok, nil, "")
	assertInputError(t, h, r)
}

func assertInputError(t *testing.T, h *harness, r resp) {
	t.Helper()
	var p problem.Details
	if err := json.Unmarshal([]byte(r.body), &p); err != nil {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	if r.status != 403 || p.Code != "policy_error" || !slices.Equal(p.Reasons, []string{"input_error"}) {
		t.Fatalf("status %d %s, want 403 policy_error [input_error]", r.status, r.body)
	}
	if n := h.up.hits.Load(); n != 0 {
		t.Fatalf("upstream hit %d times", n)
	}
	recs := h.sink.byRequest(p.RequestID)
	if len(recs) != 1 || recs[0].Kind != audit.KindDecision || recs[0].Decision != audit.DecisionError ||
		!slices.Equal(recs[0].Reasons, []string{"input_error"}) {
		t.Fatalf("records %+v", recs)
	}
}

// TestUnconvertibleBodyDenies: a body value OPA cannot hold denies the
// call as an input error; it does not reach the policy as null. (strict
// JSON refuses such numbers at the door; this is the step behind it.)
func TestUnconvertibleBodyDenies(t *testing.T) {
	h := newHarness(t)
	_, tok := h.healer()
	r := httptest.NewRequest("POST", "/services/checkout/scale", nil)
	r.Header.Set("Authorization", "Bearer "+tok)
	c := &call{id: newRequestID(), start: time.Now()}
	for _, s := range beforePolicy {
		if ref := s(h.p, httptest.NewRecorder(), r, c); ref != nil {
			t.Fatalf("refused before the policy: %+v", ref)
		}
	}
	c.policyBody = map[string]any{"replicas": json.Number("1e999999")}
	c.bodyJSON = json.RawMessage(`{"replicas":1e999999}`)
	if _, err := h.p.buildInput(r, c, c.route, c.params, c.queryValues, c.vp, c.reputation, c.now,
		c.policyBody, c.bodyJSON); !errors.Is(err, errInputBody) {
		t.Fatalf("buildInput: %v, want %v", err, errInputBody)
	}
	if ref := h.p.evaluate(r, c); ref != refusePolicyError || c.rec.Decision != audit.DecisionError ||
		!slices.Equal(c.rec.Reasons, []string{"input_error"}) || c.rec.Input != nil {
		t.Fatalf("evaluate: %+v, record %+v", ref, c.rec)
	}
}

// TestForwardNeedsTheCallsReceipt: forward refuses a call whose receipt
// is not the acknowledgement of its own decision record (the zero
// receipt, another call's), so a receipt cannot be made up or reused.
func TestForwardNeedsTheCallsReceipt(t *testing.T) {
	h := newHarness(t)
	_, tok := h.healer()
	decided := func() (*call, *http.Request) {
		r := httptest.NewRequest("GET", "/services/checkout", nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		c := &call{id: newRequestID(), start: time.Now(), cancel: func(error) {}}
		if ref := h.p.decide(httptest.NewRecorder(), r, c); ref != nil {
			t.Fatalf("refused: %+v", ref)
		}
		return c, r
	}
	for name, receipt := range map[string]func(*call) audit.Receipt{
		"zero": func(*call) audit.Receipt { return audit.Receipt{} },
		"another": func(*call) audit.Receipt {
			return audit.ReceiptForTest("7-0", &audit.Record{RequestID: newRequestID()})
		},
	} {
		c, r := decided()
		w := httptest.NewRecorder()
		h.p.forward(w, r, c, receipt(c))
		if w.Code != http.StatusServiceUnavailable || h.up.hits.Load() != 0 {
			t.Fatalf("%s receipt: status %d, upstream hits %d", name, w.Code, h.up.hits.Load())
		}
		if recs := h.sink.byRequest(c.id); len(recs) != 1 || recs[0].Kind != audit.KindOutcome ||
			!slices.Equal(recs[0].Reasons, []string{"audit_unavailable"}) {
			t.Fatalf("%s receipt: records %+v", name, recs)
		}
	}
	c, r := decided()
	w := httptest.NewRecorder()
	h.p.forward(w, r, c, audit.ReceiptForTest("8-0", c.rec))
	if w.Code != http.StatusOK || h.up.hits.Load() != 1 {
		t.Fatalf("the call's own receipt: status %d, upstream hits %d", w.Code, h.up.hits.Load())
	}
}
