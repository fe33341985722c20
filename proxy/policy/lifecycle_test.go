package policy

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/topdown"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// readerGone reports whether no read transaction holds p's store any
// more: a write transaction's commit waits for every reader of an inmem
// store, so it completes only then. It waits at most 10s (a hang is the
// failure).
func readerGone(p *prepared) error {
	done := make(chan error, 1)
	go func() {
		ctx := context.Background()
		txn, err := p.fast.store.NewTransaction(ctx, storage.WriteParams)
		if err != nil {
			done <- err
			return
		}
		done <- p.fast.store.Commit(ctx, txn)
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		return errors.New("the replaced policy's read transaction is still open")
	}
}

// TestReloadClosesTransaction: every reload closes the policy it replaces
// (its shared read transaction is aborted, which frees the store), after
// the evaluations still using it have ended, and never under them: calls
// decided across hundreds of reloads all succeed. Before, no read
// transaction was ever closed.
func TestReloadClosesTransaction(t *testing.T) {
	e, err := New(context.Background(), Options{Dir: "testdata/good", Logger: quiet(), Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var decided atomic.Int64
	errs := make(chan error, 4)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			typ, want := "healer", true
			if i%2 == 1 {
				typ, want = "observer", false
			}
			in := input(t, typ, "service.restart")
			for ctx.Err() == nil {
				d, err := e.Decide(context.Background(), in)
				if err != nil || d.Allow != want {
					errs <- errors.Join(err, errors.New("a call decided during the reloads failed"))
					return
				}
				decided.Add(1)
			}
		}()
	}
	reloads := 200
	if testing.Short() {
		reloads = 50
	}
	replaced := make([]*prepared, 0, reloads)
	for range reloads {
		replaced = append(replaced, e.cur.Load())
		if err := e.Reload(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i, p := range replaced {
		if !p.closed.Load() || p.users.Load() != 0 {
			t.Fatalf("load %d of %d: not closed after its replacement (users %d)", i, len(replaced), p.users.Load())
		}
		if err := readerGone(p); err != nil {
			t.Fatalf("load %d of %d: %v", i, len(replaced), err)
		}
	}
	if cur := e.cur.Load(); cur.closed.Load() || cur.users.Load() != 1 {
		t.Fatalf("the policy in force is closed or held (users %d)", cur.users.Load())
	}
	if _, err := e.Decide(context.Background(), input(t, "healer", "service.restart")); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d reloads, %d calls decided meanwhile", reloads, decided.Load())
}

// TestReloadWaitsForEvaluations: a load replaced while an evaluation holds
// it stays open until that evaluation ends, then closes, once; a load
// that is closed can no longer be held, and Decide then takes the current
// one.
func TestReloadWaitsForEvaluations(t *testing.T) {
	e, err := New(context.Background(), Options{FS: fstest.MapFS{"p.rego": {Data: []byte("package passport.authz\ndecision := {\"allow\": true}\n")}},
		Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	old := e.hold() // an evaluation in flight
	if err := e.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	if old.closed.Load() {
		t.Fatal("closed under an evaluation")
	}
	if d, err := e.evaluate(context.Background(), old, input(t, "healer", "service.restart")); err != nil || !d.Allow {
		t.Fatalf("the evaluation in flight failed: %+v %v", d, err)
	}
	old.release()
	if !old.closed.Load() {
		t.Fatal("not closed after its last evaluation")
	}
	if err := readerGone(old); err != nil {
		t.Fatal(err)
	}
	if old.hold() {
		t.Fatal("a closed load was held")
	}
	if p := e.hold(); p == nil || p == old {
		t.Fatal("hold did not take the current load")
	} else {
		p.release()
	}
}

// TestReloadFailureClosesTransaction: a load that fails after its read
// transaction was opened (here: the decision query does not parse) closes
// it; before, it stayed open.
func TestReloadFailureClosesTransaction(t *testing.T) {
	var stores []storage.Store
	defer func(orig func(map[string]any) storage.Store) { newStore = orig }(newStore)
	newStore = func(data map[string]any) storage.Store {
		s := inmem.NewFromObject(data)
		stores = append(stores, s)
		return s
	}
	e, err := New(context.Background(), Options{FS: fstest.MapFS{"p.rego": {Data: []byte(
		"package passport.authz\ndecision := {\"allow\": true}\n")}}, Query: "data.passport.authz[", Logger: quiet()})
	if err == nil || e != nil {
		t.Fatalf("a policy that does not compile loaded: %v", err)
	}
	if len(stores) != 1 {
		t.Fatalf("%d stores opened, want 1", len(stores))
	}
	if err := readerGone(&prepared{fast: &fastQuery{store: stores[0]}}); err != nil {
		t.Fatal(err)
	}
}

// TestReloadPanicKeepsPolicy: a panic while loading (here planted in the
// store's construction) is a failed load: New reports it, and a reload
// keeps the last good policy and counts the failure, where the panic would
// have ended the process from Run's goroutine.
func TestReloadPanicKeepsPolicy(t *testing.T) {
	defer func(orig func(map[string]any) storage.Store) { newStore = orig }(newStore)
	m := NewMetrics(nil)
	e, err := New(context.Background(), Options{Dir: "testdata/good", Logger: quiet(), Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	rev := e.Revision()
	newStore = func(map[string]any) storage.Store { panic("planted") }
	if err := e.Reload(context.Background()); err == nil || !strings.Contains(err.Error(), "panic") {
		t.Fatalf("reload: %v, want the panic as an error", err)
	}
	if _, err := New(context.Background(), Options{Dir: "testdata/good", Logger: quiet()}); err == nil {
		t.Fatal("New succeeded through a panic")
	}
	if got := testutil.ToFloat64(m.Reloads.WithLabelValues("enforced", "failure")); got != 1 || e.Revision() != rev {
		t.Fatalf("failures %v, revision %s (was %s)", got, e.Revision(), rev)
	}
	if d, err := e.Decide(context.Background(), input(t, "healer", "service.restart")); err != nil || !d.Allow {
		t.Fatalf("the last good policy no longer decides: %+v %v", d, err)
	}
}

// TestDeadlineConcurrent: the deadline is safe for concurrent use, as
// topdown.Cancel requires (run with -race): goroutines asking Cancelled
// while others call Cancel agree that it ended, once, and why; and
// evaluations sharing one deadline all stop when it is cancelled from
// another goroutine. Before, Cancel and Cancelled raced on plain fields.
func TestDeadlineConcurrent(t *testing.T) {
	c := newDeadline(context.Background(), time.Hour)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if i%4 == 0 {
				c.Cancel()
			}
			for !c.Cancelled() {
			}
			if !errors.Is(c.reason(), context.Canceled) {
				t.Errorf("ended with %v, want context.Canceled", c.reason())
			}
		}()
	}
	close(start)
	wg.Wait()

	// Evaluations of a policy that runs for minutes, sharing one
	// deadline, cancelled from another goroutine.
	e, err := New(context.Background(), Options{FS: fstest.MapFS{"p.rego": {Data: []byte(
		"package passport.authz\ndecision := {\"allow\": count([x | some x in numbers.range(1, 100000000); x % 7 == 0]) > 0}\n")}},
		Logger: quiet(), Timeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	p := e.hold()
	defer p.release()
	shared := newDeadline(context.Background(), time.Hour)
	results := make(chan error, 4)
	for range 4 {
		go func() {
			_, err := p.fast.eval(context.Background(), shared, input(t, "healer", "service.restart"))
			results <- err
		}()
	}
	shared.Cancel()
	for range 4 {
		err := <-results
		var te *topdown.Error
		if !errors.Is(err, context.Canceled) && !(errors.As(err, &te) && te.Code == topdown.CancelErr) {
			t.Fatalf("an evaluation sharing the cancelled deadline ended with %v", err)
		}
	}
}
