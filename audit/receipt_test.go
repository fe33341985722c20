package audit_test

import (
	"context"
	"testing"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
)

// TestAppendReceipt: an acknowledged append returns the receipt of its
// record (its stream id, its request); a failed one returns the zero
// receipt, which acknowledges nothing.
func TestAppendReceipt(t *testing.T) {
	srv := redistest.Start(t)
	s := newStream(t, srv.Client(), audit.StreamConfig{})
	rec := decision("acme", 1)
	rc, err := s.Append(context.Background(), rec)
	if err != nil {
		t.Fatal(err)
	}
	if !rc.For(rec.RequestID) || rc.For("req-acme-2") || rc.ID() == "" {
		t.Fatalf("receipt %+v for %s", rc, rec.RequestID)
	}
	bad := decision("no}such", 2) // a tenant the stream refuses
	rc, err = s.Append(context.Background(), bad)
	if err == nil || rc.For(bad.RequestID) || rc != (audit.Receipt{}) {
		t.Fatalf("failed append: receipt %+v, error %v", rc, err)
	}
	if (audit.Receipt{}).For("") {
		t.Fatal("the zero receipt acknowledges a record")
	}
}
