package run

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// A panic in a part is recovered, logged with its stack, counted, and
// ends the group with an error naming the part; the other parts are
// cancelled and waited for.
func TestPanicIsRecoveredLoggedAndCounted(t *testing.T) {
	reg := prometheus.NewRegistry()
	var logs bytes.Buffer
	p := NewPanics(reg, slog.New(slog.NewTextHandler(&logs, nil)))
	g := NewGroup(context.Background(), p)
	stopped := make(chan struct{})
	g.Go("steady", func(ctx context.Context) error {
		<-ctx.Done()
		close(stopped)
		return nil
	})
	g.Go("faulty", func(context.Context) error { panic("boom") })
	err := g.Wait()
	if err == nil || !strings.Contains(err.Error(), "faulty: panic: boom") {
		t.Fatalf("Wait = %v, want the panic as an error naming its part", err)
	}
	select {
	case <-stopped:
	default:
		t.Fatal("the other part was not cancelled and waited for")
	}
	count, err := testutil.GatherAndCount(reg, "passport_panics_total")
	if err != nil || count != 2 {
		t.Fatalf("passport_panics_total series = %d (%v), want one per part", count, err)
	}
	if got := testutil.ToFloat64(p.count.WithLabelValues("faulty")); got != 1 {
		t.Fatalf("faulty panics = %v, want 1", got)
	}
	if got := testutil.ToFloat64(p.count.WithLabelValues("steady")); got != 0 {
		t.Fatalf("steady panics = %v, want 0", got)
	}
	if !strings.Contains(logs.String(), "panic recovered") || !strings.Contains(logs.String(), "run_test.go") {
		t.Fatalf("log lacks the panic and its stack:\n%s", logs.String())
	}
}

func TestErrorsPassThroughAndNilGuards(t *testing.T) {
	want := errors.New("failed")
	var p *Panics
	if err := p.Guard("x", func() error { return want }); !errors.Is(err, want) {
		t.Fatalf("Guard = %v, want the part's error", err)
	}
	if err := p.Guard("x", func() error { panic(1) }); err == nil {
		t.Fatal("a nil Panics must still recover")
	}
}

// A goroutine a part starts inside its component (Guarded with the part's
// context) is recovered and counted by the same Panics, under its own
// name, and its panic comes back as an error to whoever waits for it;
// without a Panics in the context it is still recovered.
func TestGuardedInsideAPart(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := NewPanics(reg, slog.New(slog.DiscardHandler))
	g := NewGroup(context.Background(), p)
	g.Go("component", func(ctx context.Context) error {
		inner := make(chan error, 1)
		go func() { inner <- Guarded(ctx, "component.loop", func() error { panic("inner boom") })() }()
		return <-inner
	})
	if err := g.Wait(); err == nil || !strings.Contains(err.Error(), "component.loop: panic: inner boom") {
		t.Fatalf("Wait = %v, want the inner panic as an error", err)
	}
	if got := testutil.ToFloat64(p.count.WithLabelValues("component.loop")); got != 1 {
		t.Fatalf("component.loop panics = %v, want 1", got)
	}
	if err := Guarded(context.Background(), "bare", func() error { panic("x") })(); err == nil {
		t.Fatal("a panic without a Panics in the context was not recovered")
	}
}
