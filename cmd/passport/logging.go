package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/agentpassport/passport/internal/redisx"
	"github.com/agentpassport/passport/internal/slogx"
)

// LogFile is where `passport up` writes its logs, under its data
// directory, unless --log-stderr.
const LogFile = "passport.log"

// serverCommands run until stopped; every other command is one shot and
// logs warnings and errors only (unless --log-level says otherwise), so
// that its output is its answer.
var serverCommands = []string{
	"passport up", "passport authority", "passport proxy", "passport fleet", "passport healer",
	"passport chaos run", "passport dashboard", "passport witness",
}

// beforeCommand runs before every subcommand: it tells one-shot commands
// from servers, and gives --data its default from PASSPORT_DATA (the line
// `passport up` prints for other shells sets it).
func (a *app) beforeCommand(cmd *cobra.Command, _ []string) error {
	a.oneShot = !slices.Contains(serverCommands, cmd.CommandPath())
	if v := a.getenv("PASSPORT_DATA"); v != "" {
		if f := cmd.Flags().Lookup("data"); f != nil && !f.Changed {
			if err := cmd.Flags().Set("data", v); err != nil {
				return fmt.Errorf("PASSPORT_DATA: %w", err)
			}
		}
	}
	// Every command but up itself calls the stack in --data DIR, whose
	// demo.json names its CA (caFile).
	if f := cmd.Flags().Lookup("data"); f != nil && cmd.CommandPath() != "passport up" {
		a.dataDir = f.Value.String()
	}
	return nil
}

// level is --log-level, else info for servers and warn for one-shot
// commands.
func (a *app) level() (slog.Level, error) {
	if a.logLevel == "" {
		if a.oneShot {
			return slog.LevelWarn, nil
		}
		return slog.LevelInfo, nil
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(a.logLevel)); err != nil {
		return 0, fmt.Errorf("--log-level %q: want debug, info, warn or error", a.logLevel)
	}
	return lvl, nil
}

// handler is the --log-format handler writing to w.
func (a *app) handler(w io.Writer) (slog.Handler, error) {
	lvl, err := a.level()
	if err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch strings.ToLower(a.logFormat) {
	case "text", "":
		return slog.NewTextHandler(w, opts), nil
	case "json":
		return slog.NewJSONHandler(w, opts), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", a.logFormat)
}

// logger builds the process logger from the global flags, writing to
// stderr. Packages receive it as a constructor argument; nothing uses
// slog.Default().
func (a *app) logger() (*slog.Logger, error) {
	h, err := a.handler(a.stderr)
	if err != nil {
		return nil, err
	}
	return a.finishLogger(h), nil
}

func (a *app) finishLogger(h slog.Handler) *slog.Logger {
	// A storm (Redis down, a flood of refusals) writes one line per event
	// per second, with the count of the lines left out.
	log := slog.New(slogx.RateLimit(h, slog.LevelWarn, time.Second))
	redisx.SetLogger(log.With("component", "redis"))
	return log
}

// fileLogger is `passport up`'s logger: every line to dir/passport.log,
// and to the terminal (stderr) only the events a person watching the demo
// wants, one line each: incidents as they end, blocks and unblocks, and
// errors. It returns the log's path and a function that closes the file.
func (a *app) fileLogger(dir string) (*slog.Logger, string, func(), error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", nil, fmt.Errorf("data directory: %w", err)
	}
	path := filepath.Join(dir, LogFile)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, "", nil, fmt.Errorf("log file: %w", err)
	}
	h, err := a.handler(f)
	if err != nil {
		_ = f.Close()
		return nil, "", nil, err
	}
	tee := &teeHandler{hs: []slog.Handler{h, newEventHandler(a.stderr)}}
	return a.finishLogger(tee), path, func() { _ = f.Close() }, nil
}

// terminalEvents are the log messages `passport up` shows on the terminal.
var terminalEvents = []string{"incident resolved", "incident escalated", "agent blocked", "agent unblocked"}

// eventHandler writes terminalEvents and errors as short lines:
// "15:04:05 incident resolved tenant=acme type=service_down ...".
type eventHandler struct {
	mu    *sync.Mutex
	w     io.Writer
	attrs []slog.Attr
}

func newEventHandler(w io.Writer) *eventHandler { return &eventHandler{mu: new(sync.Mutex), w: w} }

func (h *eventHandler) Enabled(_ context.Context, l slog.Level) bool { return true }

func (h *eventHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level < slog.LevelError && !slices.Contains(terminalEvents, r.Message) {
		return nil
	}
	var b strings.Builder
	b.WriteString(r.Time.Format("15:04:05 "))
	if r.Level >= slog.LevelError {
		b.WriteString("error: ")
	}
	b.WriteString(r.Message)
	add := func(a slog.Attr) bool {
		if a.Key != "" && a.Key != "component" {
			fmt.Fprintf(&b, " %s=%s", a.Key, quoteIfNeeded(a.Value.String()))
		}
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	b.WriteByte('\n')
	h.mu.Lock()
	defer h.mu.Unlock()
	_, err := io.WriteString(h.w, b.String())
	return err
}

func quoteIfNeeded(s string) string {
	if s == "" || strings.ContainsAny(s, " \t\n\"=") || strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Sprintf("%q", s)
	}
	return s
}

func (h *eventHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &eventHandler{mu: h.mu, w: h.w, attrs: append(slices.Clip(h.attrs), as...)}
}

// WithGroup flattens: the terminal line names keys without their group.
func (h *eventHandler) WithGroup(string) slog.Handler { return h }

// teeHandler hands every record to each of its handlers.
type teeHandler struct{ hs []slog.Handler }

func (t *teeHandler) Enabled(ctx context.Context, l slog.Level) bool {
	for _, h := range t.hs {
		if h.Enabled(ctx, l) {
			return true
		}
	}
	return false
}

func (t *teeHandler) Handle(ctx context.Context, r slog.Record) error {
	var first error
	for _, h := range t.hs {
		if h.Enabled(ctx, r.Level) {
			if err := h.Handle(ctx, r.Clone()); err != nil && first == nil {
				first = err
			}
		}
	}
	return first
}

func (t *teeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	out := &teeHandler{}
	for _, h := range t.hs {
		out.hs = append(out.hs, h.WithAttrs(as))
	}
	return out
}

func (t *teeHandler) WithGroup(name string) slog.Handler {
	out := &teeHandler{}
	for _, h := range t.hs {
		out.hs = append(out.hs, h.WithGroup(name))
	}
	return out
}

var (
	_ slog.Handler = (*eventHandler)(nil)
	_ slog.Handler = (*teeHandler)(nil)
)
