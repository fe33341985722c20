package audit

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// WitnessView is what one witness holds, read (and checked) for
// verification: per writer its pinned key, its latest statement and every
// head it sealed.
type WitnessView struct {
	Name    string
	Writers map[string]*WitnessedWriter
	// Problems are faults of the witness's own copy (witness_corrupt).
	Problems []Problem
}

// LoadWitness reads every writer's log from w and checks it: the line
// chain, each statement's signature under the writer's first key, and the
// rules a witness applies when it stores one.
func LoadWitness(ctx context.Context, w Witness) (*WitnessView, error) {
	names, err := w.Writers(ctx)
	if err != nil {
		return nil, err
	}
	view := &WitnessView{Name: w.Name(), Writers: map[string]*WitnessedWriter{}}
	for _, name := range names {
		chk := newLogChecker(name, true)
		if err := w.ReadLog(ctx, name, chk.line); err != nil {
			return nil, err
		}
		view.Problems = append(view.Problems, chk.problems...)
		if chk.state.Last != nil {
			view.Writers[name] = chk.state
		}
	}
	return view, nil
}

// witnessChecks is the Verifier's part that compares a stream with
// witnesses and with its own heads hash.
type witnessChecks struct {
	corrupt       map[string]string            // writer -> head value that does not parse
	late          map[string]bool              // heads that appeared after the heads were read
	sealed        map[string]map[uint64]string // writer -> seq -> witnessed hash
	seen          map[string]map[uint64]bool
	by            map[string]string // writer -> a witness holding it
	closedAt      map[string]uint64 // writer -> sealed seq of its closing statement
	afterClose    map[string]bool
	mismatched    map[string]uint64 // writer -> a seq whose record differs from the witness's
	maxDeleted    string            // XINFO STREAM max-deleted-entry-id; "" unknown
	streamMissing bool
}

// CorruptHead records a head value that does not parse.
func (v *Verifier) CorruptHead(writer, value string) {
	if v.wit.corrupt == nil {
		v.wit.corrupt = map[string]string{}
	}
	v.wit.corrupt[writer] = value
}

// Witnessed tells the verifier what a witness sealed of writer in this
// stream (seq -> hash), and, when the writer closed cleanly, the seq of its
// last head. Call it before Add.
func (v *Verifier) Witnessed(witness, writer string, sealed map[uint64]string, closed bool, closedAt uint64) {
	if v.wit.sealed == nil {
		v.wit.sealed, v.wit.seen, v.wit.by = map[string]map[uint64]string{}, map[string]map[uint64]bool{}, map[string]string{}
		v.wit.closedAt, v.wit.afterClose, v.wit.mismatched = map[string]uint64{}, map[string]bool{}, map[string]uint64{}
	}
	m := v.wit.sealed[writer]
	if m == nil {
		m = map[uint64]string{}
		v.wit.sealed[writer], v.wit.seen[writer], v.wit.by[writer] = m, map[uint64]bool{}, witness
	}
	for seq, h := range sealed {
		if old, ok := m[seq]; ok && old != h {
			v.problem(Problem{Writer: writer, Seq: seq, Kind: ProblemWitnessCorrupt,
				Detail: fmt.Sprintf("witnesses %s and %s hold different hashes for seq %d (a forked chain)", v.wit.by[writer], witness, seq)})
			continue
		}
		m[seq] = h
	}
	if closed {
		if c, ok := v.wit.closedAt[writer]; !ok || closedAt > c {
			v.wit.closedAt[writer] = closedAt
		}
	}
}

// DeletionMark gives the stream's max-deleted-entry-id (XINFO STREAM),
// which tells a cut tail from a restored snapshot.
func (v *Verifier) DeletionMark(id string) { v.wit.maxDeleted = id }

// StreamMissing records that the stream does not exist though why says
// it should.
func (v *Verifier) StreamMissing(why string) {
	v.wit.streamMissing = true
	v.problem(Problem{Kind: ProblemStreamMissing, pos: 1,
		Detail: "the stream is gone: " + why + " (deleted, or Redis lost it)"})
}

// MissingHeads lists the writers with records or witnessed checkpoints in
// the stream but no head: to be re-read after the entries (a writer that
// started meanwhile) before they count as missing.
func (v *Verifier) MissingHeads() []string {
	if v.heads == nil {
		return nil
	}
	var out []string
	add := func(w string) {
		if _, ok := v.heads[w]; ok {
			return
		}
		if _, bad := v.wit.corrupt[w]; bad || v.wit.late[w] {
			return
		}
		out = append(out, w)
	}
	for w := range v.writers {
		add(w)
	}
	for w := range v.wit.sealed {
		if v.writers[w] == nil {
			add(w)
		}
	}
	sort.Strings(out)
	return out
}

// LateHead records that writer's head exists after all (re-read).
func (v *Verifier) LateHead(writer string) {
	if v.wit.late == nil {
		v.wit.late = map[string]bool{}
	}
	v.wit.late[writer] = true
}

// addWitnessed checks one record against the witnessed heads.
func (v *Verifier) addWitnessed(id string, rec *Record, p Problem) {
	if want, ok := v.wit.sealed[rec.Writer][rec.Seq]; ok {
		v.wit.seen[rec.Writer][rec.Seq] = true
		if want != rec.Hash {
			v.wit.mismatched[rec.Writer] = rec.Seq
			p.Kind = ProblemCheckpointMismatch
			p.Detail = fmt.Sprintf("witness %s sealed seq %d with hash %.16s…, the stream holds %.16s…: the checkpoint was replaced or forged",
				v.wit.by[rec.Writer], rec.Seq, want, rec.Hash)
			v.problem(p)
		}
	}
	if c, ok := v.wit.closedAt[rec.Writer]; ok && rec.Seq > c && !v.wit.afterClose[rec.Writer] {
		v.wit.afterClose[rec.Writer] = true
		p.Kind = ProblemAfterClose
		p.Detail = fmt.Sprintf("the writer closed at seq %d (witness %s), yet seq %d follows: forged, or its id was reused", c, v.wit.by[rec.Writer], rec.Seq)
		v.problem(p)
	}
}

// finishHeads reports missing and corrupt heads. Every append moves its
// writer's head in the same script, so a writer with records and no head
// means the heads were deleted, and with them the tail check of VerifyStream.
func (v *Verifier) finishHeads() {
	if v.heads == nil || v.wit.streamMissing {
		return
	}
	end := v.pos + 1
	ws := make([]string, 0, len(v.wit.corrupt))
	for w := range v.wit.corrupt {
		ws = append(ws, w)
	}
	sort.Strings(ws)
	for _, w := range ws {
		v.problem(Problem{Writer: w, Kind: ProblemHeadCorrupt, pos: end,
			Detail: fmt.Sprintf("the writer's head in %s is %q, not \"<seq>:<hash>\" (corrupted: the tail check cannot use it)", HeadsKey(v.tenant), truncate(v.wit.corrupt[w], 80))})
	}
	missing := v.MissingHeads()
	if len(missing) == 0 {
		return
	}
	if len(v.heads) == 0 && len(v.wit.corrupt) == 0 && len(v.wit.late) == 0 {
		v.problem(Problem{Kind: ProblemHeadsMissing, pos: end,
			Detail: fmt.Sprintf("%s is gone though %d writers have records or witnessed checkpoints here (deleted: records cut at the tail could not be seen from Redis alone)", HeadsKey(v.tenant), len(missing))})
		return
	}
	for _, w := range missing {
		v.problem(Problem{Writer: w, Kind: ProblemHeadMissing, pos: end,
			Detail: fmt.Sprintf("the writer has records or witnessed checkpoints here but no head in %s (removed)", HeadsKey(v.tenant))})
	}
}

// finishWitnessed compares each witnessed writer's chain in the stream with
// what the witness sealed: the latest sealed head must be in the stream and
// the head in Redis at or past it. When records the witness saw are gone at
// the tail, the stream's deletion mark tells a cut (XDEL leaves one past the
// remaining records) from a restored snapshot (the stream and its head agree
// with each other, just older).
func (v *Verifier) finishWitnessed() {
	if v.wit.streamMissing {
		return
	}
	names := make([]string, 0, len(v.wit.sealed))
	for w := range v.wit.sealed {
		names = append(names, w)
	}
	sort.Strings(names)
	end := v.pos + 1
	for _, w := range names {
		sealed := v.wit.sealed[w]
		ws := v.writers[w]
		var last, first uint64
		var lastID string
		anchored := false
		if ws != nil {
			last, lastID, first, anchored = ws.lastSeq, ws.lastID, ws.rep.FirstSeq, ws.rep.Anchored
		}
		head, hasHead := v.heads[w]
		trimmedAll := ws == nil && hasHead && v.anchors[w][head]
		var maxN uint64
		var maxHash string
		var inside []uint64
		for seq, h := range sealed {
			if seq > maxN {
				maxN, maxHash = seq, h
			}
			if v.wit.seen[w][seq] || seq > last {
				continue
			}
			if anchored && seq < first {
				continue // trimmed under a signed retention checkpoint
			}
			inside = append(inside, seq)
		}
		if trimmedAll && maxN <= head.Seq {
			continue
		}
		by := v.wit.by[w]
		if len(inside) > 0 {
			slices := append([]uint64(nil), inside...)
			sort.Slice(slices, func(i, j int) bool { return slices[i] < slices[j] })
			v.problem(Problem{Writer: w, Seq: slices[0], Kind: ProblemCheckpointMissing, pos: end,
				Detail: fmt.Sprintf("witness %s sealed seq %d, which is not in the stream though later records are (%d witnessed checkpoints missing)", by, slices[0], len(slices))})
		}
		if maxN > last {
			switch {
			case hasHead && head.Seq >= maxN:
				v.problem(Problem{Writer: w, Seq: last + 1, Kind: ProblemTailCut, pos: end,
					Detail: fmt.Sprintf("records after seq %d deleted at the tail, through seq %d that witness %s sealed (the head still says seq %d)", last, maxN, by, head.Seq)})
			case v.deletedAfter(lastID):
				v.problem(Problem{Writer: w, Seq: last + 1, Kind: ProblemTailCut, pos: end,
					Detail: fmt.Sprintf("records after seq %d deleted at the tail, through seq %d that witness %s sealed, and the head %s (the stream's deletion mark is %s)", last, maxN, by, headWords(head, hasHead, v.wit.corrupt[w]), v.wit.maxDeleted)})
			case v.wit.maxDeleted == "":
				v.problem(Problem{Writer: w, Seq: last + 1, Kind: ProblemTailCut, pos: end,
					Detail: fmt.Sprintf("the stream ends at seq %d but witness %s sealed seq %d (deleted at the tail, or an older snapshot: XINFO STREAM unavailable to tell)", last, by, maxN)})
			default:
				v.problem(Problem{Writer: w, Seq: last + 1, Kind: ProblemRolledBack, pos: end,
					Detail: fmt.Sprintf("the stream and the head end at seq %d, with no deletion mark, but witness %s sealed seq %d: Redis holds an older state (a restored snapshot or AOF, a failover that lost writes, or a rebuilt stream)", last, by, maxN)})
			}
			continue
		}
		// A head that agrees with a replaced checkpoint is that
		// replacement's doing, already reported.
		replaced := v.wit.mismatched[w] == maxN && maxN > 0
		if hasHead && (head.Seq < maxN || (head.Seq == maxN && head.Hash != maxHash && !replaced)) {
			v.problem(Problem{Writer: w, Seq: head.Seq, Kind: ProblemHeadRewritten, pos: end,
				Detail: fmt.Sprintf("the head in Redis is seq %d but witness %s sealed seq %d (the head was moved back or rewritten)", head.Seq, by, maxN)})
		}
	}
}

// deletedAfter reports whether the stream has a deletion mark past id (the
// writer's last remaining record; "" when none remain).
func (v *Verifier) deletedAfter(id string) bool {
	d := v.wit.maxDeleted
	if d == "" || d == "0-0" {
		return false
	}
	return id == "" || IDLess(id, d)
}

func headWords(h Anchor, ok bool, corrupt string) string {
	switch {
	case corrupt != "":
		return "corrupted"
	case !ok:
		return "removed"
	}
	return fmt.Sprintf("rewritten to seq %d", h.Seq)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// VerifyAllOptions tune VerifyAll.
type VerifyAllOptions struct {
	VerifyOptions
	// Tenant limits the check to one tenant. Default: every tenant a
	// stream, a heads hash, the tenant registry or a witness knows.
	Tenant string
	// Witnesses are read first, then Redis: whatever a witness holds was
	// acknowledged by Redis before, so Redis read later must hold it too.
	Witnesses []Witness
	// Now is the time a writer's silence is measured to. Default time.Now.
	Now time.Time
	// StaleAfter: a writer the witness has not heard from for this long,
	// without a closing statement, stopped uncleanly. Default 1m.
	StaleAfter time.Duration
	// AcceptUnclosed names writers whose unclean stop an operator has
	// looked into: they are listed, not failed.
	AcceptUnclosed map[string]bool
}

// Verification is the result of VerifyAll.
type Verification struct {
	Streams   []*Report        `json:"streams"`
	Witnesses []*WitnessReport `json:"witnesses,omitempty"`
}

// WitnessReport sums up what one witness says about the writers.
type WitnessReport struct {
	Witness string `json:"witness"`
	Writers int    `json:"writers"`
	Closed  int    `json:"closed"`
	Running int    `json:"running"`
	// Accepted lists unclosed writers passed with AcceptUnclosed.
	Accepted []string  `json:"accepted_unclosed,omitempty"`
	Problems []Problem `json:"problems,omitempty"`
}

// OK reports whether nothing was found anywhere.
func (r *Verification) OK() bool { return r.First() == nil }

// First is the first problem: by stream, then by witness.
func (r *Verification) First() *Problem {
	for _, s := range r.Streams {
		if p := s.First(); p != nil {
			return p
		}
	}
	for _, w := range r.Witnesses {
		if len(w.Problems) > 0 {
			return &w.Problems[0]
		}
	}
	return nil
}

// Problems lists every problem found.
func (r *Verification) Problems() []Problem {
	var out []Problem
	for _, s := range r.Streams {
		out = append(out, s.Problems...)
	}
	for _, w := range r.Witnesses {
		out = append(out, w.Problems...)
	}
	return out
}

// VerifyAll reads the witnesses, then verifies every tenant's stream
// against its heads and the witnesses, then each witnessed writer: its key
// against the one in Redis, and whether it stopped cleanly.
func VerifyAll(ctx context.Context, rdb redis.UniversalClient, opts VerifyAllOptions) (*Verification, error) {
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	if opts.StaleAfter <= 0 {
		opts.StaleAfter = time.Minute
	}
	views := make([]*WitnessView, 0, len(opts.Witnesses))
	for _, w := range opts.Witnesses {
		view, err := LoadWitness(ctx, w)
		if err != nil {
			return nil, fmt.Errorf("read witness: %w", err)
		}
		views = append(views, view)
	}
	opts.Witnessed = views
	tenants := []string{opts.Tenant}
	if opts.Tenant == "" {
		var err error
		if tenants, err = KnownTenants(ctx, rdb, views); err != nil {
			return nil, err
		}
		if opts.Archive != "" {
			if tenants, err = WithArchiveTenants(tenants, opts.Archive); err != nil {
				return nil, err
			}
		}
	}
	res := &Verification{}
	reports := map[string]*Report{}
	for _, t := range tenants {
		rep, err := VerifyStream(ctx, rdb, t, opts.VerifyOptions)
		if err != nil {
			return nil, err
		}
		res.Streams = append(res.Streams, rep)
		reports[t] = rep
	}
	if len(views) == 0 {
		return res, nil
	}
	registered, err := rdb.HGetAll(ctx, WritersKey).Result()
	if err != nil {
		return nil, fmt.Errorf("read audit writers: %w", err)
	}
	for _, view := range views {
		res.Witnesses = append(res.Witnesses, checkWriters(view, registered, reports, opts))
	}
	return res, nil
}

// checkWriters checks each writer a witness holds: its key against the
// one in Redis (and the pinned one), and how it stopped.
func checkWriters(view *WitnessView, registered map[string]string, reports map[string]*Report, opts VerifyAllOptions) *WitnessReport {
	wr := &WitnessReport{Witness: view.Name, Problems: append([]Problem(nil), view.Problems...)}
	names := make([]string, 0, len(view.Writers))
	for w := range view.Writers {
		names = append(names, w)
	}
	sort.Strings(names)
	for _, name := range names {
		w := view.Writers[name]
		if opts.Tenant != "" {
			if _, ok := w.Streams[opts.Tenant]; !ok {
				continue
			}
		}
		wr.Writers++
		if tk, ok := opts.TrustedKeys[name]; ok && !tk.Equal(w.Key) {
			wr.Problems = append(wr.Problems, Problem{Writer: name, Kind: ProblemWriterKeyChanged,
				Detail: fmt.Sprintf("witness %s pinned another key for this writer than --trusted-keys", view.Name)})
		}
		if len(w.Streams) > 0 {
			reg, ok := registered[name]
			pk, err := ParsePublicKey(reg)
			switch {
			case !ok:
				wr.Problems = append(wr.Problems, Problem{Writer: name, Kind: ProblemWriterKeyChanged,
					Detail: fmt.Sprintf("the writer's key is gone from %s (witness %s holds it)", WritersKey, view.Name)})
			case err != nil || !pk.Equal(ed25519.PublicKey(w.Key)):
				wr.Problems = append(wr.Problems, Problem{Writer: name, Kind: ProblemWriterKeyChanged,
					Detail: fmt.Sprintf("the key in %s differs from the one witness %s pinned (replaced: checkpoints signed with it prove nothing)", WritersKey, view.Name)})
			}
		}
		switch {
		case w.Closed:
			wr.Closed++
		case len(w.Streams) == 0 || opts.Now.Sub(w.LastReceived) <= opts.StaleAfter:
			wr.Running++
		case opts.AcceptUnclosed[name]:
			wr.Accepted = append(wr.Accepted, name)
		default:
			wr.Problems = append(wr.Problems, Problem{Writer: name, Kind: ProblemWriterUnclosed,
				Detail: unclosedDetail(w, reports, opts.Now)})
		}
	}
	return wr
}

// unclosedDetail says what a writer that stopped without a closing
// statement leaves unaccounted for.
func unclosedDetail(w *WitnessedWriter, reports map[string]*Report, now time.Time) string {
	tenants := make([]string, 0, len(w.Streams))
	for t := range w.Streams {
		tenants = append(tenants, t)
	}
	sort.Strings(tenants)
	var parts []string
	for _, t := range tenants {
		h := w.Streams[t]
		part := fmt.Sprintf("%s sealed to seq %d", t, h.Seq)
		if rep := reports[t]; rep != nil {
			if wr := rep.Writers[w.Writer]; wr != nil && wr.LastSeq > h.Seq {
				part += fmt.Sprintf(", %d records after it unsealed", wr.LastSeq-h.Seq)
			}
		}
		parts = append(parts, part)
	}
	return fmt.Sprintf("stopped without a closing statement: crashed or killed, or cut off from the witness (last heard %s ago, at %s); %s. What the witness sealed is checked above; records written after the last sealed head could have been removed without trace. Pass --accept-unclosed %s once looked into",
		now.Sub(w.LastReceived).Round(time.Second), w.LastReceived.UTC().Format(time.RFC3339), strings.Join(parts, "; "), w.Writer)
}

// KnownTenants lists every tenant that has an audit stream, a heads hash,
// an entry in the tenant registry, or checkpoints at a witness: a stream
// deleted from Redis is still checked, and reported missing.
func KnownTenants(ctx context.Context, rdb redis.UniversalClient, views []*WitnessView) ([]string, error) {
	found := map[string]bool{}
	streams, err := ListTenants(ctx, rdb)
	if err != nil {
		return nil, err
	}
	for _, t := range streams {
		found[t] = true
	}
	err = ScanKeys(ctx, rdb, "passport:{t:*}:audit:heads", "hash", func(k string) {
		if t, ok := TenantFromStreamKey(strings.TrimSuffix(k, ":heads")); ok {
			found[t] = true
		}
	})
	if err != nil {
		return nil, fmt.Errorf("list audit tenants: %w", err)
	}
	reg, err := rdb.SMembers(ctx, TenantsKey).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read %s: %w", TenantsKey, err)
	}
	for _, t := range reg {
		if validTenant(t) == nil {
			found[t] = true
		}
	}
	for _, v := range views {
		for _, w := range v.Writers {
			for t := range w.Streams {
				found[t] = true
			}
		}
	}
	out := make([]string, 0, len(found))
	for t := range found {
		out = append(out, t)
	}
	sort.Strings(out)
	return out, nil
}
