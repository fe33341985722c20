package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
)

// TestLoggerRateLimited: the process logger writes one line per warning or
// error event per second (the rest are counted), and info lines in full.
func TestLoggerRateLimited(t *testing.T) {
	var buf bytes.Buffer
	a := &app{getenv: func(string) string { return "" }, stderr: &buf, logLevel: "info"}
	log, err := a.logger()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 500 {
		log.Error("agent state unavailable; refusing", "request_id", i)
		log.Info("proxy listening", "n", i)
	}
	if n := strings.Count(buf.String(), "agent state unavailable"); n != 1 {
		t.Fatalf("%d error lines for one event within a second, want 1", n)
	}
	if n := strings.Count(buf.String(), "proxy listening"); n != 500 {
		t.Fatalf("%d info lines, want 500", n)
	}
}

// TestAuditLineRefusals: `audit tail` shows a refusals summary with its
// count, reason and source.
func TestAuditLineRefusals(t *testing.T) {
	first := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	sum, _ := json.Marshal(audit.RefusalSummary{Reason: "no_passport", Count: 37, First: first, Last: first.Add(time.Second),
		FirstRequestID: "r1", LastRequestID: "r37", Source: "10.0.0.9"})
	rec := audit.Record{V: 1, Kind: audit.KindRefusals, Time: first.Add(time.Second), Tenant: "unattributed",
		Decision: audit.DecisionError, Reasons: []string{"no_passport"}, Status: 401, Route: "restart", Details: sum,
		Writer: "w1", Seq: 9}
	raw, _ := json.Marshal(rec)
	line := audit.Line(redis.XMessage{ID: "1-0", Values: map[string]any{audit.FieldRecord: string(raw)}})
	for _, want := range []string{"refusals error status=401 count=37", "reasons=no_passport", "route=restart",
		"source=10.0.0.9", "first=2026-01-02T03:04:05.000Z", "first_req=r1", "last_req=r37", "writer=w1 seq=9"} {
		if !strings.Contains(line, want) {
			t.Fatalf("%q lacks %q", line, want)
		}
	}
}
