package feed

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/passport"
)

// The load run: -feed.duration (or PASSPORT_FEED_LOAD_DURATION) sets how
// long; the default is short in `go test` and the full 10 s in the
// benchmark:
//
//	go test -run TestFeedLoad -feed.duration=10s ./feed/
//	go test -run '^$' -bench FeedLoad -benchtime=1x ./feed/
var (
	loadDuration = flag.Duration("feed.duration", 0, "duration of the feed load run (default 1s in tests, 10s in the benchmark)")
	loadClients  = flag.Int("feed.clients", 100, "feed clients in the load run")
	loadRate     = flag.Int("feed.rate", 2000, "events per second in the load run")
)

func loadDur(def time.Duration) time.Duration {
	if *loadDuration > 0 {
		return *loadDuration
	}
	if s := os.Getenv("PASSPORT_FEED_LOAD_DURATION"); s != "" {
		if d, err := time.ParseDuration(s); err == nil {
			return d
		}
	}
	return def
}

type loadResult struct {
	events, clients   int
	delivered         int64
	elapsed           time.Duration
	heapBefore, peak  uint64
	dropped           float64
	maxLagMS, meanLag float64
}

func (r loadResult) String() string {
	return fmt.Sprintf("%d clients × %d events in %v: %d deliveries (%.0f/s), every client got every event; "+
		"heap in use %.1f MiB before, peak %.1f MiB; end-to-end lag mean %.1f ms, max %.1f ms; dropped %v",
		r.clients, r.events, r.elapsed.Round(time.Millisecond), r.delivered, float64(r.delivered)/r.elapsed.Seconds(),
		float64(r.heapBefore)/(1<<20), float64(r.peak)/(1<<20), r.meanLag, r.maxLagMS, r.dropped)
}

// runLoad connects clients to one tenant, writes rate events per second
// for dur, and checks that every client received every event in order.
func runLoad(t testing.TB, e *env, clients, rate int, dur time.Duration) loadResult {
	ctx := context.Background()
	conns := make([]*websocket.Conn, clients)
	for i := range conns {
		d := websocket.Dialer{ReadBufferSize: 64 << 10}
		c, _, err := d.Dial(e.wsURL(url.Values{"tenant": {"acme"}}), http.Header{"Authorization": {"Bearer " + adminToken}})
		if err != nil {
			t.Fatalf("dial client %d: %v", i, err)
		}
		defer c.Close()
		untilLive(t, c)
		conns[i] = c
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	res := loadResult{clients: clients, heapBefore: ms.HeapInuse, peak: ms.HeapInuse}

	// Readers: count, check order, and note the end-to-end lag.
	var delivered atomic.Int64
	var lagSum, lagMax atomic.Int64 // microseconds
	total := int(float64(rate) * dur.Seconds())
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var prev streamID
			for n := 0; n < total; {
				_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
				_, msg, err := c.ReadMessage()
				if err != nil {
					errs <- fmt.Errorf("client %d after %d of %d events: %v", i, n, total, err)
					return
				}
				for line := range bytes.SplitSeq(msg, []byte("\n")) {
					// Cheap id extraction for every event; a full decode
					// for every 50th to measure the lag.
					_, rest, ok := bytes.Cut(line, []byte(`"id":"`))
					raw, _, ok2 := bytes.Cut(rest, []byte(`"`))
					id, err := parseID(string(raw))
					if !ok || !ok2 || err != nil || !prev.less(id) {
						errs <- fmt.Errorf("client %d: event %q out of order after %s", i, raw, prev)
						return
					}
					prev = id
					if n%50 == 0 {
						var ev struct {
							Time time.Time `json:"time"`
						}
						if err := json.Unmarshal(line, &ev); err != nil {
							errs <- fmt.Errorf("client %d: %v", i, err)
							return
						}
						lag := time.Since(ev.Time).Microseconds()
						lagSum.Add(lag)
						for {
							m := lagMax.Load()
							if lag <= m || lagMax.CompareAndSwap(m, lag) {
								break
							}
						}
					}
					n++
					delivered.Add(1)
				}
			}
		}()
	}

	// Memory sampler.
	stopSampler := make(chan struct{})
	samplerDone := make(chan uint64)
	go func() {
		peak := res.peak
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stopSampler:
				samplerDone <- peak
				return
			case <-tk.C:
				var m runtime.MemStats
				runtime.ReadMemStats(&m)
				peak = max(peak, m.HeapInuse)
			}
		}
	}()

	// Writer: every 10 ms a pipeline of rate/100 records, paced on a ticker
	// (catching up if a round was late), until total are written.
	rec := audit.Record{V: 1, Kind: audit.KindDecision, Tenant: "acme", AgentID: "ag-healer", AgentName: "healer",
		AgentType: "healer", TrustLevel: "HIGH", Reputation: 90, Method: "POST", Path: "/services/checkout/restart",
		Route: "POST /services/{name}/restart", Action: "service.restart", Resource: "checkout", Decision: "allow",
		Writer: "load", PolicyRevision: "rev-1"}
	start := time.Now()
	tk := time.NewTicker(10 * time.Millisecond)
	written := 0
	for written < total {
		<-tk.C
		due := min(total, int(float64(rate)*time.Since(start).Seconds())+1)
		p := e.rdb.Pipeline()
		for ; written < due; written++ {
			rec.Seq = uint64(written)
			rec.Time = time.Now()
			b, _ := json.Marshal(rec)
			p.XAdd(ctx, &redis.XAddArgs{Stream: passport.AuditStreamKey("acme"), Values: []any{RecordField, string(b)}})
		}
		if _, err := p.Exec(ctx); err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	tk.Stop()
	wg.Wait()
	res.elapsed = time.Since(start)
	close(stopSampler)
	res.peak = <-samplerDone
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	res.events = total
	res.delivered = delivered.Load()
	samples := float64(res.delivered) / 50
	if samples > 0 {
		res.meanLag = float64(lagSum.Load()) / 1000 / samples
	}
	res.maxLagMS = float64(lagMax.Load()) / 1000
	res.dropped = promValue(e.hub.m.dropped.WithLabelValues("slow"))
	if want := int64(clients * total); res.delivered != want {
		t.Errorf("delivered %d, want %d", res.delivered, want)
	}
	if res.dropped != 0 {
		t.Errorf("%v fast clients were dropped as slow", res.dropped)
	}
	return res
}

// TestFeedLoad: 100 clients at 2,000 events/s; every client receives every
// event, and the heap stays bounded by the per-client buffers, not by the
// number of events.
func TestFeedLoad(t *testing.T) {
	// Under the race detector on a shared machine the whole process can be
	// starved for seconds; a client that overflows then catches up from the
	// stream (and still gets every event) instead of being dropped.
	e := newEnv(t, Config{LagTimeout: time.Minute})
	dur := loadDur(time.Second)
	res := runLoad(t, e, *loadClients, *loadRate, dur)
	t.Log(res)
	// Bound: the buffers of all clients full, plus a generous allowance for
	// the test's own readers and the race detector. Memory must not grow
	// with the number of events.
	bound := res.heapBefore + uint64(*loadClients)*uint64(DefaultSendBuffer)*600 + 256<<20
	if res.peak > bound {
		t.Errorf("heap peaked at %d MiB, bound %d MiB", res.peak>>20, bound>>20)
	}
}

// BenchmarkFeedLoad runs the full load (10 s unless -feed.duration says
// otherwise) once and reports the figures:
//
//	go test -run '^$' -bench FeedLoad -benchtime=1x ./feed/
func BenchmarkFeedLoad(b *testing.B) {
	for b.Loop() {
		e := newTBEnv(b, Config{LagTimeout: time.Minute}) // as in TestFeedLoad
		res := runLoad(b, e, *loadClients, *loadRate, loadDur(10*time.Second))
		b.ReportMetric(float64(res.delivered)/res.elapsed.Seconds(), "deliveries/s")
		b.ReportMetric(float64(res.peak)/(1<<20), "peak-heap-MiB")
		b.ReportMetric(res.meanLag, "mean-lag-ms")
		b.ReportMetric(res.maxLagMS, "max-lag-ms")
		b.Log(res)
	}
}
