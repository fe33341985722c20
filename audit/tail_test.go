package audit_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
)

// tailSink collects what a Tail delivers, checking that each stream's
// entries come in order and once.
type tailSink struct {
	t    *testing.T
	mu   sync.Mutex
	got  map[string][]string
	fail []string
}

func newTailSink(t *testing.T) *tailSink { return &tailSink{t: t, got: map[string][]string{}} }

func (s *tailSink) fn(stream string, msgs []redis.XMessage) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range msgs {
		ids := s.got[stream]
		if len(ids) > 0 && !audit.IDLess(ids[len(ids)-1], m.ID) {
			s.fail = append(s.fail, fmt.Sprintf("%s: %s after %s", stream, m.ID, ids[len(ids)-1]))
		}
		s.got[stream] = append(ids, m.ID)
	}
}

// await waits until every stream in want has exactly want[stream] entries.
func (s *tailSink) await(want map[string]int, within time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(within)
	for {
		s.mu.Lock()
		var missing []string
		for k, n := range want {
			if len(s.got[k]) != n {
				missing = append(missing, fmt.Sprintf("%s %d/%d", k, len(s.got[k]), n))
			}
		}
		fail := s.fail
		s.mu.Unlock()
		if len(fail) > 0 {
			s.t.Fatalf("out of order or repeated: %v", fail)
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			if len(missing) > 5 {
				missing = append(missing[:5], fmt.Sprintf("and %d more", len(missing)-5))
			}
			s.t.Fatalf("not delivered within %s: %s", within, strings.Join(missing, ", "))
		}
		time.Sleep(10 * time.Millisecond) // polling a condition set by another goroutine
	}
}

func runTail(t *testing.T, tail *audit.Tail, fn func(string, []redis.XMessage)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tail.Run(ctx, fn) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return when its context ended (a read blocks for a minute)")
		}
	})
}

// blockedClients is how many connections of rdb's server block in a read.
func blockedClients(t *testing.T, rdb *redis.Client) int {
	t.Helper()
	info, err := rdb.Info(context.Background(), "clients").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "blocked_clients:"); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	t.Fatalf("no blocked_clients in %q", info)
	return 0
}

func awaitBlocked(t *testing.T, rdb *redis.Client, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for blockedClients(t, rdb) != n {
		if time.Now().After(deadline) {
			t.Fatalf("blocked clients: %d, want %d", blockedClients(t, rdb), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// xadd appends n entries to stream and returns the last one's id.
func xadd(t *testing.T, rdb redis.Cmdable, stream string, n int) string {
	t.Helper()
	id := ""
	for i := range n {
		var err error
		if id, err = rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: stream, Values: []any{"n", i}}).Result(); err != nil {
			t.Fatal(err)
		}
	}
	return id
}

// TestTailManyStreamsOneRead: 300 streams are followed by one blocking
// XREAD (one connection), not one each, and every entry arrives once, in
// order, including those written before Run and between reads.
func TestTailManyStreamsOneRead(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	tail := audit.NewTail(rdb, audit.TailConfig{Block: time.Minute})
	sink := newTailSink(t)
	want := map[string]int{}
	for i := range 300 {
		k := audit.StreamKey(fmt.Sprintf("t%03d", i))
		tail.Add(k, xadd(t, rdb, k, 1)) // from after this entry
		want[k] = 0
	}
	runTail(t, tail, sink.fn)
	awaitBlocked(t, rdb, 1)
	for k := range want {
		xadd(t, rdb, k, 2)
		want[k] = 2
	}
	sink.await(want, 10*time.Second)
	awaitBlocked(t, rdb, 1)
	if n := blockedClients(t, rdb); n != 1 {
		t.Fatalf("%d blocked reads for 300 streams, want 1", n)
	}
}

// TestTailAddEndsABlockedRead: a stream added while the read blocks (for
// a minute here) is read at once, not when the read ends by itself.
func TestTailAddEndsABlockedRead(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	tail := audit.NewTail(rdb, audit.TailConfig{Block: time.Minute})
	sink := newTailSink(t)
	tail.Add("a", "0-0")
	runTail(t, tail, sink.fn)
	awaitBlocked(t, rdb, 1)
	tail.Add("b", "0-0")
	xadd(t, rdb, "b", 3)
	sink.await(map[string]int{"a": 0, "b": 3}, 10*time.Second)
}

// TestTailShardsPastStreamsPerRead: past StreamsPerRead streams a second
// reader takes the rest, and each stream is read by one reader only.
func TestTailShardsPastStreamsPerRead(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	tail := audit.NewTail(rdb, audit.TailConfig{Block: time.Minute, StreamsPerRead: 10})
	sink := newTailSink(t)
	runTail(t, tail, sink.fn)
	want := map[string]int{}
	for i := range 25 {
		k := fmt.Sprintf("s%02d", i)
		tail.Add(k, "0-0")
		want[k] = 0
	}
	awaitBlocked(t, rdb, 3)
	for k := range want {
		xadd(t, rdb, k, 5)
		want[k] = 5
	}
	sink.await(want, 10*time.Second)
}

// TestTailStop: a stopped stream is no longer delivered; following it
// again starts where the new Add says, and the old stop leaves the new
// follow alone.
func TestTailStop(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	tail := audit.NewTail(rdb, audit.TailConfig{Block: time.Minute})
	sink := newTailSink(t)
	stopA := tail.Add("a", "0-0")
	tail.Add("b", "0-0")
	runTail(t, tail, sink.fn)
	xadd(t, rdb, "a", 1)
	sink.await(map[string]int{"a": 1}, 10*time.Second)
	stopA()
	xadd(t, rdb, "a", 1) // not followed
	xadd(t, rdb, "b", 1) // the marker that what came before was read
	sink.await(map[string]int{"a": 1, "b": 1}, 10*time.Second)
	tail.Add("a", xadd(t, rdb, "a", 1)) // again, from after a new entry
	stopA()                             // the first follow's stop: must not end the second
	xadd(t, rdb, "a", 2)
	sink.await(map[string]int{"a": 3, "b": 1}, 10*time.Second)
}

// TestTailOnCluster: on a Cluster, streams of several tenants on one
// primary (different slots, which one XREAD refuses with CROSSSLOT) and on
// other primaries are all followed; a stream added later is read at once.
func TestTailOnCluster(t *testing.T) {
	c := redistest.StartCluster(t)
	cc := c.Client()
	byPrimary := map[string][]string{}
	for i := 0; len(byPrimary) < 3 || minLen(byPrimary) < 3; i++ {
		k := audit.StreamKey(fmt.Sprintf("t%d", i))
		p := c.PrimaryOf(k).Addr
		byPrimary[p] = append(byPrimary[p], k)
	}
	tail := audit.NewTail(cc, audit.TailConfig{Poll: time.Minute})
	sink := newTailSink(t)
	want := map[string]int{}
	var late string
	for _, ks := range byPrimary {
		for _, k := range ks {
			if late == "" {
				late = k
				continue
			}
			tail.Add(k, "0-0")
			want[k] = 2
			xadd(t, cc, k, 2)
		}
	}
	runTail(t, tail, sink.fn)
	sink.await(want, 10*time.Second)
	xadd(t, cc, late, 1)
	tail.Add(late, "0-0")
	want[late] = 1
	sink.await(want, 10*time.Second)
}

func minLen(m map[string][]string) int {
	n := -1
	for _, v := range m {
		if n < 0 || len(v) < n {
			n = len(v)
		}
	}
	return n
}

// TestTailErrors: a failed read is told to OnError; nil retries and loses
// nothing once Redis is back, an error ends Run with it.
func TestTailErrors(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	var mu sync.Mutex
	var seen []error
	tail := audit.NewTail(rdb, audit.TailConfig{Block: 200 * time.Millisecond, OnError: func(err error) error {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, err)
		return nil
	}})
	sink := newTailSink(t)
	tail.Add("a", "0-0")
	runTail(t, tail, sink.fn)
	xadd(t, rdb, "a", 1)
	sink.await(map[string]int{"a": 1}, 10*time.Second)
	srv.Kill()
	srv.Restart()
	xadd(t, rdb, "a", 2)
	sink.await(map[string]int{"a": 3}, 20*time.Second)
	mu.Lock()
	n := len(seen)
	mu.Unlock()
	if n == 0 {
		t.Fatal("a restart of Redis was not told to OnError")
	}

	stop := errors.New("give up")
	tail2 := audit.NewTail(rdb, audit.TailConfig{Block: 200 * time.Millisecond, OnError: func(error) error { return stop }})
	tail2.Add("a", "0-0")
	done := make(chan error, 1)
	go func() { done <- tail2.Run(context.Background(), func(string, []redis.XMessage) {}) }()
	srv.Kill()
	select {
	case err := <-done:
		if !errors.Is(err, stop) {
			t.Fatalf("Run returned %v, want %v", err, stop)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return the error OnError gave")
	}
}
