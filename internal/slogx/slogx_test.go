package slogx

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestRateLimit(t *testing.T) {
	var buf bytes.Buffer
	h := RateLimit(slog.NewTextHandler(&buf, nil), slog.LevelWarn, time.Second)
	now := time.Unix(1000, 0)
	h.(*limiter).st.now = func() time.Time { return now }
	log := slog.New(h).With("component", "proxy")

	for i := range 1000 {
		log.Error("audit append failed; refusing", "request_id", i)
		log.Warn("upstream failed", "request_id", i)
		log.Info("request served", "request_id", i) // below the limit: all pass
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if got := count(lines, "audit append failed"); got != 1 {
		t.Fatalf("errors in one second: %d lines, want 1", got)
	}
	if got := count(lines, "upstream failed"); got != 1 {
		t.Fatalf("warnings in one second: %d lines, want 1", got)
	}
	if got := count(lines, "request served"); got != 1000 {
		t.Fatalf("info lines: %d, want 1000", got)
	}
	if !strings.Contains(lines[0], "component=proxy") {
		t.Fatalf("attributes lost: %s", lines[0])
	}

	// The next window: the event's next line carries the count.
	buf.Reset()
	now = now.Add(1100 * time.Millisecond)
	log.Error("audit append failed; refusing", "request_id", "x")
	out := buf.String()
	if !strings.Contains(out, "audit append failed") || !strings.Contains(out, "suppressed=999") {
		t.Fatalf("next window: %q, want the line with suppressed=999", out)
	}
	// The other event's count goes out on a summary line.
	if !strings.Contains(out, `msg="log lines suppressed" component=proxy event="upstream failed" suppressed=999`) {
		t.Fatalf("summary of the quiet event missing: %q", out)
	}
	buf.Reset()
	now = now.Add(1100 * time.Millisecond)
	log.Warn("upstream failed")
	if out := buf.String(); strings.Contains(out, SuppressedKey) {
		t.Fatalf("count reported twice: %q", out)
	}
}

func TestRateLimitBoundsEvents(t *testing.T) {
	var buf bytes.Buffer
	h := RateLimit(slog.NewTextHandler(&buf, nil), slog.LevelWarn, time.Second)
	log := slog.New(h)
	for i := range 3 * maxEvents {
		log.Warn("event " + strings.Repeat("x", i%50) + string(rune('a'+i%26)) + string(rune(i)))
	}
	if n := len(h.(*limiter).st.events); n > maxEvents {
		t.Fatalf("%d events tracked, want <= %d", n, maxEvents)
	}
	_ = h.Handle(context.Background(), slog.NewRecord(time.Now(), slog.LevelError, "still works", 0))
	if !strings.Contains(buf.String(), "still works") {
		t.Fatal("a new event was not logged")
	}
}

func count(lines []string, s string) int {
	n := 0
	for _, l := range lines {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n
}
