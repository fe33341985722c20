package proxy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPolicyReasonsAreCodes (issue 13, item 7): a policy that puts a string
// from its data (a token) in its reasons does not reach the agent with it:
// a reason that is not a code makes the decision malformed, the call is
// denied with policy_error, and neither the answer nor the record holds the
// token. Before, the 403 listed it.
func TestPolicyReasonsAreCodes(t *testing.T) {
	dir := t.TempDir()
	rego := `package passport.authz

decision := {"allow": false, "reasons": [data.secrets.admin_token]} if input.action == "service.restart"

decision := {"allow": false, "reasons": [sprintf("denied_%d", [i]) | some i in numbers.range(1, 40)]} if input.action == "service.get"

decision := {"allow": true, "reasons": []} if input.action == "service.list"
`
	for name, data := range map[string]string{"authz.rego": rego, "data.json": `{"secrets": {"admin_token": "adm-s3cr3t-token"}}`} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h := newHarness(t, func(c *Config) { c.Policy.Dir = dir })
	_, tok := h.healer()
	for _, path := range []string{"/services/checkout/restart", "/services/checkout"} {
		method := "POST"
		if path == "/services/checkout" {
			method = "GET"
		}
		res := h.do(method, path, tok, nil, "")
		if res.status != 403 || !strings.Contains(res.body, `"code":"policy_error"`) || strings.Contains(res.body, "s3cr3t") ||
			strings.Contains(res.body, "denied_") {
			t.Fatalf("%s: %d %s", path, res.status, res.body)
		}
		recs := h.sink.byRequest(res.header.Get(HeaderXRequest))
		if len(recs) != 1 || len(recs[0].Reasons) != 1 || recs[0].Reasons[0] != "policy_error" ||
			strings.Contains(string(recs[0].Input), "s3cr3t") {
			t.Fatalf("%s: record %+v", path, recs)
		}
	}
	if h.up.hits.Load() != 0 {
		t.Fatal("a denied call reached the upstream")
	}
	if res := h.do("GET", "/services", tok, nil, ""); res.status != 200 {
		t.Fatalf("allowed call: %d %s", res.status, res.body)
	}
}
