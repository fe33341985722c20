package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/agentpassport/passport/passport"
	"github.com/agentpassport/passport/proxy/internal/testkeys"
)

// TestInputJSONIsWhatThePolicySaw: the audit record's input (JSON, used by
// replay) and the OPA value the policy evaluated are the same document.
func TestInputJSONIsWhatThePolicySaw(t *testing.T) {
	h := newHarness(t)
	now := h.now()
	c := testkeys.Claims(now, "acme", "healer-1", "healer", passport.TrustHigh, "service.scale")
	c.Task = &passport.Task{ID: "inc-1", Target: "checkout"}
	tok := h.keys.Sign(t, c)
	vp, err := h.p.verifier.verify(context.Background(), tok)
	if err != nil {
		t.Fatal(err)
	}
	rt, params := h.p.router.match("POST", []string{"services", "checkout", "scale"})
	r := httptest.NewRequest("POST", "/services/checkout/scale?x=1&x=2", nil)
	r.Header.Set("User-Agent", "healer/1.0")
	body := []byte(`{"replicas": 3, "note": "a\u00e9"}`)
	bv, err := decodeBody(body, anyBody)
	if err != nil {
		t.Fatal(err)
	}
	q, _ := url.ParseQuery("x=1&x=2")
	call := &call{id: "req-12345678", path: "/services/checkout/scale"}
	in, err := h.p.buildInput(r, call, rt, params, q, vp, 87.5, now, bv, body)
	if err != nil {
		t.Fatal(err)
	}

	raw, err := json.Marshal(in.doc)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var back any
	if err := dec.Decode(&back); err != nil {
		t.Fatal(err)
	}
	want, err := ast.InterfaceToValue(back)
	if err != nil {
		t.Fatal(err)
	}
	if ast.Compare(want, in.value) != 0 {
		t.Fatalf("the audit input differs from the policy input:\n json %s\n  ast %s", want, in.value)
	}
	for _, k := range []string{`"version":1`, `"time":"` + now.UTC().Format(time.RFC3339Nano), `"template":"POST /services/{name}/scale"`,
		`"params":{"name":"checkout"}`, `"query":{"x":["1","2"]}`, `"headers":{"user-agent":"healer/1.0"}`, `"reputation":87.5`,
		`"task":{"id":"inc-1"`, `"production":true`} {
		if !bytes.Contains(raw, []byte(k)) {
			t.Errorf("input lacks %s: %s", k, raw)
		}
	}
}
