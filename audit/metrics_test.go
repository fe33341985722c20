package audit_test

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
)

func TestMetricsExported(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true, Fsync: "everysec"})
	reg := prometheus.NewRegistry()
	s, err := audit.NewStream(srv.Client(), audit.StreamConfig{OutcomeBuffer: 1}, testLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 3 {
		if _, err := s.Append(context.Background(), decision("acme", i)); err != nil {
			t.Fatal(err)
		}
	}
	s.Enqueue(decision("acme", 10))
	s.Enqueue(decision("acme", 11)) // buffer of 1 and no Run: dropped
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue() + float64(m.GetHistogram().GetSampleCount())
			for _, l := range m.GetLabel() {
				if l.GetName() == "level" && l.GetValue() != "everysec" {
					v = 0
				}
			}
			got[mf.GetName()] += v
		}
	}
	want := map[string]float64{
		"passport_audit_records_written_total":   3,
		"passport_audit_batch_size_records":      1, // histogram sample count >= 1
		"passport_audit_write_duration_seconds":  1,
		"passport_audit_append_duration_seconds": 3,
		"passport_audit_outcome_dropped_total":   1,
		"passport_audit_outcome_buffer_records":  1,
		"passport_audit_durability_status":       1, // level="everysec" is 1
	}
	for name, min := range want {
		if got[name] < min {
			t.Errorf("%s = %v, want >= %v", name, got[name], min)
		}
	}
	if _, ok := got["passport_audit_write_failures_total"]; ok && got["passport_audit_write_failures_total"] != 0 {
		t.Errorf("failures counted without a failure: %v", got["passport_audit_write_failures_total"])
	}
	if err := s.Ready(audit.DurabilityAlways); err == nil {
		t.Error("Ready(always) with appendfsync everysec must fail")
	}
	if err := s.Ready(audit.DurabilityEverysec); err != nil {
		t.Errorf("Ready(everysec): %v", err)
	}
}
