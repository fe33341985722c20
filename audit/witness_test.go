package audit_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
)

// wfix is a trail with a witness: two writers on a real redis-server with
// AOF, each sealing checkpoints that a directory witness keeps. proxy-a
// writes acme and globex, authority-b writes acme. Half-way, the AOF is
// copied (snapshot), for the rollback case. Both writers then stop cleanly.
type wfix struct {
	srv      *redistest.Server
	rdb      *redis.Client
	wit      *audit.DirWitness
	a, b     *audit.Stream
	snapshot string // copy of the AOF directory after phase 1
}

func newWitnessFixture(t *testing.T) *wfix {
	t.Helper()
	srv := redistest.Start(t, redistest.Options{AOF: true})
	f := &wfix{srv: srv, rdb: srv.Client()}
	var err error
	if f.wit, err = audit.NewDirWitness(filepath.Join(t.TempDir(), "witness"), audit.DirWitnessOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg := func(id string) audit.StreamConfig {
		return audit.StreamConfig{WriterID: id, CheckpointEvery: 7, CheckpointInterval: 20 * time.Millisecond,
			WitnessHeartbeat: 50 * time.Millisecond, Witnesses: []audit.Witness{f.wit}}
	}
	f.a, f.b = newStream(t, f.rdb, cfg("proxy-a")), newStream(t, f.rdb, cfg("authority-b"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	for _, s := range []*audit.Stream{f.a, f.b} {
		go func() { done <- s.Run(ctx) }()
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}
	}
	t.Cleanup(stop)

	n := 0
	write := func(s *audit.Stream, tenant string, k int) {
		for range k {
			n++
			if _, err := s.Append(context.Background(), decision(tenant, n)); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(f.a, "acme", 20)
	write(f.a, "globex", 5)
	write(f.b, "acme", 5)
	f.waitSealed(t)
	// Snapshot: with everything sealed the writers are idle, so the AOF
	// copied from a killed server is exactly this state.
	srv.Kill()
	f.snapshot = filepath.Join(t.TempDir(), "aof")
	copyDir(t, filepath.Join(srv.Dir(), "appendonlydir"), f.snapshot)
	srv.Restart()
	write(f.a, "acme", 20)
	write(f.b, "acme", 3)
	f.waitSealed(t)
	stop()
	for _, w := range []string{"proxy-a", "authority-b"} {
		st, err := f.wit.State(w)
		if err != nil || st == nil || !st.Closed {
			t.Fatalf("witness holds no closing statement of %s: %+v, %v", w, st, err)
		}
	}
	return f
}

// waitSealed waits until the witness holds, for every writer and stream,
// the head that Redis holds: nothing unsealed.
func (f *wfix) waitSealed(t *testing.T) {
	t.Helper()
	eventually(t, 10*time.Second, "every head sealed at the witness", func() bool {
		for _, s := range []*audit.Stream{f.a, f.b} {
			st, err := f.wit.State(s.WriterID())
			if err != nil || st == nil {
				return false
			}
			for _, tenant := range []string{"acme", "globex"} {
				head, err := f.rdb.HGet(context.Background(), audit.HeadsKey(tenant), s.WriterID()).Result()
				if err == redis.Nil {
					continue
				}
				h, ok := st.Streams[tenant]
				if err != nil || !ok || head != fmt.Sprintf("%d:%s", h.Seq, h.Hash) {
					return false
				}
			}
		}
		return true
	})
}

type entry struct {
	id  string
	rec *audit.Record
	raw string
}

// entries lists the writer's records in tenant's stream, in order.
func (f *wfix) entries(t *testing.T, tenant, writer string) []entry {
	t.Helper()
	msgs, err := f.rdb.XRange(context.Background(), audit.StreamKey(tenant), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	var out []entry
	for _, m := range msgs {
		raw := m.Values[audit.FieldRecord].(string)
		rec, err := audit.DecodeRecord([]byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		if rec.Writer == writer {
			out = append(out, entry{m.ID, rec, raw})
		}
	}
	return out
}

func (f *wfix) do(t *testing.T, args ...any) {
	t.Helper()
	if err := f.rdb.Do(context.Background(), args...).Err(); err != nil {
		t.Fatalf("%v: %v", args, err)
	}
}

func (f *wfix) verify(t *testing.T, witnessed bool, mutate ...func(*audit.VerifyAllOptions)) *audit.Verification {
	t.Helper()
	opts := audit.VerifyAllOptions{}
	if witnessed {
		opts.Witnesses = []audit.Witness{f.wit}
	}
	for _, m := range mutate {
		m(&opts)
	}
	res, err := audit.VerifyAll(context.Background(), f.rdb, opts)
	if err != nil {
		t.Fatalf("VerifyAll: %v", err)
	}
	return res
}

func kinds(res *audit.Verification) []string {
	var out []string
	for _, p := range res.Problems() {
		if !slices.Contains(out, p.Kind) {
			out = append(out, p.Kind)
		}
	}
	return out
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.CopyFS(to, os.DirFS(from)); err != nil {
		t.Fatalf("copy %s: %v", from, err)
	}
}

// The tamper suite: each way to rewrite the trail in Redis is caught with
// the witness, under its own verdict. plainMisses marks what verify cannot
// see without a witness (issue 14: these passed before).
func TestWitnessTamperSuite(t *testing.T) {
	cases := []struct {
		name        string
		tamper      func(t *testing.T, f *wfix)
		want        string
		plainMisses bool
	}{
		{
			name:        "delete a stream",
			tamper:      func(t *testing.T, f *wfix) { f.do(t, "DEL", audit.StreamKey("globex")) },
			want:        audit.ProblemStreamMissing,
			plainMisses: false, // its heads hash still names it
		},
		{
			name: "delete a stream with its heads and registry entry",
			tamper: func(t *testing.T, f *wfix) {
				f.do(t, "DEL", audit.StreamKey("globex"), audit.HeadsKey("globex"))
				f.do(t, "SREM", audit.TenantsKey, "globex")
			},
			want:        audit.ProblemStreamMissing,
			plainMisses: true,
		},
		{
			name:   "delete the heads hash",
			tamper: func(t *testing.T, f *wfix) { f.do(t, "DEL", audit.HeadsKey("acme")) },
			want:   audit.ProblemHeadsMissing,
		},
		{
			name:   "delete one writer's head",
			tamper: func(t *testing.T, f *wfix) { f.do(t, "HDEL", audit.HeadsKey("acme"), "proxy-a") },
			want:   audit.ProblemHeadMissing,
		},
		{
			name:   "corrupt a head",
			tamper: func(t *testing.T, f *wfix) { f.do(t, "HSET", audit.HeadsKey("acme"), "proxy-a", "garbage") },
			want:   audit.ProblemHeadCorrupt,
		},
		{
			name: "move a head back over intact records",
			tamper: func(t *testing.T, f *wfix) {
				es := f.entries(t, "acme", "proxy-a")
				back := es[len(es)-4].rec
				f.do(t, "HSET", audit.HeadsKey("acme"), "proxy-a", fmt.Sprintf("%d:%s", back.Seq, back.Hash))
			},
			want:        audit.ProblemHeadRewritten,
			plainMisses: true,
		},
		{
			name: "cut the tail through checkpoints and rewrite the head",
			tamper: func(t *testing.T, f *wfix) {
				es := f.entries(t, "acme", "proxy-a")
				cut := es[len(es)-20:]
				cps := 0
				for _, e := range cut {
					f.do(t, "XDEL", audit.StreamKey("acme"), e.id)
					if e.rec.Kind == audit.KindCheckpoint {
						cps++
					}
				}
				if cps < 2 {
					t.Fatalf("the cut holds %d checkpoints, want several", cps)
				}
				keep := es[len(es)-21].rec
				f.do(t, "HSET", audit.HeadsKey("acme"), "proxy-a", fmt.Sprintf("%d:%s", keep.Seq, keep.Hash))
			},
			want:        audit.ProblemTailCut,
			plainMisses: true,
		},
		{
			name: "replace a checkpoint with one signed by an unknown key",
			tamper: func(t *testing.T, f *wfix) {
				es := f.entries(t, "acme", "proxy-a")
				last := es[len(es)-1]
				if last.rec.Kind != audit.KindCheckpoint {
					t.Fatalf("last record of proxy-a is a %s", last.rec.Kind)
				}
				f.do(t, "XDEL", audit.StreamKey("acme"), last.id)
				_, evil, _ := edKey()
				r := *last.rec
				r.Hash = ""
				var cp audit.Checkpoint
				if err := json.Unmarshal(r.Details, &cp); err != nil {
					t.Fatal(err)
				}
				if err := cp.Sign(evil); err != nil {
					t.Fatal(err)
				}
				r.Details, _ = json.Marshal(cp)
				raw := seal(t, &r)
				f.do(t, "XADD", audit.StreamKey("acme"), "*", audit.FieldRecord, raw)
				f.do(t, "HSET", audit.HeadsKey("acme"), "proxy-a", fmt.Sprintf("%d:%s", r.Seq, r.Hash))
			},
			want: audit.ProblemCheckpointMismatch,
		},
		{
			name: "roll back to an older snapshot",
			tamper: func(t *testing.T, f *wfix) {
				f.srv.Kill()
				aof := filepath.Join(f.srv.Dir(), "appendonlydir")
				if err := os.RemoveAll(aof); err != nil {
					t.Fatal(err)
				}
				copyDir(t, f.snapshot, aof)
				f.srv.Restart()
			},
			want:        audit.ProblemRolledBack,
			plainMisses: true,
		},
		{
			name: "replace a writer's key in Redis",
			tamper: func(t *testing.T, f *wfix) {
				pub, _, _ := edKey()
				f.do(t, "HSET", audit.WritersKey, "proxy-a", base64.StdEncoding.EncodeToString(pub))
			},
			want: audit.ProblemWriterKeyChanged,
		},
		{
			name: "append a forged record after the writer closed",
			tamper: func(t *testing.T, f *wfix) {
				es := f.entries(t, "acme", "proxy-a")
				last := es[len(es)-1].rec
				r := decision("acme", 9999)
				r.V, r.Time, r.Writer, r.Seq, r.Prev = audit.Version, time.Now().UTC(), "proxy-a", last.Seq+1, last.Hash
				raw := seal(t, r)
				f.do(t, "XADD", audit.StreamKey("acme"), "*", audit.FieldRecord, raw)
				f.do(t, "HSET", audit.HeadsKey("acme"), "proxy-a", fmt.Sprintf("%d:%s", r.Seq, r.Hash))
			},
			want:        audit.ProblemAfterClose,
			plainMisses: true,
		},
		{
			name: "remove a line from the witness's own log",
			tamper: func(t *testing.T, f *wfix) {
				path := filepath.Join(f.wit.Dir(), "proxy-a", "00000001.jsonl")
				b, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				lines := strings.SplitAfter(string(b), "\n")
				if len(lines) < 4 {
					t.Fatalf("witness log has %d lines", len(lines))
				}
				lines = append(lines[:1], lines[2:]...)
				if err := os.WriteFile(path, []byte(strings.Join(lines, "")), 0o600); err != nil {
					t.Fatal(err)
				}
			},
			want:        audit.ProblemWitnessCorrupt,
			plainMisses: true, // Redis is intact; only the witness was touched
		},
	}
	wants := map[string]bool{}
	for _, tc := range cases {
		wants[tc.want] = true
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newWitnessFixture(t)
			if res := f.verify(t, true); !res.OK() {
				t.Fatalf("clean trail: %v", res.Problems())
			}
			tc.tamper(t, f)
			res := f.verify(t, true)
			got := kinds(res)
			if !slices.Contains(got, tc.want) {
				t.Fatalf("with the witness: verdicts %v, want %s; problems %v", got, tc.want, res.Problems())
			}
			// Distinct: no other case's verdict shows up, except what the
			// tamper also does (a replaced checkpoint fails its signature).
			for _, k := range got {
				if k != tc.want && wants[k] {
					t.Errorf("verdict %s also reported (%v)", k, res.Problems())
				}
			}
			for _, p := range res.Problems() {
				if p.Kind == tc.want && (p.Detail == "" || !strings.Contains(p.String(), tc.want)) {
					t.Errorf("verdict without a readable line: %q", p.String())
				}
			}
			if plain := f.verify(t, false); plain.OK() != tc.plainMisses {
				t.Errorf("without the witness: OK = %v, want %v (%v)", plain.OK(), tc.plainMisses, plain.Problems())
			}
		})
	}
}

// Without a witness too, a deleted or corrupt heads hash is a tamper
// verdict, never a parse error: before, a corrupt head failed verify with
// "malformed chain head" (exit 1) and a deleted one switched the tail check
// off silently.
func TestVerifyReportsMissingAndCorruptHeads(t *testing.T) {
	cases := []struct {
		name   string
		tamper func(ctx context.Context, rdb *redis.Client, s *audit.Stream)
		want   string
	}{
		{"heads hash deleted", func(ctx context.Context, rdb *redis.Client, s *audit.Stream) {
			rdb.Del(ctx, audit.HeadsKey("acme"))
		}, audit.ProblemHeadsMissing},
		{"heads hash deleted after a tail cut", func(ctx context.Context, rdb *redis.Client, s *audit.Stream) {
			msgs, _ := rdb.XRange(ctx, audit.StreamKey("acme"), "-", "+").Result()
			rdb.XDel(ctx, audit.StreamKey("acme"), msgs[len(msgs)-1].ID, msgs[len(msgs)-2].ID)
			rdb.Del(ctx, audit.HeadsKey("acme"))
		}, audit.ProblemHeadsMissing},
		{"one head deleted", func(ctx context.Context, rdb *redis.Client, s *audit.Stream) {
			rdb.HSet(ctx, audit.HeadsKey("acme"), "someone-else", "1:"+strings.Repeat("a", 64))
			rdb.HDel(ctx, audit.HeadsKey("acme"), s.WriterID())
		}, audit.ProblemHeadMissing},
		{"head corrupted", func(ctx context.Context, rdb *redis.Client, s *audit.Stream) {
			rdb.HSet(ctx, audit.HeadsKey("acme"), s.WriterID(), "not a head")
		}, audit.ProblemHeadCorrupt},
		{"head with a bad hash", func(ctx context.Context, rdb *redis.Client, s *audit.Stream) {
			rdb.HSet(ctx, audit.HeadsKey("acme"), s.WriterID(), "9:zz")
		}, audit.ProblemHeadCorrupt},
		{"stream deleted, heads left", func(ctx context.Context, rdb *redis.Client, s *audit.Stream) {
			rdb.Del(ctx, audit.StreamKey("acme"))
		}, audit.ProblemStreamMissing},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := redistest.Start(t)
			rdb := srv.Client()
			s := newStream(t, rdb, audit.StreamConfig{WriterID: "proxy-a"})
			ctx := context.Background()
			for i := range 5 {
				if _, err := s.Append(ctx, decision("acme", i)); err != nil {
					t.Fatal(err)
				}
			}
			tc.tamper(ctx, rdb, s)
			rep, err := audit.VerifyStream(ctx, rdb, "acme", audit.VerifyOptions{})
			if err != nil {
				t.Fatalf("verify answered an error, not a verdict: %v", err)
			}
			found := false
			for _, p := range rep.Problems {
				found = found || p.Kind == tc.want
			}
			if !found {
				t.Fatalf("problems %v, want %s", rep.Problems, tc.want)
			}
		})
	}
}

// Verify while writers append, checkpoint and hand statements to the
// witness: the witness is read before Redis, so what it sealed is always in
// what verify reads next, and a running writer is not taken for a crashed
// one.
func TestWitnessVerifyWhileWriting(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	wit, _ := audit.NewDirWitness(t.TempDir(), audit.DirWitnessOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var writers []*audit.Stream
	done := make(chan error, 3)
	for i := range 3 {
		s := newStream(t, rdb, audit.StreamConfig{CheckpointEvery: 13, CheckpointInterval: 5 * time.Millisecond,
			WitnessHeartbeat: 10 * time.Millisecond, Witnesses: []audit.Witness{wit}})
		writers = append(writers, s)
		go func() { done <- s.Run(ctx) }()
		go func() {
			// Paced, so the streams stay small enough to walk many times.
			tick := time.NewTicker(time.Millisecond)
			defer tick.Stop()
			for n := 0; ctx.Err() == nil; n++ {
				_, _ = s.Append(ctx, decision([]string{"acme", "globex"}[(n+i)%2], i*1_000_000+n))
				select {
				case <-ctx.Done():
				case <-tick.C:
				}
			}
		}()
	}
	eventually(t, 10*time.Second, "statements at the witness", func() bool {
		for _, w := range writers {
			if st, err := wit.State(w.WriterID()); err != nil || st == nil || len(st.Streams) != 2 {
				return false
			}
		}
		return true
	})
	for range 5 {
		res, err := audit.VerifyAll(context.Background(), rdb, audit.VerifyAllOptions{Witnesses: []audit.Witness{wit}})
		if err != nil {
			t.Fatal(err)
		}
		if !res.OK() {
			t.Fatalf("live verify: %v", res.Problems())
		}
		if res.Witnesses[0].Running != 3 {
			t.Fatalf("running writers %d, want 3", res.Witnesses[0].Running)
		}
	}
	cancel()
	for range 3 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	res, err := audit.VerifyAll(context.Background(), rdb, audit.VerifyAllOptions{Witnesses: []audit.Witness{wit}, Now: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if !res.OK() || res.Witnesses[0].Closed != 3 {
		t.Fatalf("after a clean stop: closed %d, problems %v", res.Witnesses[0].Closed, res.Problems())
	}
}

// A writer killed with SIGKILL is reported as writer_unclosed once the
// witness has not heard from it for StaleAfter: not a silent pass, and not
// a deletion (everything it sealed is intact). Deleting its sealed tail on
// top is reported as such.
func TestWitnessWriterKilled(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	rdb := srv.Client()
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestWitnessChildWriter$", "-test.count=1")
	cmd.Env = append(os.Environ(), "AUDIT_WITNESS_CHILD_REDIS="+srv.Addr, "AUDIT_WITNESS_CHILD_DIR="+dir)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	wit, _ := audit.NewDirWitness(dir, audit.DirWitnessOptions{})
	eventually(t, 20*time.Second, "the child's checkpoints at the witness", func() bool {
		st, err := wit.State("child-w")
		return err == nil && st != nil && st.Streams["acme"].Seq >= 40
	})
	if res := verifyWith(t, rdb, wit, time.Now()); !res.OK() || res.Witnesses[0].Running != 1 {
		t.Fatalf("running child: %v", res.Problems())
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	later := time.Now().Add(2 * time.Minute)
	res := verifyWith(t, rdb, wit, later)
	if got := kinds(res); !slices.Equal(got, []string{audit.ProblemWriterUnclosed}) {
		t.Fatalf("killed writer: verdicts %v, want only writer_unclosed: %v", got, res.Problems())
	}
	if d := res.Problems()[0].String(); !strings.Contains(d, "child-w") || !strings.Contains(d, "acme sealed to seq") {
		t.Errorf("unreadable verdict: %s", d)
	}
	// Looked into: accepted, listed, passes.
	res, err := audit.VerifyAll(context.Background(), rdb, audit.VerifyAllOptions{Witnesses: []audit.Witness{wit}, Now: later,
		AcceptUnclosed: map[string]bool{"child-w": true}})
	if err != nil || !res.OK() || !slices.Equal(res.Witnesses[0].Accepted, []string{"child-w"}) {
		t.Fatalf("accepted: %v %v", err, res)
	}
	// A deletion on top of the crash is a deletion.
	st, _ := wit.State("child-w")
	msgs, _ := rdb.XRange(context.Background(), audit.StreamKey("acme"), "-", "+").Result()
	for _, m := range msgs {
		if r, _, _ := audit.ParseMessage(m); r.Seq+5 > st.Streams["acme"].Seq {
			rdb.XDel(context.Background(), audit.StreamKey("acme"), m.ID)
		}
	}
	rec, _, _ := audit.ParseMessage(mustLast(t, rdb, "acme"))
	rdb.HSet(context.Background(), audit.HeadsKey("acme"), "child-w", fmt.Sprintf("%d:%s", rec.Seq, rec.Hash))
	if got := kinds(verifyWith(t, rdb, wit, later)); !slices.Contains(got, audit.ProblemTailCut) {
		t.Fatalf("crash plus cut: verdicts %v, want tail_cut too", got)
	}
}

func verifyWith(t *testing.T, rdb *redis.Client, wit audit.Witness, now time.Time) *audit.Verification {
	t.Helper()
	res, err := audit.VerifyAll(context.Background(), rdb, audit.VerifyAllOptions{Witnesses: []audit.Witness{wit}, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func mustLast(t *testing.T, rdb *redis.Client, tenant string) redis.XMessage {
	t.Helper()
	msgs, err := rdb.XRevRangeN(context.Background(), audit.StreamKey(tenant), "+", "-", 1).Result()
	if err != nil || len(msgs) == 0 {
		t.Fatalf("last entry: %v", err)
	}
	return msgs[0]
}

// TestWitnessChildWriter is the writer TestWitnessWriterKilled kills: it
// does nothing unless started by that test.
func TestWitnessChildWriter(t *testing.T) {
	addr, dir := os.Getenv("AUDIT_WITNESS_CHILD_REDIS"), os.Getenv("AUDIT_WITNESS_CHILD_DIR")
	if addr == "" || dir == "" {
		return
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	wit, _ := audit.NewDirWitness(dir, audit.DirWitnessOptions{})
	s := newStream(t, rdb, audit.StreamConfig{WriterID: "child-w", CheckpointInterval: 10 * time.Millisecond,
		WitnessHeartbeat: 20 * time.Millisecond, Witnesses: []audit.Witness{wit}})
	go func() { _ = s.Run(context.Background()) }()
	for n := 0; ; n++ {
		if _, err := s.Append(context.Background(), decision("acme", n)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond) // a steady trickle, so a tail stays unsealed at the kill
	}
}

// With the default settings a record is sealed by a checkpoint within
// about a second while the writer runs (the interval was 30 s: a deadline
// of 5 s failed).
func TestCheckpointsAreTimeBounded(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	s := newStream(t, rdb, audit.StreamConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for round := range 3 {
		rec := decision("acme", round)
		if _, err := s.Append(context.Background(), rec); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "a checkpoint sealing the record", func() bool {
			head, err := rdb.HGet(context.Background(), audit.HeadsKey("acme"), s.WriterID()).Result()
			if err != nil {
				return false
			}
			msgs, _ := rdb.XRevRangeN(context.Background(), audit.StreamKey("acme"), "+", "-", 1).Result()
			last, _, _ := audit.ParseMessage(msgs[0])
			return last.Kind == audit.KindCheckpoint && last.Seq == rec.Seq+1 && strings.HasPrefix(head, fmt.Sprint(last.Seq)+":")
		})
	}
}

// Fifty concurrent deliveries of the same statements (retries through a
// proxy, say) store each once and leave a log that checks out.
func TestDirWitnessConcurrentRetries(t *testing.T) {
	ctx := context.Background()
	_, key, _ := edKey()
	w, _ := audit.NewDirWitness(t.TempDir(), audit.DirWitnessOptions{})
	t0 := time.Now()
	var stmts [][]byte
	for i := range 10 {
		stmts = append(stmts, stmt(t, key, "w", "checkpoint", t0.Add(time.Duration(i)*time.Second), head("acme", uint64(10+i), fmt.Sprint(i))))
	}
	errs := make(chan error, 50*len(stmts))
	done := make(chan struct{})
	for g := range 50 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i, raw := range stmts {
				if (g+i)%3 == 0 {
					continue // some retries skip ahead
				}
				err := w.Witness(ctx, raw)
				if err != nil && refusal(err) != audit.RefusedStale {
					errs <- err
				}
			}
		}()
	}
	for range 50 {
		<-done
	}
	close(errs)
	for err := range errs {
		t.Errorf("concurrent delivery: %v", err)
	}
	view, err := audit.LoadWitness(ctx, w)
	if err != nil || len(view.Problems) > 0 {
		t.Fatalf("log after concurrent retries: %v %v", err, view.Problems)
	}
	if st := view.Writers["w"]; st.Statements > uint64(len(stmts)) || st.Streams["acme"].Seq != 19 {
		t.Fatalf("stored %d statements (of %d), head %d", st.Statements, len(stmts), st.Streams["acme"].Seq)
	}
}

// Retention trims witnessed checkpoints under a signed retention
// checkpoint: that is not a deletion.
func TestWitnessAcceptsRetentionTrim(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	wit, _ := audit.NewDirWitness(t.TempDir(), audit.DirWitnessOptions{})
	s := newStream(t, rdb, audit.StreamConfig{WriterID: "proxy-a", CheckpointEvery: 5, CheckpointInterval: 10 * time.Millisecond,
		Witnesses: []audit.Witness{wit}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var cut string
	for i := range 40 {
		rc, err := s.Append(context.Background(), decision("acme", i))
		id := rc.ID()
		if err != nil {
			t.Fatal(err)
		}
		if i == 25 {
			cut = id
		}
	}
	eventually(t, 10*time.Second, "checkpoints before the cut witnessed", func() bool {
		st, _ := wit.State("proxy-a")
		return st != nil && st.Streams["acme"].Seq > 40
	})
	if err := s.Trim(context.Background(), "acme", cut); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	res, err := audit.VerifyAll(context.Background(), rdb, audit.VerifyAllOptions{Witnesses: []audit.Witness{wit}})
	if err != nil || !res.OK() {
		t.Fatalf("after a retention trim: %v %v", err, res.Problems())
	}
}

// A stop whose final checkpoint cannot be written (Redis down) leaves its
// tail unsealed: the witness must not get a close, so verify reports the
// writer as unclosed rather than passing.
func TestUnsealedShutdownIsNotAClose(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	t.Cleanup(func() { _ = rdb.Close() })
	wit, _ := audit.NewDirWitness(t.TempDir(), audit.DirWitnessOptions{})
	s := newStream(t, rdb, audit.StreamConfig{WriterID: "proxy-a", CheckpointInterval: time.Hour, CheckpointEvery: 5,
		WriteTimeout: 300 * time.Millisecond, ShutdownTimeout: time.Second, Witnesses: []audit.Witness{wit}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	for i := range 7 { // a checkpoint at 5, two records after it
		if _, err := s.Append(context.Background(), decision("acme", i)); err != nil {
			t.Fatal(err)
		}
	}
	srv.Kill()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	srv.Restart()
	st, err := wit.State("proxy-a")
	if err != nil || st == nil || st.Closed {
		t.Fatalf("witness state: %+v %v", st, err)
	}
	res, err := audit.VerifyAll(context.Background(), rdb, audit.VerifyAllOptions{Witnesses: []audit.Witness{wit}, Now: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if got := kinds(res); !slices.Equal(got, []string{audit.ProblemWriterUnclosed}) {
		t.Fatalf("verdicts %v, want writer_unclosed: %v", got, res.Problems())
	}
}

// Redis restarts from an older AOF under a running writer: the writer goes
// on from the older head, the witness refuses its statements while they
// take the chain back, verify says rolled_back, and once the new chain
// passes the old head (accepted: the witness keeps only the last head),
// verify still finds the fork against every head the witness sealed.
func TestWitnessRollbackUnderARunningWriter(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	rdb := srv.Client()
	wit, _ := audit.NewDirWitness(t.TempDir(), audit.DirWitnessOptions{})
	s := newStream(t, rdb, audit.StreamConfig{WriterID: "proxy-a", CheckpointInterval: 10 * time.Millisecond,
		WriteTimeout: 500 * time.Millisecond, Witnesses: []audit.Witness{wit}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	n := 0
	appendN := func(k int) {
		for range k {
			n++
			// Right after a restore the first write finds the head moved
			// and fails; the writer re-reads it and the next one succeeds.
			eventually(t, 10*time.Second, "an append", func() bool {
				_, err := s.Append(context.Background(), decision("acme", n))
				return err == nil
			})
		}
	}
	sealed := func() uint64 {
		st, _ := wit.State("proxy-a")
		if st == nil {
			return 0
		}
		return st.Streams["acme"].Seq
	}
	headSeq := func() uint64 {
		v, _ := rdb.HGet(context.Background(), audit.HeadsKey("acme"), "proxy-a").Result()
		var seq uint64
		fmt.Sscanf(v, "%d:", &seq)
		return seq
	}
	waitSealed := func() {
		eventually(t, 10*time.Second, "the head sealed", func() bool { return sealed() == headSeq() })
	}
	appendN(20)
	waitSealed()
	srv.Kill()
	snap := filepath.Join(t.TempDir(), "aof")
	copyDir(t, filepath.Join(srv.Dir(), "appendonlydir"), snap)
	srv.Restart()
	appendN(30)
	waitSealed()
	old := sealed()

	srv.Kill()
	aof := filepath.Join(srv.Dir(), "appendonlydir")
	os.RemoveAll(aof)
	copyDir(t, snap, aof)
	srv.Restart()
	appendN(5)
	eventually(t, 10*time.Second, "the new chain checkpointed in Redis", func() bool {
		msgs, _ := rdb.XRevRangeN(context.Background(), audit.StreamKey("acme"), "+", "-", 1).Result()
		last, _, _ := audit.ParseMessage(msgs[0])
		return last.Kind == audit.KindCheckpoint
	})
	if headSeq() >= old {
		t.Fatalf("the restore did not take the head back: %d >= %d", headSeq(), old)
	}
	res := verifyWith(t, rdb, wit, time.Now())
	// rolled_back, and checkpoint_mismatch where the new chain already
	// reuses a seq the witness sealed with another hash.
	if got := kinds(res); !slices.Contains(got, audit.ProblemRolledBack) {
		t.Fatalf("after the restore: %v %v", got, res.Problems())
	}
	if sealed() != old {
		t.Fatalf("the witness took a rolled back head: %d, had %d", sealed(), old)
	}

	appendN(int(old)) // well past the old head
	eventually(t, 10*time.Second, "the witness past the old head", func() bool { return sealed() > old })
	res = verifyWith(t, rdb, wit, time.Now())
	if got := kinds(res); !slices.Contains(got, audit.ProblemCheckpointMismatch) {
		t.Fatalf("the fork past the old head: %v %v", got, res.Problems())
	}
}
