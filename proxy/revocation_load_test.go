package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
)

// seedRevocations writes n live revocations (expiring over the next hour,
// many per second as a mass block makes them) and, when expired > 0, that
// many already expired ones.
func seedRevocations(tb testing.TB, rdb *redis.Client, n, expired int) {
	tb.Helper()
	ctx := context.Background()
	now := time.Now().Unix()
	const batch = 10000
	pipe := rdb.Pipeline()
	zs := make([]redis.Z, 0, batch)
	flush := func() {
		if len(zs) == 0 {
			return
		}
		pipe.ZAdd(ctx, passport.RevokedKey, zs...)
		zs = zs[:0:0]
		if pipe.Len() >= 10 {
			if _, err := pipe.Exec(ctx); err != nil {
				tb.Fatal(err)
			}
		}
	}
	for i := range n + expired {
		exp := now + 60 + int64(i%3540)
		if i >= n {
			exp = now - 3600 + int64(i%1800)
		}
		zs = append(zs, redis.Z{Score: float64(exp), Member: fmt.Sprintf("%022d", i)})
		if len(zs) == batch {
			flush()
		}
	}
	flush()
	if _, err := pipe.Exec(ctx); err != nil {
		tb.Fatal(err)
	}
}

func quietRevocations(rdb redis.UniversalClient, clock func() time.Time) *revocations {
	return newRevocations(rdb, slog.New(slog.NewTextHandler(io.Discard, nil)), clock, newMetrics(prometheus.NewRegistry()))
}

// TestRevocationLoadChunks: the load reads the set in chunks by expiry and
// gets every live entry exactly once, also when many share one expiry
// second across a chunk boundary; expired entries are not loaded.
func TestRevocationLoadChunks(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	ctx := context.Background()
	now := time.Now().Unix()
	live := 2*loadChunk + 123
	var zs []redis.Z
	for i := range live {
		// Three expiry seconds only: chunks end in the middle of a second.
		zs = append(zs, redis.Z{Score: float64(now + 100 + int64(i%3)), Member: "live-" + strconv.Itoa(i)})
	}
	for i := range 500 {
		zs = append(zs, redis.Z{Score: float64(now - 3600), Member: "old-" + strconv.Itoa(i)})
	}
	if err := rdb.ZAdd(ctx, passport.RevokedKey, zs...).Err(); err != nil {
		t.Fatal(err)
	}
	rv := quietRevocations(rdb, time.Now)
	if err := rv.load(ctx); err != nil {
		t.Fatal(err)
	}
	if got := rv.size(); got != live {
		t.Fatalf("loaded %d, want %d live", got, live)
	}
	for _, i := range []int{0, loadChunk - 1, loadChunk, loadChunk + 1, live - 1} {
		if !rv.revoked.has("live-" + strconv.Itoa(i)) {
			t.Fatalf("live-%d not loaded", i)
		}
	}
	if rv.revoked.has("old-1") {
		t.Fatal("an expired revocation was loaded")
	}
}

// TestRevocationPrunedByExpiry: entries leave the in-memory set once their
// passport has expired (plus the leeway), whether they came from the load
// or from an event, and a re-revocation with a later expiry survives its
// first expiry.
func TestRevocationPrunedByExpiry(t *testing.T) {
	var offset atomic.Int64
	now := time.Now().Unix()
	clock := func() time.Time { return time.Unix(now, 0).Add(time.Duration(offset.Load())) }
	rv := quietRevocations(nil, clock)
	for i := range 1000 {
		rv.apply(context.Background(), passport.RevocationEvent{Type: passport.EventRevoke,
			JTI: "j" + strconv.Itoa(i), Exp: now + 10 + int64(i%100)}.Marshal())
	}
	rv.apply(context.Background(), passport.RevocationEvent{Type: passport.EventRevoke, JTI: "j5", Exp: now + 1000}.Marshal())
	rv.prune()
	if rv.size() != 1000 {
		t.Fatalf("pruned live entries: %d left", rv.size())
	}
	offset.Store(int64(60*time.Second + passport.MaxLeeway)) // exp +10..+59 gone, but j5 was re-revoked
	rv.prune()
	if got := rv.size(); got != 501 {
		t.Fatalf("after 60s: %d left, want 501", got)
	}
	offset.Store(int64(200*time.Second + passport.MaxLeeway))
	rv.prune()
	if got := rv.size(); got != 1 || !rv.revoked.has("j5") {
		t.Fatalf("after 200s: %d left, want only j5 (re-revoked to a later expiry)", got)
	}
	if len(rv.revoked.byExp) != 1 || len(rv.revoked.secs) != 1 {
		t.Fatalf("expiry index not pruned: %d buckets, %d seconds", len(rv.revoked.byExp), len(rv.revoked.secs))
	}
}

// BenchmarkRevocationLoad1M loads 1,000,000 live revocations (and 100,000
// expired ones it must skip) from a real Redis, as a proxy does at start
// and after every reconnect. Target (issue 13, item 5): <= 2s and
// <= 150 MB. It reports the load time, the heap the set keeps, the peak
// heap during the load and the process's RSS.
//
//	go test -run XXX -bench RevocationLoad1M -benchtime 1x ./proxy/
func BenchmarkRevocationLoad1M(b *testing.B) {
	srv := redistest.Start(b)
	rdb := srv.Client()
	const n = 1_000_000
	seedRevocations(b, rdb, n, 100_000)
	var keep *revocations
	for b.Loop() {
		keep = nil
		runtime.GC()
		var base runtime.MemStats
		runtime.ReadMemStats(&base)
		resetPeakRSS()
		var peak atomic.Uint64
		done := make(chan struct{})
		go func() { // sample the heap while loading
			t := time.NewTicker(20 * time.Millisecond)
			defer t.Stop()
			var ms runtime.MemStats
			for {
				select {
				case <-done:
					return
				case <-t.C:
				}
				runtime.ReadMemStats(&ms)
				if ms.HeapInuse > peak.Load() {
					peak.Store(ms.HeapInuse)
				}
			}
		}()
		rv := quietRevocations(rdb, time.Now)
		start := time.Now()
		if err := rv.load(context.Background()); err != nil {
			b.Fatal(err)
		}
		took := time.Since(start)
		close(done)
		if rv.size() != n {
			b.Fatalf("loaded %d, want %d", rv.size(), n)
		}
		keep = rv
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		b.ReportMetric(took.Seconds(), "load-s")
		b.ReportMetric(float64(after.HeapAlloc-base.HeapAlloc)/1e6, "set-heap-MB")
		b.ReportMetric(float64(peak.Load()-min(peak.Load(), base.HeapInuse))/1e6, "peak-heap-MB")
		b.ReportMetric(procStatusMB("VmRSS"), "rss-MB")
		b.ReportMetric(procStatusMB("VmHWM"), "peak-rss-MB")
	}
	runtime.KeepAlive(keep)
}

// resetPeakRSS resets VmHWM (Linux: "5" to clear_refs); elsewhere a no-op.
func resetPeakRSS() { _ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

// procStatusMB reads a kB field of /proc/self/status in MB (0 if absent).
func procStatusMB(field string) float64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1000
		}
	}
	return 0
}

// BenchmarkRevokedReload is the cost, to Redis and to the network, of one
// proxy's full reload of passport:revoked (what every proxy does after
// each resubscription, so all of them at once after a failover of the
// channel's node): 100,000 live revocations read by the real load. It
// reports the proxy's wall time, the server time the reads took, the
// commands, and the bytes Redis sent (INFO stats; nothing else talks to
// this Redis).
//
//	go test -run XXX -bench RevokedReload -benchtime 10x ./proxy/
func BenchmarkRevokedReload(b *testing.B) {
	srv := redistest.Start(b)
	rdb := srv.Client()
	const n = 100_000
	seedRevocations(b, rdb, n, 0)
	ctx := context.Background()
	// stat reads a number from INFO section: name's value, or the field
	// sub of it ("cmdstat_zrangebyscore:calls=4,usec=12,...").
	stat := func(section, name, sub string) int64 {
		s, err := rdb.Info(ctx, section).Result()
		if err != nil {
			b.Fatal(err)
		}
		for line := range strings.SplitSeq(s, "\r\n") {
			v, ok := strings.CutPrefix(line, name+":")
			if !ok {
				continue
			}
			if sub != "" {
				for f := range strings.SplitSeq(v, ",") {
					if x, ok := strings.CutPrefix(f, sub+"="); ok {
						v = x
						break
					}
				}
			}
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
		return 0
	}
	sample := func() (bytes, usec, calls int64) {
		return stat("stats", "total_net_output_bytes", ""),
			stat("commandstats", "cmdstat_zrangebyscore", "usec"),
			stat("commandstats", "cmdstat_zrangebyscore", "calls")
	}
	var wall time.Duration
	var bytes, server, cmds int64
	for b.Loop() {
		rv := quietRevocations(rdb, time.Now)
		out0, us0, c0 := sample()
		start := time.Now()
		if err := rv.load(ctx); err != nil {
			b.Fatal(err)
		}
		wall += time.Since(start)
		out1, us1, c1 := sample()
		if rv.size() != n {
			b.Fatalf("loaded %d, want %d", rv.size(), n)
		}
		bytes += out1 - out0
		server += us1 - us0
		cmds += c1 - c0
	}
	b.ReportMetric(float64(wall.Milliseconds())/float64(b.N), "reload-ms")
	b.ReportMetric(float64(server)/1000/float64(b.N), "redis-ms")
	b.ReportMetric(float64(bytes)/1e6/float64(b.N), "reply-MB")
	b.ReportMetric(float64(cmds)/float64(b.N), "zrangebyscore")
}
