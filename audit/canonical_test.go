package audit_test

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/agentpassport/passport/audit"
)

var update = flag.Bool("update", false, "rewrite testdata golden files")

// goldenRecord has every kind of value the encoding must pin: nested JSON
// with unsorted keys, HTML characters, non-ASCII, control characters,
// floats, and a CR/LF that must stay escaped.
func goldenRecord() *audit.Record {
	return &audit.Record{
		V:              audit.Version,
		Kind:           audit.KindDecision,
		Time:           time.Date(2026, 11, 25, 20, 30, 0, 123456789, time.UTC),
		RequestID:      "req-0001",
		Tenant:         "acme",
		AgentID:        "ag_7f3",
		AgentName:      "healer-1",
		AgentType:      "healer",
		TrustLevel:     "HIGH",
		Reputation:     72.25,
		JTI:            "jti-123",
		TaskID:         "inc-123",
		Subject:        "ops@acme.example",
		Method:         "POST",
		Path:           "/services/checkout/restart?a=1&b=<x>\r\nX-Forged: é",
		Route:          "POST /services/{name}/restart",
		Action:         "service.restart",
		Resource:       "checkout",
		Decision:       audit.DecisionAllow,
		Reasons:        []string{"capability_granted", "trust_ok"},
		PolicyRevision: "sha256:abc",
		Input:          json.RawMessage(`{"version":1,"b":[3,1.50,"z"],"a":{"y":null,"x":true}}`),
		Writer:         "proxy-a",
		Seq:            3,
		Prev:           "5f2b0c3c9f8e0d1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192",
	}
}

func TestCanonicalEncodingGolden(t *testing.T) {
	rec := goldenRecord()
	stored, err := audit.Seal(rec)
	if err != nil {
		t.Fatal(err)
	}
	canon, err := audit.Canonical(stored)
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprintf("stored: %s\ncanonical: %s\nhash: %s\n", stored, canon, rec.Hash)
	path := filepath.Join("testdata", "canonical.golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run Golden -update)", err)
	}
	if got != string(want) {
		t.Errorf("canonical encoding changed (a breaking change for every stored chain):\n got: %s\nwant: %s", got, want)
	}
	// The writer stores records in canonical member order, so the stored
	// bytes are the canonical bytes with the hash filled in.
	if want := bytes.Replace(stored, []byte(`"hash":"`+rec.Hash+`"`), []byte(`"hash":""`), 1); !bytes.Equal(want, canon) {
		t.Errorf("stored record is not in canonical form:\n%s\n%s", stored, canon)
	}
	// Verification from the stored bytes agrees with the writer.
	if h, _ := audit.HashRaw(stored); h != rec.Hash {
		t.Errorf("HashRaw(stored) = %s, Seal set %s", h, rec.Hash)
	}
	// Whitespace and member order of the stored JSON do not matter; values do.
	var pretty bytes.Buffer
	_ = json.Indent(&pretty, stored, "", "  ")
	if h, _ := audit.HashRaw(pretty.Bytes()); h != rec.Hash {
		t.Error("re-indented record hashes differently")
	}
	if !bytes.Contains(canon, []byte(`\r\n`)) || bytes.Contains(canon, []byte("\r\n")) {
		t.Error("CR/LF must stay escaped in the encoding")
	}
}

// chainOf builds three sealed records of one writer and the verifier's view.
func chainOf() (raws [][]byte, heads map[string]audit.Anchor) {
	prev := ""
	for i := range 3 {
		r := goldenRecord()
		r.RequestID = fmt.Sprintf("req-%d", i)
		r.Seq, r.Prev = uint64(i+1), prev
		raw, _ := audit.Seal(r)
		raws = append(raws, raw)
		prev = r.Hash
	}
	return raws, map[string]audit.Anchor{"proxy-a": {Seq: 3, Hash: prev}}
}

// FuzzVerify replaces one record of a valid chain with arbitrary bytes.
// The verifier must never panic, and whenever the replacement differs from
// the original in canonical form (or is not a record at all), it must
// report a problem: no change goes unnoticed.
func FuzzVerify(f *testing.F) {
	raws, _ := chainOf()
	for i, r := range raws {
		f.Add(r, uint8(i))
	}
	f.Add([]byte(`{"v":1}`), uint8(1))
	f.Add([]byte(`{"writer":"proxy-a","seq":2,"hash":""}`), uint8(1))
	f.Add([]byte(`[]`), uint8(0))
	f.Fuzz(func(t *testing.T, mutated []byte, idx uint8) {
		raws, heads := chainOf()
		i := int(idx) % len(raws)
		keys := map[string]ed25519.PublicKey{"proxy-a": make(ed25519.PublicKey, ed25519.PublicKeySize)}
		v := audit.NewVerifier("acme", keys, heads)
		for j, r := range raws {
			if j == i {
				r = mutated
			}
			v.Add(fmt.Sprintf("1-%d", j), r)
		}
		rep := v.Finish()
		orig, _ := audit.Canonical(raws[i])
		canon, err := audit.Canonical(mutated)
		if (err != nil || !bytes.Equal(canon, orig)) && rep.OK() {
			t.Fatalf("record %d replaced by %q and the chain still verifies", i, mutated)
		}
		for _, p := range rep.Problems {
			_ = p.String()
		}
	})
}

// FuzzCanonical: the encoding is a fixed point (canonical input maps to
// itself), rejects invalid input without panicking, and ignores member
// order and whitespace.
func FuzzCanonical(f *testing.F) {
	raws, _ := chainOf()
	for _, r := range raws {
		f.Add(r)
	}
	f.Add([]byte(`{"b":1,"a":{"d":[1,2,{"z":0,"y":"\u2028"}],"c":"<&>"}}`))
	f.Add([]byte(`{"a":1e400}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		c1, err := audit.Canonical(raw)
		if err != nil {
			return
		}
		c2, err := audit.Canonical(c1)
		if err != nil {
			t.Fatalf("canonical form %q does not re-parse: %v", c1, err)
		}
		if !bytes.Equal(c1, c2) {
			t.Fatalf("not a fixed point:\n%s\n%s", c1, c2)
		}
		var pretty bytes.Buffer
		if json.Indent(&pretty, raw, "", "\t") == nil {
			c3, err := audit.Canonical(pretty.Bytes())
			if err != nil || !bytes.Equal(c1, c3) {
				t.Fatalf("whitespace changed the canonical form: %v\n%s\n%s", err, c1, c3)
			}
		}
	})
}
