package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"net/http/httptest"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/jsonstr"
	"github.com/agentpassport/passport/internal/strictjson"
	"github.com/agentpassport/passport/passport"
	"github.com/agentpassport/passport/proxy/internal/testkeys"
)

// oddPieces are what strings are made of in these tests: everything
// json.Marshal escapes or replaces, and some neighbours that it must not.
var oddPieces = []string{
	"", "a", "checkout", " ", "/", "%2F", "\x00", "\x01", "\x1f", "\x7f", "\b", "\f", "\n", "\r", "\t",
	`"`, `\`, `\u0041`, "<", ">", "&", "<script>", "\u2028", "\u2029", "\u2027", "\u202a",
	"\xe2\x80", "\xe2\x80\xa8", "\xe2", "\xff", "\xfe", "\xc3", "\xc3\xa9", "\xed\xa0\x80", "\xf4\x90\x80\x80",
	"é", "€", "😀", "\ufffd", "\ufeff",
}

func oddString(r *rand.Rand) string {
	var sb strings.Builder
	for range r.IntN(6) {
		sb.WriteString(oddPieces[r.IntN(len(oddPieces))])
	}
	return sb.String()
}

// oddStringMap is nil, empty, or holds up to 12 entries (more than the
// key scratch of appendJSONObject).
func oddStringMap(r *rand.Rand) map[string]string {
	switch r.IntN(5) {
	case 0:
		return nil
	case 1:
		return map[string]string{}
	}
	m := map[string]string{}
	for range r.IntN(13) {
		m[oddString(r)] = oddString(r)
	}
	return m
}

func oddQuery(r *rand.Rand) map[string][]string {
	switch r.IntN(5) {
	case 0:
		return nil
	case 1:
		return map[string][]string{}
	}
	m := map[string][]string{}
	for range r.IntN(13) {
		var vs []string
		switch r.IntN(4) {
		case 0: // nil: json.Marshal writes null
		case 1:
			vs = []string{}
		default:
			for range 1 + r.IntN(4) {
				vs = append(vs, oddString(r))
			}
		}
		m[oddString(r)] = vs
	}
	return m
}

var oddFloats = []float64{0, math.Copysign(0, -1), 1, 87.5, -3.25, 1e-6, 9.99e-7, 1e-7, 1e20, 1e21, 123456789.123456789,
	math.SmallestNonzeroFloat64, math.MaxFloat64, 1.0 / 3}

// bodyWriter writes a random JSON text as a client might: whitespace
// anywhere it is allowed, strings with raw <, >, &, U+2028 and invalid
// UTF-8, escapes of every kind.
type bodyWriter struct {
	r  *rand.Rand
	sb strings.Builder
}

var bodySpace = []string{"", "", "", " ", "  ", "\n", "\r\n\t", "\t "}

func (w *bodyWriter) ws() { w.sb.WriteString(bodySpace[w.r.IntN(len(bodySpace))]) }

func (w *bodyWriter) value(depth int) {
	n := 8
	if depth > 3 {
		n = 5 // scalars only
	}
	switch w.r.IntN(n) {
	case 0:
		w.sb.WriteString([]string{"true", "false", "null"}[w.r.IntN(3)])
	case 1, 2:
		w.sb.WriteString([]string{"0", "-0", "3", "-12.5e+3", "1E2", "0.000001", "1e-7",
			"123456789012345678901234567890", "1e400", "2.50"}[w.r.IntN(10)])
	case 3, 4:
		w.str()
	case 5, 6:
		w.list('{', '}', func() {
			w.str()
			w.ws()
			w.sb.WriteByte(':')
			w.ws()
			w.value(depth + 1)
		})
	case 7:
		w.list('[', ']', func() { w.value(depth + 1) })
	}
}

// list writes up to four elements between open and close, separated by
// commas, with whitespace around each.
func (w *bodyWriter) list(open, close byte, elem func()) {
	w.sb.WriteByte(open)
	for i := range w.r.IntN(5) {
		if i > 0 {
			w.sb.WriteByte(',')
		}
		w.ws()
		elem()
		w.ws()
	}
	w.ws()
	w.sb.WriteByte(close)
}

func (w *bodyWriter) str() {
	w.sb.WriteByte('"')
	for range w.r.IntN(6) {
		switch w.r.IntN(4) {
		case 0:
			w.sb.WriteString([]string{`\"`, `\\`, `\/`, `\b`, `\f`, `\n`, `\r`, `\t`, `\u003c`, `\u2028`,
				`\ud83d\ude00`, `\ud800`, `\u0000`, `\uDFFF`}[w.r.IntN(14)])
		default:
			// Raw: a JSON string holds anything but ", \ and control
			// characters as it is.
			for _, c := range []byte(oddPieces[w.r.IntN(len(oddPieces))]) {
				switch {
				case c == '"' || c == '\\':
					w.sb.WriteString(`\` + string(c))
				case c < 0x20:
					w.sb.WriteString(`\u00` + strconv.FormatUint(uint64(c)>>4, 16) + strconv.FormatUint(uint64(c)&0xF, 16))
				default:
					w.sb.WriteByte(c)
				}
			}
		}
	}
	w.sb.WriteByte('"')
}

// oddBody is nil, as a call without a body has it, or a JSON text that
// decodeBody accepts, as serve only ever sets: the writer's texts that it
// refuses (invalid UTF-8, lone surrogates, numbers past float64, names
// that fold together) are written again.
func oddBody(t *testing.T, r *rand.Rand) []byte {
	if r.IntN(4) == 0 {
		return nil
	}
	for range 10000 {
		w := &bodyWriter{r: r}
		w.ws()
		w.value(0)
		w.ws()
		b := []byte(w.sb.String())
		if _, err := decodeBody(b, anyBody); err == nil {
			return b
		}
	}
	t.Fatal("the generator wrote no body that decodeBody accepts in 10000 tries")
	return nil
}

// anyBody decodes any strict JSON text, object or not.
var anyBody = strictjson.Options{}

// oddPassport is json.Marshal of a payload, as Verified.payloadJSON is.
func oddPassport(t *testing.T, r *rand.Rand) []byte {
	if r.IntN(10) == 0 {
		return nil // payloadJSON when json.Marshal failed
	}
	payload := map[string]any{"iss": oddString(r), "exp": json.Number("1900000000"), "scope": []any{oddString(r), oddString(r)},
		"agent": map[string]any{"id": oddString(r), "reputation": 87.5, "x": oddStringMap(r)}}
	for range r.IntN(4) {
		payload[oddString(r)] = oddString(r)
	}
	b, err := json.Marshal(payload)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func oddDoc(t *testing.T, r *rand.Rand) inputDoc {
	rep := oddFloats[r.IntN(len(oddFloats))]
	if r.IntN(100) == 0 {
		rep = []float64{math.NaN(), math.Inf(1), math.Inf(-1)}[r.IntN(3)]
	}
	return inputDoc{
		Version: r.IntN(3) - 1, Time: oddString(r), Tenant: oddString(r), Action: oddString(r), Resource: oddString(r),
		Route: inputRoute{Name: oddString(r), Template: oddString(r), Tenant: oddString(r), Production: r.IntN(2) == 0},
		Request: inputRequest{ID: oddString(r), Method: oddString(r), Path: oddString(r), Params: oddStringMap(r),
			Query: oddQuery(r), Headers: oddStringMap(r), Body: oddBody(t, r)},
		Passport: oddPassport(t, r),
		Agent: inputAgent{ID: oddString(r), Name: oddString(r), Type: oddString(r), TrustLevel: oddString(r),
			Reputation: rep, Blocked: r.IntN(2) == 0},
		Approval: oddApproval(r),
		Budgets:  oddBudgets(r),
	}
}

func oddApproval(r *rand.Rand) *inputApproval {
	if r.IntN(3) != 0 {
		return nil
	}
	return &inputApproval{ID: oddString(r), GrantedAt: oddString(r), Approvers: []string{oddString(r), oddString(r)}}
}

func oddBudgets(r *rand.Rand) map[string]inputBudget {
	if r.IntN(3) != 0 {
		return nil
	}
	return map[string]inputBudget{oddString(r): {Limit: 3, Used: r.IntN(4), Remaining: r.IntN(4), Reserved: r.IntN(2) == 0, Window: oddString(r)},
		oddString(r): {Limit: 1, Window: "1m0s"}}
}

// decodeJSON decodes as the audit encoder and replay do: numbers as written.
func decodeJSON(t *testing.T, b []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decode %q: %v", b, err)
	}
	if _, err := dec.Token(); err == nil {
		t.Fatalf("trailing data in %q", b)
	}
	return v
}

// sealed is the stored audit record of a decision whose input is in, as
// the stream writes it: capped, then sealed.
func sealed(t *testing.T, in []byte) []byte {
	t.Helper()
	rec := &audit.Record{V: audit.Version, Kind: audit.KindDecision, Time: time.Unix(1_900_000_000, 5).UTC(),
		RequestID: "req-1", Tenant: "acme", Decision: audit.DecisionAllow, Input: in,
		Writer: "proxy-1", Seq: 7, Prev: strings.Repeat("0", 64)}
	rec.Cap(0, 0)
	b, err := audit.Seal(rec)
	if err != nil {
		t.Fatalf("seal: %v", err)
	}
	return b
}

// checkInputJSON checks that d.marshalJSON is json.Marshal(d) but for the
// order of members: the same outcome, the same length (audit.Record.Cap
// measures it), the same decoded value, the same audit record; and that
// the members of the objects it builds are sorted.
func checkInputJSON(t *testing.T, d *inputDoc) []byte {
	t.Helper()
	want, werr := json.Marshal(d)
	got, err := d.marshalJSON(true)
	if (werr != nil) != (err != nil) {
		t.Fatalf("json.Marshal error %v, marshalJSON error %v", werr, err)
	}
	if err != nil {
		if !errors.Is(err, errInputJSON) {
			t.Fatalf("error %v is not errInputJSON", err)
		}
		return nil
	}
	if len(got) != len(want) {
		t.Errorf("length %d, json.Marshal's %d:\n got %s\nwant %s", len(got), len(want), got, want)
	}
	if g, w := decodeJSON(t, got), decodeJSON(t, want); !reflect.DeepEqual(g, w) {
		t.Fatalf("decodes differently:\n got %s\nwant %s", got, want)
	}
	if g, w := sealed(t, got), sealed(t, want); !bytes.Equal(g, w) {
		t.Fatalf("audit records differ:\n got %s\nwant %s", g, w)
	}
	checkSortedMembers(t, got)
	return got
}

// checkSortedMembers checks that the input document and its agent,
// request and route objects have exactly the members their struct tags
// name, in byte order.
func checkSortedMembers(t *testing.T, b []byte) {
	t.Helper()
	top := members(t, b)
	for _, o := range []struct {
		name    string
		members []member
		typ     any
	}{
		{"input", top, inputDoc{}},
		{"agent", members(t, lookup(top, "agent")), inputAgent{}},
		{"request", members(t, lookup(top, "request")), inputRequest{}},
		{"route", members(t, lookup(top, "route")), inputRoute{}},
		{"mcp", membersOrNil(t, lookup(top, "mcp")), inputMCP{}},
	} {
		if o.name == "mcp" && o.members == nil {
			continue
		}
		var got []string
		for _, m := range o.members {
			got = append(got, m.name)
		}
		var want []string
		typ := reflect.TypeOf(o.typ)
		for i := range typ.NumField() {
			tag := strings.Split(typ.Field(i).Tag.Get("json"), ",")
			if slices.Contains(tag[1:], "omitempty") && !slices.Contains(got, tag[0]) {
				continue // approval, budgets, mcp: only when the call has them
			}
			want = append(want, tag[0])
		}
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s members %q, want %q", o.name, got, want)
		}
	}
}

type member struct {
	name  string
	value json.RawMessage
}

// members returns an object's members in the order written.
func members(t *testing.T, b []byte) []member {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("not an object: %s", b)
	}
	var out []member
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			t.Fatal(err)
		}
		out = append(out, member{tok.(string), v})
	}
	return out
}

// membersOrNil is members, or nil for an absent object.
func membersOrNil(t *testing.T, b []byte) []member {
	if b == nil {
		return nil
	}
	return members(t, b)
}

func lookup(ms []member, name string) []byte {
	for _, m := range ms {
		if m.name == name {
			return m.value
		}
	}
	return nil
}

func TestInputJSON(t *testing.T) {
	big := []byte(`{"pad": "` + strings.Repeat("<&> ", 5000) + `"}`) // over the audit cap
	realPassport := []byte(`{"agent":{"id":"healer-1","name":"Healer \u003cone\u003e","reputation":87.5,"type":"healer"},"exp":1900000000,"iss":"https://authority.test","scope":["service.get","service.scale"],"sub":"agent:acme:healer-1","tenant":"acme"}`)
	for _, tc := range []struct {
		name string
		doc  inputDoc
	}{
		{"zero", inputDoc{}},
		{"empty maps", inputDoc{Request: inputRequest{Params: map[string]string{}, Query: map[string][]string{},
			Headers: map[string]string{}, Body: nullJSON}, Passport: realPassport}},
		{"usual call", inputDoc{Version: 1, Time: "2030-03-17T17:46:40.000000005Z", Tenant: "acme", Action: "service.scale",
			Resource: "checkout", Route: inputRoute{Name: "scale", Template: "POST /services/{name}/scale", Production: true},
			Request: inputRequest{ID: "req-12345678", Method: "POST", Path: "/services/checkout/scale",
				Params: map[string]string{"name": "checkout"}, Query: map[string][]string{"x": {"1", "2"}, "dry": {""}},
				Headers: map[string]string{"user-agent": "healer/1.0", "content-type": "application/json"},
				Body:    json.RawMessage("{\"replicas\": 3,\n \"note\": \"a\\u00e9 b\"}\n")},
			Passport: realPassport,
			Agent:    inputAgent{ID: "healer-1", Name: "Healer", Type: "healer", TrustLevel: "HIGH", Reputation: 87.5}}},
		{"hostile strings", inputDoc{Resource: "\t\n\r\b\f\x1f\x7f",
			Request: inputRequest{Path: "/a\x00b\"c\\d<e>f&g\u2028h\u2029i\xffj\xe2\x80k\xed\xa0\x80", Query: map[string][]string{"\xff": {"\xfe"}, "\xfe": {"\xff"}, "<": nil, "q": {}, "m": {"1", "", "\u2028"}},
				Headers: map[string]string{"x-a": "\"quoted\" \\ back", "x-\u2029": "\xc3"}}}},
		{"body with whitespace and nesting", inputDoc{Request: inputRequest{
			Body: json.RawMessage(" \r\n\t{ \"a\" : [ 1 , { \"b\" : \"x y\\\" <z> & \xe2\x80\xa8 \xff\" } , [ ] , { } ] ,\n\t\"c\" : null } \n")}}},
		{"body scalar", inputDoc{Request: inputRequest{Body: json.RawMessage(" \"only a string\" ")}}},
		{"body over the audit cap", inputDoc{Request: inputRequest{Body: big}}},
		{"reputation in e notation", inputDoc{Agent: inputAgent{Reputation: 1e-7}}},
		{"reputation NaN", inputDoc{Agent: inputAgent{Reputation: math.NaN()}}},
		{"reputation infinite", inputDoc{Agent: inputAgent{Reputation: math.Inf(-1)}}},
		{"empty passport", inputDoc{Passport: json.RawMessage{}}},
		{"empty body", inputDoc{Request: inputRequest{Body: json.RawMessage{}}}},
		{"mcp tool call", inputDoc{Action: "deployment.restart", Request: inputRequest{Body: json.RawMessage(`{"name":"web"}`)},
			MCP: &inputMCP{Method: "tools/call", ProtocolVersion: "2026-07-28", Tool: "restart_<deployment>\u2028\xff"}}},
		{"mcp listing", inputDoc{MCP: &inputMCP{Listing: true, Method: "tools/call", Tool: "scale"}}},
	} {
		t.Run(tc.name, func(t *testing.T) { checkInputJSON(t, &tc.doc) })
	}
	t.Run("generated", func(t *testing.T) {
		r := rand.New(rand.NewPCG(1, 2))
		for range 3000 {
			d := oddDoc(t, r)
			checkInputJSON(t, &d)
			if t.Failed() {
				return
			}
		}
	})
}

// TestInputJSONObjectIsMarshal: a map comes out as json.Marshal writes it,
// byte for byte (keys sorted as it sorts them, escaped as it escapes).
func TestInputJSONObjectIsMarshal(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 2000 {
		m, q := oddStringMap(r), oddQuery(r)
		want, _ := json.Marshal(m)
		if got := appendJSONObject(nil, m, appendJSONString); !bytes.Equal(got, want) {
			t.Fatalf("map:\n got %s\nwant %s", got, want)
		}
		want, _ = json.Marshal(q)
		if got := appendJSONObject(nil, q, appendJSONStrings); !bytes.Equal(got, want) {
			t.Fatalf("query:\n got %s\nwant %s", got, want)
		}
	}
}

// TestInputJSONFromBuildInput: the document serve builds, with a real
// verified passport and a body with whitespace, is what decisionRecord
// stores.
func TestInputJSONFromBuildInput(t *testing.T) {
	h := newHarness(t)
	now := h.now()
	c := testkeys.Claims(now, "acme", "healer-1", "healer", passport.TrustHigh, "service.scale")
	c.Task = &passport.Task{ID: "inc-1", Target: "checkout"}
	c.Agent.Name = "Healer <one> & \u2028"
	tok := h.keys.Sign(t, c)
	vp, err := h.p.verifier.verify(context.Background(), tok)
	if err != nil {
		t.Fatal(err)
	}
	rt, params := h.p.router.match("POST", []string{"services", "checkout", "scale"})
	r := httptest.NewRequest("POST", "/services/checkout/scale?x=1&x=2&y=%FF%3C", nil)
	r.Header.Set("User-Agent", "healer/1.0 \xff")
	body := []byte("{\n  \"replicas\": 3,\n  \"note\": \"a\\u00e9 <b>\"\n}\n")
	bv, err := decodeBody(body, anyBody)
	if err != nil {
		t.Fatal(err)
	}
	q, _ := url.ParseQuery("x=1&x=2&y=%FF%3C")
	call := &call{id: "req-12345678", path: "/services/checkout/scale"}
	in, err := h.p.buildInput(r, call, rt, params, q, vp, 87.5, now, bv, body)
	if err != nil {
		t.Fatal(err)
	}
	got := checkInputJSON(t, &in.doc)
	if rec, err := h.p.decisionRecord(call, rt, vp, 87.5, in, now, "", ""); err != nil || !bytes.Equal(rec.Input, got) {
		t.Fatalf("decisionRecord stored\n %s\nnot\n %s", rec.Input, got)
	}
	// With a passport reference the input is the same but for the claims,
	// which audit.ExpandInput puts back.
	rec, err := h.p.decisionRecord(call, rt, vp, 87.5, in, now, "1-0", "digest")
	if err != nil {
		t.Fatal(err)
	}
	claims := audit.PassportRecord(rec.Tenant, rec.AgentID, rec.JTI, vp.payloadJSON(), now)
	full, err := audit.ExpandInput(rec, func(string) (*audit.Record, error) { return claims, nil })
	if err == nil {
		t.Fatal("a reference whose digest does not match resolved")
	}
	rec.PassportSHA256, _ = audit.PassportDigest(vp.payloadJSON())
	if full, err = audit.ExpandInput(rec, func(string) (*audit.Record, error) { return claims, nil }); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(rec.Input, []byte(`"passport":`)) {
		t.Errorf("the referencing input repeats the claims: %s", rec.Input)
	}
	if g, w := decodeJSON(t, full), decodeJSON(t, got); !reflect.DeepEqual(g, w) {
		t.Fatalf("expanded input differs:\n got %s\nwant %s", full, got)
	}
	if !bytes.Contains(got, []byte(`"body":{"replicas":3,"note":"a\u00e9 \u003cb\u003e"}`)) {
		t.Errorf("body not compacted as json.Marshal compacts it: %s", got)
	}
}

// TestInputJSONThroughServe: a call whose body has whitespace is audited
// with its body as the policy saw it, and the record seals.
func TestInputJSONThroughServe(t *testing.T) {
	h := newHarness(t)
	_, tok := h.healer()
	body := "{ \"replicas\" : 3 ,\n\t\"note\" : \"x <y> \xe2\x80\xa8\" }\n"
	res := h.do("POST", "/services/checkout/scale", tok, nil, body)
	if res.status != 200 {
		t.Fatalf("scale: %d %s", res.status, res.body)
	}
	recs := h.sink.byRequest(res.header.Get(HeaderXRequest))
	if len(recs) == 0 || recs[0].Kind != audit.KindDecision {
		t.Fatalf("no decision record: %+v", recs)
	}
	in := decodeJSON(t, recs[0].Input).(map[string]any)
	want, _ := decodeBody([]byte(body), anyBody)
	if got := in["request"].(map[string]any)["body"]; !reflect.DeepEqual(got, want) {
		t.Fatalf("audited body %#v, sent %#v", got, want)
	}
	sealed(t, recs[0].Input)
}

func FuzzInputJSONString(f *testing.F) {
	for _, s := range oddPieces {
		f.Add(s)
	}
	f.Add("/a\x00b\"c\\d<e>f&g\u2028h\u2029i\xffj\xe2\x80k\xed\xa0\x80")
	f.Fuzz(func(t *testing.T, s string) {
		want, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendJSONString(nil, s); !bytes.Equal(got, want) {
			t.Fatalf("%q:\n got %s\nwant %s", s, got, want)
		}
	})
}

// FuzzInputJSONBody: a body decodeBody accepts is written as json.Marshal
// writes it inside the input document, byte for byte.
func FuzzInputJSONBody(f *testing.F) {
	for _, s := range []string{`{"replicas": 3}`, " [1, 2 ,\n3]\t", `"x <y> & z"`, "\"\xe2\x80\xa8\xe2\x80\xa9\xff\"",
		`{"a\"b": "c\\\" d", "e": {"f": [true, false, null, -1.5e+3]}}`, `0`, "{ }", `"\u2028"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if _, err := decodeBody(body, anyBody); err != nil {
			return // serve refuses it; it never reaches the input
		}
		want, err := json.Marshal(json.RawMessage(body))
		if err != nil {
			t.Fatalf("decodeBody accepted what json.Marshal refuses (%v): %q", err, body)
		}
		if got := jsonstr.AppendCompactHTML(nil, body); !bytes.Equal(got, want) {
			t.Fatalf("%q:\n got %s\nwant %s", body, got, want)
		}
	})
}
