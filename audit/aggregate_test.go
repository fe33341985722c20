package audit_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
)

type memSink struct{ recs []*audit.Record }

func (m *memSink) Append(_ context.Context, r *audit.Record) (audit.Receipt, error) {
	m.recs = append(m.recs, r)
	return audit.ReceiptForTest("", r), nil
}
func (m *memSink) Enqueue(r *audit.Record) { m.recs = append(m.recs, r) }

func refusalRec(i int, tenant, reason string) *audit.Record {
	return &audit.Record{Kind: audit.KindDecision, Time: time.Unix(1700000000, int64(i)*int64(time.Millisecond)).UTC(),
		RequestID: fmt.Sprintf("r%d", i), Tenant: tenant, Route: "restart", Action: "service.restart",
		Decision: audit.DecisionError, Reasons: []string{reason}, Status: 401}
}

func TestAggregatorSummarises(t *testing.T) {
	sink := &memSink{}
	a := audit.NewAggregator(sink, audit.AggregatorConfig{MaxKeys: 5}, nil)
	sources := []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"}
	for i := range 1200 {
		reason := "no_passport"
		if i%2 == 1 {
			reason = "bad_signature"
		}
		a.Add(refusalRec(i, "unattributed", reason), sources[i%3], false)
	}
	a.Flush()
	total := 0
	other := 0
	for _, r := range sink.recs {
		if r.Kind != audit.KindRefusals || r.Tenant != "unattributed" || r.Status != 401 || r.Route != "restart" {
			t.Fatalf("summary record: %+v", r)
		}
		var s audit.RefusalSummary
		if err := json.Unmarshal(r.Details, &s); err != nil {
			t.Fatal(err)
		}
		if s.Reason != r.Reasons[0] || s.Count == 0 || s.Last.Before(s.First) || !r.Time.Equal(s.Last) ||
			s.FirstRequestID == "" || s.LastRequestID == "" {
			t.Fatalf("summary: %+v", s)
		}
		if s.Source == "other" {
			other++
		}
		total += s.Count
	}
	// 3 sources x 2 reasons = 6 keys, bounded to 5: one collapses.
	if len(sink.recs) != 6 || other != 1 {
		t.Fatalf("%d summaries (%d of source other), want 5 + 1", len(sink.recs), other)
	}
	if total != 1200 {
		t.Fatalf("counts add up to %d, want 1200", total)
	}
	a.Flush()
	if len(sink.recs) != 6 {
		t.Fatal("an empty window wrote records")
	}
}

// TestRefusalsRecordVerifies: summary records written through the stream
// verify like any other, and several per second from one writer are no
// duplicates (they carry no request id of their own).
func TestRefusalsRecordVerifies(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	s := newStream(t, rdb, audit.StreamConfig{})
	stop := runStream(t, s)
	a := audit.NewAggregator(s, audit.AggregatorConfig{}, nil)
	for i := range 100 {
		a.Add(refusalRec(i, "acme", "no_passport"), fmt.Sprintf("10.0.0.%d", i%4), i%2 == 0)
	}
	a.Flush()
	stop()
	recs := streamRecords(t, rdb, "acme")
	n := 0
	for _, r := range recs {
		if r.Kind == audit.KindRefusals {
			n++
		}
	}
	if n != 4 {
		t.Fatalf("%d refusals records, want 4 (one per source)", n)
	}
	mustOK(t, verify(t, rdb, "acme", audit.VerifyOptions{}))
}
