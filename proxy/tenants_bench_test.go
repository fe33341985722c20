package proxy

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/agentpassport/passport/passport"
	"github.com/agentpassport/passport/proxy/internal/testkeys"
)

// BenchmarkTenThousandTenants verifies a passport of each of 10 agents in
// each of 10,000 tenants (100,000 passports, each verified once, as a
// proxy in front of a large installation sees them) and reports the heap
// the proxy keeps afterwards. The verified-passport cache is bounded
// (verify_cache_size, default 10,000), so the heap must not grow with the
// number of passports: it reports the heap per cached passport and the
// heap after every passport was seen, against the heap after the first
// 10,000.
//
//	go test -run XXX -bench TenThousandTenants -benchtime 1x ./proxy/
func BenchmarkTenThousandTenants(b *testing.B) {
	const tenants, agents = 10_000, 10
	p, keys, _ := libraryProxyKeys(b)
	now := time.Now()
	toks := make([]string, 0, tenants*agents)
	for t := range tenants {
		for a := range agents {
			c := testkeys.Claims(now, fmt.Sprintf("tenant-%05d", t), fmt.Sprintf("agent-%d", a), "healer", passport.TrustHigh, "service.get")
			toks = append(toks, keys.Sign(b, c))
		}
	}
	ctx := context.Background()
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	for b.Loop() {
		p.verifier.cache = newTokenCache(p.cfg.VerifyCacheSize)
		base := heap()
		start := time.Now()
		var atCap uint64
		for i, tok := range toks {
			if _, err := p.verifier.verify(ctx, tok); err != nil {
				b.Fatalf("passport %d: %v", i, err)
			}
			if i+1 == p.cfg.VerifyCacheSize {
				atCap = heap()
			}
		}
		took := time.Since(start)
		end := heap()
		b.ReportMetric(float64(len(toks))/took.Seconds(), "first-verifies/s")
		b.ReportMetric(float64(atCap-min(atCap, base))/float64(p.cfg.VerifyCacheSize), "heap-bytes/cached-passport")
		b.ReportMetric(float64(end-min(end, base))/1e6, "heap-MB-after-100k")
		b.ReportMetric(float64(atCap-min(atCap, base))/1e6, "heap-MB-after-10k")
	}
}
