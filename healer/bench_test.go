package healer

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/agentpassport/passport/examples/fleet"
)

// BenchmarkChaosToResolved measures, for each fault type, the time from
// the fault being injected into the real fleet to the incident being
// RESOLVED, with the default check intervals (200ms, fall 2, rise 1). It
// reports p50 and p95 in milliseconds. Run with e.g. -benchtime=20x.
func BenchmarkChaosToResolved(b *testing.B) {
	targets := map[string]string{
		fleet.FaultServiceDown: "checkout", fleet.FaultBadDeploy: "payments",
		fleet.FaultMemoryLeak: "checkout", fleet.FaultCacheMiss: "payments",
	}
	for _, typ := range fleet.FaultTypes {
		b.Run(typ, func(b *testing.B) {
			s := startStack(b, false, nil)
			target := targets[typ]
			var lat []float64
			seen := map[string]bool{}
			for b.Loop() {
				// The previous round's repair must be complete.
				eventually(b, 10*time.Second, "target healthy", func() bool {
					st, _ := s.fleet.Service(target)
					return st.Up && st.Fault == ""
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
				lat = append(lat, float64(in.ResolvedAt.Sub(start).Microseconds())/1000)
			}
			slices.Sort(lat)
			pct := func(p float64) float64 { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
			b.ReportMetric(pct(0.50), "p50-ms")
			b.ReportMetric(pct(0.95), "p95-ms")
			b.ReportMetric(0, "ns/op")
		})
	}
}
