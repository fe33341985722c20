package healer

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/agentpassport/passport/examples/fleet"
)

// BenchmarkChaosToResolved measures, for each fault type, the time from
// the fault's injection into the real fleet to the incident being
// RESOLVED, with the default check settings (200ms, fall 2, rise 1) and
// the fleet's announcements subscribed, as `passport up` runs it. The
// clock starts just before Fleet.Inject, so detection is inside the
// figure. checks_only/service_down is the same without announcements:
// detection then waits for the check interval.
//
// It reports p50-ms and p95-ms (injection to RESOLVED) and detect-p50-ms
// (injection to DETECTED). Run with e.g. -benchtime=20x.
func BenchmarkChaosToResolved(b *testing.B) {
	targets := map[string]string{
		fleet.FaultServiceDown: "checkout", fleet.FaultBadDeploy: "payments",
		fleet.FaultMemoryLeak: "checkout", fleet.FaultCacheMiss: "payments",
	}
	for _, typ := range fleet.FaultTypes {
		b.Run(typ, func(b *testing.B) { benchFault(b, typ, targets[typ], true) })
	}
	b.Run("checks_only/"+fleet.FaultServiceDown, func(b *testing.B) {
		benchFault(b, fleet.FaultServiceDown, "checkout", false)
	})
}

func benchFault(b *testing.B, typ, target string, announced bool) {
	s := startStack(b, false, func(c *Config) {
		if !announced {
			c.Announcements.URL = ""
		}
	})
	if announced {
		eventually(b, 10*time.Second, "announcements connected", func() bool {
			return testutil.ToFloat64(s.h.annConnected) == 1
		})
	}
	var total, detect []float64
	seen := map[string]bool{}
	for b.Loop() {
		// The previous round's repair must be complete.
		eventually(b, 10*time.Second, "target healthy", func() bool {
			st, _ := s.fleet.Service(target)
			return st.Up && st.Fault == "" && len(s.h.Open()) == 0
		})
		start := time.Now()
		if err := s.fleet.Inject(typ, target); err != nil {
			b.Fatal(err)
		}
		var in *Incident
		eventually(b, 10*time.Second, "resolved", func() bool {
			list, _ := s.store.List(context.Background(), "acme", 5)
			for _, x := range list {
				if !seen[x.ID] && x.State == StateResolved && x.Type == typ {
					in = x
					return true
				}
			}
			return false
		})
		seen[in.ID] = true
		if announced && in.InjectedAt == nil {
			b.Fatalf("incident %s has no injected_at with announcements on", in.ID)
		}
		total = append(total, ms(in.ResolvedAt.Sub(start)))
		detect = append(detect, ms(in.DetectedAt.Sub(start)))
	}
	b.ReportMetric(percentile(total, 0.50), "p50-ms")
	b.ReportMetric(percentile(total, 0.95), "p95-ms")
	b.ReportMetric(percentile(detect, 0.50), "detect-p50-ms")
	b.ReportMetric(0, "ns/op")
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// percentile is the nearest-rank percentile of xs (p in 0..1).
func percentile(xs []float64, p float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	i := int(p*float64(len(s))+0.999999) - 1
	return s[max(0, min(len(s)-1, i))]
}
