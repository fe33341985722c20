package scaleout

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/internal/redisx"
	"github.com/agentpassport/passport/policies/replay"
)

// TestAuditTwoTenantsOnTwoPrimaries: one writer appends for two tenants
// whose streams live on different primaries; each stream lands on its
// own primary (the Lua append names the stream and its heads, one slot),
// verifies, and the tenant listings of `audit verify` and `policy replay`
// find both (they scan every primary).
func TestAuditTwoTenantsOnTwoPrimaries(t *testing.T) {
	c := redistest.StartCluster(t)
	cc := c.Client()
	tenants := tenantsOnDistinctPrimaries(t, c, 2)
	s := newStream(t, cc, audit.StreamConfig{CheckpointEvery: 16})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 60
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for _, tenant := range tenants {
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func(tenant string, i int) {
				defer wg.Done()
				if _, err := s.Append(ctx, decision(tenant, i)); err != nil {
					errs <- fmt.Errorf("%s #%d: %w", tenant, i, err)
				}
			}(tenant, i)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, tenant := range tenants {
		rep := mustVerify(t, cc, tenant)
		w := rep.Writers[s.WriterID()]
		if w == nil || w.LastSeq < n {
			t.Fatalf("%s: writer report %+v, want at least %d records", tenant, w, n)
		}
		if got := len(requestIDs(t, cc, tenant)); got != n {
			t.Fatalf("%s: %d decisions stored, want %d", tenant, got, n)
		}
		// The stream is on the primary PrimaryOf names, and only there.
		p := c.PrimaryOf(audit.StreamKey(tenant))
		if l, err := p.Client().XLen(ctx, audit.StreamKey(tenant)).Result(); err != nil || l < n {
			t.Fatalf("%s on %s: XLEN %d, %v", tenant, p.Addr, l, err)
		}
	}
	got, err := audit.ListTenants(ctx, cc)
	if err != nil || !slices.Equal(got, tenants) {
		t.Fatalf("audit.ListTenants = %v, %v; want %v", got, err, tenants)
	}
	got, err = replay.Tenants(ctx, cc)
	if err != nil || !slices.Equal(got, tenants) {
		t.Fatalf("replay.Tenants = %v, %v; want %v", got, err, tenants)
	}
}

// TestAuditWriterFollowsClusterFailover: the primary holding a tenant's
// stream is killed. Appends fail (never a false success) until its
// replica takes over, then succeed again on the same writer; the chain
// verifies across the failover and every acknowledged record is there.
// Replication is awaited by hand (WAIT) before the kill, since the writer
// is not given wait_replicas here: this test is about following the
// failover, not about the loss window (see docs/scale-out.md).
func TestAuditWriterFollowsClusterFailover(t *testing.T) {
	c := redistest.StartCluster(t)
	cc := c.Client()
	tenant := tenantsOnDistinctPrimaries(t, c, 1)[0]
	key := audit.StreamKey(tenant)
	s := newStream(t, cc, audit.StreamConfig{WriteTimeout: 500 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	acked := map[string]bool{}
	appendOne := func(i int) error {
		r := decision(tenant, i)
		_, err := s.Append(ctx, r)
		if err == nil {
			acked[r.RequestID] = true
		}
		return err
	}
	i := 0
	for ; i < 20; i++ {
		if err := appendOne(i); err != nil {
			t.Fatal(err)
		}
	}
	old := c.PrimaryOf(key)
	if n, err := old.Client().Wait(ctx, 1, 5000).Result(); err != nil || n != 1 {
		t.Fatalf("WAIT = %d, %v", n, err)
	}
	old.Kill()
	// While the slot has no live primary, every append fails.
	failed := 0
	for ; failed < 3; i++ {
		if err := appendOne(i); err == nil {
			if c.PrimaryOf(key) == old {
				t.Fatalf("append #%d acknowledged while its primary is dead", i)
			}
			break
		}
		failed++
	}
	promoted := c.WaitFailover(old)
	start := time.Now()
	if err := retry(15*time.Second, func() error { i++; return appendOne(i) }); err != nil {
		t.Fatalf("appends still failing after the failover: %v", err)
	}
	t.Logf("first acknowledged append %v after the failover completed (%d failed during it)",
		time.Since(start).Round(time.Millisecond), failed)
	for j := 0; j < 20; j++ {
		i++
		if err := appendOne(i); err != nil {
			t.Fatalf("append after failover: %v", err)
		}
	}
	if got := c.PrimaryOf(key); got != promoted {
		t.Fatalf("stream now on %s, want the promoted %s", got.Addr, promoted.Addr)
	}
	mustVerify(t, cc, tenant)
	stored := requestIDs(t, cc, tenant)
	for id := range acked {
		if !stored[id] {
			t.Errorf("acknowledged record %s missing after the failover", id)
		}
	}
}

// TestAuditWaitReplicasThroughSentinelFailover: with wait_replicas 1 on a
// Sentinel set, the primary is killed under a steady stream of appends;
// after the failover every acknowledged record is on the new primary and
// the chain verifies.
func TestAuditWaitReplicasThroughSentinelFailover(t *testing.T) {
	ss := redistest.StartSentinel(t)
	rdb := ss.Client()
	const tenant = "acme"
	s := newStream(t, rdb, audit.StreamConfig{WaitReplicas: 1, WaitTimeout: 500 * time.Millisecond, WriteTimeout: time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	var mu sync.Mutex
	acked := map[string]bool{}
	var sent, failed int
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			r := decision(tenant, i)
			_, err := s.Append(ctx, r)
			mu.Lock()
			sent++
			if err == nil {
				acked[r.RequestID] = true
			} else {
				failed++
			}
			mu.Unlock()
		}
	}()
	ackedNow := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	if err := retry(10*time.Second, func() error {
		if ackedNow() < 50 {
			return fmt.Errorf("%d acknowledged", ackedNow())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	old := ss.KillPrimary()
	ss.WaitFailover(old)
	before := ackedNow()
	if err := retry(15*time.Second, func() error {
		if ackedNow() < before+50 {
			return fmt.Errorf("%d acknowledged since the failover", ackedNow()-before)
		}
		return nil
	}); err != nil {
		t.Fatalf("appends not resuming after the failover: %v", err)
	}
	close(stop)
	<-done
	mu.Lock()
	t.Logf("appends sent %d, acknowledged %d, failed %d", sent, len(acked), failed)
	mu.Unlock()
	mustVerify(t, rdb, tenant)
	stored := requestIDs(t, rdb, tenant)
	lost := 0
	for id := range acked {
		if !stored[id] {
			lost++
		}
	}
	if lost > 0 {
		t.Fatalf("%d acknowledged records lost in the failover despite wait_replicas 1", lost)
	}
}

// TestAuditWaitReplicasOnCluster: with wait_replicas on a Cluster each
// primary gets its own pipeline (its appends, then WAIT on the same
// connection). Tenants on two primaries both append; with one primary's
// replica frozen, that tenant's appends fail closed (not replicated) while
// the other tenant's go on. It used to be refused outright.
func TestAuditWaitReplicasOnCluster(t *testing.T) {
	c := redistest.StartCluster(t)
	cc := c.Client()
	tenants := tenantsOnDistinctPrimaries(t, c, 2)
	s := newStream(t, cc, audit.StreamConfig{WaitReplicas: 1, WaitTimeout: 300 * time.Millisecond, WriteTimeout: 2 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tn := range tenants {
		if err := retry(10*time.Second, func() error { _, err := s.Append(ctx, decision(tn, 0)); return err }); err != nil {
			t.Fatalf("append to %s with its replica up: %v", tn, err)
		}
	}
	frozen := c.ReplicasOf(c.PrimaryOf(audit.StreamKey(tenants[0])))[0]
	frozen.Freeze()
	defer frozen.Thaw()
	if _, err := s.Append(ctx, decision(tenants[0], 1)); !errors.Is(err, audit.ErrNotReplicated) {
		t.Fatalf("append to %s with its replica frozen: %v, want ErrNotReplicated", tenants[0], err)
	}
	if _, err := s.Append(ctx, decision(tenants[1], 1)); err != nil {
		t.Fatalf("append to %s, whose replica is up: %v", tenants[1], err)
	}
}

// TestDurabilityCheckSeesEveryPrimary: the writer's durability check (and
// the readiness it feeds) must report the weakest primary of a Cluster.
// CONFIG GET used to go to one node chosen by go-redis, so a Cluster with
// one primary on appendfsync everysec read "always" most of the time.
func TestDurabilityCheckSeesEveryPrimary(t *testing.T) {
	c := redistest.StartCluster(t)
	cc := c.Client()
	ctx := context.Background()
	weak := c.Primaries()[1]
	if err := weak.Client().ConfigSet(ctx, "appendfsync", "everysec").Err(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		if d := audit.CheckDurability(ctx, cc); d.Level != audit.DurabilityEverysec {
			t.Fatalf("check %d: durability %s, want everysec (primary %s runs everysec)", i, d, weak.Addr)
		}
	}
}

// TestProxyACLWorksOnCluster: a proxy connecting as the user of
// audit.ProxyACLRules (set on every node: ACLs are per node in a Cluster)
// must reach its keys. go-redis' first CLUSTER SLOTS used to be refused
// (NOPERM 'cluster|slots'), so every command, the writer's registration
// and every append failed.
func TestProxyACLWorksOnCluster(t *testing.T) {
	c := redistest.StartCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, n := range c.Nodes {
		args := []any{"acl", "setuser", "passport-proxy", "on", ">pw"}
		for _, r := range strings.Fields(audit.ProxyACLRules) {
			args = append(args, r)
		}
		if err := n.Client().Do(ctx, args...).Err(); err != nil {
			t.Fatalf("ACL SETUSER on %s: %v", n.Addr, err)
		}
	}
	cfg := c.Config()
	cfg.Username, cfg.Password = "passport-proxy", "pw"
	rdb, err := redisx.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	s := newStream(t, rdb, audit.StreamConfig{})
	if _, err := s.Append(ctx, decision("acme", 1)); err != nil {
		t.Fatalf("append as the proxy ACL user: %v", err)
	}
}

// TestAuditFollowOnCluster: `audit tail --follow` over every tenant
// (audit.Follow) follows streams on several primaries; one XREAD over
// them all was refused (CROSSSLOT), so following failed at once.
func TestAuditFollowOnCluster(t *testing.T) {
	c := redistest.StartCluster(t)
	cc := c.Client()
	tenants := tenantsOnDistinctPrimaries(t, c, 2)
	s := newStream(t, cc, audit.StreamConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tn := range tenants {
		if _, err := s.Append(ctx, decision(tn, 0)); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	seen := map[string]int{}
	done := make(chan error, 1)
	fctx, stop := context.WithCancel(ctx)
	go func() {
		done <- audit.Follow(fctx, cc, true, map[string]string{}, func(stream string, _ redis.XMessage) {
			mu.Lock()
			seen[stream]++
			mu.Unlock()
		})
	}()
	// What was there, then what comes while following, on both primaries.
	for _, tn := range tenants {
		if _, err := s.Append(ctx, decision(tn, 1)); err != nil {
			t.Fatal(err)
		}
	}
	if err := retry(20*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		for _, tn := range tenants {
			if seen[audit.StreamKey(tn)] < 2 {
				return fmt.Errorf("followed %v", seen)
			}
		}
		return nil
	}); err != nil {
		select {
		case ferr := <-done:
			t.Fatalf("%v; Follow returned %v", err, ferr)
		default:
			t.Fatal(err)
		}
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Follow: %v", err)
	}
}

// TestAcknowledgedRecordsLostInFailoverAreReported: without wait_replicas
// a record the primary acknowledged but did not yet
// replicate is lost when its replica takes over. The stream and its heads
// roll back together and the writer resyncs to the older head; it knows
// what it had acknowledged, so it writes a signed loss checkpoint, and
// `audit verify` reports the lost range (it used to pass).
func TestAcknowledgedRecordsLostInFailoverAreReported(t *testing.T) {
	c := redistest.StartCluster(t)
	tenant := tenantsOnDistinctPrimaries(t, c, 1)[0]
	old := c.PrimaryOf(audit.StreamKey(tenant))
	lostRecordsReported(t, c.Client(), tenant, old.Server, c.ReplicasOf(old)[0].Server, func() { c.WaitFailover(old) })
}

// TestSentinelAcknowledgedRecordsLostInFailoverAreReported is the same on
// a Sentinel set with one replica.
func TestSentinelAcknowledgedRecordsLostInFailoverAreReported(t *testing.T) {
	ss := redistest.StartSentinel(t, redistest.SentinelOptions{Replicas: 1})
	old := ss.Primary()
	replica := ss.Data[0]
	if replica == old {
		replica = ss.Data[1]
	}
	lostRecordsReported(t, ss.Client(), "acme", old, replica, func() { ss.WaitFailover(old) })
}

// lostRecordsReported appends to tenant's stream through rdb, makes the
// primary acknowledge records its replica never gets, kills the primary,
// and after waitFailover checks that `audit verify` names the lost range.
func lostRecordsReported(t *testing.T, rdb redis.UniversalClient, tenant string, old, replica *redistest.Server, waitFailover func()) {
	s := newStream(t, rdb, audit.StreamConfig{WriteTimeout: 500 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	acked := map[string]bool{}
	i := 0
	appendN := func(n int) {
		for end := i + n; i < end; i++ {
			r := decision(tenant, i)
			if _, err := s.Append(ctx, r); err == nil {
				acked[r.RequestID] = true
			}
		}
	}
	appendN(10)
	if n, err := old.Client().Wait(ctx, 1, 5000).Result(); err != nil || n != 1 {
		t.Fatalf("WAIT = %d, %v", n, err)
	}
	// Freeze the replica and cut its link: what the primary acknowledges
	// from now on never reaches it.
	replica.Freeze()
	if err := old.Client().Do(ctx, "client", "kill", "type", "replica").Err(); err != nil {
		t.Fatal(err)
	}
	appendN(10)
	old.Kill()
	replica.Thaw()
	waitFailover()
	_ = retry(15*time.Second, func() error {
		r := decision(tenant, i)
		i++
		_, err := s.Append(ctx, r)
		if err == nil {
			acked[r.RequestID] = true
		}
		return err
	})
	appendN(5)
	rep, err := audit.VerifyStream(ctx, rdb, tenant, audit.VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stored := requestIDs(t, rdb, tenant)
	lost := 0
	for id := range acked {
		if !stored[id] {
			lost++
		}
	}
	t.Logf("acknowledged %d, lost %d, verify ok=%v problems=%d", len(acked), lost, rep.OK(), len(rep.Problems))
	if lost == 0 {
		t.Fatal("the failover lost nothing: the scenario tests nothing")
	}
	if rep.OK() {
		t.Fatalf("%d acknowledged records lost in the failover and audit verify passes", lost)
	}
	said := false
	for _, p := range rep.Problems {
		if p.Kind == audit.ProblemDeleted && strings.Contains(p.Detail, fmt.Sprintf("seq %d..%d ", p.Seq, p.Seq+uint64(lost)-1)) && strings.Contains(p.Detail, "acknowledged") {
			said = true
		}
	}
	if !said {
		t.Fatalf("verify's problems %v do not name the lost range", rep.Problems)
	}
}
