package audit

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// FuzzReadSegment: whatever a segment file holds, reading it never
// panics, and an entry it hands out has an id and comes in order.
func FuzzReadSegment(f *testing.F) {
	enc, _ := zstd.NewWriter(nil)
	plain := `{"passport_audit_segment":1,"stream":"passport:{t:acme}:audit"}` + "\n" +
		string(segmentLine(nil, "1-1", []byte(`{"v":1}`))) +
		string(segmentLine(nil, "1-2", []byte("not json\n"))) +
		`{"end":{"first":"1-1","last":"1-2","records":2,"checkpoint":"1-2","ends":{}}}` + "\n"
	f.Add(enc.EncodeAll([]byte(plain), nil))
	f.Add(enc.EncodeAll([]byte(plain[:len(plain)/2]), nil))
	f.Add([]byte("plain text"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(dir, "s")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		var prev string
		_, _ = readSegment(p, func(id string, raw []byte) error {
			if !validID(id) || prev != "" && !IDLess(prev, id) {
				t.Fatalf("entry %q after %q", id, prev)
			}
			prev = id
			return nil
		})
	})
}

// A stored value that is not one line of JSON goes in base64 and comes
// back byte for byte.
func TestSegmentLineKeepsTheBytes(t *testing.T) {
	for _, raw := range []string{`{"a":1}`, "{\"a\":\n1}", `{"a":1} `, "\xff\xfe", "", `[1]`, `{"a":"\u2028"}`} {
		enc, _ := zstd.NewWriter(nil)
		plain := `{"passport_audit_segment":1,"stream":"s"}` + "\n" + string(segmentLine(nil, "5-0", []byte(raw))) +
			`{"end":{"first":"5-0","last":"5-0","records":1,"checkpoint":"5-0"}}` + "\n"
		p := filepath.Join(t.TempDir(), "s")
		if err := os.WriteFile(p, enc.EncodeAll([]byte(plain), nil), 0o600); err != nil {
			t.Fatal(err)
		}
		var got []byte
		if _, err := readSegment(p, func(_ string, r []byte) error { got = r; return nil }); err != nil {
			t.Fatalf("%q: %v", raw, err)
		}
		if string(got) != raw {
			t.Errorf("stored %q, read back %q", raw, got)
		}
	}
}
