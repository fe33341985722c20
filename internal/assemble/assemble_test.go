package assemble

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/authority"
	"github.com/agentpassport/passport/internal/redistest"
)

func testEnv(t *testing.T) Env {
	rs := redistest.Start(t)
	return Env{Logger: slog.New(slog.DiscardHandler), Redis: rs.Client()}
}

// The writer outlives the parts: a record a part writes while it drains
// (after its context ended) is still acknowledged, and Run returns once
// the writer has stopped.
func TestWriterOutlivesTheParts(t *testing.T) {
	env := testEnv(t)
	s := newService("proxy", env)
	w, err := s.writer(env.Redis, env, audit.WriterConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var drainErr error
	s.add("component", func(ctx context.Context) error {
		<-ctx.Done()
		_, drainErr = w.Append(context.Background(), &audit.Record{Kind: audit.KindOutcome, Tenant: "acme", RequestID: "r1"})
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if drainErr != nil {
		t.Fatalf("append while draining: %v", drainErr)
	}
	if n := env.Redis.XLen(context.Background(), audit.StreamKey("acme")).Val(); n < 1 {
		t.Fatalf("stream holds %d records, want the drained one", n)
	}
	if _, err := w.Append(context.Background(), &audit.Record{Kind: audit.KindOutcome, Tenant: "acme"}); err == nil {
		t.Fatal("the writer still takes records after Run returned")
	}
}

// With a key directory, a component keeps one writer across starts; a
// fresh directory (a new key) is a new writer, never one registered with
// another key.
func TestKeyDirKeepsOneIdentity(t *testing.T) {
	env := testEnv(t)
	env.KeyDir = t.TempDir()
	ids := map[string]bool{}
	for range 3 {
		s := newService("chaos-cli-acme", env)
		w, err := s.writer(env.Redis, env, audit.WriterConfig{})
		if err != nil {
			t.Fatal(err)
		}
		ids[w.WriterID()] = true
		s.Close()
	}
	if len(ids) != 1 {
		t.Fatalf("three starts gave writers %v, want one", ids)
	}
	env.KeyDir = t.TempDir()
	s := newService("chaos-cli-acme", env)
	w, err := s.writer(env.Redis, env, audit.WriterConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if ids[w.WriterID()] || !strings.HasPrefix(w.WriterID(), "chaos-cli-acme-") {
		t.Fatalf("a new key gave writer %s, want a new chaos-cli-acme-… id", w.WriterID())
	}
}

// A component that writes records is never built without a writer: the
// authority's constructor refuses a nil one, and its assembly always
// gives it the one of its audit: section.
func TestAuthorityIsAssembledWithItsWriter(t *testing.T) {
	env := testEnv(t)
	cfg := authority.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	if _, err := authority.New(cfg, authority.Deps{Redis: env.Redis, Logger: env.Logger}); err == nil {
		t.Fatal("authority.New without an audit writer succeeded")
	}
	s, _, err := Authority(context.Background(), cfg, env, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Writer == nil || !strings.HasPrefix(s.Writer.WriterID(), "authority-") {
		t.Fatalf("authority assembled with writer %v", s.Writer)
	}
	cfg.Audit.WriterID = "authority-1" // without its key file
	if _, _, err := Authority(context.Background(), cfg, env, nil); err == nil {
		t.Fatal("audit.writer_id without signing_key_file accepted")
	}
}

// An audit section with archive.dir runs an archiver beside the writer:
// sealed records move into a segment file while the service runs.
func TestArchiverRunsBesideTheWriter(t *testing.T) {
	env := testEnv(t)
	s := newService("proxy", env)
	dir := t.TempDir()
	w, err := s.writer(env.Redis, env, audit.WriterConfig{CheckpointEvery: 10,
		Archive: audit.ArchiveConfig{Dir: dir, MaxBytes: 1, Interval: 50 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range 30 {
		if _, err := w.Append(ctx, &audit.Record{Kind: audit.KindOutcome, Tenant: "acme", RequestID: fmt.Sprint("r", i)}); err != nil {
			t.Fatal(err)
		}
	}
	found := false
	s.add("component", func(ctx context.Context) error {
		for {
			if files, _ := filepath.Glob(filepath.Join(dir, "acme", "*.jsonl.zst")); len(files) > 0 {
				found = true
				return nil
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := s.Run(rctx); err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Fatal("no segment archived while the service ran")
	}
}
