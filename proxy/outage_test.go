package proxy

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
)

// hitLog is an upstream that records the proxy's request id of every call
// that reached it.
type hitLog struct {
	srv *httptest.Server
	mu  sync.Mutex
	ids []string
}

func newHitLog(t *testing.T, delay time.Duration) *hitLog {
	hl := &hitLog{}
	hl.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hl.mu.Lock()
		hl.ids = append(hl.ids, r.Header.Get(HeaderRequestID))
		hl.mu.Unlock()
		if delay > 0 {
			select {
			case <-time.After(delay):
			case <-r.Context().Done():
				return
			}
		}
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	t.Cleanup(hl.srv.Close)
	return hl
}

func (hl *hitLog) hits() []string {
	hl.mu.Lock()
	defer hl.mu.Unlock()
	return append([]string(nil), hl.ids...)
}

// newStreamHarness is a harness whose proxy writes to a real audit stream
// on srv (running until the test ends) and forwards to up.
func newStreamHarness(t *testing.T, srv *redistest.Server, up *hitLog, cfg audit.StreamConfig, mod ...func(*Config)) (*harness, *audit.Stream, func()) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	stream, err := audit.NewStream(srv.Client(), cfg, log, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- stream.Run(ctx) }()
	var once sync.Once
	stopStream := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("audit run: %v", err)
			}
			_ = stream.Close()
		})
	}
	t.Cleanup(stopStream)
	mod = append([]func(*Config){func(c *Config) { c.Upstreams = map[string]Upstream{"fleet": {URL: up.srv.URL}} }}, mod...)
	h := newHarnessFull(t, srv, stream, nil, mod...)
	return h, stream, stopStream
}

// recordsByRequest reads a tenant's stream: request id -> kinds present.
func recordsByRequest(t *testing.T, rdb redis.UniversalClient, tenant string) (map[string]map[audit.Kind]int, []*audit.Record) {
	t.Helper()
	by := map[string]map[audit.Kind]int{}
	var all []*audit.Record
	err := audit.ScanStream(context.Background(), rdb, audit.StreamKey(tenant), "-", 1000, func(m redis.XMessage) error {
		rec, _, err := audit.ParseMessage(m)
		if err != nil {
			return err
		}
		all = append(all, rec)
		if rec.RequestID != "" {
			if by[rec.RequestID] == nil {
				by[rec.RequestID] = map[audit.Kind]int{}
			}
			by[rec.RequestID][rec.Kind]++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return by, all
}

// load calls GET /services/checkout at rate calls a second for d, from
// enough goroutines to keep the schedule, and counts the answers.
type loadResult struct{ sent, ok, refused, failed atomic.Int64 }

func runLoad(t *testing.T, url, tok string, rate int, d time.Duration) *loadResult {
	res := &loadResult{}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: rate}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	total := int64(rate) * int64(d/time.Millisecond) / 1000
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	// Enough callers that the schedule holds while calls wait on a dead
	// Redis (up to their 500ms deadline each).
	for range rate {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= total {
					return
				}
				if wait := time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))); wait > 0 {
					time.Sleep(wait) // the load's schedule
				}
				req, _ := http.NewRequest("GET", url+"/services/checkout", nil)
				req.Header.Set("Authorization", "Bearer "+tok)
				res.sent.Add(1)
				r, err := client.Do(req)
				if err != nil {
					res.failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, r.Body)
				r.Body.Close()
				if r.StatusCode == 200 {
					res.ok.Add(1)
				} else {
					res.refused.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return res
}

// TestRedisOutageUnderLoad (issue 14, item 3): Redis (with AOF) is killed
// for 10s while calls arrive at 1,000 a second, then restarted. Afterwards
// every call that reached the upstream has both its decision and its
// outcome record, joined by request id; every refused call is accounted
// for (its own record, or a count in a refusals summary); nothing is
// dropped; and the trail verifies. The
// writer's memory buffer is 2,000 records, a fifth of the outage's
// refusals: no record may depend on the buffer being large enough.
func TestRedisOutageUnderLoad(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	up := newHitLog(t, 0)
	h, stream, stopStream := newStreamHarness(t, srv, up, audit.StreamConfig{OutcomeBuffer: 2000})
	_, tok := h.healer()

	const rate = 1000
	loadDone := make(chan *loadResult, 1)
	go func() { loadDone <- runLoad(t, h.url, tok, rate, 16*time.Second) }()
	time.Sleep(2 * time.Second) // the load's first phase: Redis up
	srv.Kill()
	killedAt := time.Now()
	time.Sleep(10 * time.Second) // the outage under load
	srv.Restart()
	t.Logf("redis down for %s", time.Since(killedAt).Round(time.Millisecond))
	res := <-loadDone
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	stopStream() // flushes outcomes and summaries

	hits := up.hits()
	by, all := recordsByRequest(t, h.rdb, "acme")
	missing := 0
	for _, id := range hits {
		k := by[id]
		if k[audit.KindDecision] != 1 || k[audit.KindOutcome] != 1 {
			if missing < 5 {
				t.Errorf("upstream hit %s: %d decision, %d outcome records", id, k[audit.KindDecision], k[audit.KindOutcome])
			}
			missing++
		}
	}
	summaries, refusals := 0, 0
	for _, r := range all {
		switch {
		case r.Kind == audit.KindRefusals:
			summaries++
			var sum audit.RefusalSummary
			if err := json.Unmarshal(r.Details, &sum); err != nil {
				t.Fatal(err)
			}
			refusals += sum.Count
		case r.Kind == audit.KindDecision && r.Decision != audit.DecisionAllow:
			refusals++
		case r.Kind == audit.KindOutcome && r.Decision == audit.DecisionError:
			refusals++ // refused because the write-ahead record failed
		}
	}
	t.Logf("calls sent %d (%.0f/s), forwarded %d, refused %d, failed %d; upstream hits %d; records %d (%d refusal summaries); writer %+v",
		res.sent.Load(), float64(res.sent.Load())/16, res.ok.Load(), res.refused.Load(), res.failed.Load(),
		len(hits), len(all), summaries, stream.Stats())
	if d := stream.Stats().Dropped; d != 0 {
		t.Errorf("%d records dropped", d)
	}
	if int64(refusals) != res.refused.Load() {
		t.Errorf("%d refused calls, %d accounted for in the trail", res.refused.Load(), refusals)
	}
	if missing > 0 {
		t.Fatalf("%d of %d upstream hits lack a decision or an outcome record", missing, len(hits))
	}
	if len(hits) == 0 {
		t.Fatal("nothing was forwarded")
	}
	rep, err := audit.VerifyStream(context.Background(), h.rdb, "acme", audit.VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Fatalf("verify: %v", rep.Problems[0])
	}
}

// TestUnauthenticatedFloodIsSummarised (issue 13, item 9): a flood of
// calls without a valid passport does not grow Redis one record per call:
// each source, reason and second gets one refusals record with a count,
// the counts add up to the calls, and the trail verifies.
func TestUnauthenticatedFloodIsSummarised(t *testing.T) {
	srv := redistest.Start(t)
	up := newHitLog(t, 0)
	h, stream, stopStream := newStreamHarness(t, srv, up, audit.StreamConfig{})
	const n = 3000
	start := time.Now()
	var wg sync.WaitGroup
	var next atomic.Int64
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1); i <= n; i = next.Add(1) {
				var r resp
				switch i % 3 {
				case 0:
					r = h.do("GET", "/services/checkout", "", nil, "")
				case 1:
					r = h.do("GET", "/services/checkout", "eyJhbGciOiJFZERTQSJ9.e30.c2ln", nil, "")
				default:
					r = h.do("GET", "/nowhere", "", nil, "")
				}
				if r.status != 401 && r.status != 404 {
					t.Errorf("status %d", r.status)
					return
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	stopStream()
	if hits := len(up.hits()); hits != 0 {
		t.Fatalf("%d upstream hits", hits)
	}
	_, all := recordsByRequest(t, h.rdb, DefaultUnattributed)
	counted, records := 0, 0
	for _, r := range all {
		switch r.Kind {
		case audit.KindRefusals:
			records++
			var sum audit.RefusalSummary
			if err := json.Unmarshal(r.Details, &sum); err != nil {
				t.Fatal(err)
			}
			counted += sum.Count
		case audit.KindDecision:
			records++
			counted++
		}
	}
	// Three reasons from one source: three records a second at most
	// (a window may straddle a second, hence the +2).
	limit := 3 * (int(took/time.Second) + 2)
	t.Logf("%d calls in %s: %d records, %d counted; writer %+v", n, took.Round(time.Millisecond), records, counted, stream.Stats())
	if records > limit {
		t.Fatalf("%d records for %d passport-less calls in %s, want <= %d", records, n, took, limit)
	}
	if counted != n {
		t.Fatalf("the records count %d calls, want %d", counted, n)
	}
	rep, err := audit.VerifyStream(context.Background(), h.rdb, DefaultUnattributed, audit.VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Fatalf("verify: %v", rep.Problems[0])
	}
}

// TestDrainRecordsWhatItCuts (issue 14, item 4): at shutdown the agent
// port answers new calls 503 draining instead of refusing connections,
// and a call still running at the drain deadline (a slow upstream) is cut
// and gets an outcome record marked aborted, in Redis once the audit
// writer has flushed, as the process does before it exits.
func TestDrainRecordsWhatItCuts(t *testing.T) {
	srv := redistest.Start(t)
	up := newHitLog(t, time.Minute)
	h, _, stopStream := newStreamHarness(t, srv, up, audit.StreamConfig{}, func(c *Config) {
		c.Timeouts.Drain = 500 * time.Millisecond
	})
	_, tok := h.healer()

	type answer struct {
		status int
		body   string
		err    error
	}
	slow := make(chan answer, 1)
	go func() {
		req, _ := http.NewRequest("GET", h.url+"/services/checkout", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			slow <- answer{err: err}
			return
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		slow <- answer{status: res.StatusCode, body: string(b)}
	}()
	waitFor(t, "the slow call at the upstream", func() bool { return len(up.hits()) == 1 })
	cutID := up.hits()[0]

	stopped := make(chan error, 1)
	go func() { stopped <- h.stop() }()
	waitFor(t, "draining", func() bool { return h.p.draining.Load() })
	// A new call during the drain: an answer, on a new connection.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	req, _ := http.NewRequest("GET", h.url+"/services/checkout", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	res, err := client.Do(req)
	if err != nil {
		t.Fatalf("a call during the drain: %v (connection refused?), want 503", err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 503 || !strings.Contains(string(b), `"code":"draining"`) {
		t.Fatalf("a call during the drain: %d %s, want 503 draining", res.StatusCode, b)
	}

	if err := <-stopped; err != nil {
		t.Fatalf("serve: %v", err)
	}
	stopStream() // what the process does once the proxy has returned, then it exits
	a := <-slow
	if a.err == nil && (a.status != 503 || !strings.Contains(a.body, `"code":"aborted"`)) {
		t.Fatalf("the cut call answered %d %s, want 503 aborted", a.status, a.body)
	}

	by, all := recordsByRequest(t, h.rdb, "acme")
	if k := by[cutID]; k[audit.KindDecision] != 1 || k[audit.KindOutcome] != 1 {
		t.Fatalf("the cut call has %d decision and %d outcome records, want 1 and 1", k[audit.KindDecision], k[audit.KindOutcome])
	}
	for _, r := range all {
		if r.RequestID == cutID && r.Kind == audit.KindOutcome {
			if len(r.Reasons) != 1 || r.Reasons[0] != "aborted" || r.Status != 503 {
				t.Fatalf("outcome of the cut call: reasons %v status %d, want [aborted] 503", r.Reasons, r.Status)
			}
		}
	}
	if n := len(up.hits()); n != 1 {
		t.Fatalf("%d upstream hits, want 1 (nothing forwarded during the drain)", n)
	}
}
