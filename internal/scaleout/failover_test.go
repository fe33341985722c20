package scaleout

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
	"github.com/agentpassport/passport/proxy"
)

// TestFailoverUnderLoadCounted: two authorities and two proxies on one
// Redis Cluster, under a steady load of about 500 calls a second, while
// the primary holding the tenant's audit stream is killed. Every call is
// counted: sent, answered by status, received by the upstream, and after
// the failover the decision and outcome records in the stream are joined
// to the upstream's hits by request id. With wait_replicas 1 no upstream
// hit may lack its decision record; without it the loss window is counted
// and `audit verify` must not pass over lost acknowledged records. The
// figures (and the time from the kill to the first 2xx after the
// failover) are logged for docs/scale-out.md.
func TestFailoverUnderLoadCounted(t *testing.T) {
	if testing.Short() {
		t.Skip("a Redis Cluster failover under load: not in -short")
	}
	for _, wait := range []int{1, 0} {
		t.Run(fmt.Sprintf("wait_replicas=%d", wait), func(t *testing.T) {
			// With wait_replicas 1 a primary needs a second replica, or
			// the one promoted in the failover could confirm no write
			// until the dead node came back.
			c := redistest.StartCluster(t, redistest.ClusterOptions{Replicas: 1 + wait})
			failoverUnderLoad(t, wait, c.Client(), func(key string) func() {
				old := c.KillPrimaryOf(key)
				return func() { c.WaitFailover(old) }
			})
		})
	}
}

// TestSentinelFailoverUnderLoadCounted is TestFailoverUnderLoadCounted on
// a Sentinel set (3 Sentinels, down-after 1 s): the primary, which holds
// every key, is killed with SIGKILL under the same load, and the same
// figures are counted and asserted.
func TestSentinelFailoverUnderLoadCounted(t *testing.T) {
	if testing.Short() {
		t.Skip("a Sentinel failover under load: not in -short")
	}
	for _, wait := range []int{1, 0} {
		t.Run(fmt.Sprintf("wait_replicas=%d", wait), func(t *testing.T) {
			// A second replica for wait_replicas 1, as on the Cluster.
			s := redistest.StartSentinel(t, redistest.SentinelOptions{Replicas: 1 + wait})
			failoverUnderLoad(t, wait, s.Client(), func(string) func() {
				old := s.KillPrimary()
				return func() { s.WaitFailover(old) }
			})
		})
	}
}

// failoverUnderLoad runs two authorities and two proxies on rdb under a
// steady load, calls kill with the tenant's stream key once the load is
// steady (kill kills, with SIGKILL, the primary holding it and returns a
// function that waits until another primary has taken over), and counts,
// joins, logs and checks as TestFailoverUnderLoadCounted says.
func failoverUnderLoad(t *testing.T, wait int, rdb redis.UniversalClient, kill func(key string) (waitFailover func())) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const tenant = "acme"
	sc := audit.StreamConfig{WaitReplicas: wait, WaitTimeout: 300 * time.Millisecond, WriteTimeout: 2 * time.Second}

	// Two authorities sharing one issuer (keys in Redis), two proxies each
	// asking its own, in front of an upstream that notes the request id of
	// every call it receives.
	writer := func(id string) *audit.Stream {
		wc := sc
		wc.WriterID = id
		return runStream(t, newStream(t, rdb, wc))
	}
	var auths []string
	for i := range 2 {
		issuer := ""
		if i > 0 {
			issuer = auths[0]
		}
		auths = append(auths, startAuthority(t, rdb, issuer, writer(fmt.Sprintf("authority-%d", i))))
	}
	var mu sync.Mutex
	hits := map[string]bool{}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits[r.Header.Get(proxy.HeaderRequestID)] = true
		mu.Unlock()
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	t.Cleanup(up.Close)
	var proxies []string
	for i := range 2 {
		proxies = append(proxies, startProxy(t, rdb, up.URL, auths[0], auths[i], writer(fmt.Sprintf("proxy-%d", i))))
	}

	// One agent, a passport from each authority.
	admin, err := client.NewAdmin(auths[0], adminToken, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := admin.RegisterAgent(ctx, tenant, client.AgentSpec{Name: "healer", Type: passport.TypeHealer, TrustLevel: passport.TrustHigh})
	if err != nil {
		t.Fatal(err)
	}
	var toks []string
	for _, u := range auths {
		ac, err := client.New(u, reg.ClientID, passport.Secret(reg.ClientSecret), client.Options{})
		if err != nil {
			t.Fatal(err)
		}
		tok, err := ac.Token(ctx, client.TokenRequest{Scope: []string{"service.get"}})
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, tok.Raw)
	}

	// The load: 10 workers, each a call every 20 ms (about 500 a second),
	// alternating proxies, until stopped. A call under way at the stop
	// runs to its answer: cancelled, it could reach the upstream and be
	// answered by no one.
	type answer struct {
		sentAt, at time.Time
		status     int
		id         string
	}
	var amu sync.Mutex
	var answers []answer
	var sent atomic.Int64
	hc := &http.Client{Timeout: 5 * time.Second}
	lctx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for w := range 10 {
		wg.Go(func() {
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for n := 0; ; n++ {
				select {
				case <-lctx.Done():
					return
				case <-tick.C:
				}
				i := (w + n) % 2
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, proxies[i]+"/services/checkout", nil)
				req.Header.Set("Authorization", "Bearer "+toks[i])
				sent.Add(1)
				a := answer{sentAt: time.Now()}
				if res, err := hc.Do(req); err == nil {
					res.Body.Close()
					a.status, a.id = res.StatusCode, res.Header.Get(proxy.HeaderXRequest)
				}
				a.at = time.Now()
				amu.Lock()
				answers = append(answers, a)
				amu.Unlock()
			}
		})
	}
	okSince := func(since time.Time) bool {
		amu.Lock()
		defer amu.Unlock()
		for _, a := range answers {
			if a.status == http.StatusOK && a.at.After(since) {
				return true
			}
		}
		return false
	}
	if err := retry(10*time.Second, func() error {
		if !okSince(time.Time{}) {
			return fmt.Errorf("no 2xx yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	steadyFrom, steadySent := time.Now(), sent.Load()
	time.Sleep(time.Second) // a second of steady load before the kill: there is no event to wait on

	// The kill first looks the primary up; the clock starts once it is
	// dead, so that no call sent later can have been recorded by it.
	waitFailover := kill(audit.StreamKey(tenant))
	killedAt := time.Now()
	rate := float64(sent.Load()-steadySent) / killedAt.Sub(steadyFrom).Seconds()
	waitFailover()
	failedOver := time.Now()
	if err := retry(30*time.Second, func() error {
		if !okSince(failedOver) {
			return fmt.Errorf("no 2xx since the failover")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var recovered time.Time
	amu.Lock()
	for _, a := range answers {
		if a.status == http.StatusOK && a.at.After(failedOver) && (recovered.IsZero() || a.at.Before(recovered)) {
			recovered = a.at
		}
	}
	amu.Unlock()
	time.Sleep(time.Second) // a second of steady load after recovery
	stopLoad()
	wg.Wait()
	// The first call sent after the kill and answered 2xx was recorded by
	// the new primary, whether or not every Sentinel or node named it yet.
	var firstOK time.Time
	for _, a := range answers {
		if a.status == http.StatusOK && a.sentAt.After(killedAt) && (firstOK.IsZero() || a.at.Before(firstOK)) {
			firstOK = a.at
		}
	}

	// Join: the upstream's hits against the records that survived. An
	// outcome record waits in its writer until the store takes it again,
	// which after a second Sentinel failover (seen once under load) took
	// more than 10 s: wait long enough to count such records as late, not
	// missing.
	decisions, outcomes := map[string]bool{}, map[string]bool{}
	_ = retry(30*time.Second, func() error {
		clear(decisions)
		clear(outcomes)
		err := audit.ScanStream(ctx, rdb, audit.StreamKey(tenant), "-", 1000, func(m redis.XMessage) error {
			rec, _, err := audit.ParseMessage(m)
			if err != nil {
				return err
			}
			switch rec.Kind {
			case audit.KindDecision:
				decisions[rec.RequestID] = true
			case audit.KindOutcome:
				outcomes[rec.RequestID] = true
			}
			return nil
		})
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		for id := range hits {
			if !outcomes[id] {
				return fmt.Errorf("the outcome of %s is not there yet", id)
			}
		}
		return nil
	})
	byStatus := map[int]int{}
	answeredOK := map[string]bool{}
	for _, a := range answers {
		byStatus[a.status]++
		if a.status == http.StatusOK {
			answeredOK[a.id] = true
		}
	}
	mu.Lock()
	var notOK, unrecorded, noOutcome int
	for id := range hits {
		if !answeredOK[id] {
			notOK++
		}
		if !decisions[id] {
			unrecorded++
		}
		if !outcomes[id] {
			noOutcome++
		}
	}
	nHits := len(hits)
	mu.Unlock()
	statuses := make([]int, 0, len(byStatus))
	for s := range byStatus {
		statuses = append(statuses, s)
	}
	sort.Ints(statuses)
	line := ""
	for _, s := range statuses {
		line += fmt.Sprintf(" %d:%d", s, byStatus[s])
	}
	rep, err := audit.VerifyStream(ctx, rdb, tenant, audit.VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("wait_replicas=%d: sent %d (%.0f a second before the kill), answers%s; upstream hits %d, of which %d not answered 200, %d without a decision record and %d without an outcome record; "+
		"failover %v after the kill, first 2xx %v after the kill (to a call sent after it), first after the failover %v after the kill (%v after the failover); "+
		"audit verify ok=%v, %d problems",
		wait, sent.Load(), rate, line, nHits, notOK, unrecorded, noOutcome, failedOver.Sub(killedAt).Round(time.Millisecond),
		firstOK.Sub(killedAt).Round(time.Millisecond), recovered.Sub(killedAt).Round(time.Millisecond), recovered.Sub(failedOver).Round(time.Millisecond), rep.OK(), len(rep.Problems))
	if int64(len(answers)) != sent.Load() {
		t.Fatalf("%d calls sent, %d answered or failed", sent.Load(), len(answers))
	}
	if notOK > 0 {
		t.Fatalf("%d calls reached the upstream and were not answered 200", notOK)
	}
	if wait > 0 && unrecorded > 0 {
		t.Fatalf("with wait_replicas %d: %d upstream hits have no surviving decision record", wait, unrecorded)
	}
	if unrecorded > 0 && rep.OK() {
		t.Fatalf("%d forwarded calls lost their decision records and audit verify passes", unrecorded)
	}
}

// runStream runs s's background work (outcome records, checkpoints) until
// the test ends, as a deployed component does.
func runStream(t *testing.T, s *audit.Stream) *audit.Stream {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}
