package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestLoggerRateLimited: the process logger writes one line per warning or
// error event per second (the rest are counted), and info lines in full.
func TestLoggerRateLimited(t *testing.T) {
	var buf bytes.Buffer
	a := &app{getenv: func(string) string { return "" }, stderr: &buf, logLevel: "info"}
	log, err := a.logger()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 500 {
		log.Error("agent state unavailable; refusing", "request_id", i)
		log.Info("proxy listening", "n", i)
	}
	if n := strings.Count(buf.String(), "agent state unavailable"); n != 1 {
		t.Fatalf("%d error lines for one event within a second, want 1", n)
	}
	if n := strings.Count(buf.String(), "proxy listening"); n != 500 {
		t.Fatalf("%d info lines, want 500", n)
	}
}
