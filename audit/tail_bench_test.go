package audit_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
)

// BenchmarkTailTenThousandStreams: one Tail follows 10,000 tenants' streams
// (PASSPORT_BENCH_TAIL_STREAMS sets another count) on one redis-server or,
// with PASSPORT_BENCH_TAIL_CLUSTER=1, on a 3-primary Cluster; every stream
// gets an entry each second for 5 s, all in one pipeline. It reports the
// delivery lag (the pipeline's sending to the Tail's hand-over, so it
// includes the pipeline's own time) p50 and p99, how many entries never
// arrived, and the redis-servers' CPU per delivered entry: the feed hub's
// Redis cost with its clients spread over that many tenants.
//
//	go test -run XXX -bench TailTenThousandStreams -benchtime 1x ./audit/
func BenchmarkTailTenThousandStreams(b *testing.B) {
	n := 10000
	if v, err := strconv.Atoi(os.Getenv("PASSPORT_BENCH_TAIL_STREAMS")); err == nil && v > 0 {
		n = v
	}
	for b.Loop() {
		var rdb redis.UniversalClient
		var servers []*redistest.Server
		if os.Getenv("PASSPORT_BENCH_TAIL_CLUSTER") == "1" {
			c := redistest.StartCluster(b)
			rdb = c.Client()
			for _, p := range c.Primaries() {
				servers = append(servers, p.Server)
			}
		} else {
			s := redistest.Start(b)
			rdb, servers = s.Client(), []*redistest.Server{s}
		}
		ctx := context.Background()
		keys := make([]string, n)
		for i := range keys {
			keys[i] = audit.StreamKey(fmt.Sprintf("tenant%05d", i))
		}
		var mu sync.Mutex
		// By stream and entry id (ids repeat across streams): when its
		// pipeline was sent, when the tail handed it over.
		sent, got := map[string]time.Time{}, map[string]time.Time{}
		tail := audit.NewTail(rdb, audit.TailConfig{})
		for _, k := range keys {
			tail.Add(k, "0-0")
		}
		tctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			done <- tail.Run(tctx, func(stream string, msgs []redis.XMessage) {
				now := time.Now()
				mu.Lock()
				for _, m := range msgs {
					got[stream+" "+m.ID] = now
				}
				mu.Unlock()
			})
		}()
		cpu0 := cpuOf(b, servers)
		const rounds = 5
		tick := time.NewTicker(time.Second)
		for range rounds {
			<-tick.C
			p := rdb.Pipeline()
			cmds := make([]*redis.StringCmd, n)
			for i, k := range keys {
				cmds[i] = p.XAdd(ctx, &redis.XAddArgs{Stream: k, Values: []any{"r", "x"}})
			}
			at := time.Now()
			if _, err := p.Exec(ctx); err != nil {
				b.Fatal(err)
			}
			mu.Lock()
			for i, c := range cmds {
				sent[keys[i]+" "+c.Val()] = at
			}
			mu.Unlock()
		}
		tick.Stop()
		deadline := time.Now().Add(10 * time.Second)
		for {
			mu.Lock()
			left := len(sent) - len(got)
			mu.Unlock()
			if left <= 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond) // the deliveries come from the tail's goroutine
		}
		cpu := cpuOf(b, servers) - cpu0
		stop()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		mu.Lock()
		var lags []time.Duration
		missing := 0
		for id, at := range sent {
			if t, ok := got[id]; ok {
				lags = append(lags, t.Sub(at))
			} else {
				missing++
			}
		}
		slices.Sort(lags)
		q := func(f float64) float64 {
			if len(lags) == 0 {
				return 0
			}
			return float64(lags[int(f*float64(len(lags)-1))].Microseconds()) / 1000
		}
		b.ReportMetric(q(0.5), "lag-p50-ms")
		b.ReportMetric(q(0.99), "lag-p99-ms")
		b.ReportMetric(float64(missing), "not-arrived")
		if len(lags) > 0 {
			b.ReportMetric(float64(cpu.Microseconds())/float64(len(lags)), "redis-cpu-µs/entry")
		}
		mu.Unlock()
	}
}

// cpuOf is the CPU time the servers have used (INFO cpu: used_cpu_user +
// used_cpu_sys).
func cpuOf(b *testing.B, servers []*redistest.Server) time.Duration {
	var total time.Duration
	for _, s := range servers {
		info, err := s.Client().Info(context.Background(), "cpu").Result()
		if err != nil {
			b.Fatal(err)
		}
		for _, line := range strings.Split(info, "\r\n") {
			k, v, _ := strings.Cut(line, ":")
			if k == "used_cpu_user" || k == "used_cpu_sys" {
				f, _ := strconv.ParseFloat(v, 64)
				total += time.Duration(f * float64(time.Second))
			}
		}
	}
	return total
}
