package audit_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
)

// archFixture is a tenant stream written by two writers that seal their
// chains every 10 records, and an archiver that keeps nothing in Redis
// past a sealing checkpoint (max_bytes 1) in segments of about 100.
type archFixture struct {
	rdb  redis.UniversalClient
	a, b *audit.Stream
	arch *audit.Stream // the archiver's own writer (retention checkpoints)
	dir  string
	reg  *prometheus.Registry
	ids  []string // every acknowledged receipt, in order of writing
}

func newArchFixture(t *testing.T) *archFixture {
	t.Helper()
	srv := redistest.Start(t)
	f := &archFixture{rdb: srv.Client(), dir: t.TempDir(), reg: prometheus.NewRegistry()}
	f.a = newStream(t, f.rdb, audit.StreamConfig{WriterID: "proxy-a", CheckpointEvery: 10})
	f.b = newStream(t, f.rdb, audit.StreamConfig{WriterID: "proxy-b", CheckpointEvery: 10})
	f.arch = newStream(t, f.rdb, audit.StreamConfig{WriterID: "archiver"})
	return f
}

func (f *archFixture) archiver(t *testing.T, dir string) *audit.Archiver {
	t.Helper()
	ar, err := audit.NewArchiver(f.rdb, f.arch, audit.ArchiveConfig{Dir: dir, MaxBytes: 1, SegmentRecords: 100}, testLogger(t), f.reg)
	if err != nil {
		t.Fatal(err)
	}
	return ar
}

// write appends n decisions, alternating writers, then seals both chains.
func (f *archFixture) write(t *testing.T, n int) {
	t.Helper()
	ctx := context.Background()
	for i := range n {
		w := f.a
		if i%3 == 0 {
			w = f.b
		}
		rc, err := w.Append(ctx, decision("acme", len(f.ids)+i))
		if err != nil {
			t.Fatal(err)
		}
		f.ids = append(f.ids, rc.ID())
	}
	for _, w := range []*audit.Stream{f.a, f.b} {
		if err := w.Checkpoint(ctx, audit.CheckpointPeriodic); err != nil {
			t.Fatal(err)
		}
	}
}

func (f *archFixture) xlen(t *testing.T) int64 {
	n, err := f.rdb.XLen(context.Background(), audit.StreamKey("acme")).Result()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func segmentFiles(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, "acme"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out) // ids of one length here: name order is id order
	return out
}

// history is every entry id ScanHistory yields.
func history(t *testing.T, rdb redis.UniversalClient, dir string) []string {
	t.Helper()
	var ids []string
	err := audit.ScanHistory(context.Background(), rdb, "acme", audit.HistoryOptions{Archive: dir}, func(m redis.XMessage) error {
		ids = append(ids, m.ID)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// mustHoldEvery checks that the history holds every acknowledged record
// once, in order.
func (f *archFixture) mustHoldEvery(t *testing.T, dir string) {
	t.Helper()
	hist := history(t, f.rdb, dir)
	pos := map[string]int{}
	for i, id := range hist {
		if _, dup := pos[id]; dup {
			t.Fatalf("entry %s read twice", id)
		}
		if i > 0 && !audit.IDLess(hist[i-1], id) {
			t.Fatalf("history out of order at %s", id)
		}
		pos[id] = i
	}
	for _, id := range f.ids {
		if _, ok := pos[id]; !ok {
			t.Fatalf("acknowledged record %s is in neither the archive nor Redis", id)
		}
	}
}

func TestArchiveRoundTrip(t *testing.T) {
	f := newArchFixture(t)
	ctx := context.Background()
	f.write(t, 250)
	for i := range 5 { // unsealed: they stay in Redis
		rc, err := f.a.Append(ctx, decision("acme", 10_000+i))
		if err != nil {
			t.Fatal(err)
		}
		f.ids = append(f.ids, rc.ID())
	}
	before := f.xlen(t)
	ar := f.archiver(t, f.dir)
	if err := ar.Archive(ctx); err != nil {
		t.Fatal(err)
	}
	files := segmentFiles(t, f.dir)
	if len(files) < 2 {
		t.Fatalf("segments %v: want several of at most 100 entries", files)
	}
	after := f.xlen(t)
	if after > 20 {
		t.Fatalf("Redis holds %d of %d entries after archiving", after, before)
	}
	// Redis alone still verifies (anchored by the retention checkpoints),
	// and so do archive and Redis as one history.
	rep := verify(t, f.rdb, "acme", audit.VerifyOptions{})
	mustOK(t, rep)
	if !rep.Writers["proxy-a"].Anchored {
		t.Errorf("proxy-a not anchored in Redis alone: %+v", rep.Writers["proxy-a"])
	}
	full := verify(t, f.rdb, "acme", audit.VerifyOptions{Archive: f.dir})
	mustOK(t, full)
	if full.Records <= rep.Records || full.Writers["proxy-a"].FirstSeq != 1 {
		t.Fatalf("one history: %d records (Redis alone %d), proxy-a from seq %d", full.Records, rep.Records, full.Writers["proxy-a"].FirstSeq)
	}
	f.mustHoldEvery(t, f.dir)
	// From the middle: the archived entries before the start go to Before.
	mid := f.ids[100]
	var skipped, from []string
	err := audit.ScanHistory(ctx, f.rdb, "acme", audit.HistoryOptions{Archive: f.dir, Start: mid,
		Before: func(m redis.XMessage) { skipped = append(skipped, m.ID) }}, func(m redis.XMessage) error {
		from = append(from, m.ID)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(skipped) == 0 || !audit.IDLess(skipped[len(skipped)-1], mid) || from[0] != mid || len(skipped)+len(from) != full.Records {
		t.Fatalf("from %s: %d skipped, %d from (first %s), %d in all", mid, len(skipped), len(from), from[0], full.Records)
	}

	// More traffic, another pass: the segments chain on.
	f.write(t, 120)
	if err := ar.Archive(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(segmentFiles(t, f.dir)); n <= len(files) {
		t.Fatalf("%d segments after the second pass, %d before", n, len(files))
	}
	mustOK(t, verify(t, f.rdb, "acme", audit.VerifyOptions{Archive: f.dir}))
	mustOK(t, verify(t, f.rdb, "acme", audit.VerifyOptions{}))
	f.mustHoldEvery(t, f.dir)
	if got := gauge(t, f.reg, "passport_audit_archive_segments_total"); got != float64(len(segmentFiles(t, f.dir))) {
		t.Errorf("passport_audit_archive_segments_total = %v, %d files", got, len(segmentFiles(t, f.dir)))
	}
}

// archived builds a fixture whose stream went into at least four segments.
func archived(t *testing.T) *archFixture {
	t.Helper()
	f := newArchFixture(t)
	f.write(t, 400)
	if err := f.archiver(t, f.dir).Archive(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(segmentFiles(t, f.dir)); n < 4 {
		t.Fatalf("%d segments", n)
	}
	mustOK(t, verify(t, f.rdb, "acme", audit.VerifyOptions{Archive: f.dir}))
	return f
}

// recompress rewrites a segment's decompressed lines through edit.
func recompress(t *testing.T, path string, edit func([][]byte) [][]byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec, err := zstd.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	plain, err := io.ReadAll(dec)
	dec.Close()
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.SplitAfter(plain, []byte("\n"))
	if len(lines[len(lines)-1]) == 0 {
		lines = lines[:len(lines)-1]
	}
	enc, _ := zstd.NewWriter(nil)
	out := enc.EncodeAll(bytes.Join(edit(lines), nil), nil)
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestArchiveTamperingIsAVerdict(t *testing.T) {
	f := archived(t)
	files := segmentFiles(t, f.dir)
	seg := func(dir string, i int) string {
		if i < 0 {
			i += len(files)
		}
		return filepath.Join(dir, "acme", files[i])
	}
	cases := []struct {
		name   string
		tamper func(t *testing.T, dir string)
		want   string
	}{
		{"first segment deleted", func(t *testing.T, dir string) { mustRemove(t, seg(dir, 0)) }, audit.ProblemSegmentMissing},
		{"middle segment deleted", func(t *testing.T, dir string) { mustRemove(t, seg(dir, 1)) }, audit.ProblemSegmentMissing},
		{"last segment deleted", func(t *testing.T, dir string) { mustRemove(t, seg(dir, -1)) }, audit.ProblemSegmentMissing},
		{"every segment deleted", func(t *testing.T, dir string) {
			for i := range files {
				mustRemove(t, seg(dir, i))
			}
		}, audit.ProblemSegmentMissing},
		{"a byte flipped in the compressed data", func(t *testing.T, dir string) {
			b, _ := os.ReadFile(seg(dir, 1))
			b[len(b)/2] ^= 0x01
			mustWrite(t, seg(dir, 1), b)
		}, audit.ProblemSegmentCorrupt},
		{"cut short", func(t *testing.T, dir string) {
			b, _ := os.ReadFile(seg(dir, 1))
			mustWrite(t, seg(dir, 1), b[:len(b)*2/3])
		}, audit.ProblemSegmentCorrupt},
		{"two segments swapped", func(t *testing.T, dir string) {
			a, b := seg(dir, 1), seg(dir, 2)
			ab, _ := os.ReadFile(a)
			bb, _ := os.ReadFile(b)
			mustWrite(t, a, bb)
			mustWrite(t, b, ab)
		}, audit.ProblemSegmentCorrupt},
		{"two lines reordered and recompressed", func(t *testing.T, dir string) {
			recompress(t, seg(dir, 1), func(l [][]byte) [][]byte {
				l[3], l[4] = l[4], l[3]
				return l
			})
		}, audit.ProblemSegmentCorrupt},
		{"a record changed and recompressed", func(t *testing.T, dir string) {
			recompress(t, seg(dir, 1), func(l [][]byte) [][]byte {
				l[5] = bytes.Replace(l[5], []byte(`"decision":"allow"`), []byte(`"decision":"deny"`), 1)
				return l
			})
		}, audit.ProblemChanged},
		{"a line dropped and recompressed", func(t *testing.T, dir string) {
			recompress(t, seg(dir, 1), func(l [][]byte) [][]byte { return append(l[:5:5], l[6:]...) })
		}, audit.ProblemDeleted},
		{"first segment deleted and the next one's header rewritten", func(t *testing.T, dir string) {
			mustRemove(t, seg(dir, 0))
			recompress(t, seg(dir, 1), func(l [][]byte) [][]byte {
				l[0] = []byte(`{"passport_audit_segment":1,"stream":"passport:{t:acme}:audit"}` + "\n")
				return l
			})
		}, audit.ProblemSegmentMissing},
		{"a stray file", func(t *testing.T, dir string) { mustWrite(t, filepath.Join(dir, "acme", "notes.txt"), []byte("x")) }, audit.ProblemSegmentCorrupt},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			copyDir(t, f.dir, dir)
			tc.tamper(t, dir)
			rep := verify(t, f.rdb, "acme", audit.VerifyOptions{Archive: dir})
			if rep.OK() {
				t.Fatal("tampered archive verifies")
			}
			var kinds []string
			for _, p := range rep.Problems {
				kinds = append(kinds, p.Kind)
			}
			if !strings.Contains(strings.Join(kinds, " "), tc.want) {
				t.Fatalf("want a %s verdict, got %v (first: %s)", tc.want, kinds, rep.First())
			}
			// A reader of the history fails too, after what it could read.
			err := audit.ScanHistory(context.Background(), f.rdb, "acme", audit.HistoryOptions{Archive: dir}, func(redis.XMessage) error { return nil })
			if tc.want != audit.ProblemChanged && tc.want != audit.ProblemDeleted && !errors.Is(err, audit.ErrArchive) {
				t.Fatalf("ScanHistory over a tampered archive: %v", err)
			}
		})
	}
	// The untouched archive still verifies (the cases worked on copies).
	mustOK(t, verify(t, f.rdb, "acme", audit.VerifyOptions{Archive: f.dir}))
}

func mustRemove(t *testing.T, p string) {
	t.Helper()
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
}

func mustWrite(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// A pass stopped at any step leaves a history that verifies (archive and
// Redis, and Redis alone), and the next pass completes it.
func TestArchiveCrashAtEachStep(t *testing.T) {
	for _, step := range []string{"write", "renamed", "verified", "checkpointed", "trimmed"} {
		t.Run(step, func(t *testing.T) {
			f := newArchFixture(t)
			ctx := context.Background()
			f.write(t, 150)
			before := f.xlen(t)
			ar := f.archiver(t, f.dir)
			audit.SetArchiveHook(ar, func(s, _ string) error {
				if s == step {
					return errors.New("crash")
				}
				return nil
			})
			if err := ar.Archive(ctx); err == nil {
				t.Fatal("the injected failure was not reported")
			}
			switch step {
			case "write", "renamed", "verified":
				// Nothing is trimmed before the segment is verified.
				if n := f.xlen(t); n != before {
					t.Fatalf("Redis went from %d to %d entries though the pass stopped at %s", before, n, step)
				}
			}
			if step == "write" {
				if ents, _ := os.ReadDir(filepath.Join(f.dir, "acme")); len(ents) != 0 {
					t.Fatalf("a failed write left %v", ents)
				}
			}
			mustOK(t, verify(t, f.rdb, "acme", audit.VerifyOptions{Archive: f.dir}))
			mustOK(t, verify(t, f.rdb, "acme", audit.VerifyOptions{}))
			f.mustHoldEvery(t, f.dir)

			// A new process (the archiver's memory is gone) completes it.
			if err := f.archiver(t, f.dir).Archive(ctx); err != nil {
				t.Fatal(err)
			}
			if n := f.xlen(t); n > 20 {
				t.Fatalf("Redis holds %d entries after the rerun", n)
			}
			mustOK(t, verify(t, f.rdb, "acme", audit.VerifyOptions{Archive: f.dir}))
			mustOK(t, verify(t, f.rdb, "acme", audit.VerifyOptions{}))
			f.mustHoldEvery(t, f.dir)
		})
	}
}

// The archiver never trims what the file does not hold: a segment
// changed between its write and its read-back is refused.
func TestArchiveRefusesASegmentThatDoesNotReadBack(t *testing.T) {
	f := newArchFixture(t)
	f.write(t, 150)
	before := f.xlen(t)
	ar := f.archiver(t, f.dir)
	audit.SetArchiveHook(ar, func(step, _ string) error {
		if step == "renamed" {
			files := segmentFiles(t, f.dir)
			recompress(t, filepath.Join(f.dir, "acme", files[0]), func(l [][]byte) [][]byte {
				return append(l[:5:5], l[6:]...)
			})
		}
		return nil
	})
	if err := ar.Archive(context.Background()); err == nil {
		t.Fatal("a segment that does not read back was trimmed")
	}
	if n := f.xlen(t); n != before {
		t.Fatalf("Redis went from %d to %d entries", before, n)
	}
	if got := metricSum(t, f.reg, "passport_audit_archive_failures_total"); got == 0 {
		t.Error("failure not counted")
	}
}

// metricSum is the sum of every series of the counter name.
func metricSum(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// A second archiver with another directory does not start a second,
// partial archive; one holding the lock keeps the stream to itself.
func TestArchiveOneArchivePerStream(t *testing.T) {
	f := archived(t)
	ctx := context.Background()
	f.write(t, 150)
	other := t.TempDir()
	if err := f.archiver(t, other).Archive(ctx); err == nil || !strings.Contains(err.Error(), "another archiver") {
		t.Fatalf("an archiver with another directory: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(other, "acme")); len(ents) != 0 {
		t.Fatalf("it wrote %v", ents)
	}
	before := f.xlen(t)
	if err := f.rdb.Set(ctx, audit.ArchiveLockKey("acme"), "someone-else", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := f.archiver(t, f.dir).Archive(ctx); err != nil {
		t.Fatal(err)
	}
	if n := f.xlen(t); n != before {
		t.Fatalf("archived while another process held the lock (%d -> %d)", before, n)
	}
}

// Writers appending while the archiver runs lose nothing: every
// acknowledged receipt is in the archive or in Redis, once.
func TestArchiveConcurrentAppendsLoseNothing(t *testing.T) {
	f := newArchFixture(t)
	ctx := context.Background()
	ar := f.archiver(t, f.dir)
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		stop = make(chan struct{})
	)
	for w, st := range []*audit.Stream{f.a, f.b} {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				rc, err := st.Append(ctx, decision("acme", w*1_000_000+i))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				f.ids = append(f.ids, rc.ID())
				mu.Unlock()
			}
		})
	}
	// Passes while both writers append, until five segments are out.
	passes := 0
	for segs := 0; segs < 5; passes++ {
		if err := ar.Archive(ctx); err != nil {
			t.Fatal(err)
		}
		if ents, err := os.ReadDir(filepath.Join(f.dir, "acme")); err == nil {
			segs = len(ents)
		}
		if passes > 1000 {
			t.Fatalf("%d segments after %d passes", segs, passes)
		}
	}
	close(stop)
	wg.Wait()
	for _, st := range []*audit.Stream{f.a, f.b} {
		if err := st.Checkpoint(ctx, audit.CheckpointPeriodic); err != nil {
			t.Fatal(err)
		}
	}
	if err := ar.Archive(ctx); err != nil {
		t.Fatal(err)
	}
	mustOK(t, verify(t, f.rdb, "acme", audit.VerifyOptions{Archive: f.dir}))
	mustOK(t, verify(t, f.rdb, "acme", audit.VerifyOptions{}))
	f.mustHoldEvery(t, f.dir)
	t.Logf("%d records acknowledged, %d passes", len(f.ids), passes)
}

func TestArchiveConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  audit.ArchiveConfig
		want string
	}{
		{audit.ArchiveConfig{}, ""},
		{audit.ArchiveConfig{Dir: "/x"}, ""},
		{audit.ArchiveConfig{Window: time.Hour}, ""},
		{audit.ArchiveConfig{Dir: "/x", Window: -1}, "must not be negative"},
		{audit.ArchiveConfig{Dir: "/x", SegmentRecords: 5}, "at least 100"},
	} {
		err := tc.cfg.Validate()
		if (err == nil) != (tc.want == "") || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.cfg, err, tc.want)
		}
	}
}
