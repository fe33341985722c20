package proxy

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/agentpassport/passport/internal/strictjson"
)

// FuzzMCPMessage: whatever MCP message the proxy accepts, a lenient reader
// such as Go's encoding/json (names matched case-insensitively, the last
// duplicate winning) reads the same method, tool and arguments: the policy
// and the server cannot disagree on what is called.
func FuzzMCPMessage(f *testing.F) {
	for _, s := range []string{
		restartWeb,
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"restart_deployment","arguments":{"name":"web","NAME":"payments"}}}`,
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"restart_deployment","Arguments":{"name":"payments"},"arguments":{"name":"web"}}}`,
		`{"jsonrpc":"2.0","id":1,"METHOD":"tools/call","method":"tools/list","params":{"name":"restart_deployment"}}`,
		`{"jsonrpc":"2.0","id":"x","method":"tools/call","params":{"_meta":{"progressToken":1},"name":"scale_deployment","arguments":{"namespace":"a","name":"b","replicas":3}}}`,
		`[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_pods"}},{"jsonrpc":"2.0","method":"notifications/initialized"}]`,
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"restart_deployment","arguments":{"name":"web","\u017fpec":1,"spec":2}}}`,
	} {
		f.Add([]byte(s))
	}
	mr := &mcpRoute{tools: map[string]*mcpTool{}, msgOpts: strictjson.Options{MaxDepth: 34},
		argOpts: strictjson.Options{MaxDepth: 32, Names: strictjson.NamesFolded, Object: true}}
	for name, res := range map[string]string{"restart_deployment": "{arguments.name}", "list_pods": "*", "scale_deployment": "{arguments.namespace}:{arguments.name}"} {
		parts, _ := parseToolResource(res)
		mr.tools[name] = &mcpTool{rt: &route{}, res: parts}
	}
	p := &Proxy{}
	f.Fuzz(func(t *testing.T, body []byte) {
		r := httptest.NewRequest("POST", "/mcp", bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		r.ContentLength = int64(len(body))
		c := &call{route: &route{mcp: mr}}
		if ref := p.mcpStep(nil, r, c); ref != nil {
			return
		}
		type lenient struct {
			Method string
			Params struct {
				Name      string
				Arguments map[string]any
			}
		}
		var msgs []lenient
		if c.mcp.batch {
			if err := json.Unmarshal(body, &msgs); err != nil {
				t.Fatalf("accepted a batch encoding/json refuses: %v", err)
			}
		} else {
			var one lenient
			if err := json.Unmarshal(body, &one); err != nil {
				t.Fatalf("accepted a message encoding/json refuses: %v", err)
			}
			msgs = []lenient{one}
		}
		for i, m := range c.mcp.msgs {
			l := msgs[i]
			if l.Method != m.method {
				t.Fatalf("method %q, encoding/json reads %q", m.method, l.Method)
			}
			if m.method != "tools/call" {
				continue
			}
			if l.Params.Name != m.name {
				t.Fatalf("tool %q, encoding/json reads %q", m.name, l.Params.Name)
			}
			// encoding/json into map[string]any keeps names as sent; the
			// proxy's arguments must be exactly those.
			want := l.Params.Arguments
			if want == nil {
				want = map[string]any{}
			}
			got, _ := json.Marshal(m.args)
			exp, _ := json.Marshal(want)
			var g, e any
			_ = json.Unmarshal(got, &g)
			_ = json.Unmarshal(exp, &e)
			if !reflect.DeepEqual(g, e) {
				t.Fatalf("arguments %s, encoding/json reads %s", got, exp)
			}
			for k := range want {
				if strings.ToLower(k) != k {
					t.Fatalf("an argument name not in folded form passed: %q", k)
				}
			}
		}
	})
}
