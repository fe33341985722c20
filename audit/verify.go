package audit

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Problem kinds reported by the verifier.
const (
	ProblemMalformed     = "malformed"      // not a decodable record
	ProblemChanged       = "changed"        // content does not match its hash, or a link does not match
	ProblemDeleted       = "deleted"        // records missing from a writer's chain
	ProblemReordered     = "reordered"      // a record appears after a later one of its writer
	ProblemDuplicate     = "duplicate"      // a request id recorded twice for one kind
	ProblemBadCheckpoint = "bad_checkpoint" // checkpoint inconsistent or signature invalid
	ProblemUnknownWriter = "unknown_writer" // no trusted public key for the writer
	ProblemWrongTenant   = "wrong_tenant"   // record of another tenant in this stream

	// Missing or damaged chain heads (found with or without a witness).
	ProblemStreamMissing = "stream_missing" // the stream is gone, though its heads, the tenant registry or a witness know it
	ProblemHeadsMissing  = "heads_missing"  // the stream has records but its heads hash is gone
	ProblemHeadMissing   = "head_missing"   // a writer with records (or witnessed checkpoints) has no head
	ProblemHeadCorrupt   = "head_corrupt"   // a head that is not "<seq>:<hash>"

	// Found by comparing Redis with a witness.
	ProblemHeadRewritten      = "head_rewritten"      // a head below, or other than, a witnessed checkpoint
	ProblemTailCut            = "tail_cut"            // records through a witnessed checkpoint deleted at the tail
	ProblemRolledBack         = "rolled_back"         // stream and head consistently older than the witness (restored snapshot)
	ProblemCheckpointMismatch = "checkpoint_mismatch" // the record at a witnessed checkpoint's seq is another one
	ProblemCheckpointMissing  = "checkpoint_missing"  // a witnessed checkpoint is gone while later records remain
	ProblemAfterClose         = "records_after_close" // records of a writer after its closing statement
	ProblemWriterUnclosed     = "writer_unclosed"     // a writer stopped without a closing statement (crashed or killed)
	ProblemWriterKeyChanged   = "writer_key_changed"  // the key in Redis (or pinned) differs from the witness's
	ProblemWitnessCorrupt     = "witness_corrupt"     // the witness's own log does not check out
)

// Problem is one place where a stream does not verify.
type Problem struct {
	Stream string `json:"stream"`
	ID     string `json:"id"` // stream entry id where it was found ("" for the stream's end)
	Writer string `json:"writer,omitempty"`
	Seq    uint64 `json:"seq,omitempty"`
	Kind   string `json:"kind"`
	Detail string `json:"detail"`
	pos    int
}

func (p Problem) String() string {
	at := p.ID
	if at == "" {
		at = "end of stream"
	}
	if p.Stream == "" {
		w := ""
		if p.Writer != "" {
			w = " writer " + p.Writer + ":"
		}
		return fmt.Sprintf("%s at witness%s %s", p.Kind, w, p.Detail)
	}
	w := ""
	if p.Writer != "" {
		w = fmt.Sprintf(" writer %s seq %d:", p.Writer, p.Seq)
	}
	return fmt.Sprintf("%s at %s %s:%s %s", p.Kind, p.Stream, at, w, p.Detail)
}

// WriterReport sums up one writer's chain in one stream.
type WriterReport struct {
	Writer      string `json:"writer"`
	Records     uint64 `json:"records"`
	Checkpoints uint64 `json:"checkpoints"`
	FirstSeq    uint64 `json:"first_seq"`
	LastSeq     uint64 `json:"last_seq"`
	// SealedSeq is the seq of the last valid checkpoint: records up to it
	// are covered by the writer's signature.
	SealedSeq uint64 `json:"sealed_seq"`
	// Unsealed counts records after the last checkpoint: their integrity
	// rests on the hash chain and the head in Redis only.
	Unsealed uint64 `json:"unsealed"`
	Anchored bool   `json:"anchored,omitempty"` // starts after a retention checkpoint's anchor
}

// Report is the result of verifying one stream.
type Report struct {
	Stream   string                   `json:"stream"`
	Records  int                      `json:"records"`
	Writers  map[string]*WriterReport `json:"writers"`
	Problems []Problem                `json:"problems,omitempty"`
	// OpenAllows counts allow decisions with no outcome record for their
	// request id, and FirstOpenAllow is the first one's stream id. Not a
	// problem of the chain: calls still in flight when the stream was
	// read, outcomes dropped from a full buffer (counted in
	// passport_audit_outcome_dropped_total) or lost with a crashed proxy.
	OpenAllows     int    `json:"open_allows,omitempty"`
	FirstOpenAllow string `json:"first_open_allow,omitempty"`
}

// OK reports whether no problem was found.
func (r *Report) OK() bool { return len(r.Problems) == 0 }

// First is the first broken place, by position in the stream.
func (r *Report) First() *Problem {
	if len(r.Problems) == 0 {
		return nil
	}
	return &r.Problems[0]
}

// maxProblems bounds the report; the first one is what matters.
const maxProblems = 1000

type wstate struct {
	rep       *WriterReport
	lastSeq   uint64
	lastHash  string
	lastID    string
	firstPrev string
	firstID   string
	firstPos  int
}

// reqKey names a (kind, request id) pair by 128 bits of its SHA-256, and
// entryID is a stream id as two numbers: the verifier keeps one of each
// per decision and outcome record of the stream, so they are kept small
// (a stream of 10 million records held gigabytes as strings).
type (
	reqKey  [16]byte
	entryID [2]uint64
)

func keyOf(kind Kind, requestID string) reqKey {
	h := sha256.New()
	h.Write([]byte(kind))
	h.Write([]byte{0})
	h.Write([]byte(requestID))
	var k reqKey
	copy(k[:], h.Sum(nil))
	return k
}

func entryOf(id string) entryID {
	ms, seq, _ := strings.Cut(id, "-")
	a, _ := strconv.ParseUint(ms, 10, 64)
	b, _ := strconv.ParseUint(seq, 10, 64)
	return entryID{a, b}
}

func (e entryID) String() string {
	return strconv.FormatUint(e[0], 10) + "-" + strconv.FormatUint(e[1], 10)
}

func (e entryID) less(o entryID) bool { return e[0] < o[0] || e[0] == o[0] && e[1] < o[1] }

// Verifier checks one stream's entries in order. It is pure (no Redis), so
// it can be fuzzed and used on exported files.
type Verifier struct {
	stream  string
	tenant  string
	keys    map[string]ed25519.PublicKey
	heads   map[string]Anchor
	writers map[string]*wstate
	reqs    map[reqKey]entryID // decision and outcome records met, by kind and request id
	open    map[reqKey]entryID // allow decisions without an outcome record yet, by request id
	// passports are the passport records met, by stream id; firstID is
	// the first entry's id (references before it were trimmed).
	passports map[string]*Record
	firstID   string
	// anchors[w] holds (seq, hash) pairs from valid retention checkpoints.
	anchors map[string]map[Anchor]bool
	unknown map[string]bool
	rep     Report
	pos     int
	wit     witnessChecks
	// segRefs are the segments signed retention checkpoints name; with
	// an archive read (segments set), each must be there, unchanged.
	segRefs  []segRefAt
	segments map[string]string // last id -> SHA-256 of the archive's segments
	// Lookup, when set, is asked for a writer missing from the keys (a
	// writer that registered after the keys were read); its answer is kept.
	Lookup func(writer string) (ed25519.PublicKey, bool)
}

func (v *Verifier) key(w string) (ed25519.PublicKey, bool) {
	if k, ok := v.keys[w]; ok {
		return k, k != nil
	}
	if v.Lookup == nil {
		return nil, false
	}
	k, ok := v.Lookup(w)
	if !ok {
		k = nil
	}
	v.keys[w] = k
	return k, ok
}

// NewVerifier returns a verifier for tenant's stream. keys maps writer ids
// to their checkpoint keys; heads (may be nil) are the chain heads read
// from Redis before the entries, to detect records deleted at the tail.
func NewVerifier(tenant string, keys map[string]ed25519.PublicKey, heads map[string]Anchor) *Verifier {
	stream := StreamKey(tenant)
	if keys == nil {
		keys = map[string]ed25519.PublicKey{}
	}
	return &Verifier{
		stream: stream, tenant: tenant, keys: keys, heads: heads,
		writers: map[string]*wstate{}, reqs: map[reqKey]entryID{}, open: map[reqKey]entryID{}, passports: map[string]*Record{},
		anchors: map[string]map[Anchor]bool{}, unknown: map[string]bool{},
		rep: Report{Stream: stream, Writers: map[string]*WriterReport{}},
	}
}

func (v *Verifier) problem(p Problem) {
	p.Stream = v.stream
	if p.pos == 0 {
		p.pos = v.pos
	}
	if len(v.rep.Problems) < maxProblems {
		v.rep.Problems = append(v.rep.Problems, p)
	}
}

// Add checks the next entry: its stream id and the stored record JSON.
func (v *Verifier) Add(id string, raw []byte) {
	v.pos++
	v.rep.Records++
	if v.firstID == "" {
		v.firstID = id
	}
	rec, err := DecodeRecord(raw)
	if err != nil {
		v.problem(Problem{ID: id, Kind: ProblemMalformed, Detail: err.Error()})
		return
	}
	sum, err := HashRaw(raw)
	if err != nil {
		v.problem(Problem{ID: id, Kind: ProblemMalformed, Detail: err.Error()})
		return
	}
	if rec.Writer == "" || rec.Seq == 0 {
		v.problem(Problem{ID: id, Kind: ProblemMalformed, Detail: "record has no writer or seq"})
		return
	}
	p := Problem{ID: id, Writer: rec.Writer, Seq: rec.Seq}
	if sum != rec.Hash {
		p.Kind, p.Detail = ProblemChanged, "content does not match its hash (record changed)"
		v.problem(p)
	}
	if rec.Tenant != v.tenant {
		p.Kind, p.Detail = ProblemWrongTenant, fmt.Sprintf("record of tenant %q", rec.Tenant)
		v.problem(p)
	}
	if _, ok := v.key(rec.Writer); !ok && !v.unknown[rec.Writer] {
		v.unknown[rec.Writer] = true
		p.Kind, p.Detail = ProblemUnknownWriter, "no trusted public key for this writer (forged writer?)"
		v.problem(p)
	}

	ws := v.writers[rec.Writer]
	if ws == nil {
		ws = &wstate{rep: &WriterReport{Writer: rec.Writer, FirstSeq: rec.Seq}, firstPrev: rec.Prev, firstID: id, firstPos: v.pos}
		v.writers[rec.Writer] = ws
		v.rep.Writers[rec.Writer] = ws.rep
		if rec.Seq == 1 && rec.Prev != "" {
			p.Kind, p.Detail = ProblemChanged, "first record of the chain links to a previous hash"
			v.problem(p)
		}
	} else {
		switch {
		case rec.Seq == ws.lastSeq+1:
			if rec.Prev != ws.lastHash {
				p.Kind = ProblemChanged
				p.Detail = fmt.Sprintf("prev does not match the hash of seq %d at %s (a record was replaced or forged)", ws.lastSeq, ws.lastID)
				v.problem(p)
			}
		case rec.Seq > ws.lastSeq+1:
			p.Kind = ProblemDeleted
			p.Detail = fmt.Sprintf("seq %d..%d missing after seq %d at %s", ws.lastSeq+1, rec.Seq-1, ws.lastSeq, ws.lastID)
			v.problem(p)
		default:
			p.Kind = ProblemReordered
			p.Detail = fmt.Sprintf("seq %d appears after seq %d at %s (reordered, replayed or inserted)", rec.Seq, ws.lastSeq, ws.lastID)
			v.problem(p)
		}
	}
	ws.rep.Records++
	if rec.Seq > ws.lastSeq {
		ws.lastSeq, ws.lastHash, ws.lastID = rec.Seq, rec.Hash, id
		ws.rep.LastSeq = rec.Seq
	}
	if h, ok := v.heads[rec.Writer]; ok && h.Seq == rec.Seq && h.Hash != rec.Hash {
		p.Kind, p.Detail = ProblemChanged, "hash differs from the writer's chain head in Redis"
		v.problem(p)
	}
	v.addWitnessed(id, rec, p)

	if rec.RequestID != "" && (rec.Kind == KindDecision || rec.Kind == KindOutcome) {
		k := keyOf(rec.Kind, rec.RequestID)
		if first, ok := v.reqs[k]; ok {
			p.Kind = ProblemDuplicate
			p.Detail = fmt.Sprintf("%s record for request id %q already at %s", rec.Kind, rec.RequestID, first)
			v.problem(p)
		} else {
			v.reqs[k] = entryOf(id)
			switch {
			case rec.Kind == KindDecision && rec.Decision == DecisionAllow:
				if _, done := v.reqs[keyOf(KindOutcome, rec.RequestID)]; !done {
					v.open[keyOf(KindDecision, rec.RequestID)] = entryOf(id)
				}
			case rec.Kind == KindOutcome:
				delete(v.open, keyOf(KindDecision, rec.RequestID))
			}
		}
	}

	if rec.Kind == KindCheckpoint {
		v.checkpoint(id, rec, ws, p)
	}
	v.passportRef(id, rec, p)
}

// passportRef keeps passport records and checks that every decision's
// reference names an earlier passport record of this stream with the
// same passport and claims. A reference to before the first entry is to a
// record retention trimmed.
func (v *Verifier) passportRef(id string, rec *Record, p Problem) {
	if rec.Kind == KindPassport {
		if len(v.passports) < maxResolverCache {
			v.passports[id] = rec
		}
		return
	}
	if rec.PassportID == "" {
		return
	}
	pr, ok := v.passports[rec.PassportID]
	switch {
	case ok:
		if err := checkPassportRef(rec, pr); err != nil {
			p.Kind, p.Detail = ProblemChanged, err.Error()
			v.problem(p)
		}
	case !IDLess(rec.PassportID, v.firstID) && len(v.passports) < maxResolverCache:
		p.Kind = ProblemDeleted
		p.Detail = fmt.Sprintf("references passport record %s, which is not in the stream before it", rec.PassportID)
		v.problem(p)
	}
}

func (v *Verifier) checkpoint(id string, rec *Record, ws *wstate, p Problem) {
	p.Kind = ProblemBadCheckpoint
	var cp Checkpoint
	if err := json.Unmarshal(rec.Details, &cp); err != nil {
		p.Detail = "checkpoint details: " + err.Error()
		v.problem(p)
		return
	}
	switch {
	case cp.Writer != rec.Writer, cp.Seq != rec.Seq, cp.Head != rec.Prev, cp.Stream != v.stream:
		p.Detail = "checkpoint does not describe its own record (writer, seq, head or stream differ)"
		v.problem(p)
		return
	}
	key, ok := v.key(rec.Writer)
	if !ok {
		p.Detail = "no public key to verify the checkpoint"
		v.problem(p)
		return
	}
	if err := cp.Verify(key); err != nil {
		p.Detail = err.Error() + " (signed with another key?)"
		v.problem(p)
		return
	}
	ws.rep.Checkpoints++
	ws.rep.SealedSeq = rec.Seq
	if cp.Type == CheckpointLoss && cp.Lost != nil {
		v.problem(Problem{ID: id, Writer: rec.Writer, Seq: cp.Lost.First, Kind: ProblemDeleted, pos: p.pos,
			Detail: fmt.Sprintf("seq %d..%d of this writer were acknowledged by Redis and then gone from its chain (a failover without wait_replicas, or a rewritten head): its signed loss checkpoint says so",
				cp.Lost.First, cp.Lost.Last)})
	}
	if cp.Type == CheckpointRetention && cp.Segment != nil {
		v.segRefs = append(v.segRefs, segRefAt{ref: *cp.Segment, id: id, pos: p.pos})
	}
	if cp.Type == CheckpointRetention {
		for w, a := range cp.Anchors {
			if v.anchors[w] == nil {
				v.anchors[w] = map[Anchor]bool{}
			}
			v.anchors[w][a] = true
		}
	}
}

type segRefAt struct {
	ref SegmentRef
	id  string
	pos int
}

// ArchiveProblem reports a problem of the archive read before the stream
// (a segment missing, cut or changed), at the current position.
func (v *Verifier) ArchiveProblem(p Problem) { v.problem(p) }

// ArchiveSegments gives the segments of the archive read (last id ->
// SHA-256 of the file): every segment a retention checkpoint names must
// be one of them.
func (v *Verifier) ArchiveSegments(known map[string]string) {
	if known == nil {
		known = map[string]string{}
	}
	v.segments = known
}

func (v *Verifier) finishArchive() {
	if v.segments == nil {
		return
	}
	for _, r := range v.segRefs {
		sha, ok := v.segments[r.ref.Last]
		switch {
		case !ok:
			v.problem(Problem{ID: r.id, Kind: ProblemSegmentMissing, pos: r.pos,
				Detail: fmt.Sprintf("the signed retention checkpoint says entries %s..%s were trimmed into a segment (SHA-256 %s) that is not in the archive", r.ref.First, r.ref.Last, short(r.ref.SHA256))})
		case sha != r.ref.SHA256:
			v.problem(Problem{ID: r.id, Kind: ProblemSegmentCorrupt, pos: r.pos,
				Detail: fmt.Sprintf("the segment ending at %s has SHA-256 %s, but the signed retention checkpoint says %s: it was changed", r.ref.Last, short(sha), short(r.ref.SHA256))})
		}
	}
}

// Finish completes the checks that need the whole stream and returns the
// report, problems sorted by position.
func (v *Verifier) Finish() *Report {
	for w, ws := range v.writers {
		if ws.rep.FirstSeq > 1 {
			a := Anchor{Seq: ws.rep.FirstSeq - 1, Hash: ws.firstPrev}
			if v.anchors[w][a] {
				ws.rep.Anchored = true
			} else {
				v.problem(Problem{ID: ws.firstID, Writer: w, Seq: ws.rep.FirstSeq, Kind: ProblemDeleted, pos: ws.firstPos,
					Detail: fmt.Sprintf("chain starts at seq %d: seq 1..%d missing and no signed retention checkpoint anchors it", ws.rep.FirstSeq, ws.rep.FirstSeq-1)})
			}
		}
		ws.rep.Unsealed = ws.lastSeq - min(ws.rep.SealedSeq, ws.lastSeq)
	}
	v.finishHeads()
	v.finishWitnessed()
	v.finishArchive()
	ws := make([]string, 0, len(v.heads))
	for w := range v.heads {
		if v.wit.streamMissing {
			break // one problem says it all
		}
		ws = append(ws, w)
	}
	sort.Strings(ws)
	for _, w := range ws {
		h := v.heads[w]
		st := v.writers[w]
		last := uint64(0)
		if st != nil {
			last = st.lastSeq
		}
		if st == nil && v.anchors[w][h] {
			continue // every record of this writer was trimmed, as anchored
		}
		if last < h.Seq {
			v.problem(Problem{Writer: w, Seq: last + 1, Kind: ProblemDeleted, pos: v.pos + 1,
				Detail: fmt.Sprintf("the writer's head in Redis is seq %d but the stream ends at seq %d (records deleted at the tail)", h.Seq, last)})
		}
	}
	var first entryID
	for _, id := range v.open {
		if v.rep.OpenAllows == 0 || id.less(first) {
			first = id
		}
		v.rep.OpenAllows++
	}
	if v.rep.OpenAllows > 0 {
		v.rep.FirstOpenAllow = first.String()
	}
	sort.SliceStable(v.rep.Problems, func(i, j int) bool { return v.rep.Problems[i].pos < v.rep.Problems[j].pos })
	return &v.rep
}

// VerifyOptions tunes VerifyStream.
type VerifyOptions struct {
	// TrustedKeys pins writer keys. When set, only these writers are
	// trusted and the writers hash in Redis is ignored: whoever can write
	// Redis cannot then register a key of their own.
	TrustedKeys map[string]ed25519.PublicKey
	// PageSize is the XRANGE page. Default 1000.
	PageSize int64
	// Archive is the archive directory (ArchiveConfig.Dir): its segments
	// are read first, then Redis from just past them, as one history.
	// Every segment a signed retention checkpoint names must be there,
	// unchanged, and the segments must follow each other.
	Archive string
	// Witnessed are what witnesses hold (LoadWitness), read before Redis.
	// Their pinned keys are trusted over the writers hash (not over
	// TrustedKeys), and the stream is compared with the heads they sealed.
	Witnessed []*WitnessView
}

// VerifyStream walks the tenant's stream and checks every chain: against
// the heads hash, and against the witnesses in opts. A missing stream, a
// missing or corrupt head, or a mismatch with a witness is a problem of the
// report, never an error: errors are for Redis that cannot be read.
func VerifyStream(ctx context.Context, rdb redis.UniversalClient, tenant string, opts VerifyOptions) (*Report, error) {
	keys := map[string]ed25519.PublicKey{}
	for w, k := range opts.TrustedKeys {
		keys[w] = k
	}
	if opts.TrustedKeys == nil {
		reg, err := rdb.HGetAll(ctx, WritersKey).Result()
		if err != nil {
			return nil, fmt.Errorf("read audit writers: %w", err)
		}
		for w, k := range reg {
			if pk, err := ParsePublicKey(k); err == nil {
				keys[w] = pk
			}
		}
		// A witness pinned the key the writer signed with before anyone
		// could touch Redis: it wins over the writers hash.
		for _, view := range opts.Witnessed {
			for w, ww := range view.Writers {
				if len(ww.Key) == ed25519.PublicKeySize {
					keys[w] = ww.Key
				}
			}
		}
	}
	key := StreamKey(tenant)
	// Heads before entries: a concurrent append only makes the stream
	// longer than the heads, never shorter. And before EXISTS: a head
	// read means its stream existed then, so it must exist now.
	hv, err := rdb.HGetAll(ctx, HeadsKey(tenant)).Result()
	if err != nil {
		return nil, fmt.Errorf("read audit chain heads: %w", err)
	}
	exists, err := rdb.Exists(ctx, key).Result()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	heads := map[string]Anchor{}
	var corrupt []string
	for w, s := range hv {
		seq, hash, err := parseHead(s)
		if err != nil || (seq > 0 && !isHexHash(hash)) {
			corrupt = append(corrupt, w)
			continue
		}
		heads[w] = Anchor{Seq: seq, Hash: hash}
	}
	v := NewVerifier(tenant, keys, heads)
	for _, w := range corrupt {
		v.CorruptHead(w, hv[w])
	}
	var witnessedBy string
	for _, view := range opts.Witnessed {
		names := make([]string, 0, len(view.Writers))
		for w := range view.Writers {
			names = append(names, w)
		}
		sort.Strings(names)
		for _, w := range names {
			ww := view.Writers[w]
			if sealed := ww.Sealed[tenant]; len(sealed) > 0 {
				v.Witnessed(view.Name, w, sealed, ww.Closed, ww.Streams[tenant].Seq)
				if witnessedBy == "" {
					witnessedBy = fmt.Sprintf("witness %s holds checkpoints of writer %s up to seq %d", view.Name, w, ww.Streams[tenant].Seq)
				}
			}
		}
	}
	var lookupErr error
	if opts.TrustedKeys == nil {
		// A writer that started while we read registered its key first.
		v.Lookup = func(w string) (ed25519.PublicKey, bool) {
			k, err := rdb.HGet(ctx, WritersKey, w).Result()
			if err != nil && !errors.Is(err, redis.Nil) {
				lookupErr = err
			}
			pk, perr := ParsePublicKey(k)
			return pk, err == nil && perr == nil
		}
	}
	start := "-"
	if opts.Archive != "" {
		last, known, err := archiveScan(opts.Archive, tenant, func(id string, raw []byte) error {
			v.Add(id, raw)
			return nil
		}, v.ArchiveProblem)
		if err != nil {
			return nil, err
		}
		v.ArchiveSegments(known)
		if last != "" {
			start = "(" + last // archived but not yet trimmed: read once
		}
	}
	if exists == 0 {
		var why []string
		if witnessedBy != "" {
			why = append(why, witnessedBy)
		}
		if len(hv) > 0 {
			why = append(why, fmt.Sprintf("%s names %d writers", HeadsKey(tenant), len(hv)))
		}
		listed, err := rdb.SIsMember(ctx, TenantsKey, tenant).Result()
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", TenantsKey, err)
		}
		if listed {
			why = append(why, "the tenant registry "+TenantsKey+" lists it")
		}
		if len(why) > 0 {
			v.StreamMissing(strings.Join(why, "; "))
		}
		return v.Finish(), nil
	}
	if len(opts.Witnessed) > 0 {
		// Unknown (an ACL without XINFO) only makes a cut tail and a
		// restored snapshot look alike; both are reported.
		if info, err := rdb.XInfoStream(ctx, key).Result(); err == nil {
			v.DeletionMark(info.MaxDeletedEntryID)
		}
	}
	page := opts.PageSize
	if page <= 0 {
		page = 1000
	}
	err = ScanStream(ctx, rdb, key, start, page, func(m redis.XMessage) error {
		raw, _ := m.Values[FieldRecord].(string)
		v.Add(m.ID, []byte(raw))
		return nil
	})
	if err != nil {
		return nil, err
	}
	if lookupErr != nil {
		return nil, fmt.Errorf("read audit writers: %w", lookupErr)
	}
	// A writer that started after the heads were read has a head now.
	if miss := v.MissingHeads(); len(miss) > 0 {
		vals, err := rdb.HMGet(ctx, HeadsKey(tenant), miss...).Result()
		if err != nil {
			return nil, fmt.Errorf("read audit chain heads: %w", err)
		}
		for i, val := range vals {
			if val != nil {
				v.LateHead(miss[i])
			}
		}
	}
	return v.Finish(), nil
}

// ScanStream calls fn for every entry of key from start ("-" for all, or
// an id, inclusive) in pages.
func ScanStream(ctx context.Context, rdb redis.UniversalClient, key, start string, page int64, fn func(redis.XMessage) error) error {
	for {
		msgs, err := rdb.XRangeN(ctx, key, start, "+", page).Result()
		if err != nil {
			return fmt.Errorf("read %s: %w", key, err)
		}
		for _, m := range msgs {
			if err := fn(m); err != nil {
				return err
			}
		}
		if int64(len(msgs)) < page {
			return nil
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
}

// ListTenants finds the tenants that have an audit stream (SCAN, on every
// primary in Cluster).
func ListTenants(ctx context.Context, rdb redis.UniversalClient) ([]string, error) {
	found := map[string]bool{}
	err := ScanKeys(ctx, rdb, "passport:{t:*}:audit", "stream", func(k string) {
		if t, ok := TenantFromStreamKey(k); ok {
			found[t] = true
		}
	})
	if err != nil {
		return nil, fmt.Errorf("list audit tenants: %w", err)
	}
	out := make([]string, 0, len(found))
	for t := range found {
		out = append(out, t)
	}
	sort.Strings(out)
	return out, nil
}

// ScanKeys calls fn for each key matching pattern of type typ ("" for
// any): SCAN on a single node, on every primary of a Cluster; fn is never
// called concurrently.
func ScanKeys(ctx context.Context, rdb redis.UniversalClient, pattern, typ string, fn func(string)) error {
	scan := func(ctx context.Context, c *redis.Client) error {
		it := c.ScanType(ctx, 0, pattern, 500, typ).Iterator()
		for it.Next(ctx) {
			fn(it.Val())
		}
		return it.Err()
	}
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		var mu = make(chan struct{}, 1)
		return c.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
			mu <- struct{}{}
			defer func() { <-mu }()
			return scan(ctx, n)
		})
	case *redis.Client:
		return scan(ctx, c)
	}
	return errors.New("unsupported redis client")
}

// ParseTrustedKeys reads a trusted-keys file: one "<writer-id> <base64
// Ed25519 public key>" per line; blank lines and lines starting with #
// are ignored.
func ParseTrustedKeys(r io.Reader) (map[string]ed25519.PublicKey, error) {
	keys := map[string]ed25519.PublicKey{}
	sc := bufio.NewScanner(r)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, fmt.Errorf("trusted keys line %d: want \"<writer-id> <base64 public key>\"", n)
		}
		k, err := ParsePublicKey(f[1])
		if err != nil {
			return nil, fmt.Errorf("trusted keys line %d: %w", n, err)
		}
		keys[f[0]] = k
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read trusted keys: %w", err)
	}
	return keys, nil
}
