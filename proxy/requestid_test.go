package proxy

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
)

// TestClientRequestIDsCannotBreakTheTrail (issue 13, item 3): calls that
// repeat a client X-Request-Id, send a huge or hostile one, or replay the
// proxy's own id of an earlier call, with and without a passport, all get
// their own request id; the client's is kept, sanitised and bounded, in
// client_request_id; and the audit trail of every tenant still verifies.
// Before, the proxy adopted a sane client id as its own, and two calls with
// the same one made audit verify report duplicates for good.
func TestClientRequestIDsCannotBreakTheTrail(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	stream := runStream(t, rdb, audit.StreamConfig{})
	h := newHarnessWithSink(t, srv, stream)
	_, tok := h.healer()

	huge := strings.Repeat("a", 20<<10)
	hostile := "evil id;\t<script>\xc3\xa9\"}"
	type sent struct {
		path, token string
		ids         []string
		status      int
	}
	calls := []sent{
		{"/services/checkout/restart", tok, []string{"dup-id-0001"}, 200},
		{"/services/checkout/restart", tok, []string{"dup-id-0001"}, 200},
		{"/services/payments/restart", tok, []string{"dup-id-0001"}, 403},
		{"/services/checkout", tok, []string{huge}, 200},
		{"/services/checkout", tok, []string{hostile}, 200},
		{"/services/checkout", tok, []string{"first", "second"}, 200},
		{"/services/checkout/restart", "", []string{"dup-id-0001"}, 401},
		{"/services/checkout/restart", "", []string{"dup-id-0001"}, 401},
		{"/nowhere", "", []string{"dup-id-0001"}, 404},
		{"/services/checkout/restart", "not-a-passport", []string{hostile}, 401},
	}
	var proxyIDs []string
	do := func(c sent) string {
		req, err := http.NewRequest("POST", h.url+c.path, nil)
		if strings.HasPrefix(c.path, "/services/checkout") && !strings.HasSuffix(c.path, "restart") {
			req, err = http.NewRequest("GET", h.url+c.path, nil)
		}
		if err != nil {
			t.Fatal(err)
		}
		if c.token != "" {
			req.Header.Set("Authorization", "Bearer "+c.token)
		}
		req.Header[HeaderXRequest] = c.ids
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != c.status {
			t.Fatalf("%s with ids %.40q: %d, want %d", c.path, c.ids, res.StatusCode, c.status)
		}
		id := res.Header.Get(HeaderXRequest)
		for _, cid := range c.ids {
			if id == cid {
				t.Fatalf("the proxy answered with the client's id %q", cid)
			}
		}
		return id
	}
	for _, c := range calls {
		proxyIDs = append(proxyIDs, do(c))
	}
	// Replaying the proxy's own id of an earlier call changes nothing.
	proxyIDs = append(proxyIDs, do(sent{"/services/checkout/restart", tok, []string{proxyIDs[0]}, 200}))
	seen := map[string]bool{}
	for _, id := range proxyIDs {
		if seen[id] || len(id) != 32 {
			t.Fatalf("request id %q repeated or not the proxy's own", id)
		}
		seen[id] = true
	}
	if r, _ := h.up.lastReq(); r.Header.Get(HeaderXRequest) != proxyIDs[len(proxyIDs)-1] {
		t.Fatalf("the upstream got X-Request-Id %q, not the proxy's", r.Header.Get(HeaderXRequest))
	}

	// Every call with a passport is in acme's stream under its own id,
	// with the client's id kept beside it.
	ctx := context.Background()
	byID := map[string][]*audit.Record{}
	waitFor(t, "the records of every call", func() bool {
		clear(byID)
		for _, tenant := range []string{"acme", DefaultUnattributed} {
			msgs, err := rdb.XRange(ctx, passport.AuditStreamKey(tenant), "-", "+").Result()
			if err != nil {
				return false
			}
			for _, m := range msgs {
				if rec, _, err := audit.ParseMessage(m); err == nil && rec.Kind != audit.KindCheckpoint {
					byID[rec.RequestID] = append(byID[rec.RequestID], rec)
				}
			}
		}
		// Allowed calls have a decision and an outcome; the others a
		// record each (passport-less refusals may be aggregated).
		for i, c := range append(calls, sent{token: tok, status: 200}) {
			if c.token == tok && len(byID[proxyIDs[i]]) < map[int]int{200: 2, 403: 1}[c.status] {
				return false
			}
		}
		return true
	})
	for i, c := range calls {
		if c.token != tok {
			continue
		}
		want := c.ids[0]
		if want == huge {
			want = huge[:maxClientRequestID]
		}
		if want == hostile {
			want = "evil_id___script_____"
		}
		for _, rec := range byID[proxyIDs[i]] {
			if rec.Kind == audit.KindDecision && rec.ClientRequestID != want {
				t.Fatalf("call %d: client_request_id %q, want %q", i, rec.ClientRequestID, want)
			}
		}
	}
	for _, tenant := range []string{"acme", DefaultUnattributed} {
		rep, err := audit.VerifyStream(ctx, rdb, tenant, audit.VerifyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !rep.OK() {
			t.Fatalf("audit verify of %s: %v", tenant, rep.Problems)
		}
	}
}

func TestClientRequestID(t *testing.T) {
	for in, want := range map[string]string{
		"":                          "",
		"abc-123_x.y:z/w+v=u@t":     "abc-123_x.y:z/w+v=u@t",
		"a b\tc\"d<e>\xff":          "a_b_c_d_e__",
		strings.Repeat("x", 200):    strings.Repeat("x", maxClientRequestID),
		"9f86d081884c7d659a2feaa0c": "9f86d081884c7d659a2feaa0c",
	} {
		r, _ := http.NewRequest("GET", "http://proxy/", nil)
		if in != "" {
			r.Header[HeaderXRequest] = []string{in, "other"}
		}
		if got := clientRequestID(r); got != want {
			t.Errorf("clientRequestID(%q) = %q, want %q", in, got, want)
		}
	}
}
