package audit_test

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentpassport/passport/audit"
)

// stmt signs a statement of writer at t with the given heads.
func stmt(t *testing.T, key ed25519.PrivateKey, writer, typ string, at time.Time, heads ...audit.StreamHead) []byte {
	t.Helper()
	st := audit.Statement{V: audit.StatementVersion, Type: typ, Writer: writer, Time: at.UTC().Format(time.RFC3339Nano), Streams: heads}
	if st.Streams == nil {
		st.Streams = []audit.StreamHead{}
	}
	raw, err := audit.SignStatement(&st, key)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func head(tenant string, seq uint64, salt string) audit.StreamHead {
	sum := sha256.Sum256([]byte(tenant + salt))
	return audit.StreamHead{Tenant: tenant, Seq: seq, Hash: hex.EncodeToString(sum[:]), Checkpoint: audit.CheckpointPeriodic, Time: time.Now().UTC().Format(time.RFC3339Nano)}
}

func refusal(err error) string {
	var r *audit.WitnessRefusal
	if errors.As(err, &r) {
		return r.Code
	}
	if err != nil {
		return "error: " + err.Error()
	}
	return ""
}

func lines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.SplitAfter(strings.TrimSuffix(string(b), "\n"), "\n")
}

// A witness accepts a writer's statements in order and refuses, by code,
// everything a Redis-level adversary (or a confused writer) could send to
// make it forget: a replay, a rollback, a fork, another key, a forgery.
func TestDirWitnessRefusesRollbackForkReplayAndOtherKeys(t *testing.T) {
	ctx := context.Background()
	_, key, _ := edKey()
	_, other, _ := edKey()
	t0 := time.Now()
	cases := []struct {
		name string
		prep [][]byte // accepted first
		send func(first []byte) []byte
		want string
	}{
		{"later statement", nil, func([]byte) []byte {
			return stmt(t, key, "w", "checkpoint", t0.Add(2*time.Second), head("acme", 20, "b"))
		}, ""},
		{"same statement again (lost reply)", nil, func(first []byte) []byte { return first }, ""},
		{"replay of an older statement", [][]byte{stmt(t, key, "w", "checkpoint", t0.Add(2*time.Second), head("acme", 20, "b"))},
			func([]byte) []byte {
				return stmt(t, key, "w", "checkpoint", t0.Add(time.Second), head("acme", 10, "a"))
			}, audit.RefusedStale},
		{"rollback of a stream", nil, func([]byte) []byte {
			return stmt(t, key, "w", "checkpoint", t0.Add(2*time.Second), head("acme", 9, "x"))
		}, audit.RefusedRollback},
		{"fork at the same seq", nil, func([]byte) []byte {
			return stmt(t, key, "w", "checkpoint", t0.Add(2*time.Second), head("acme", 10, "other"))
		}, audit.RefusedFork},
		{"signed with another key", nil, func([]byte) []byte {
			return stmt(t, other, "w", "checkpoint", t0.Add(2*time.Second), head("acme", 20, "b"))
		}, audit.RefusedKey},
		{"forged content", nil, func([]byte) []byte {
			raw := stmt(t, key, "w", "checkpoint", t0.Add(2*time.Second), head("acme", 20, "b"))
			return []byte(strings.Replace(string(raw), `"seq":20`, `"seq":21`, 1))
		}, audit.RefusedInvalid},
		{"a member named twice", nil, func([]byte) []byte {
			// Signed as writer "w" (decoders keeping the last member);
			// one keeping the first would read "victim".
			raw := stmt(t, key, "w", "checkpoint", t0.Add(2*time.Second), head("acme", 20, "b"))
			return []byte(strings.Replace(string(raw), `{"v":1,`, `{"v":1,"writer":"victim",`, 1))
		}, audit.RefusedInvalid},
		{"unsorted streams", nil, func([]byte) []byte {
			return stmt(t, key, "w", "checkpoint", t0.Add(2*time.Second), head("globex", 1, "g"), head("acme", 20, "b"))
		}, audit.RefusedInvalid},
		{"a stream left out is kept, not rolled back", nil, func([]byte) []byte { return stmt(t, key, "w", "heartbeat", t0.Add(2*time.Second)) }, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			w, _ := audit.NewDirWitness(dir, audit.DirWitnessOptions{})
			first := stmt(t, key, "w", "checkpoint", t0.Add(time.Second), head("acme", 10, "a"))
			for _, raw := range append([][]byte{first}, tc.prep...) {
				if err := w.Witness(ctx, raw); err != nil {
					t.Fatal(err)
				}
			}
			before := len(lines(t, filepath.Join(dir, "w", "00000001.jsonl")))
			if got := refusal(w.Witness(ctx, tc.send(first))); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
			after := len(lines(t, filepath.Join(dir, "w", "00000001.jsonl")))
			if (tc.want != "" || strings.HasPrefix(tc.name, "same statement")) && after != before {
				t.Fatal("a refused or resent statement was stored")
			}
			st, err := w.State("w")
			if err != nil || st.Streams["acme"].Seq < 10 {
				t.Fatalf("state after: %+v %v", st, err)
			}
			// What is stored always checks out.
			view, err := audit.LoadWitness(ctx, w)
			if err != nil || len(view.Problems) > 0 {
				t.Fatalf("log: %v %v", err, view.Problems)
			}
		})
	}
}

func TestDirWitnessTrustedKeysAndMaxWriters(t *testing.T) {
	ctx := context.Background()
	pub, key, _ := edKey()
	_, stranger, _ := edKey()
	w, _ := audit.NewDirWitness(t.TempDir(), audit.DirWitnessOptions{
		TrustedKeys: map[string]ed25519.PublicKey{"proxy-a": pub}, MaxWriters: 1})
	if got := refusal(w.Witness(ctx, stmt(t, stranger, "stranger", "heartbeat", time.Now()))); got != audit.RefusedUnknown {
		t.Fatalf("unknown writer: %q", got)
	}
	if got := refusal(w.Witness(ctx, stmt(t, stranger, "proxy-a", "heartbeat", time.Now()))); got != audit.RefusedKey {
		t.Fatalf("trusted writer, wrong key: %q", got)
	}
	if err := w.Witness(ctx, stmt(t, key, "proxy-a", "heartbeat", time.Now())); err != nil {
		t.Fatal(err)
	}
	open, _ := audit.NewDirWitness(w.Dir(), audit.DirWitnessOptions{MaxWriters: 1})
	if got := refusal(open.Witness(ctx, stmt(t, stranger, "another", "heartbeat", time.Now()))); got != audit.RefusedFull {
		t.Fatalf("beyond max writers: %q", got)
	}
}

// Rotation keeps one chain across files; a torn last line (a crash in the
// middle of an append) is cut before the next append; a file removed from
// the middle breaks the chain, and odd writer ids never leave the folder.
func TestDirWitnessRotationTornLineAndChain(t *testing.T) {
	ctx := context.Background()
	_, key, _ := edKey()
	dir := t.TempDir()
	const writer = "../../etc" // climbing out: refused
	wid := "..proxy-ü"         // allowed, but not a plain file name
	w, _ := audit.NewDirWitness(dir, audit.DirWitnessOptions{RotateBytes: 1500})
	t0 := time.Now()
	for i := range 12 {
		if err := w.Witness(ctx, stmt(t, key, wid, "checkpoint", t0.Add(time.Duration(i)*time.Second), head("acme", uint64(10+i), "x"))); err != nil {
			t.Fatal(err)
		}
	}
	if got := refusal(w.Witness(ctx, stmt(t, key, writer, "heartbeat", t0))); got != audit.RefusedInvalid {
		t.Fatalf("writer id with a slash: %q", got)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || !strings.HasPrefix(ents[0].Name(), "~") {
		t.Fatalf("writer folders: %v", ents)
	}
	wdir := filepath.Join(dir, ents[0].Name())
	files, _ := os.ReadDir(wdir)
	if len(files) < 3 {
		t.Fatalf("no rotation: %d files", len(files))
	}
	view, err := audit.LoadWitness(ctx, w)
	if err != nil || len(view.Problems) > 0 || view.Writers[wid].Statements != 12 {
		t.Fatalf("rotated log: %v %v %+v", err, view.Problems, view.Writers[wid])
	}

	// A torn line at the end: readers skip it, the next append cuts it.
	last := filepath.Join(wdir, files[len(files)-1].Name())
	f, _ := os.OpenFile(last, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"n":13,"prev":"abc","rece`)
	f.Close()
	if view, err := audit.LoadWitness(ctx, w); err != nil || len(view.Problems) > 0 {
		t.Fatalf("torn line read: %v %v", err, view.Problems)
	}
	fresh, _ := audit.NewDirWitness(dir, audit.DirWitnessOptions{RotateBytes: 1500})
	if err := fresh.Witness(ctx, stmt(t, key, wid, "close", t0.Add(time.Minute), head("acme", 30, "x"))); err != nil {
		t.Fatal(err)
	}
	view, err = audit.LoadWitness(ctx, fresh)
	if err != nil || len(view.Problems) > 0 || !view.Writers[wid].Closed || view.Writers[wid].Statements != 13 {
		t.Fatalf("after the torn line: %v %v %+v", err, view.Problems, view.Writers[wid])
	}

	// A file removed from the middle.
	if err := os.Remove(filepath.Join(wdir, files[1].Name())); err != nil {
		t.Fatal(err)
	}
	view, err = audit.LoadWitness(ctx, fresh)
	if err != nil || len(view.Problems) == 0 || view.Problems[0].Kind != audit.ProblemWitnessCorrupt {
		t.Fatalf("file removed: %v %v", err, view.Problems)
	}
	// And a witness does not append to a log that does not check out.
	again, _ := audit.NewDirWitness(dir, audit.DirWitnessOptions{})
	if err := again.Witness(ctx, stmt(t, key, wid, "heartbeat", t0.Add(2*time.Minute), head("acme", 30, "x"))); err == nil || refusal(err) != "error: "+err.Error() {
		t.Fatalf("appended to a broken log: %v", err)
	}
}
