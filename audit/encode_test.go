package audit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// The fast encoder (encode.go) must produce exactly the bytes, hash and
// errors of the former path (refSeal in encode_ref_test.go): a difference
// would break every stored chain.

// checkSame seals a copy of rec both ways and fails on any difference.
// It reports whether the record could be encoded.
func checkSame(t *testing.T, rec *Record, where ...string) bool {
	t.Helper()
	fast, slow := *rec, *rec
	got, gerr := Seal(&fast)
	want, werr := refSeal(&slow)
	if (gerr != nil) != (werr != nil) {
		t.Fatalf("%s: errors differ: fast %v, reference %v\nrecord %#v", where, gerr, werr, rec)
	}
	if gerr != nil {
		return false
	}
	if !bytes.Equal(got, want) || fast.Hash != slow.Hash {
		t.Fatalf("%s: encodings differ for record %#v\n fast: %q\n  ref: %q\n hashes %s %s", where, rec, got, want, fast.Hash, slow.Hash)
	}
	// And what is stored verifies, unless the chain members carry invalid
	// UTF-8 (encoded once, as \ufffd escapes, on both paths; the Stream
	// caps Writer and Prev is a hash, so this never reaches a stream).
	if !utf8.ValidString(rec.Writer) || !utf8.ValidString(rec.Prev) {
		return true
	}
	if h, err := HashRaw(got); err != nil || h != fast.Hash {
		t.Fatalf("%s: HashRaw(stored) = %s, %v; Seal set %s for %q", where, h, err, fast.Hash, got)
	}
	return true
}

// hostile pieces of strings: everything the escaping must get right.
var hostile = []string{
	"a", "Z", "0", " ", "/", "\"", "\\", "<", ">", "&", "\u007f", "\x00", "\x01", "\b", "\f", "\n", "\r", "\t", "\x1b", "\x1f",
	"é", "€", "😀", "\u2028", "\u2029", "\ufffd", "\ufeff", "\x80", "\xff", "\xc3", "\xe2\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80",
	"\xc0\xaf", "checkout", "service.restart", `\u0041`, "}", "{", ",", ":", "[", "]",
}

func randString(r *rand.Rand) string {
	var sb strings.Builder
	n := r.IntN(12)
	if r.IntN(20) == 0 {
		n = 600 + r.IntN(600) // past the field cap, cut on a rune boundary
	}
	for range n {
		sb.WriteString(hostile[r.IntN(len(hostile))])
	}
	return sb.String()
}

func randFloat(r *rand.Rand) float64 {
	switch r.IntN(14) {
	case 0:
		return 0
	case 1:
		return math.Copysign(0, -1)
	case 2:
		return 72.25
	case 3:
		return 1e-7
	case 4:
		return -1e21
	case 5:
		return 1e20
	case 6:
		return 5e-324
	case 7:
		return math.NaN()
	case 8:
		return math.Inf(1 - 2*r.IntN(2))
	case 9:
		return 1e-6
	case 10:
		return r.Float64() * 100
	case 11:
		return float64(r.IntN(1000))
	default:
		f := math.Float64frombits(r.Uint64())
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return 1.5
		}
		return f
	}
}

func randTime(r *rand.Rand) time.Time {
	switch r.IntN(8) {
	case 0:
		return time.Time{}
	case 1:
		return time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) // not RFC 3339: an error
	case 2:
		return time.Date(2026, 11, 25, 20, 30, 0, 0, time.FixedZone("x", 5*3600+1800))
	case 3:
		return time.Date(2026, 11, 25, 20, 30, 0, 100, time.FixedZone("y", -7*3600))
	default:
		return time.Unix(r.Int64N(1<<33), r.Int64N(1e9)).UTC()
	}
}

// randJSON writes a random JSON value with unsorted and duplicate keys,
// escapes of every kind, numbers as written and random whitespace.
func randJSON(r *rand.Rand, sb *strings.Builder, depth int) {
	ws := func() {
		if r.IntN(6) == 0 {
			sb.WriteString([]string{" ", "\n", "\t", "\r\n  "}[r.IntN(4)])
		}
	}
	ws()
	k := r.IntN(10)
	if depth > 4 {
		k = 4 + r.IntN(6)
	}
	switch k {
	case 0, 1:
		sb.WriteByte('{')
		n := r.IntN(6)
		keys := []string{"a", "b", "version", "A", "é", "a\"", "", "z", "ab", "\u2028"}
		for i := range n {
			if i > 0 {
				sb.WriteByte(',')
			}
			ws()
			if r.IntN(3) == 0 {
				randJSONString(r, sb)
			} else {
				sb.WriteString(strconv.Quote(keys[r.IntN(len(keys))]))
			}
			ws()
			sb.WriteByte(':')
			randJSON(r, sb, depth+1)
		}
		ws()
		sb.WriteByte('}')
	case 2, 3:
		sb.WriteByte('[')
		for i := range r.IntN(5) {
			if i > 0 {
				sb.WriteByte(',')
			}
			randJSON(r, sb, depth+1)
		}
		sb.WriteByte(']')
	case 4, 5:
		randJSONString(r, sb)
	case 6, 7:
		sb.WriteString([]string{"0", "-0", "1.50", "1e400", "-1E+2", "3", "12345678901234567890123", "0.000001", "2e-7", "1.0e0"}[r.IntN(10)])
	case 8:
		sb.WriteString([]string{"true", "false", "null"}[r.IntN(3)])
	default:
		if r.IntN(40) == 0 { // invalid JSON now and then: both must refuse
			sb.WriteString([]string{"01", "tru", "{", `"\x"`, "1.", "[1,]", `{"a"}`, "\"\x01\"", "-", "1e"}[r.IntN(10)])
		} else {
			sb.WriteString("null")
		}
	}
	ws()
}

func randJSONString(r *rand.Rand, sb *strings.Builder) {
	sb.WriteByte('"')
	for range r.IntN(8) {
		switch r.IntN(12) {
		case 0:
			sb.WriteString([]string{`\"`, `\\`, `\/`, `\b`, `\f`, `\n`, `\r`, `\t`}[r.IntN(8)])
		case 1:
			fmt.Fprintf(sb, `\u%04x`, r.IntN(0x10000))
		case 2:
			fmt.Fprintf(sb, `\u%04X`, []int{0, 0x1f, 0x22, 0x3c, 0x2028, 0x2029, 0xfffd, 0xd800, 0xdbff, 0xdc00, 0xdfff, 0xe9}[r.IntN(12)])
		case 3:
			sb.WriteString(`\ud83d\ude00`) // a valid surrogate pair
		case 4:
			sb.WriteString(`\ud83d\u0041`) // a high surrogate without its pair
		default:
			s := hostile[r.IntN(len(hostile))]
			if s == `"` || s == `\` || (len(s) == 1 && s[0] < 0x20) {
				s = "x"
			}
			sb.WriteString(s)
		}
	}
	sb.WriteByte('"')
}

func randRaw(r *rand.Rand) json.RawMessage {
	switch r.IntN(6) {
	case 0:
		return nil
	case 1:
		return json.RawMessage{}
	default:
		var sb strings.Builder
		randJSON(r, &sb, 0)
		return json.RawMessage(sb.String())
	}
}

func randList(r *rand.Rand) []string {
	switch r.IntN(4) {
	case 0:
		return nil
	case 1:
		return []string{}
	default:
		l := make([]string, r.IntN(40))
		for i := range l {
			l[i] = randString(r)
		}
		return l
	}
}

func randRecord(r *rand.Rand) *Record {
	s := func() string {
		if r.IntN(3) == 0 {
			return ""
		}
		return randString(r)
	}
	rec := &Record{
		V: []int{0, 1, 2, -1}[r.IntN(4)], Kind: Kind(s()), Time: randTime(r),
		RequestID: s(), ClientRequestID: s(), Tenant: s(), AgentID: s(), AgentName: s(), AgentType: s(), TrustLevel: s(),
		Reputation: randFloat(r), JTI: s(), TaskID: s(), Subject: s(),
		Method: s(), Path: s(), Route: s(), Action: s(), Resource: s(),
		Decision: s(), Reasons: randList(r), PolicyRevision: s(), Input: randRaw(r), PassportID: s(), PassportSHA256: s(),
		Status: []int{0, 200, 503, -1, math.MaxInt}[r.IntN(5)], LatencyMS: randFloat(r),
		Details: randRaw(r), Writer: s(), Seq: r.Uint64() >> r.IntN(64), Prev: s(),
	}
	if r.IntN(2) == 0 {
		rec.Shadow = &Shadow{Revision: s(), Allow: r.IntN(2) == 0, Reasons: randList(r), Disagree: r.IntN(2) == 0}
	}
	if r.IntN(3) == 0 {
		for range r.IntN(4) {
			rec.Chain = append(rec.Chain, ChainLink{ID: s(), Name: s()})
		}
	}
	if r.IntN(2) == 0 {
		rec.Cap(0, 0) // what the Stream writes
	}
	return rec
}

func TestEncodeMatchesReference(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	r := rand.New(rand.NewPCG(seed, 7))
	n := 5000
	if testing.Short() {
		n = 1000
	}
	refused := 0
	for i := range n {
		if !checkSame(t, randRecord(r), fmt.Sprintf("seed %d, record %d", seed, i)) {
			refused++
		}
	}
	// Most records must encode, or the comparison proves little.
	if refused > n/2 {
		t.Fatalf("%d of %d random records refused by both encoders", refused, n)
	}
	t.Logf("seed %d: %d records, %d refused by both", seed, n, refused)
}

func TestEncodeMatchesReferenceEdges(t *testing.T) {
	base := func() *Record {
		return &Record{V: 1, Kind: KindDecision, Time: time.Unix(1795638600, 5).UTC(), Tenant: "acme", Writer: "w", Seq: 1}
	}
	nest := func(n int) json.RawMessage {
		return json.RawMessage(strings.Repeat("[", n) + strings.Repeat("]", n))
	}
	nestObj := func(n int) json.RawMessage {
		return json.RawMessage(strings.Repeat(`{"a":`, n-1) + "{}" + strings.Repeat("}", n-1))
	}
	for _, in := range []json.RawMessage{
		nest(9998), nest(9999), nest(10000), nest(10001), nestObj(9999), nestObj(10000),
		json.RawMessage(`{"b":1,"a":2,"b":{"z":1,"y":2},"a":[3]}`),
		json.RawMessage(`{"a\u0000":1,"a":2,"a\"":3,"\u00e9":4,"é":5,"\ud800":6,"\ufffd":7}`),
		json.RawMessage("{\"\xff\":1,\"\xfe\":2,\"\ufffd\":3}"),
		json.RawMessage(`"<&>\u003c\u2028` + "\u2028\u2029\x7f" + `"`),
		json.RawMessage(` {"x" : [ 1 , 2 ] } `),
		json.RawMessage(`{} {}`), json.RawMessage(`{"a":1,}`), json.RawMessage(`[1 2]`), json.RawMessage(`"\ud83d\ude00\udc00\ud800"`),
		json.RawMessage(`1e999999`), json.RawMessage(`-0.0e-0`), json.RawMessage(`null`), json.RawMessage(` `),
		json.RawMessage(strings.Repeat(`"\u0001",`, 3000) + "1"),
	} {
		rec := base()
		rec.Input = in
		checkSame(t, rec)
		rec = base()
		rec.Details = in
		checkSame(t, rec)
	}
	for _, f := range []float64{1e-6, 9.999999e-7, 1e21, 999999999999999900000, 1e-7, 1.5e-300, -5e-324, 0.1, 1 / 3.0} {
		rec := base()
		rec.Reputation, rec.LatencyMS = f, -f
		checkSame(t, rec)
	}
	for _, w := range []string{"\xff", "a\u2028", "\"\\", "<&>", strings.Repeat("é", 600)} {
		rec := base()
		rec.Writer, rec.Prev = w, w
		checkSame(t, rec)
	}
	// The golden record and the benchmark's.
	rec := base()
	rec.Input = json.RawMessage(`{"version":1,"b":[3,1.50,"z"],"a":{"y":null,"x":true}}`)
	rec.Shadow = &Shadow{Revision: "r2", Reasons: []string{"x"}}
	checkSame(t, rec)
}

// FuzzEncodeRecord: for any strings and payloads, the fast encoder and the
// former path agree byte for byte (or both refuse).
func FuzzEncodeRecord(f *testing.F) {
	f.Add("/services/checkout/restart?a=1&b=<x>\r\nX: é", "healer", []byte(`{"version":1,"b":[3,1.50,"z"],"a":{"y":null,"x":true}}`), 72.25, true)
	f.Add("\xff\u2028\"\\", "\x00", []byte(`{"b":1,"a":2,"b":3}`), 1e-7, false)
	f.Add("", "", []byte(`"\ud800\u0041"`), 0.0, true)
	f.Add("x", "y", []byte("{\"\xff\":1}"), 1e21, false)
	f.Fuzz(func(t *testing.T, path, agent string, input []byte, rep float64, capped bool) {
		rec := &Record{V: 1, Kind: KindDecision, Time: time.Unix(1795638600, 0).UTC(), Tenant: "acme",
			Path: path, AgentID: agent, Reasons: []string{path, agent}, Reputation: rep, Input: input,
			Details: input, Shadow: &Shadow{Revision: agent}, Writer: agent, Seq: 3, Prev: path}
		if capped {
			rec.Cap(0, 0)
		}
		checkSame(t, rec)
	})
}

// TestRecordKeysSorted: the member constants in encode.go are the struct's
// JSON names in byte order, and encodeBody writes them in that order.
func TestRecordKeysSorted(t *testing.T) {
	var names []string
	rt := reflect.TypeFor[Record]()
	for i := range rt.NumField() {
		name, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
		names = append(names, `"`+name+`":`)
	}
	slices.Sort(names)
	consts := []string{kAction, kAgentID, kAgentName, kAgentType, kChain, kClientReqID, kDecision, kDetails, kHash, kInput, kJTI, kKind,
		kLatencyMS, kMethod, kPassportID, kPassportSHA, kPath, kPolicyRevision, kPrev, kReasons, kReputation, kRequestID, kResource, kRoute,
		kSeq, kShadow, kStatus, kSubject, kTaskID, kTenant, kTime, kTrustLevel, kV, kWriter}
	if !slices.Equal(names, consts) {
		t.Fatalf("member order:\n got %q\nwant %q", consts, names)
	}
}
