package backoff

import (
	"context"
	"testing"
	"time"
)

func TestScheduleDoublesWithinJitter(t *testing.T) {
	b := Backoff{Min: 100 * time.Millisecond, Max: time.Second}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, w := range want {
		w *= time.Millisecond
		if d := b.Next(); d < w/2 || d > w {
			t.Fatalf("wait %d = %v, want within [%v, %v]", i, d, w/2, w)
		}
	}
	b.Reset()
	if d := b.Next(); d > 100*time.Millisecond {
		t.Fatalf("after Reset: %v, want at most Min", d)
	}
}

// Two processes that start retrying together spread out: the waits are
// not all equal.
func TestJitterSpreads(t *testing.T) {
	seen := map[time.Duration]bool{}
	for range 50 {
		seen[Jitter(time.Second)] = true
	}
	if len(seen) < 10 {
		t.Fatalf("50 jittered waits took only %d values", len(seen))
	}
}

func TestZeroValueAndWait(t *testing.T) {
	var b Backoff
	if d := b.Next(); d < 50*time.Millisecond || d > 100*time.Millisecond {
		t.Fatalf("zero value first wait %v, want within [50ms, 100ms]", d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if b.Wait(ctx) {
		t.Fatal("Wait on an ended context reported true")
	}
}
