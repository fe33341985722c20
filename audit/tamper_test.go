package audit_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
)

type fixture struct {
	rdb  *redis.Client
	s    *audit.Stream
	key  string
	ids  []string // stream ids in order; ids[i] is seq i+1
	raws []string
}

// newFixture writes 20 decisions and a checkpoint (seq 21) for acme.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	srv := redistest.Start(t)
	f := &fixture{rdb: srv.Client(), key: audit.StreamKey("acme")}
	f.s = newStream(t, f.rdb, audit.StreamConfig{WriterID: "proxy-a"})
	ctx := context.Background()
	for i := range 20 {
		if _, err := f.s.Append(ctx, decision("acme", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.s.Checkpoint(ctx, audit.CheckpointPeriodic); err != nil {
		t.Fatal(err)
	}
	f.reload(t)
	if len(f.ids) != 21 {
		t.Fatalf("fixture has %d entries", len(f.ids))
	}
	mustOK(t, verify(t, f.rdb, "acme", audit.VerifyOptions{}))
	return f
}

func (f *fixture) reload(t *testing.T) {
	msgs, err := f.rdb.XRange(context.Background(), f.key, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	f.ids, f.raws = nil, nil
	for _, m := range msgs {
		f.ids = append(f.ids, m.ID)
		f.raws = append(f.raws, m.Values[audit.FieldRecord].(string))
	}
}

func (f *fixture) rec(t *testing.T, i int) *audit.Record {
	r, err := audit.DecodeRecord([]byte(f.raws[i]))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (f *fixture) xdel(t *testing.T, ids ...string) {
	if err := f.rdb.XDel(context.Background(), f.key, ids...).Err(); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) xadd(t *testing.T, raw string) string {
	id, err := f.rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: f.key, Values: []any{audit.FieldRecord, raw}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func seal(t *testing.T, r *audit.Record) string {
	raw, err := audit.Seal(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

func TestVerifyDetectsAndLocatesTampering(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name   string
		tamper func(t *testing.T, f *fixture) (wantID string)
		kind   string
		also   string // a second problem kind that must be reported too
	}{
		{
			name: "xdel one record",
			tamper: func(t *testing.T, f *fixture) string {
				f.xdel(t, f.ids[9])
				return f.ids[10]
			},
			kind: audit.ProblemDeleted,
		},
		{
			name: "change by delete and re-add with other fields",
			tamper: func(t *testing.T, f *fixture) string {
				r := f.rec(t, 9)
				f.xdel(t, f.ids[9])
				r.Decision, r.Reasons = audit.DecisionDeny, []string{"nothing_to_see"}
				raw, _ := json.Marshal(r) // keeps the old hash
				f.xadd(t, string(raw))
				return f.ids[10]
			},
			kind: audit.ProblemDeleted,
			also: audit.ProblemChanged,
		},
		{
			name: "change in place of the last record, hash recomputed",
			tamper: func(t *testing.T, f *fixture) string {
				// Add one more record, then rewrite it with a fresh hash:
				// the chain link still holds but the head in Redis differs.
				if _, err := f.s.Append(ctx, decision("acme", 500)); err != nil {
					t.Fatal(err)
				}
				f.reload(t)
				last := len(f.ids) - 1
				r := f.rec(t, last)
				f.xdel(t, f.ids[last])
				r.Decision = audit.DecisionDeny
				return f.xadd(t, seal(t, r))
			},
			kind: audit.ProblemChanged,
		},
		{
			name: "forged insert claiming an existing seq",
			tamper: func(t *testing.T, f *fixture) string {
				r := f.rec(t, 4)
				r.Path, r.RequestID = "/services/payments/restart", "req-forged"
				return f.xadd(t, seal(t, r))
			},
			kind: audit.ProblemReordered,
		},
		{
			name: "forged record from an unknown writer",
			tamper: func(t *testing.T, f *fixture) string {
				r := decision("acme", 999)
				r.V, r.Time, r.Writer, r.Seq = audit.Version, time.Now().UTC(), "evil", 1
				return f.xadd(t, seal(t, r))
			},
			kind: audit.ProblemUnknownWriter,
		},
		{
			name: "forged chain extension is exposed by the writer's head",
			tamper: func(t *testing.T, f *fixture) string {
				prev := f.rec(t, 20)
				r := decision("acme", 777)
				r.V, r.Time, r.Writer, r.Seq, r.Prev = audit.Version, time.Now().UTC(), "proxy-a", prev.Seq+1, prev.Hash
				forged := f.xadd(t, seal(t, r))
				if _, err := f.s.Append(ctx, decision("acme", 778)); err != nil {
					t.Fatal(err)
				}
				return forged
			},
			kind: audit.ProblemChanged,
			also: audit.ProblemReordered,
		},
		{
			name: "swap two records",
			tamper: func(t *testing.T, f *fixture) string {
				f.xdel(t, f.ids[9], f.ids[10])
				f.xadd(t, f.raws[10])
				f.xadd(t, f.raws[9])
				return f.ids[11]
			},
			kind: audit.ProblemDeleted,
			also: audit.ProblemReordered,
		},
		{
			name: "delete at the tail",
			tamper: func(t *testing.T, f *fixture) string {
				f.xdel(t, f.ids[19], f.ids[20])
				return "" // end of stream: the head in Redis says seq 21
			},
			kind: audit.ProblemDeleted,
		},
		{
			name: "trim without a retention checkpoint",
			tamper: func(t *testing.T, f *fixture) string {
				if err := f.rdb.XTrimMaxLen(ctx, f.key, 15).Err(); err != nil {
					t.Fatal(err)
				}
				return f.ids[6]
			},
			kind: audit.ProblemDeleted,
		},
		{
			name: "duplicate request id",
			tamper: func(t *testing.T, f *fixture) string {
				other := newStream(t, f.rdb, audit.StreamConfig{WriterID: "proxy-b"})
				r := decision("acme", 3) // same request id as seq 4
				rc, err := other.Append(ctx, r)
				id := rc.ID()
				if err != nil {
					t.Fatal(err)
				}
				return id
			},
			kind: audit.ProblemDuplicate,
		},
		{
			name: "record moved from another tenant",
			tamper: func(t *testing.T, f *fixture) string {
				if _, err := f.s.Append(ctx, decision("globex", 1)); err != nil {
					t.Fatal(err)
				}
				msgs, _ := f.rdb.XRange(ctx, audit.StreamKey("globex"), "-", "+").Result()
				return f.xadd(t, msgs[0].Values[audit.FieldRecord].(string))
			},
			kind: audit.ProblemWrongTenant,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			wantID := tc.tamper(t, f)
			rep := verify(t, f.rdb, "acme", audit.VerifyOptions{})
			if rep.OK() {
				t.Fatal("tampering not detected")
			}
			first := rep.First()
			if first.Kind != tc.kind || first.ID != wantID {
				t.Errorf("first problem = %s; want kind %s at %q", first, tc.kind, wantID)
			}
			if !strings.Contains(first.String(), f.key) {
				t.Errorf("problem %q does not name the stream", first)
			}
			if tc.also != "" {
				found := false
				for _, p := range rep.Problems {
					found = found || p.Kind == tc.also
				}
				if !found {
					t.Errorf("want also a %s problem, got %v", tc.also, rep.Problems)
				}
			}
		})
	}
}

func TestCheckpointSignedWithAnotherKeyIsRejected(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	prev := f.rec(t, 20)
	_, other, _ := edKey()
	r := &audit.Record{V: audit.Version, Kind: audit.KindCheckpoint, Time: time.Now().UTC(), Tenant: "acme",
		Writer: "proxy-a", Seq: prev.Seq + 1, Prev: prev.Hash}
	cp := audit.Checkpoint{Type: audit.CheckpointPeriodic, Stream: f.key, Writer: "proxy-a", Seq: r.Seq, Head: r.Prev,
		Records: prev.Seq, Time: r.Time.Format(time.RFC3339Nano)}
	if err := cp.Sign(other); err != nil {
		t.Fatal(err)
	}
	r.Details, _ = json.Marshal(cp)
	id := f.xadd(t, seal(t, r))
	// Keep the head consistent so only the signature is wrong.
	f.rdb.HSet(ctx, audit.HeadsKey("acme"), "proxy-a", "22:"+r.Hash)

	rep := verify(t, f.rdb, "acme", audit.VerifyOptions{})
	if rep.OK() || rep.First().Kind != audit.ProblemBadCheckpoint || rep.First().ID != id {
		t.Fatalf("want bad_checkpoint at %s, got %v", id, rep.Problems)
	}

	// Pinned keys: the writers hash says one key, the trusted file another;
	// the trusted file wins and the genuine checkpoint at seq 21 fails.
	pub := other.Public().(ed25519.PublicKey)
	rep = verify(t, f.rdb, "acme", audit.VerifyOptions{TrustedKeys: map[string]ed25519.PublicKey{"proxy-a": pub}})
	if rep.OK() || rep.First().Kind != audit.ProblemBadCheckpoint || rep.First().ID != f.ids[20] {
		t.Fatalf("with pinned other key: want bad_checkpoint at %s, got %v", f.ids[20], rep.Problems)
	}
	// And with the right key pinned, the genuine one passes, the forged fails.
	rep = verify(t, f.rdb, "acme", audit.VerifyOptions{TrustedKeys: map[string]ed25519.PublicKey{"proxy-a": f.s.PublicKey()}})
	if len(rep.Problems) != 1 || rep.First().ID != id {
		t.Fatalf("with pinned right key: %v", rep.Problems)
	}
}

func TestRetentionTrimLeavesAVerifiableStream(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	ctx := context.Background()
	a := newStream(t, rdb, audit.StreamConfig{WriterID: "proxy-a"})
	b := newStream(t, rdb, audit.StreamConfig{WriterID: "proxy-b"})
	idle := newStream(t, rdb, audit.StreamConfig{WriterID: "proxy-idle"})
	// idle writes only before the cut; a and b on both sides.
	for i := range 5 {
		if _, err := idle.Append(ctx, decision("acme", 900+i)); err != nil {
			t.Fatal(err)
		}
	}
	var cut string
	for i := range 30 {
		w := a
		if i%3 == 0 {
			w = b
		}
		rc, err := w.Append(ctx, decision("acme", i))
		id := rc.ID()
		if err != nil {
			t.Fatal(err)
		}
		if i == 17 {
			cut = id
		}
	}
	if err := a.Trim(ctx, "acme", cut); err != nil {
		t.Fatal(err)
	}
	n, _ := rdb.XLen(ctx, audit.StreamKey("acme")).Result()
	if n >= 36 || n < 12 {
		t.Fatalf("stream has %d entries after trim", n)
	}
	rep := verify(t, rdb, "acme", audit.VerifyOptions{})
	mustOK(t, rep)
	if !rep.Writers["proxy-a"].Anchored || !rep.Writers["proxy-b"].Anchored {
		t.Errorf("writers not anchored: %+v %+v", rep.Writers["proxy-a"], rep.Writers["proxy-b"])
	}
	// Writers keep appending after the trim, the idle one too.
	for i, w := range []*audit.Stream{a, b, idle} {
		if _, err := w.Append(ctx, decision("acme", 5000+i)); err != nil {
			t.Fatal(err)
		}
	}
	mustOK(t, verify(t, rdb, "acme", audit.VerifyOptions{}))
}

func TestRetentionOffByDefault(t *testing.T) {
	var cfg audit.StreamConfig
	if cfg.Retention != 0 {
		t.Fatal("retention must default to off")
	}
	srv := redistest.Start(t)
	rdb := srv.Client()
	s := newStream(t, rdb, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	for i := range 20 {
		if _, err := s.Append(context.Background(), decision("acme", i)); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	<-done
	n, _ := rdb.XLen(context.Background(), audit.StreamKey("acme")).Result()
	if n != 21 { // 20 records + the shutdown checkpoint
		t.Fatalf("stream has %d entries, want 21", n)
	}
}

// Retention configured on the Stream: Run trims on its interval, and what
// remains verifies.
func TestRunTrimsWhenRetentionIsConfigured(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	s := newStream(t, rdb, audit.StreamConfig{Retention: 300 * time.Millisecond, RetentionInterval: 100 * time.Millisecond})
	ctx := context.Background()
	for i := range 20 {
		if _, err := s.Append(ctx, decision("acme", i)); err != nil {
			t.Fatal(err)
		}
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(runCtx) }()
	eventually(t, 10*time.Second, "old records trimmed", func() bool {
		n, err := rdb.XLen(ctx, audit.StreamKey("acme")).Result()
		return err == nil && n < 20
	})
	if _, err := s.Append(ctx, decision("acme", 100)); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	rep := verify(t, rdb, "acme", audit.VerifyOptions{})
	mustOK(t, rep)
	if w := rep.Writers[s.WriterID()]; w == nil || !w.Anchored {
		t.Errorf("writer not anchored after trim: %+v", w)
	}
}

// Verify counts allow decisions without an outcome record (calls in
// flight, or outcomes dropped or lost), apart from the chain's problems.
func TestVerifyCountsAllowsWithoutOutcome(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	s := newStream(t, rdb, audit.StreamConfig{})
	ctx := context.Background()
	ids := map[int]string{}
	for i := range 5 {
		rc, err := s.Append(ctx, decision("acme", i))
		id := rc.ID()
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id
	}
	denied := decision("acme", 5)
	denied.Decision, denied.Reasons = audit.DecisionDeny, []string{"trust_level_too_low"}
	for _, r := range []*audit.Record{denied, outcome(decision("acme", 0)), outcome(decision("acme", 1)), outcome(decision("acme", 3))} {
		if _, err := s.Append(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	rep := verify(t, rdb, "acme", audit.VerifyOptions{})
	mustOK(t, rep)
	if rep.OpenAllows != 2 || rep.FirstOpenAllow != ids[2] {
		t.Fatalf("open allows %d (first %s), want 2 (first %s, request 2)", rep.OpenAllows, rep.FirstOpenAllow, ids[2])
	}
}

// outcome is the outcome record of the call d decided.
func outcome(d *audit.Record) *audit.Record {
	d.Kind, d.Status, d.Reasons = audit.KindOutcome, 200, nil
	return d
}
