package proxy

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/examples/fleet"
	"github.com/agentpassport/passport/passport"
	"github.com/agentpassport/passport/policies"
	"github.com/agentpassport/passport/proxy/internal/testkeys"
)

// hostileBodies are JSON bodies that two mainstream decoders read
// differently (issue 13, item 1): each would let the policy judge one value
// while the fleet (encoding/json) applies another.
var hostileBodies = map[string]string{
	"duplicate":               `{"replicas":5,"replicas":20}`,
	"case":                    `{"replicas":5,"Replicas":20}`,
	"case alone":              `{"REPLICAS":20}`,
	"long s":                  `{"version":"v1","ver\u017fion":"v9-evil"}`,
	"long s raw":              "{\"ver\u017fion\":\"v9-evil\"}",
	"kelvin":                  `{"type":"cache_miss","TYPE":"service_down"}`,
	"invalid utf-8":           "{\"type\":\"service_down\xff\"}",
	"lone surrogate":          `{"type":"service_down\ud800"}`,
	"past float64 precision":  `{"replicas":9007199254740993}`,
	"out of range":            `{"replicas":1e400}`,
	"trailing data":           `{"replicas":3} {"replicas":20}`,
	"not an object":           `[{"replicas":3}]`,
	"a string":                `"replicas"`,
	"deeper than the limit":   `{"a":` + strings.Repeat(`[`, 40) + strings.Repeat(`]`, 40) + `}`,
	"syntax":                  `{"replicas":3,}`,
	"duplicate after escapes": `{"replicas":5,"\u0072eplicas":20}`,
}

// TestPolicyBodyRefused: on a route that shows its body to the policy,
// every body two decoders could read differently, and every body that is
// not application/json, is refused before the policy and audited; nothing
// reaches the upstream. Before strictjson, "duplicate" and "case" were
// allowed (the policy saw 5) and forwarded.
func TestPolicyBodyRefused(t *testing.T) {
	h := newHarness(t)
	_, tok := h.healer()
	type tc struct {
		name, body string
		hdr        map[string]string
		status     int
		code       string
	}
	var cases []tc
	for name, body := range hostileBodies {
		cases = append(cases, tc{name, body, nil, 400, "bad_body"})
	}
	cases = append(cases,
		tc{"form", "replicas=3", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"},
		tc{"multipart", "--b\r\nContent-Disposition: form-data; name=\"replicas\"\r\n\r\n3\r\n--b--\r\n",
			map[string]string{"Content-Type": "multipart/form-data; boundary=b"}, 415, "unsupported_media_type"},
		tc{"text", `{"replicas":3}`, map[string]string{"Content-Type": "text/plain"}, 415, "unsupported_media_type"},
		tc{"no content type", `{"replicas":3}`, map[string]string{"Content-Type": ""}, 415, "unsupported_media_type"},
		tc{"latin-1", `{"replicas":3}`, map[string]string{"Content-Type": "application/json; charset=iso-8859-1"}, 415, "unsupported_media_type"},
		tc{"gzip", `{"replicas":3}`, map[string]string{"Content-Encoding": "gzip"}, 415, "unsupported_media_type"},
		tc{"two content types", `{"replicas":3}`, map[string]string{"content-type": "text/plain"}, 415, "unsupported_media_type"},
		tc{"malformed content type", `{"replicas":3}`, map[string]string{"Content-Type": "application/json; ="}, 415, "unsupported_media_type"},
		tc{"over the route's limit", `{"replicas":3,"pad":"` + strings.Repeat("x", 2000) + `"}`, nil, 413, "body_too_large"},
	)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := h.up.hits.Load()
			hdr := c.hdr
			if c.name == "no content type" {
				hdr = nil
			}
			res := h.doNoType(c.name == "no content type", "POST", "/services/checkout/scale", tok, hdr, c.body)
			if res.status != c.status || !strings.Contains(res.body, `"code":"`+c.code+`"`) {
				t.Fatalf("%q: %d %s, want %d %s", c.body, res.status, res.body, c.status, c.code)
			}
			if n := h.up.hits.Load() - before; n != 0 {
				t.Fatalf("%q reached the upstream %d times", c.body, n)
			}
			// A declared length over the limit is refused before the
			// passport is looked at, so that refusal names no agent
			agent := "healer-1"
			if c.code == "body_too_large" {
				agent = ""
			}
			// (so it is counted in a refusals summary).
			if reason, id, ok := h.refusalFor(res.header.Get(HeaderXRequest)); !ok || reason != c.code || id != agent {
				t.Fatalf("want one refusal with reason %s for %q: %v %q %q", c.code, agent, ok, reason, id)
			}
		})
	}

	// The same values, each in one spelling that every decoder agrees on.
	for _, body := range []string{`{"replicas":3}`, " {\n \"replicas\" : 3.0 }\n", `{"replicas":3,"note":"\ud83d\ude00 <é>"}`, ""} {
		before := h.up.hits.Load()
		res := h.do("POST", "/services/checkout/scale", tok, map[string]string{"Content-Type": "application/json; charset=UTF-8"}, body)
		if res.status != 200 || h.up.hits.Load() != before+1 {
			t.Fatalf("%q: %d %s", body, res.status, res.body)
		}
		if _, got := h.up.lastReq(); got != body {
			t.Fatalf("the upstream got %q, not the body the policy saw %q", got, body)
		}
	}
}

// doNoType is do without the default Content-Type when noType is set.
func (h *harness) doNoType(noType bool, method, path, token string, hdr map[string]string, body string) resp {
	h.t.Helper()
	if !noType {
		return h.do(method, path, token, hdr, body)
	}
	req, err := http.NewRequest(method, h.url+path, strings.NewReader(body))
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return resp{res.StatusCode, res.Header, string(b)}
}

// bodyProxy is a proxy with the demo's routes (FleetRoutes) and a verified
// passport, to look at what the policy would be shown for a body.
func bodyProxy(tb testing.TB) (*Proxy, *Verified) {
	tb.Helper()
	cfg := FleetConfig("http://127.0.0.1:1")
	cfg.Issuer, cfg.Audience, cfg.JWKSURL = testkeys.Issuer, testkeys.Audience, "http://127.0.0.1:1/jwks"
	p, err := New(cfg, Deps{Redis: nilRedis(), Audit: &fakeSink{}, Logger: slog.New(slog.DiscardHandler),
		Registry: prometheus.NewRegistry(), Policies: policies.FS})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(p.bgCancel)
	cl := testkeys.Claims(time.Now(), "acme", "healer-1", "healer", passport.TrustHigh, "service.scale")
	return p, &Verified{Verified: passport.Verified{Claims: cl, Payload: map[string]any{"tenant": "acme"}}}
}

// policyBodyView runs a body through the proxy as serve does (takeBody,
// then buildInput) on route path, and returns the body as it reaches OPA's
// input, or ok false when the proxy refuses it.
func policyBodyView(p *Proxy, vp *Verified, path string, raw []byte) (ast.Value, bool) {
	segs := strings.Split(path[1:], "/")
	rt, params := p.router.match("POST", segs)
	r := httptest.NewRequest("POST", path, bytes.NewReader(raw))
	r.Header.Set("Content-Type", "application/json")
	c := &call{id: "req-fuzz", path: path}
	body, bodyRaw, refusal := p.takeBody(r, c, rt)
	if refusal != nil {
		return nil, false
	}
	in, err := p.buildInput(r, c, rt, params, url.Values{}, vp, 90, time.Now(), body, bodyRaw)
	if err != nil {
		panic(err)
	}
	v, err := in.value.Find(ast.Ref{ast.StringTerm("request"), ast.StringTerm("body")})
	if err != nil {
		panic(err)
	}
	return v, true
}

// fromPolicyView fills dst (a pointer to a fleet request type) from the
// policy's view of a body as a Rego rule reads it: each field's JSON name
// looked up exactly, as input.request.body.<name>.
func fromPolicyView(t *testing.T, v ast.Value, dst any) {
	obj, _ := v.(ast.Object)
	rv := reflect.ValueOf(dst).Elem()
	for i := range rv.NumField() {
		name, _, _ := strings.Cut(rv.Type().Field(i).Tag.Get("json"), ",")
		if obj == nil {
			continue
		}
		m := obj.Get(ast.StringTerm(name))
		if m == nil {
			continue
		}
		b, err := ast.JSON(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := json.Marshal(b)
		f := reflect.New(rv.Field(i).Type())
		if err := json.Unmarshal(raw, f.Interface()); err != nil {
			// The policy reads a value the field cannot hold; the fleet
			// read the same member (checked by the caller), so it did not.
			t.Fatalf("the policy sees %s = %s, which the fleet's %s cannot hold", name, raw, rv.Type().Field(i).Type)
		}
		rv.Field(i).Set(f.Elem())
	}
}

// FuzzPolicyBody is the differential test of issue 13, item 1: for any
// body the proxy accepts on the demo's policy-body routes, the values the
// fleet applies (encoding/json into its request types, as the fleet
// decodes them), the values the policy reads (what reaches OPA's input,
// looked up by exact name) and the values a case-sensitive decoder reads
// (go-json-experiment/json) are the same. Its seed corpus runs in go test.
func FuzzPolicyBody(f *testing.F) {
	for _, b := range hostileBodies {
		f.Add([]byte(b))
	}
	for _, b := range []string{`{"replicas":3}`, `{"replicas":3.0}`, `{"replicas":-0}`, `{"replicas":null}`,
		`{"version":"v2.1.0"}`, `{"version":"v2\u002e1"}`, `{"type":"cache_miss"}`, `{"type":"x","extra":{"a":[1,2]}}`,
		`{}`, `{"replicas":1e1}`, `{"replicas":"3"}`, `{"version":"\u00e9t\u00e9"}`, `{"\u00e9":1}`, `{"r\u00e9plicas":2}`} {
		f.Add([]byte(b))
	}
	p, vp := bodyProxy(f)
	routes := []struct {
		path string
		typ  reflect.Type
	}{
		{"/services/checkout/scale", reflect.TypeFor[fleet.ScaleRequest]()},
		{"/deployments/checkout", reflect.TypeFor[fleet.DeployRequest]()},
		{"/faults/checkout", reflect.TypeFor[fleet.FaultRequest]()},
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		for _, rt := range routes {
			view, ok := policyBodyView(p, vp, rt.path, raw)
			if !ok {
				continue
			}
			// The generic reading first: encoding/json into any reads the
			// same document the policy was shown.
			dec := json.NewDecoder(bytes.NewReader(raw))
			dec.UseNumber()
			var doc any
			if len(bytes.TrimSpace(raw)) > 0 {
				if err := dec.Decode(&doc); err != nil {
					t.Fatalf("%s: the proxy accepted %q, which encoding/json refuses: %v", rt.path, raw, err)
				}
			}
			want, err := ast.InterfaceToValue(doc)
			if err != nil {
				t.Fatal(err)
			}
			if ast.Compare(want, view) != 0 {
				t.Fatalf("%s: %q: encoding/json reads %v, the policy was shown %v", rt.path, raw, want, view)
			}

			applied := reflect.New(rt.typ)
			if len(bytes.TrimSpace(raw)) == 0 || fleet.DecodeRequest(bytes.NewReader(raw), applied.Interface()) != nil {
				continue // the fleet refuses the body: nothing is applied
			}
			exact := reflect.New(rt.typ)
			if err := jsonv2.Unmarshal(raw, exact.Interface(), jsonv2.RejectUnknownMembers(true)); err != nil {
				t.Fatalf("%s: the fleet applies %q, the case-sensitive decoder refuses it: %v", rt.path, raw, err)
			}
			judged := reflect.New(rt.typ)
			fromPolicyView(t, view, judged.Interface())
			if !reflect.DeepEqual(applied.Interface(), judged.Interface()) || !reflect.DeepEqual(applied.Interface(), exact.Interface()) {
				t.Fatalf("%s: %q:\n fleet applies   %s\n policy judges   %s\n case-sensitive  %s", rt.path, raw,
					show(applied.Interface()), show(judged.Interface()), show(exact.Interface()))
			}
		}
	})
}

func show(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// TestFramingErrorsReachNothing: a body with broken chunked framing, cut
// short, or over the route's limit is refused by the proxy (400 or 413),
// audited as a refusal, and the upstream sees nothing. Before bodies were
// read whole, the restart route streamed them and the upstream saw a
// request start and abort (502).
func TestFramingErrorsReachNothing(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.Routes = append(c.Routes, Route{Match: "POST /uploads/{name}", Action: "service.restart", Resource: "{name}",
			BodyLimit: 64})
	})
	_, tok := h.healer()
	head := func(path, extra string) string {
		return "POST " + path + " HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer " + tok + "\r\n" + extra
	}
	big := strings.Repeat("x", 100)
	for _, tc := range []struct {
		name, req string
		status    int
		code      string
	}{
		{"bad chunk size", head("/services/checkout/restart", "Transfer-Encoding: chunked\r\n\r\n") + "zz\r\nhello\r\n0\r\n\r\n", 400, "bad_body"},
		{"chunk longer than said", head("/services/checkout/restart", "Transfer-Encoding: chunked\r\n\r\n") + "2\r\nhello\r\n0\r\n\r\n", 400, "bad_body"},
		{"chunked, cut short", head("/services/checkout/restart", "Transfer-Encoding: chunked\r\n\r\n") + "5\r\nhel", 400, "bad_body"},
		{"length, cut short", head("/services/checkout/restart", "Content-Length: 50\r\n\r\n") + "hello", 400, "bad_body"},
		{"chunked over the limit", head("/uploads/checkout", "Transfer-Encoding: chunked\r\n\r\n") +
			"64\r\n" + big + "\r\n0\r\n\r\n", 413, "body_too_large"},
		{"chunked over the policy body limit", head("/services/checkout/scale", "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n") +
			"400\r\n" + strings.Repeat(" ", 1024) + "\r\n1\r\n{\r\n0\r\n\r\n", 413, "body_too_large"},
		{"length over the limit", head("/uploads/checkout", "Content-Length: 100\r\n\r\n") + big, 413, "body_too_large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := h.up.hits.Load()
			res := h.raw(tc.req, strings.Contains(tc.name, "cut short"))
			if res.status != tc.status || !strings.Contains(res.body, `"code":"`+tc.code+`"`) {
				t.Fatalf("%d %s, want %d %s", res.status, res.body, tc.status, tc.code)
			}
			if n := h.up.hits.Load() - before; n != 0 {
				t.Fatalf("the upstream saw %d requests", n)
			}
			id := res.header.Get(HeaderXRequest)
			var reason string
			waitFor(t, "refusal record", func() bool {
				var ok bool
				reason, _, ok = h.refusalFor(id)
				return ok
			})
			if reason != tc.code {
				t.Fatalf("want one refusal %s: %s", tc.code, reason)
			}
		})
	}

	// A chunked body within the limit is forwarded whole, with a length.
	before := h.up.hits.Load()
	res := h.raw(head("/services/checkout/restart", "Transfer-Encoding: chunked\r\n\r\n")+"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n", false)
	if res.status != 200 || h.up.hits.Load() != before+1 {
		t.Fatalf("chunked body: %d %s", res.status, res.body)
	}
	r, body := h.up.lastReq()
	if body != "hello world" || r.ContentLength != 11 || len(r.TransferEncoding) != 0 || len(r.Trailer) != 0 {
		t.Fatalf("the upstream got %q, length %d, TE %v, trailers %v", body, r.ContentLength, r.TransferEncoding, r.Trailer)
	}
}

// TestStreamedBodyErrorIsTheClients: on a stream_body route, a body that
// breaks off is answered 400 bad_body (the client's error), not 502.
func TestStreamedBodyErrorIsTheClients(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.Routes = append(c.Routes, Route{Match: "POST /uploads/{name}", Action: "service.restart", Resource: "{name}",
			StreamBody: true})
	})
	_, tok := h.healer()
	head := "POST /uploads/checkout HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer " + tok + "\r\nTransfer-Encoding: chunked\r\n\r\n"
	res := h.raw(head+"5\r\nhello\r\nzz\r\n", false)
	if res.status != 400 || !strings.Contains(res.body, `"code":"bad_body"`) {
		t.Fatalf("%d %s, want 400 bad_body", res.status, res.body)
	}
	res = h.raw(head+"5\r\nhello\r\n0\r\n\r\n", false)
	if res.status != 200 {
		t.Fatalf("a good streamed body: %d %s", res.status, res.body)
	}
	if _, body := h.up.lastReq(); body != "hello" {
		t.Fatalf("the upstream got %q", body)
	}
	res = h.do("POST", "/uploads/checkout", tok, map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, "a=b")
	if res.status != 415 {
		t.Fatalf("a form body on a streamed route: %d %s", res.status, res.body)
	}
}

// raw writes a request byte for byte and reads the answer. With halfClose,
// it closes its side after writing, as a client that stops sending does.
func (h *harness) raw(req string, halfClose bool) resp {
	h.t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(h.url, "http://"))
	if err != nil {
		h.t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte(req)); err != nil {
		h.t.Fatal(err)
	}
	if halfClose {
		_ = conn.(*net.TCPConn).CloseWrite()
	}
	res, err := http.ReadResponse(bufioReader(conn), nil)
	if err != nil {
		h.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return resp{res.StatusCode, res.Header, string(b)}
}

// nilRedis is a client that is never used: bodyProxy serves nothing.
func nilRedis() redis.UniversalClient { return redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) }
