package audit

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func spoolRec(i int) *Record {
	return &Record{V: Version, Kind: KindOutcome, Time: time.Unix(1700000000, int64(i)).UTC(), Tenant: "acme",
		RequestID: fmt.Sprintf("req-%06d", i), Status: 200, Decision: DecisionAllow, LatencyMS: 1.5}
}

// TestSpoolOrderAcrossSegmentsAndReopen: records come back in the order
// they went in, across segment files, across a reopen (a restart after a
// crash) from the last acknowledged place, and a torn last line is cut.
func TestSpoolOrderAcrossSegmentsAndReopen(t *testing.T) {
	defer func(v int64) { spoolSegmentBytes = v }(spoolSegmentBytes)
	spoolSegmentBytes = 4 << 10
	dir := t.TempDir()
	sp, err := openSpool(dir)
	if err != nil {
		t.Fatal(err)
	}
	const n = 500
	for i := 0; i < n; i += 25 {
		var recs []*Record
		for j := i; j < i+25; j++ {
			recs = append(recs, spoolRec(j))
		}
		if err := sp.append(recs); err != nil {
			t.Fatal(err)
		}
	}
	if sp.len() != n || len(sp.segs) < 5 {
		t.Fatalf("len %d, segments %d; want %d records over several segments", sp.len(), len(sp.segs), n)
	}
	if _, err := openSpool(dir); err == nil {
		t.Fatal("a second writer opened a locked spool")
	}
	next := 0
	read := func(sp *spool, max int) {
		t.Helper()
		recs, pos, size, err := sp.read(max)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if want := fmt.Sprintf("req-%06d", next); r.RequestID != want || !r.Time.Equal(spoolRec(next).Time) {
				t.Fatalf("read %s at %v, want %s", r.RequestID, r.Time, want)
			}
			next++
		}
		if err := sp.ack(pos, len(recs), size); err != nil {
			t.Fatal(err)
		}
	}
	read(sp, 130)
	read(sp, 70)
	// Records appended while replaying go to the tail.
	if err := sp.append([]*Record{spoolRec(n), spoolRec(n + 1)}); err != nil {
		t.Fatal(err)
	}
	sp.close()

	// A crash in the middle of a write leaves a torn line.
	last := filepath.Join(dir, fmt.Sprintf("%016d.spool", sp.segs[len(sp.segs)-1]))
	f, err := os.OpenFile(last, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.WriteString(`0badc0de {"v":1,"kind":"outc`)
	f.Close()

	sp, err = openSpool(dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(n + 2 - 200); sp.len() != want {
		t.Fatalf("after reopen: %d records, want %d", sp.len(), want)
	}
	for sp.len() > 0 {
		read(sp, 64)
	}
	if next != n+2 {
		t.Fatalf("read %d records, want %d", next, n+2)
	}
	if sp.bytes.Load() != 0 || len(sp.segs) != 0 {
		t.Fatalf("empty spool keeps %d bytes, %d segments", sp.bytes.Load(), len(sp.segs))
	}
	// Appending after the torn line was cut works and reads back.
	if err := sp.append([]*Record{spoolRec(7)}); err != nil {
		t.Fatal(err)
	}
	recs, _, _, err := sp.read(10)
	if err != nil || len(recs) != 1 || recs[0].RequestID != "req-000007" {
		t.Fatalf("after reset: %v %v", recs, err)
	}
	sp.close()
}
