package audit

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// ArchiveConfig is the `audit.archive` section: where sealed segments of
// the streams go, and how much Redis keeps. Archiving is off unless Dir
// is set.
type ArchiveConfig struct {
	// Dir holds the segment files, DIR/<tenant>/<first>_<last>.jsonl.zst.
	// One directory per deployment: every process that archives a stream
	// must see the same one (the archiver refuses a directory that lacks
	// a segment Redis says was archived). Default "": off.
	Dir string `yaml:"dir"`
	// Window is how much recent history stays in Redis: entries older
	// than this are archived (up to a signed checkpoint) and trimmed.
	// Default 1h when MaxBytes is not set either.
	Window time.Duration `yaml:"window"`
	// MaxBytes also archives the oldest entries while a stream takes more
	// than this many bytes of Redis memory (MEMORY USAGE). Default 0: no
	// byte bound.
	MaxBytes int64 `yaml:"max_bytes"`
	// Interval is how often the archiver looks at the streams. Default 1m.
	Interval time.Duration `yaml:"interval"`
	// SegmentRecords caps the entries of one segment file. Default 100000.
	SegmentRecords int `yaml:"segment_records"`

	// TrustedKeys, when set, are the only keys a segment's checkpoint
	// may verify with (else the writers hash). Not from YAML.
	TrustedKeys map[string]ed25519.PublicKey `yaml:"-"`
	// Tenants limits the archiver to these tenants. Default: every tenant
	// with an audit stream. Not from YAML.
	Tenants []string `yaml:"-"`
}

// Enabled reports whether archiving is configured: the other settings
// are ignored without Dir.
func (c ArchiveConfig) Enabled() bool { return c.Dir != "" }

// Validate reports every problem of c.
func (c ArchiveConfig) Validate() error {
	var errs []error
	if c.Window < 0 || c.Interval < 0 || c.MaxBytes < 0 || c.SegmentRecords < 0 {
		errs = append(errs, errors.New("audit.archive: window, interval, max_bytes and segment_records must not be negative"))
	}
	if c.Dir != "" && c.SegmentRecords != 0 && c.SegmentRecords < 100 {
		errs = append(errs, errors.New("audit.archive.segment_records: at least 100 (a segment ends at a checkpoint)"))
	}
	return errors.Join(errs...)
}

func (c *ArchiveConfig) defaults() {
	if c.Window == 0 && c.MaxBytes == 0 {
		c.Window = time.Hour
	}
	if c.Interval == 0 {
		c.Interval = time.Minute
	}
	if c.SegmentRecords == 0 {
		c.SegmentRecords = 100_000
	}
}

// ArchiveLockKey is held by the process archiving tenant's stream, in the
// stream's hash slot: two archivers never write one stream's segments.
func ArchiveLockKey(tenant string) string { return StreamKey(tenant) + ":archive-lock" }

// ArchiveStateKey records the last segment trimmed from tenant's stream
// (fields last, sha256, file), so that an archiver given a directory
// without that segment refuses to start a second, partial archive.
func ArchiveStateKey(tenant string) string { return StreamKey(tenant) + ":archived" }

// archiveLockTTL bounds how long a crashed archiver holds a stream; the
// lock is renewed before each step of a pass.
const archiveLockTTL = 2 * time.Minute

// Archiver moves sealed segments of the audit streams out of Redis into
// segment files, and trims each stream only after its segment is on disk
// (fsynced, renamed, the directory fsynced) and read back and verified:
// every line against what Redis holds, every writer's chain continuous
// with the previous segment, the closing checkpoint's signature. The trim
// writes a signed retention checkpoint (through the writer st) that names
// the segment and anchors every chain, so Redis alone still verifies and
// a reader of the archive finds a segment that is gone.
//
// NewArchiver starts nothing; Run archives every Interval until ctx ends.
// An Archiver is used by one goroutine at a time.
type Archiver struct {
	rdb   redis.UniversalClient
	st    *Stream
	cfg   ArchiveConfig
	log   *slog.Logger
	m     *archiveMetrics
	token string
	tails map[string]*segTail // the last segment of each tenant, as read
	// hook, set by tests, is called at each step; an error aborts there.
	hook func(step, tenant string) error
}

// segTail is a segment as the archiver knows it: its reference, where
// every writer's chain ends after it, and its file name.
type segTail struct {
	ref  SegmentRef
	ends map[string]Anchor
	name string
}

// NewArchiver returns an archiver of the streams st writes to (its
// retention checkpoints are written by st). reg may be nil.
func NewArchiver(rdb redis.UniversalClient, st *Stream, cfg ArchiveConfig, logger *slog.Logger, reg prometheus.Registerer) (*Archiver, error) {
	if rdb == nil || st == nil || logger == nil {
		return nil, errors.New("new audit archiver: redis, writer and logger are required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Dir == "" {
		return nil, errors.New("new audit archiver: audit.archive.dir is not set")
	}
	cfg.defaults()
	return &Archiver{
		rdb: rdb, st: st, cfg: cfg,
		log:   logger.With("component", "audit-archive"),
		m:     newArchiveMetrics(reg),
		token: rand.Text(),
		tails: map[string]*segTail{},
	}, nil
}

// Run archives now and then every Interval until ctx ends. A failed pass
// is logged and counted, and tried again at the next tick: it has left
// Redis as it was.
func (a *Archiver) Run(ctx context.Context) error {
	t := time.NewTicker(a.cfg.Interval)
	defer t.Stop()
	for {
		if err := a.Archive(ctx); err != nil && ctx.Err() == nil {
			a.log.Error("audit archive failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Archive runs one pass over every tenant: it completes a segment an
// earlier pass left untrimmed, then archives and trims every segment
// that is out of the window.
func (a *Archiver) Archive(ctx context.Context) error {
	tenants := a.cfg.Tenants
	if len(tenants) == 0 {
		var err error
		if tenants, err = ListTenants(ctx, a.rdb); err != nil {
			a.m.failures.WithLabelValues("redis").Inc()
			return err
		}
	}
	var errs []error
	for _, t := range tenants {
		if err := validTenant(t); err != nil {
			continue // not a directory name we make
		}
		if err := a.archiveTenant(ctx, t); err != nil {
			errs = append(errs, fmt.Errorf("archive %s: %w", t, err))
		}
	}
	if len(errs) == 0 {
		a.m.lastSuccess.SetToCurrentTime()
	}
	return errors.Join(errs...)
}

// archiveError is a failure with its metric reason.
type archiveError struct {
	reason string
	err    error
}

func (e *archiveError) Error() string { return e.err.Error() }
func (e *archiveError) Unwrap() error { return e.err }

func fail(reason string, format string, args ...any) error {
	return &archiveError{reason: reason, err: fmt.Errorf(format, args...)}
}

var unlockScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`)

var renewScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0`)

// renew keeps the lock for another TTL; losing it (a pass slower than
// the TTL while another process took over) stops the pass.
func (a *Archiver) renew(ctx context.Context, tenant string) error {
	n, err := renewScript.Run(ctx, a.rdb, []string{ArchiveLockKey(tenant)}, a.token, archiveLockTTL.Milliseconds()).Int()
	if err != nil {
		return fail("redis", "renew archive lock: %w", err)
	}
	if n == 0 {
		return fail("lock", "archive lock of %s lost", tenant)
	}
	return nil
}

func (a *Archiver) step(step, tenant string) error {
	if a.hook == nil {
		return nil
	}
	if err := a.hook(step, tenant); err != nil {
		return fail("injected", "%s: %w", step, err)
	}
	return nil
}

func (a *Archiver) archiveTenant(ctx context.Context, tenant string) (err error) {
	defer func() {
		if err != nil {
			reason := "other"
			var ae *archiveError
			if errors.As(err, &ae) {
				reason = ae.reason
			}
			a.m.failures.WithLabelValues(reason).Inc()
			delete(a.tails, tenant) // read the directory again next time
		}
	}()
	ok, err := a.rdb.SetNX(ctx, ArchiveLockKey(tenant), a.token, archiveLockTTL).Result()
	if err != nil {
		return fail("redis", "take archive lock: %w", err)
	}
	if !ok {
		a.log.Debug("audit archive: another process archives this stream", "tenant", tenant)
		return nil
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = unlockScript.Run(uctx, a.rdb, []string{ArchiveLockKey(tenant)}, a.token).Err()
	}()
	dir := TenantArchiveDir(a.cfg.Dir, tenant)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fail("write", "%w", err)
	}
	removeTemps(dir)
	tail, err := a.tail(tenant, dir)
	if err != nil {
		return err
	}
	if err := a.resume(ctx, tenant, dir, tail); err != nil {
		return err
	}
	// A pass archives no further than the stream's end when it starts,
	// so that it ends however fast writers append.
	last, err := a.rdb.XRevRangeN(ctx, StreamKey(tenant), "+", "-", 1).Result()
	if err != nil {
		return fail("redis", "read %s: %w", StreamKey(tenant), err)
	}
	if len(last) == 0 {
		return nil
	}
	for {
		if err := a.renew(ctx, tenant); err != nil {
			return err
		}
		seg, err := a.writeSegment(ctx, tenant, dir, tail, last[0].ID)
		if err != nil || seg == nil {
			return err
		}
		if err := a.verifySegment(ctx, tenant, dir, seg, tail); err != nil {
			return err
		}
		if err := a.trim(ctx, tenant, seg); err != nil {
			return err
		}
		tail = seg
		a.tails[tenant] = seg
	}
}

// removeTemps deletes temporary files a crashed pass left (never a
// segment: those are renamed into place whole).
func removeTemps(dir string) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if n := e.Name(); strings.HasPrefix(n, ".segment-") && strings.HasSuffix(n, ".tmp") {
			_ = os.Remove(filepath.Join(dir, n))
		}
	}
}

// tail is the tenant's last segment on disk, nil if none.
func (a *Archiver) tail(tenant, dir string) (*segTail, error) {
	segs, _, err := listSegments(dir)
	if err != nil {
		return nil, fail("read", "%w", err)
	}
	if len(segs) == 0 {
		return nil, nil
	}
	last := segs[len(segs)-1]
	if t := a.tails[tenant]; t != nil && t.name == last.name {
		return t, nil
	}
	seg, err := readSegment(filepath.Join(dir, last.name), nil)
	if err != nil {
		return nil, fail("read", "last segment %s: %v: the archive must be repaired before archiving goes on (audit verify --archive)", last.name, err)
	}
	t := &segTail{ref: SegmentRef{First: seg.end.First, Last: seg.end.Last, SHA256: seg.sha256, Records: seg.end.Records}, ends: seg.end.Ends, name: last.name}
	if t.ends == nil {
		t.ends = map[string]Anchor{}
	}
	a.tails[tenant] = t
	return t, nil
}

// resume finds where the last pass stopped: it checks that the directory
// holds the segment Redis says was archived last, and trims a segment
// that was written but not yet trimmed, after verifying it again.
func (a *Archiver) resume(ctx context.Context, tenant, dir string, tail *segTail) error {
	state, err := a.rdb.HGetAll(ctx, ArchiveStateKey(tenant)).Result()
	if err != nil {
		return fail("redis", "read archive state: %w", err)
	}
	if last := state["last"]; last != "" {
		if tail == nil || IDLess(tail.ref.Last, last) {
			return fail("state", "Redis says segment up to %s was archived, but %s does not hold it: is another archiver writing to another directory?", last, dir)
		}
		if last == tail.ref.Last {
			if state["sha256"] != tail.ref.SHA256 {
				return fail("state", "segment %s differs from the one archived (SHA-256 %s, Redis says %s)", tail.name, short(tail.ref.SHA256), short(state["sha256"]))
			}
			return nil
		}
	}
	if tail == nil {
		return nil
	}
	first, err := a.rdb.XRangeN(ctx, StreamKey(tenant), "-", "+", 1).Result()
	if err != nil {
		return fail("redis", "read %s: %w", StreamKey(tenant), err)
	}
	switch {
	case len(first) == 0 || IDLess(tail.ref.Last, first[0].ID):
		// Trimmed already; only the state was not written.
	case first[0].ID != tail.ref.First:
		// Trimming must remove exactly the segment: entries before it
		// (a restored snapshot?) or only part of it (trimmed by someone
		// else?) are for an operator to look into.
		return fail("state", "Redis's first entry is %s, segment %s starts at %s: not trimming", first[0].ID, tail.name, tail.ref.First)
	default:
		var prev *segTail
		if segs, _, err := listSegments(dir); err == nil && len(segs) > 1 {
			p := segs[len(segs)-2]
			seg, err := readSegment(filepath.Join(dir, p.name), nil)
			if err != nil {
				return fail("read", "segment %s: %v", p.name, err)
			}
			prev = &segTail{ref: SegmentRef{First: seg.end.First, Last: seg.end.Last, SHA256: seg.sha256}, ends: seg.end.Ends, name: p.name}
		}
		if err := a.verifySegment(ctx, tenant, dir, tail, prev); err != nil {
			return err
		}
		return a.trim(ctx, tenant, tail)
	}
	return a.setState(ctx, tenant, tail)
}

func (a *Archiver) setState(ctx context.Context, tenant string, seg *segTail) error {
	err := a.rdb.HSet(ctx, ArchiveStateKey(tenant), "last", seg.ref.Last, "sha256", seg.ref.SHA256, "file", seg.name).Err()
	if err != nil {
		return fail("redis", "write archive state: %w", err)
	}
	return nil
}

// lightRec is what the archiver reads of a record: its place in its
// writer's chain, and a checkpoint's details.
type lightRec struct {
	Kind    Kind            `json:"kind"`
	Writer  string          `json:"writer"`
	Seq     uint64          `json:"seq"`
	Prev    string          `json:"prev"`
	Hash    string          `json:"hash"`
	Details json.RawMessage `json:"details"`
}

// chainWalk follows every writer's chain across segments: a record must
// continue its writer's chain where the last one left it (a writer not
// seen yet may start anywhere: verify judges its start).
type chainWalk struct {
	ends map[string]Anchor
}

func (c *chainWalk) add(id string, raw []byte) (*lightRec, *Checkpoint, error) {
	var r lightRec
	if err := json.Unmarshal(raw, &r); err != nil || r.Writer == "" || r.Seq == 0 {
		return nil, nil, fail("chain", "entry %s is not a record (audit verify names it): not archived", id)
	}
	if e, ok := c.ends[r.Writer]; ok && (r.Seq != e.Seq+1 || r.Prev != e.Hash) {
		return nil, nil, fail("chain", "entry %s: writer %s seq %d does not continue its chain at seq %d (audit verify names the break): not archived", id, r.Writer, r.Seq, e.Seq)
	}
	c.ends[r.Writer] = Anchor{Seq: r.Seq, Hash: r.Hash}
	if r.Kind != KindCheckpoint {
		return &r, nil, nil
	}
	var cp Checkpoint
	if err := json.Unmarshal(r.Details, &cp); err != nil {
		return nil, nil, fail("chain", "entry %s: checkpoint details: %v", id, err)
	}
	if cp.Type == CheckpointRetention {
		// An earlier trim's anchors: a writer whose records before it
		// are gone resumes after them.
		for w, an := range cp.Anchors {
			if e, ok := c.ends[w]; !ok || e.Seq < an.Seq {
				c.ends[w] = an
			}
		}
	}
	return &r, &cp, nil
}

// sealing reports whether a checkpoint may end a segment.
func sealing(cp *Checkpoint) bool {
	return cp != nil && (cp.Type == CheckpointPeriodic || cp.Type == CheckpointShutdown)
}

// writeSegment writes the next segment of tenant's stream, if one is out
// of the window: from just past tail to the last sealing checkpoint out
// of the window and not past end (at most SegmentRecords entries). It
// returns nil when there is none.
func (a *Archiver) writeSegment(ctx context.Context, tenant, dir string, tail *segTail, end string) (seg *segTail, err error) {
	key := StreamKey(tenant)
	limit := ""
	if a.cfg.Window > 0 {
		now, err := streamTime(ctx, a.rdb, key)
		if err != nil {
			return nil, fail("redis", "redis time: %w", err)
		}
		limit = strconv.FormatInt(now.Add(-a.cfg.Window).UnixMilli(), 10) + "-0"
	}
	var excess int64
	if a.cfg.MaxBytes > 0 {
		mem, err := a.rdb.MemoryUsage(ctx, key).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, fail("redis", "memory usage: %w", err)
		}
		n, err := a.rdb.XLen(ctx, key).Result()
		if err != nil {
			return nil, fail("redis", "xlen: %w", err)
		}
		if mem > a.cfg.MaxBytes && n > 0 {
			excess = (n*(mem-a.cfg.MaxBytes) + mem - 1) / mem
		}
	}
	if limit == "" && excess == 0 {
		return nil, nil
	}
	walk := &chainWalk{ends: map[string]Anchor{}}
	start := "-"
	var prevRef *SegmentRef
	if tail != nil {
		maps.Copy(walk.ends, tail.ends)
		start = "(" + tail.ref.Last
		prevRef = &SegmentRef{First: tail.ref.First, Last: tail.ref.Last, SHA256: tail.ref.SHA256, Records: tail.ref.Records}
	}

	f, err := os.CreateTemp(dir, ".segment-*.tmp")
	if err != nil {
		return nil, fail("write", "%w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil || seg == nil {
			f.Close()
			_ = os.Remove(tmp)
		}
	}()
	h := sha256.New()
	counted := &countWriter{w: io.MultiWriter(f, h)}
	enc, err := zstd.NewWriter(counted, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return nil, fail("write", "zstd: %w", err)
	}
	defer enc.Close()
	hdr, _ := json.Marshal(segHeader{Version: segmentVersion, Stream: key, Prev: prevRef})
	if _, err := enc.Write(append(hdr, '\n')); err != nil {
		return nil, fail("write", "%w", err)
	}

	var (
		pending  []byte // lines since the last sealing checkpoint
		npending int
		count    int
		first    string
		firstPen string
		cut      string
		cutEnds  map[string]Anchor
		idx      int64
		stop     = errors.New("stop")
	)
	err = ScanStream(ctx, a.rdb, key, start, 1000, func(m redis.XMessage) error {
		if IDLess(end, m.ID) || !(limit != "" && IDLess(m.ID, limit)) && idx >= excess {
			return stop
		}
		idx++
		raw, ok := m.Values[FieldRecord].(string)
		if !ok {
			return fail("chain", "entry %s has no record field: not archived", m.ID)
		}
		_, cp, err := walk.add(m.ID, []byte(raw))
		if err != nil {
			return err
		}
		if npending == 0 {
			firstPen = m.ID
		}
		pending = segmentLine(pending, m.ID, []byte(raw))
		npending++
		if sealing(cp) {
			if _, err := enc.Write(pending); err != nil {
				return fail("write", "%w", err)
			}
			if first == "" {
				first = firstPen
			}
			count += npending
			pending, npending = pending[:0], 0
			cut, cutEnds = m.ID, maps.Clone(walk.ends)
			if count >= a.cfg.SegmentRecords {
				return stop
			}
		} else if count+npending > a.cfg.SegmentRecords {
			return stop
		}
		return nil
	})
	if err != nil && !errors.Is(err, stop) {
		var ae *archiveError
		if !errors.As(err, &ae) {
			err = fail("redis", "%w", err)
		}
		return nil, err
	}
	if count == 0 {
		if npending > a.cfg.SegmentRecords {
			a.log.Warn("audit archive: no sealing checkpoint within segment_records entries; nothing archived", "tenant", tenant, "from", start)
		}
		return nil, nil
	}
	endLine, _ := json.Marshal(struct {
		End segEnd `json:"end"`
	}{segEnd{First: first, Last: cut, Records: count, Checkpoint: cut, Ends: cutEnds}})
	if _, err := enc.Write(append(endLine, '\n')); err != nil {
		return nil, fail("write", "%w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fail("write", "zstd: %w", err)
	}
	if err := a.step("write", tenant); err != nil {
		return nil, err
	}
	if err := f.Sync(); err != nil {
		return nil, fail("write", "fsync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return nil, fail("write", "%w", err)
	}
	name := first + "_" + cut + SegmentSuffix
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return nil, fail("write", "%w", err)
	}
	if err := syncDir(dir); err != nil {
		return nil, fail("write", "%w", err)
	}
	a.m.bytes.Add(float64(counted.n))
	seg = &segTail{ref: SegmentRef{First: first, Last: cut, SHA256: hex.EncodeToString(h.Sum(nil)), Records: count}, ends: cutEnds, name: name}
	a.log.Info("audit segment written", "tenant", tenant, "file", name, "records", count, "bytes", counted.n)
	if err := a.step("renamed", tenant); err != nil {
		return nil, err
	}
	return seg, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// verifySegment reads seg back from disk and checks it before anything is
// trimmed: its hash, that it follows prev, every line against the entry
// Redis holds under its id (and no entry of that range left out), every
// writer's chain continuous from prev, and the closing checkpoint's
// signature with the writer's key.
func (a *Archiver) verifySegment(ctx context.Context, tenant, dir string, seg, prev *segTail) error {
	key := StreamKey(tenant)
	walk := &chainWalk{ends: map[string]Anchor{}}
	if prev != nil {
		maps.Copy(walk.ends, prev.ends)
	}
	var (
		page    []redis.XMessage
		next    = seg.ref.First
		last    *lightRec
		lastCP  *Checkpoint
		lastID  string
		n       int
		lastRaw []byte
	)
	got, err := readSegment(filepath.Join(dir, seg.name), func(id string, raw []byte) error {
		if len(page) == 0 {
			msgs, err := a.rdb.XRangeN(ctx, key, next, seg.ref.Last, 1000).Result()
			if err != nil {
				return fail("redis", "read %s: %w", key, err)
			}
			if len(msgs) == 0 {
				return fail("verify", "entry %s of the segment is not in Redis", id)
			}
			page, next = msgs, "("+msgs[len(msgs)-1].ID
		}
		m := page[0]
		page = page[1:]
		stored, _ := m.Values[FieldRecord].(string)
		if m.ID != id || stored != string(raw) {
			return fail("verify", "segment line for %s differs from Redis's entry %s", id, m.ID)
		}
		r, cp, err := walk.add(id, raw)
		if err != nil {
			return err
		}
		last, lastCP, lastID, lastRaw = r, cp, id, raw
		n++
		return nil
	})
	if err != nil {
		var ae *archiveError
		if errors.As(err, &ae) {
			return err
		}
		return fail("verify", "read back %s: %w", seg.name, err)
	}
	if len(page) > 0 {
		return fail("verify", "Redis holds %s, which the segment lacks", page[0].ID)
	}
	if rest, err := a.rdb.XRangeN(ctx, key, next, seg.ref.Last, 1).Result(); err != nil {
		return fail("redis", "read %s: %w", key, err)
	} else if len(rest) > 0 {
		return fail("verify", "Redis holds %s, which the segment lacks", rest[0].ID)
	}
	switch {
	case got.sha256 != seg.ref.SHA256:
		return fail("verify", "%s: SHA-256 %s on disk, %s written", seg.name, short(got.sha256), short(seg.ref.SHA256))
	case (prev == nil) != (got.header.Prev == nil),
		prev != nil && (got.header.Prev.Last != prev.ref.Last || got.header.Prev.SHA256 != prev.ref.SHA256):
		return fail("verify", "%s does not follow the previous segment", seg.name)
	case got.header.Stream != key, got.end.First != seg.ref.First, got.end.Last != seg.ref.Last,
		got.end.Records != n, got.end.Checkpoint != lastID, lastID != seg.ref.Last:
		return fail("verify", "%s: header or end line does not describe its entries", seg.name)
	case !maps.Equal(got.end.Ends, walk.ends):
		return fail("verify", "%s: the chain ends in its end line are not where its records leave them", seg.name)
	case !sealing(lastCP):
		return fail("verify", "%s does not end with a periodic or shutdown checkpoint", seg.name)
	}
	rec, err := DecodeRecord(lastRaw)
	if err != nil {
		return fail("verify", "%s: closing checkpoint: %w", seg.name, err)
	}
	if sum, err := HashRaw(lastRaw); err != nil || sum != rec.Hash {
		return fail("verify", "%s: the closing checkpoint does not match its hash", seg.name)
	}
	switch {
	case lastCP.Writer != last.Writer, lastCP.Seq != last.Seq, lastCP.Head != last.Prev, lastCP.Stream != key:
		return fail("verify", "%s: the closing checkpoint does not describe its own record", seg.name)
	}
	pub, err := a.writerKey(ctx, last.Writer)
	if err != nil {
		return err
	}
	if err := lastCP.Verify(pub); err != nil {
		return fail("verify", "%s: closing checkpoint of %s: %w", seg.name, last.Writer, err)
	}
	if err := a.step("verified", tenant); err != nil {
		return err
	}
	return nil
}

func (a *Archiver) writerKey(ctx context.Context, w string) (ed25519.PublicKey, error) {
	if a.cfg.TrustedKeys != nil {
		if k, ok := a.cfg.TrustedKeys[w]; ok {
			return k, nil
		}
		return nil, fail("verify", "writer %s is not in the trusted keys", w)
	}
	s, err := a.rdb.HGet(ctx, WritersKey, w).Result()
	if err != nil {
		return nil, fail("verify", "key of writer %s: %w", w, err)
	}
	k, err := ParsePublicKey(s)
	if err != nil {
		return nil, fail("verify", "key of writer %s: %w", w, err)
	}
	return k, nil
}

// trim removes the segment's entries from Redis: first a signed retention
// checkpoint naming the segment and anchoring every chain where the
// segment leaves it, then XTRIM MINID just past the segment's last id.
func (a *Archiver) trim(ctx context.Context, tenant string, seg *segTail) error {
	if err := a.renew(ctx, tenant); err != nil {
		return err
	}
	key := StreamKey(tenant)
	minID := nextID(seg.ref.Last)
	ref := seg.ref
	r := a.st.submit(ctx, &item{rec: &Record{Tenant: tenant}, checkpoint: CheckpointRetention, anchors: maps.Clone(seg.ends), minID: minID, segment: &ref})
	if r.err != nil {
		return fail("trim", "write retention checkpoint: %w", r.err)
	}
	if err := a.step("checkpointed", tenant); err != nil {
		return err
	}
	n, err := a.rdb.XTrimMinID(ctx, key, minID).Result()
	if err != nil {
		return fail("trim", "xtrim %s: %w", key, err)
	}
	if err := a.step("trimmed", tenant); err != nil {
		return err
	}
	if err := a.setState(ctx, tenant, seg); err != nil {
		return err
	}
	a.m.segments.Inc()
	a.m.records.Add(float64(seg.ref.Records))
	a.log.Info("audit stream trimmed to its window", "stream", key, "segment", seg.name, "removed", n)
	return nil
}

// archiveMetrics are the archiver's collectors; reason is a fixed set
// (redis, lock, read, write, chain, verify, trim, state, injected, other).
type archiveMetrics struct {
	segments    prometheus.Counter
	records     prometheus.Counter
	bytes       prometheus.Counter
	failures    *prometheus.CounterVec
	lastSuccess prometheus.Gauge
}

func newArchiveMetrics(reg prometheus.Registerer) *archiveMetrics {
	m := &archiveMetrics{
		segments: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "passport_audit_archive_segments_total",
			Help: "Segments archived: written, fsynced, verified and trimmed from Redis.",
		}),
		records: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "passport_audit_archive_records_total",
			Help: "Stream entries moved from Redis into segment files.",
		}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "passport_audit_archive_bytes_total",
			Help: "Compressed bytes of the segment files written.",
		}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_audit_archive_failures_total",
			Help: "Archive passes of a stream that stopped, leaving Redis untrimmed, by reason.",
		}, []string{"reason"}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "passport_audit_archive_last_success_timestamp_seconds",
			Help: "Unix time of the last archive pass that completed for every stream.",
		}),
	}
	m.segments = register(reg, m.segments)
	m.records = register(reg, m.records)
	m.bytes = register(reg, m.bytes)
	m.failures = register(reg, m.failures)
	m.lastSuccess = register(reg, m.lastSuccess)
	return m
}
