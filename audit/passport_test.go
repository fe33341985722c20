package audit_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
)

// TestPassportReferencesVerify: decisions that reference their passport
// record verify; a reference whose digest does not match the claims, or
// that names a record that is not a passport record, is a verdict; and
// ExpandInput puts the claims back.
func TestPassportReferencesVerify(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	s := newStream(t, rdb, audit.StreamConfig{WriterID: "proxy-a", CheckpointEvery: 5})
	ctx := context.Background()
	claims := json.RawMessage(`{"tenant":"acme","jti":"jti-1","sub":"c-1","agent":{"id":"agent-1","name":"a <b>"}}`)
	digest, err := audit.PassportDigest(claims)
	if err != nil {
		t.Fatal(err)
	}
	prc, err := s.Append(ctx, audit.PassportRecord("acme", "agent-1", "jti-1", claims, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	referencing := func(n int, id, digest string) *audit.Record {
		d := decision("acme", n)
		d.JTI, d.PassportID, d.PassportSHA256 = "jti-1", id, digest
		d.Input = json.RawMessage(`{"version":1,"action":"service.restart"}`)
		return d
	}
	var first audit.Receipt
	for i := range 3 {
		rc, err := s.Append(ctx, referencing(i, prc.ID(), digest))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = rc
		}
	}
	mustOK(t, verify(t, rdb, "acme", audit.VerifyOptions{}))

	// The claims come back, equal to what was recorded.
	msgs, err := rdb.XRange(ctx, audit.StreamKey("acme"), first.ID(), first.ID()).Result()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("read decision: %v %d", err, len(msgs))
	}
	rec, _, err := audit.ParseMessage(msgs[0])
	if err != nil {
		t.Fatal(err)
	}
	full, err := audit.NewInputResolver(rdb, "acme").Input(ctx, rec)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Passport map[string]any `json:"passport"`
		Action   string         `json:"action"`
	}
	if err := json.Unmarshal(full, &got); err != nil || got.Action != "service.restart" || got.Passport["jti"] != "jti-1" {
		t.Fatalf("expanded input %s (%v)", full, err)
	}

	// Another digest: the claims the decision was made on are not these.
	if _, err := s.Append(ctx, referencing(10, prc.ID(), strings.Repeat("A", 43))); err != nil {
		t.Fatal(err)
	}
	// A reference to a record that is not a passport record.
	if _, err := s.Append(ctx, referencing(11, first.ID(), digest)); err != nil {
		t.Fatal(err)
	}
	rep := verify(t, rdb, "acme", audit.VerifyOptions{})
	kinds := map[string]int{}
	for _, p := range rep.Problems {
		kinds[p.Kind]++
	}
	if kinds[audit.ProblemChanged] != 1 || kinds[audit.ProblemDeleted] != 1 || len(rep.Problems) != 2 {
		t.Fatalf("problems %v", rep.Problems)
	}
	bad := referencing(12, prc.ID(), strings.Repeat("A", 43))
	if _, err := audit.NewInputResolver(rdb, "acme").Input(ctx, bad); err == nil {
		t.Fatal("a reference with another digest resolved")
	}
}
