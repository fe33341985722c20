package jsonstr

import (
	"bytes"
	"encoding/json"
	"testing"
)

// reference is what encoding/json writes for s in each mode.
func reference(t testing.TB, s string, mode Mode) []byte {
	t.Helper()
	if mode&EscapeInvalid == 0 {
		// Through encoding/json and a decoder first: invalid bytes are
		// then U+FFFD itself.
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, &s); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(mode&HTML != 0)
	if err := enc.Encode(s); err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

var modes = []Mode{0, HTML, EscapeInvalid, HTML | EscapeInvalid}

func TestAppendMatchesEncodingJSON(t *testing.T) {
	cases := []string{
		"", "plain", `quote " and \ backslash`, "tab\tnew\nline\rcr\bbs\fff", "\x00\x01\x1f\x7f",
		"<script>&amp;</script>", "line\u2028sep\u2029para", "caf\u00e9 \U0001F600", "bad \xff\xfe utf-8 \xc3",
		"truncated \xe2\x82", "/services/checkout/restart?x=<1>&y=2",
	}
	for _, s := range cases {
		for _, m := range modes {
			want := reference(t, s, m)
			if got := Append(nil, s, m); !bytes.Equal(got, want) {
				t.Errorf("Append(%q, mode %d) = %s, want %s", s, m, got, want)
			}
			if got := Append([]byte("x"), []byte(s), m); !bytes.Equal(got[1:], want) {
				t.Errorf("Append([]byte %q, mode %d) = %s, want %s", s, m, got[1:], want)
			}
		}
	}
}

func FuzzAppend(f *testing.F) {
	for _, s := range []string{"", "a\"b", "<&>", "\xff", "\u2028", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, m := range modes {
			if got, want := Append(nil, s, m), reference(t, s, m); !bytes.Equal(got, want) {
				t.Fatalf("Append(%q, mode %d) = %s, want %s", s, m, got, want)
			}
		}
	})
}
