package audit

// The archive's segment files: what the archiver writes and what verify,
// export and replay read before Redis. A segment is one tenant's entries
// from just past the previous segment to a signed checkpoint, as JSON
// lines compressed with zstd:
//
//	{"passport_audit_segment":1,"stream":"passport:{t:acme}:audit","prev":{"last":"<id>","sha256":"<hex>"}}
//	{"id":"<stream id>","record":<the stored record JSON, byte for byte>}
//	...
//	{"end":{"first":"<id>","last":"<id>","records":N,"checkpoint":"<id>","ends":{"<writer>":{"seq":N,"hash":"<hex>"}}}}
//
// It is named DIR/<tenant>/<first id>_<last id>.jsonl.zst. "prev" names the
// previous segment (its last id and the SHA-256 of its file), so the
// segments form a chain a reader walks from the first; the retention
// checkpoint written when Redis is trimmed names the segment too
// (Checkpoint.Segment), signed, so a segment deleted or replaced with
// its successor's header rewritten is still found.

import (
	"context"

	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/redis/go-redis/v9"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// Problem kinds of the archive.
const (
	// ProblemSegmentMissing: a segment the archive's chain or a signed
	// retention checkpoint names is not in the archive directory.
	ProblemSegmentMissing = "segment_missing"
	// ProblemSegmentCorrupt: a segment that does not decompress or parse,
	// is cut short, is not what its name or its successor says, or holds
	// entries out of order.
	ProblemSegmentCorrupt = "segment_corrupt"
)

// SegmentSuffix ends every segment file's name.
const SegmentSuffix = ".jsonl.zst"

// segmentVersion is the header's "passport_audit_segment".
const segmentVersion = 1

// maxSegmentLine bounds one line of a segment (a record is capped far
// below this by MaxJSON); a longer line is a corrupt segment.
const maxSegmentLine = 16 << 20

// SegmentRef names one segment: what the next segment's header and the
// retention checkpoint written when Redis was trimmed say about it.
type SegmentRef struct {
	First   string `json:"first,omitempty"`
	Last    string `json:"last"`
	SHA256  string `json:"sha256"`
	Records int    `json:"records,omitempty"`
}

type segHeader struct {
	Version int         `json:"passport_audit_segment"`
	Stream  string      `json:"stream"`
	Prev    *SegmentRef `json:"prev,omitempty"`
}

type segEnd struct {
	First      string            `json:"first"`
	Last       string            `json:"last"`
	Records    int               `json:"records"`
	Checkpoint string            `json:"checkpoint"`
	Ends       map[string]Anchor `json:"ends"`
}

type segLine struct {
	Version int             `json:"passport_audit_segment"`
	ID      string          `json:"id"`
	Record  json.RawMessage `json:"record"`
	Raw     []byte          `json:"raw"` // base64: a stored value that is not one line of JSON
	End     *segEnd         `json:"end"`
}

// segmentLine is the line of one entry: the stored JSON verbatim when it
// is one object on one line, else its bytes in base64, so that the line
// always gives back exactly the bytes the hash covers.
func segmentLine(dst []byte, id string, raw []byte) []byte {
	dst = append(dst, `{"id":"`...)
	dst = append(dst, id...)
	if verbatim(raw) {
		dst = append(dst, `","record":`...)
		dst = append(dst, raw...)
	} else {
		dst = append(dst, `","raw":"`...)
		dst = base64.StdEncoding.AppendEncode(dst, raw)
		dst = append(dst, '"')
	}
	return append(dst, "}\n"...)
}

func verbatim(raw []byte) bool {
	return len(raw) >= 2 && raw[0] == '{' && raw[len(raw)-1] == '}' &&
		bytes.IndexAny(raw, "\r\n") < 0 && json.Valid(raw)
}

// validID reports whether id is a stream id "<ms>-<seq>".
func validID(id string) bool {
	ms, seq, ok := strings.Cut(id, "-")
	if !ok {
		return false
	}
	_, e1 := strconv.ParseUint(ms, 10, 64)
	_, e2 := strconv.ParseUint(seq, 10, 64)
	return e1 == nil && e2 == nil
}

// nextID is the smallest stream id after id.
func nextID(id string) string {
	e := entryOf(id)
	if e[1] == ^uint64(0) {
		return strconv.FormatUint(e[0]+1, 10) + "-0"
	}
	return strconv.FormatUint(e[0], 10) + "-" + strconv.FormatUint(e[1]+1, 10)
}

// segFile is a segment file found in the archive by its name.
type segFile struct {
	name        string
	first, last string
}

// TenantArchiveDir is where tenant's segments are kept under dir.
func TenantArchiveDir(dir, tenant string) string { return filepath.Join(dir, tenant) }

// ArchiveTenants lists the tenants that have a directory in the archive.
func ArchiveTenants(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read audit archive: %w", err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && validTenant(e.Name()) == nil {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// WithArchiveTenants adds to tenants those the archive in dir holds (a
// tenant whose whole history is archived has no stream left), sorted.
func WithArchiveTenants(tenants []string, dir string) ([]string, error) {
	more, err := ArchiveTenants(dir)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, t := range tenants {
		seen[t] = true
	}
	for _, t := range more {
		if !seen[t] {
			tenants = append(tenants, t)
		}
	}
	sort.Strings(tenants)
	return tenants, nil
}

// listSegments returns the segment files of dir ordered by their first
// id, and the names of other files that are not the archiver's temporary
// files (they are not segments, and a reader reports them).
func listSegments(dir string) ([]segFile, []string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read audit archive %s: %w", dir, err)
	}
	var segs []segFile
	var other []string
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, ".") {
			continue // the archiver's temporary files
		}
		base, ok := strings.CutSuffix(n, SegmentSuffix)
		first, last, ok2 := strings.Cut(base, "_")
		if !ok || !ok2 || !validID(first) || !validID(last) || !e.Type().IsRegular() {
			other = append(other, n)
			continue
		}
		segs = append(segs, segFile{name: n, first: first, last: last})
	}
	sort.Slice(segs, func(i, j int) bool {
		if segs[i].first != segs[j].first {
			return IDLess(segs[i].first, segs[j].first)
		}
		return IDLess(segs[i].last, segs[j].last)
	})
	return segs, other, nil
}

// segment is a segment file read: its hash, header, end and, when asked,
// entries.
type segment struct {
	file   segFile
	sha256 string
	header segHeader
	end    *segEnd
}

// readSegment reads and decompresses path, hands each entry to fn (nil:
// none) and returns what it found. A segment that cannot be read whole is
// an error naming why; the entries before the damage were handed to fn.
func readSegment(path string, fn func(id string, raw []byte) error) (*segment, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(b)
	seg := &segment{sha256: hex.EncodeToString(sum[:])}
	dec, err := zstd.NewReader(bytes.NewReader(b), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(1<<30))
	if err != nil {
		return seg, fmt.Errorf("zstd: %w", err)
	}
	defer dec.Close()
	br := bufio.NewReaderSize(dec, 64<<10)
	n := 0
	var prev string
	for {
		line, err := readLine(br)
		if err == io.EOF {
			break
		}
		if err != nil {
			return seg, fmt.Errorf("line %d: %w", n+1, err)
		}
		n++
		if seg.end != nil {
			return seg, fmt.Errorf("line %d: data after the end line", n)
		}
		var l segLine
		if err := json.Unmarshal(line, &l); err != nil {
			return seg, fmt.Errorf("line %d: %v", n, err)
		}
		switch {
		case n == 1:
			if l.Version != segmentVersion {
				return seg, fmt.Errorf("line 1: not a segment header of version %d", segmentVersion)
			}
			if err := json.Unmarshal(line, &seg.header); err != nil {
				return seg, fmt.Errorf("line 1: %v", err)
			}
		case l.End != nil:
			seg.end = l.End
		default:
			if !validID(l.ID) {
				return seg, fmt.Errorf("line %d: entry id %q", n, l.ID)
			}
			if prev != "" && !IDLess(prev, l.ID) {
				return seg, fmt.Errorf("line %d: entry %s after %s (out of order)", n, l.ID, prev)
			}
			prev = l.ID
			raw := []byte(l.Record)
			if l.Record == nil {
				raw = l.Raw
			}
			if fn != nil {
				if err := fn(l.ID, raw); err != nil {
					return seg, err
				}
			}
		}
	}
	if seg.end == nil {
		return seg, errors.New("no end line (cut short)")
	}
	return seg, nil
}

// readLine reads one line without its '\n'; a last line without one is
// a cut file.
func readLine(br *bufio.Reader) ([]byte, error) {
	var out []byte
	for {
		frag, err := br.ReadSlice('\n')
		out = append(out, frag...)
		if len(out) > maxSegmentLine {
			return nil, errors.New("line too long")
		}
		switch {
		case err == nil:
			return out[:len(out)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err == io.EOF && len(out) == 0:
			return nil, io.EOF
		case err == io.EOF:
			return nil, errors.New("last line has no end (cut short)")
		default:
			return nil, err
		}
	}
}

// archiveScan walks one tenant's segments in order, handing every entry
// to fn and every problem of the archive itself to problem. It returns
// the last id of the archive ("" if it has none) and what the segments
// are (last id → SHA-256 of the file), for the checkpoints that name them.
func archiveScan(dir, tenant string, fn func(id string, raw []byte) error, problem func(Problem)) (string, map[string]string, error) {
	stream := StreamKey(tenant)
	segs, other, err := listSegments(TenantArchiveDir(dir, tenant))
	if err != nil {
		return "", nil, err
	}
	for _, n := range other {
		problem(Problem{Kind: ProblemSegmentCorrupt, Detail: fmt.Sprintf("archive file %s is not a segment (not <first-id>_<last-id>%s)", n, SegmentSuffix)})
	}
	known := map[string]string{}
	var last string      // last id handed to fn
	var prev *SegmentRef // the previous segment as read
	for i, sf := range segs {
		path := filepath.Join(TenantArchiveDir(dir, tenant), sf.name)
		at := "segment " + sf.name
		var first, lastIn string
		count := 0
		seg, err := readSegment(path, func(id string, raw []byte) error {
			if first == "" {
				first = id
			}
			lastIn = id
			count++
			if last != "" && !IDLess(last, id) {
				// Overlaps what came before: read once, reported.
				return nil
			}
			last = id
			if err := fn(id, raw); err != nil {
				return fnError{err}
			}
			return nil
		})
		if seg == nil {
			return last, known, fmt.Errorf("read audit archive: %s: %w", path, err)
		}
		if err != nil {
			var fe fnError
			if errors.As(err, &fe) {
				return last, known, fe.err
			}
			problem(Problem{ID: sf.first, Kind: ProblemSegmentCorrupt, Detail: fmt.Sprintf("%s: %v", at, err)})
		}
		known[sf.last] = seg.sha256
		if err == nil {
			switch {
			case seg.header.Stream != stream:
				problem(Problem{ID: sf.first, Kind: ProblemSegmentCorrupt, Detail: fmt.Sprintf("%s holds stream %q", at, seg.header.Stream)})
			case seg.end.First != sf.first || seg.end.Last != sf.last || first != sf.first || lastIn != sf.last || count != seg.end.Records:
				problem(Problem{ID: sf.first, Kind: ProblemSegmentCorrupt, Detail: fmt.Sprintf("%s holds entries %s..%s (%d; its end line says %s..%s, %d): renamed or changed",
					at, first, lastIn, count, seg.end.First, seg.end.Last, seg.end.Records)})
			}
		}
		hp := seg.header.Prev
		switch {
		case i == 0 && hp != nil:
			problem(Problem{ID: sf.first, Kind: ProblemSegmentMissing, Detail: fmt.Sprintf("%s follows a segment ending at %s (SHA-256 %s) that is not in the archive: the archive's first segments are gone", at, hp.Last, short(hp.SHA256))})
		case i > 0 && hp == nil:
			problem(Problem{ID: sf.first, Kind: ProblemSegmentCorrupt, Detail: fmt.Sprintf("%s says it is the first segment, after %s", at, prev.Last)})
		case i > 0 && hp.Last != prev.Last:
			problem(Problem{ID: sf.first, Kind: ProblemSegmentMissing, Detail: fmt.Sprintf("%s follows a segment ending at %s, but the archive's previous segment ends at %s: a segment is missing or out of place", at, hp.Last, prev.Last)})
		case i > 0 && hp.SHA256 != prev.SHA256:
			problem(Problem{ID: sf.first, Kind: ProblemSegmentCorrupt, Detail: fmt.Sprintf("the segment ending at %s has SHA-256 %s, but %s says %s: it was changed", prev.Last, short(prev.SHA256), at, short(hp.SHA256))})
		}
		prev = &SegmentRef{Last: sf.last, SHA256: seg.sha256}
	}
	return last, known, nil
}

func short(h string) string {
	if len(h) > 16 {
		return h[:16] + "…"
	}
	return h
}

// fnError carries an error of the caller's function through readSegment.
type fnError struct{ err error }

func (e fnError) Error() string { return e.err.Error() }

// HistoryOptions tune ScanHistory.
type HistoryOptions struct {
	// Archive is the archive directory; "" reads Redis alone.
	Archive string
	// Start skips entries before this id ("" or "-": from the first).
	Start string
	// Before, when set, gets the archived entries that Start skips (a
	// reader keeps the passport records that later decisions reference:
	// Redis no longer has them to look up).
	Before func(redis.XMessage)
	// PageSize is the XRANGE page. Default 1000.
	PageSize int64
	// Problem receives what is wrong with the archive itself (a missing,
	// changed or cut segment). Nil: ScanHistory returns the first one as
	// an error once everything readable was handed to fn.
	Problem func(Problem)
}

// ErrArchive wraps the first problem of the archive when ScanHistory has
// no Problem function.
var ErrArchive = errors.New("audit archive does not verify")

// NotePassports is a Before function that keeps the passport records of
// the entries skipped in ir.
func NotePassports(ir *InputResolver) func(redis.XMessage) {
	return func(m redis.XMessage) {
		raw, _ := m.Values[FieldRecord].(string)
		if !strings.Contains(raw, `"kind":"passport"`) {
			return
		}
		if rec, _, err := ParseMessage(m); err == nil {
			ir.Note(m.ID, rec)
		}
	}
}

// ScanHistory hands fn every entry of tenant's audit history in order,
// each once: the archive's segments, then the Redis stream from just past
// the archive's last id (entries archived but not trimmed yet are in both
// and read from the archive). An archived entry comes as a message with
// the record in FieldRecord, as from Redis.
func ScanHistory(ctx context.Context, rdb redis.UniversalClient, tenant string, opts HistoryOptions, fn func(redis.XMessage) error) error {
	start := opts.Start
	if start == "" {
		start = "-"
	}
	var first *Problem
	problem := opts.Problem
	if problem == nil {
		problem = func(p Problem) {
			if first == nil {
				p.Stream = StreamKey(tenant)
				first = &p
			}
		}
	}
	var known map[string]string
	// A signed retention checkpoint names the segment it trimmed: that
	// segment must be in the archive (verify checks the signature).
	named := func(id string, raw []byte) {
		if known == nil || !bytes.Contains(raw, []byte(`"segment"`)) {
			return
		}
		rec, err := DecodeRecord(raw)
		if err != nil || rec.Kind != KindCheckpoint {
			return
		}
		var cp Checkpoint
		if json.Unmarshal(rec.Details, &cp) != nil || cp.Type != CheckpointRetention || cp.Segment == nil {
			return
		}
		if sha, ok := known[cp.Segment.Last]; !ok || sha != cp.Segment.SHA256 {
			problem(Problem{ID: id, Kind: ProblemSegmentMissing, Detail: fmt.Sprintf("the retention checkpoint names a segment ending at %s (SHA-256 %s) that the archive does not hold", cp.Segment.Last, short(cp.Segment.SHA256))})
		}
	}
	var checks []func()
	if opts.Archive != "" {
		last, segs, err := archiveScan(opts.Archive, tenant, func(id string, raw []byte) error {
			if bytes.Contains(raw, []byte(`"segment"`)) {
				r := raw
				checks = append(checks, func() { named(id, r) })
			}
			m := redis.XMessage{ID: id, Values: map[string]any{FieldRecord: string(raw)}}
			if start != "-" && IDLess(id, start) {
				if opts.Before != nil {
					opts.Before(m)
				}
				return nil
			}
			return fn(m)
		}, problem)
		if err != nil {
			return err
		}
		known = segs
		for _, c := range checks {
			c()
		}
		if last != "" && (start == "-" || !IDLess(last, start)) {
			start = "(" + last
		}
	}
	page := opts.PageSize
	if page <= 0 {
		page = 1000
	}
	err := ScanStream(ctx, rdb, StreamKey(tenant), start, page, func(m redis.XMessage) error {
		if raw, ok := m.Values[FieldRecord].(string); ok {
			named(m.ID, []byte(raw))
		}
		return fn(m)
	})
	if err != nil {
		return err
	}
	if first != nil {
		return fmt.Errorf("%w: %s", ErrArchive, first)
	}
	return nil
}
