package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	jsonv2 "github.com/go-json-experiment/json"
)

func TestDecodeRefuses(t *testing.T) {
	deep := strings.Repeat("[", 33) + strings.Repeat("]", 33)
	for _, tc := range []struct {
		name string
		in   string
		opts Options
		want error
	}{
		{"empty", ``, Options{}, ErrSyntax},
		{"bom", "\ufeff{}", Options{}, ErrSyntax},
		{"trailing", `{} {}`, Options{}, ErrSyntax},
		{"trailing comma", `{"a":1,}`, Options{}, ErrSyntax},
		{"single quotes", `{'a':1}`, Options{}, ErrSyntax},
		{"control char", "\"a\x01\"", Options{}, ErrSyntax},
		{"bad escape", `"\x41"`, Options{}, ErrSyntax},
		{"short unicode escape", `"\u12"`, Options{}, ErrSyntax},
		{"NaN", `NaN`, Options{}, ErrSyntax},
		{"leading plus", `+1`, Options{}, ErrSyntax},
		{"leading zero", `01`, Options{}, ErrSyntax},
		{"bare point", `1.`, Options{}, ErrSyntax},
		{"invalid utf-8", "\"a\xffb\"", Options{}, ErrUTF8},
		{"invalid utf-8 after escape", "\"\\n\xc3\"", Options{}, ErrUTF8},
		{"utf-8 surrogate", "\"\xed\xa0\x80\"", Options{}, ErrUTF8},
		{"overlong utf-8", "\"\xc0\xaf\"", Options{}, ErrUTF8},
		{"invalid utf-8 in a name", "{\"a\xff\":1}", Options{}, ErrUTF8},
		{"lone high surrogate", `"\ud800"`, Options{}, ErrSurrogate},
		{"high surrogate then text", `"\ud800abcdef"`, Options{}, ErrSurrogate},
		{"high surrogate then high", `"\ud800\ud800"`, Options{}, ErrSurrogate},
		{"lone low surrogate", `"\udc00"`, Options{}, ErrSurrogate},
		{"reversed pair", `"\ude00\ud83d"`, Options{}, ErrSurrogate},
		{"duplicate", `{"replicas":5,"replicas":20}`, Options{}, ErrDuplicate},
		{"duplicate by escape", `{"replicas":5,"repl\u0069cas":20}`, Options{}, ErrDuplicate},
		{"duplicate nested", `{"a":{"b":1,"b":2}}`, Options{}, ErrDuplicate},
		{"case", `{"replicas":5,"Replicas":20}`, Options{}, ErrFoldedName},
		{"long s", `{"version":"v1","ver\u017fion":"x"}`, Options{}, ErrFoldedName},
		{"kelvin", `{"kind":1,"\u212aind":2}`, Options{}, ErrFoldedName},
		{"dotted capital I", `{"id":1,"\u0130d":2}`, Options{}, ErrFoldedName},
		{"dotless i", `{"id":1,"\u0131d":2}`, Options{}, ErrFoldedName},
		{"final sigma", "{\"\u03c3\":1,\"\u03c2\":2}", Options{}, ErrFoldedName},
		{"many members, then a fold", `{` + manyMembers(40) + `,"MA1":1}`, Options{}, ErrFoldedName},
		{"not folded: upper", `{"Replicas":5}`, Options{Names: NamesFolded}, ErrNotFolded},
		{"not folded: long s", `{"ver\u017fion":"x"}`, Options{Names: NamesFolded}, ErrNotFolded},
		{"not folded: kelvin", `{"\u212aind":"x"}`, Options{Names: NamesFolded}, ErrNotFolded},
		{"not folded: nested", `{"a":[{"B":1}]}`, Options{Names: NamesFolded}, ErrNotFolded},
		{"deep", deep, Options{}, ErrDepth},
		{"deep objects", strings.Repeat(`{"a":`, 4) + `1` + strings.Repeat(`}`, 4), Options{MaxDepth: 3}, ErrDepth},
		{"past precision", `9007199254740993`, Options{}, ErrNumber},
		{"long fraction", `0.1000000000000000055511151231257827021181583404541015625`, Options{}, ErrNumber},
		{"big integer", `123456789012345678901234567890`, Options{}, ErrNumber},
		{"overflow", `1e400`, Options{}, ErrNumber},
		{"negative overflow", `-1e309`, Options{}, ErrNumber},
		{"underflow", `1e-400`, Options{}, ErrNumber},
		{"denormal past precision", `4.9e-324`, Options{}, ErrNumber},
		{"huge exponent", `1e99999999999999999999`, Options{}, ErrNumber},
		{"array at top", `[1]`, Options{Object: true}, ErrNotObject},
		{"string at top", `"x"`, Options{Object: true}, ErrNotObject},
		{"null at top", ` null `, Options{Object: true}, ErrNotObject},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := Decode([]byte(tc.in), tc.opts)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Decode(%q) = %v, %v; want %v", tc.in, v, err, tc.want)
			}
			var e *Error
			if !errors.As(err, &e) || e.Offset < 0 || e.Offset > len(tc.in) {
				t.Fatalf("error %v is not an *Error with an offset in the input", err)
			}
		})
	}
}

func manyMembers(n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`"m` + string(rune('a'+i%26)) + string(rune('0'+i/26)) + `":1`)
	}
	return b.String()
}

func TestDecodeAccepts(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		opts Options
		want any
	}{
		{"object", ` {"replicas": 3, "note": "a\u00e9\n"} `, Options{Object: true},
			map[string]any{"replicas": json.Number("3"), "note": "a\u00e9\n"}},
		{"pair", `"\ud83d\ude00 \u2028 <&>"`, Options{}, "\U0001F600 \u2028 <&>"},
		{"nul escape", `"a\u0000b"`, Options{}, "a\x00b"},
		{"numbers", `[0, -0, 2.50, 1E2, -12.5e+3, 0.1, 9007199254740992, 5e-324, 1.7976931348623157e308, 0e999999999999]`,
			Options{}, []any{json.Number("0"), json.Number("-0"), json.Number("2.50"), json.Number("1E2"),
				json.Number("-12.5e+3"), json.Number("0.1"), json.Number("9007199254740992"), json.Number("5e-324"),
				json.Number("1.7976931348623157e308"), json.Number("0e999999999999")}},
		{"literals", `[true,false,null,{},[]]`, Options{}, []any{true, false, nil, map[string]any{}, []any{}}},
		{"distinct names", `{"a":1,"b":2,"ab":3,"s":4,"k":5}`, Options{},
			map[string]any{"a": json.Number("1"), "b": json.Number("2"), "ab": json.Number("3"), "s": json.Number("4"), "k": json.Number("5")}},
		{"mixed case alone", `{"dryRun":true}`, Options{}, map[string]any{"dryRun": true}},
		{"folded names", `{"replicas":1,"dry_run":true,"\u00e9t\u00e9":2,"\u03c3":3}`, Options{Names: NamesFolded},
			map[string]any{"replicas": json.Number("1"), "dry_run": true, "\u00e9t\u00e9": json.Number("2"), "\u03c3": json.Number("3")}},
		{"values are not names", `{"a":"Replicas"}`, Options{Names: NamesFolded}, map[string]any{"a": "Replicas"}},
		{"depth at limit", `[[[1]]]`, Options{MaxDepth: 3}, []any{[]any{[]any{json.Number("1")}}}},
		{"many members", `{` + manyMembers(60) + `}`, Options{}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := Decode([]byte(tc.in), tc.opts)
			if err != nil {
				t.Fatalf("Decode(%q): %v", tc.in, err)
			}
			if tc.want != nil && !reflect.DeepEqual(v, tc.want) {
				t.Fatalf("Decode(%q) = %#v, want %#v", tc.in, v, tc.want)
			}
		})
	}
}

func TestRoundTrips(t *testing.T) {
	for lit, want := range map[string]bool{
		"0": true, "-0": true, "0.0": true, "1": true, "1.0": true, "1e0": true, "100": true, "1e2": true,
		"0.1": true, "0.30000000000000004": true, "0.3": true, "0.30000000000000001": false,
		"9007199254740992": true, "9007199254740993": false, "1e21": true, "1e308": true, "1e309": false,
		"5e-324": true, "2e-324": false, "1e-7": true, "123456789.123456789": false, "-3.25": true,
	} {
		if got := RoundTrips(lit); got != want {
			t.Errorf("RoundTrips(%s) = %v, want %v", lit, got, want)
		}
	}
}

// FuzzDecode is the differential test of the package's promise: a text
// Decode accepts is read the same way by encoding/json (case-insensitive
// names, last one wins, invalid text replaced) and by a case-sensitive
// decoder (go-json-experiment/json, the coming encoding/json/v2), and every
// number it holds has the same value as a float64.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{`{"replicas":5,"Replicas":20}`, `{"a":{"b":[1,2,{"c":null}]},"d":"\u00e9"}`,
		`{"ver\u017fion":"v1"}`, `"\ud83d\ude00"`, `"\ud800"`, "\"\xff\"", `[9007199254740993]`, `[1e400, 0.5]`,
		`{"\u212a":1,"k":2}`, `[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]`, ` 1 `, `{"a":1} x`} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, folded bool) {
		opts := Options{}
		if folded {
			opts.Names = NamesFolded
		}
		v, err := Decode(data, opts)
		if err != nil {
			return
		}
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.UseNumber()
		var std any
		if err := dec.Decode(&std); err != nil {
			t.Fatalf("encoding/json refuses what Decode accepted (%v): %q", err, data)
		}
		if !reflect.DeepEqual(v, std) {
			t.Fatalf("encoding/json reads %q as\n %#v\nDecode as\n %#v", data, std, v)
		}
		var v2 any
		if err := jsonv2.Unmarshal(data, &v2); err != nil {
			t.Fatalf("the case-sensitive decoder refuses what Decode accepted (%v): %q", err, data)
		}
		if !reflect.DeepEqual(floats(v), v2) {
			t.Fatalf("the case-sensitive decoder reads %q as\n %#v\nDecode as\n %#v", data, v2, v)
		}
	})
}

// floats is v with every json.Number as the float64 a float reader gets.
func floats(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = floats(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = floats(e)
		}
		return out
	case json.Number:
		f, err := x.Float64()
		if err != nil {
			panic(err)
		}
		return f
	}
	return v
}

func BenchmarkDecode(b *testing.B) {
	body := []byte(`{"replicas": 3, "reason": "incident inc-42: checkout latency", "labels": {"team": "payments", "tier": "1"}}`)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(body, Options{Object: true, Names: NamesFolded}); err != nil {
			b.Fatal(err)
		}
	}
}

// TestFoldedNames: FoldedNames agrees with Decode's NamesFolded rule on a
// value decoded with NamesDistinct.
func TestFoldedNames(t *testing.T) {
	for _, tc := range []string{
		`{"a":1}`, `{"A":1}`, `{"a":{"b":[{"c":1}]}}`, `{"a":{"b":[{"C":1}]}}`, `{"\u017f":1}`, `{"\u212a":1}`,
		`[{"x":1},{"Y":2}]`, `"s"`, `{"é":1}`, `{"É":1}`,
	} {
		v, err := Decode([]byte(tc), Options{})
		if err != nil {
			t.Fatalf("%s: %v", tc, err)
		}
		_, ferr := Decode([]byte(tc), Options{Names: NamesFolded})
		if got, want := FoldedNames(v), ferr == nil; got != want {
			t.Errorf("%s: FoldedNames %v, Decode with NamesFolded %v", tc, got, ferr)
		}
	}
}
