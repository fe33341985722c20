package feed

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
)

// BenchmarkFeedManyTenants: one dashboard client on each of many tenants
// (50 by default, PASSPORT_BENCH_FEED_TENANTS sets another count), the
// hub with its defaults and the default Redis pool, on one redis-server or,
// with PASSPORT_BENCH_FEED_CLUSTER=1, on a 3-primary Cluster; a record is
// written to every tenant's stream each 100 ms for 3 s. It reports the
// delivery lag (write to the client's read) p50 and p99, the hub's heap per
// client and how many records never arrived within 5 s.
//
//	go test -run XXX -bench FeedManyTenants -benchtime 1x ./feed/
func BenchmarkFeedManyTenants(b *testing.B) {
	tenants := 50
	if v, err := strconv.Atoi(os.Getenv("PASSPORT_BENCH_FEED_TENANTS")); err == nil && v > 0 {
		tenants = v
	}
	for b.Loop() {
		var e *env
		if os.Getenv("PASSPORT_BENCH_FEED_CLUSTER") == "1" {
			e = newEnvOn(b, redistest.StartCluster(b).Client(), Config{})
		} else {
			e = newTBEnv(b, Config{})
		}
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		conns := make([]*websocket.Conn, tenants)
		for i := range conns {
			d := websocket.Dialer{}
			c, _, err := d.Dial(e.wsURL(url.Values{"tenant": {tenantName(i)}}), http.Header{"Authorization": {"Bearer " + adminToken}})
			if err != nil {
				b.Fatalf("dial client %d: %v", i, err)
			}
			defer c.Close()
			untilLive(b, c)
			conns[i] = c
		}
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)

		const rounds = 30
		var mu sync.Mutex
		var lags []time.Duration
		got := 0
		var wg sync.WaitGroup
		for _, c := range conns {
			wg.Go(func() {
				for n := 0; n < rounds; {
					_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
					_, msg, err := c.ReadMessage()
					if err != nil {
						return // counted as not arrived
					}
					for _, line := range splitLines(msg) {
						var ev struct {
							Time time.Time `json:"time"`
						}
						if json.Unmarshal(line, &ev) != nil || ev.Time.IsZero() {
							continue
						}
						mu.Lock()
						lags = append(lags, time.Since(ev.Time))
						got++
						mu.Unlock()
						n++
					}
				}
			})
		}
		ctx := context.Background()
		tick := time.NewTicker(100 * time.Millisecond)
		for r := range rounds {
			<-tick.C
			p := e.rdb.Pipeline()
			for i := range tenants {
				rec := audit.Record{V: 1, Kind: audit.KindDecision, Tenant: tenantName(i), AgentID: "ag", Action: "service.get",
					Decision: "allow", Writer: "bench", Seq: uint64(r + 1), Time: time.Now()}
				raw, _ := json.Marshal(rec)
				p.XAdd(ctx, &redis.XAddArgs{Stream: passport.AuditStreamKey(tenantName(i)), Values: []any{RecordField, string(raw)}})
			}
			if _, err := p.Exec(ctx); err != nil {
				b.Fatal(err)
			}
		}
		tick.Stop()
		wg.Wait()
		slices.Sort(lags)
		q := func(f float64) float64 {
			if len(lags) == 0 {
				return 0
			}
			return float64(lags[int(f*float64(len(lags)-1))].Microseconds()) / 1000
		}
		b.ReportMetric(q(0.5), "lag-p50-ms")
		b.ReportMetric(q(0.99), "lag-p99-ms")
		b.ReportMetric(float64(tenants*rounds-got), "not-arrived")
		b.ReportMetric(float64(after.HeapInuse-min(after.HeapInuse, before.HeapInuse))/float64(tenants)/1024, "heap-KiB/client")
	}
}

func tenantName(i int) string { return fmt.Sprintf("tenant%05d", i) }

func splitLines(b []byte) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		i := slices.Index(b, '\n')
		if i < 0 {
			return append(out, b)
		}
		out, b = append(out, b[:i]), b[i+1:]
	}
	return out
}
