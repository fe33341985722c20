package proxy

import (
	"sync"
	"testing"

	"github.com/agentpassport/passport/audit"
)

// TestPassportRecordedOnceUnderConcurrency: the first calls of a passport,
// all at once, write one passport record, and every decision references
// it with the digest of the claims it holds.
func TestPassportRecordedOnceUnderConcurrency(t *testing.T) {
	h := newHarness(t)
	_, tok := h.healer()
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			if r := h.do("GET", "/services/checkout", tok, nil, ""); r.status != 200 {
				t.Errorf("status %d", r.status)
			}
		})
	}
	wg.Wait()
	var passports []*audit.Record
	decisions := 0
	for _, rec := range h.sink.all() {
		switch rec.Kind {
		case audit.KindPassport:
			passports = append(passports, rec)
		case audit.KindDecision:
			decisions++
			if rec.PassportID == "" {
				t.Fatalf("decision %s keeps the claims inline", rec.RequestID)
			}
			h.sink.input(t, rec) // resolves: the id names the passport record, the digest matches
		}
	}
	if len(passports) != 1 || decisions != 50 {
		t.Fatalf("%d passport records for %d decisions, want 1 for 50", len(passports), decisions)
	}
}
