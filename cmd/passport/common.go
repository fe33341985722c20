package main

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/agentpassport/passport/internal/redisx"
	"github.com/agentpassport/passport/internal/slogx"
)

// logger builds the process logger from the global flags. Packages receive
// it as a constructor argument; nothing uses slog.Default().
func (a *app) logger() (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(a.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", a.logLevel)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler
	switch strings.ToLower(a.logFormat) {
	case "text", "":
		h = slog.NewTextHandler(a.stderr, opts)
	case "json":
		h = slog.NewJSONHandler(a.stderr, opts)
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", a.logFormat)
	}
	// A storm (Redis down, a flood of refusals) writes one line per event
	// per second, with the count of the lines left out.
	log := slog.New(slogx.RateLimit(h, slog.LevelWarn, time.Second))
	redisx.SetLogger(log.With("component", "redis"))
	return log, nil
}

// firstNonEmpty returns the first value that is not "": settings resolved
// in order of precedence (flag, demo.json, environment, file, default).
func firstNonEmpty(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}
