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
