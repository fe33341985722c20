package audit_test

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
)

// TestRunOwnsTheWriter: NewStream starts no goroutine; Run starts the
// writer, and when its context ends drains, seals and stops it, leaving no
// goroutine behind and refusing later appends (no Close needed).
func TestRunOwnsTheWriter(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	if err := rdb.Ping(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	settle := func(want int) int {
		deadline := time.Now().Add(5 * time.Second)
		for {
			n := runtime.NumGoroutine()
			if n <= want || time.Now().After(deadline) {
				return n
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	base := runtime.NumGoroutine()
	s, err := audit.NewStream(rdb, audit.StreamConfig{}, testLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if n := settle(base); n > base {
		t.Fatalf("NewStream left %d goroutines running, want none", n-base)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	if _, err := s.Append(context.Background(), decision("acme", 1)); err != nil {
		t.Fatal(err)
	}
	s.Enqueue(decision("acme", 2))
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if st := s.Stats(); st.Written < 2 {
		t.Fatalf("Run returned with %d records written, want the enqueued one drained too", st.Written)
	}
	if _, err := s.Append(context.Background(), decision("acme", 3)); !errors.Is(err, audit.ErrClosed) {
		t.Fatalf("Append after Run returned: %v, want ErrClosed", err)
	}
	if n := settle(base); n > base {
		t.Fatalf("%d goroutines left after Run returned", n-base)
	}
}
