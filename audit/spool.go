package audit

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Errors of the outcome spool.
var (
	// ErrSpoolFull means the spool holds SpoolMaxBytes or more: records of
	// calls already forwarded still go in, but no new call may be
	// forwarded until it drains.
	ErrSpoolFull = errors.New("audit spool full")
	// ErrSpoolUnavailable means the spool cannot be written (disk full,
	// permissions): a new outcome record might find no room.
	ErrSpoolUnavailable = errors.New("audit spool unavailable")
)

// Defaults of the spool.
const DefaultSpoolMaxBytes = 256 << 20

// spoolSegmentBytes is the size at which a new segment file is begun (a
// variable for tests).
var spoolSegmentBytes int64 = 4 << 20

// spool keeps outcome records on disk while Redis cannot take them. It is
// a directory of append-only segment files (NNNNNNNNNNNNNNNN.spool), one
// record a line as "crc32 json", fsynced on every append; a "head" file
// names the first record not yet written to Redis. Records are read back
// in the order they were appended. A torn last line (a crash during a
// write) fails its checksum and is cut off at open.
//
// Its methods lock mu: the stream's flusher reads and appends, and an
// Enqueue that finds the buffer full appends. bytes and records are
// atomics so that metrics and OutcomeRoom read them without the lock.
type spool struct {
	mu   sync.Mutex // Run's flusher and Enqueue's overflow both write
	dir  string
	lock *os.File

	segs []uint64 // segment numbers, oldest first
	w    *os.File // tail segment, open for append
	wLen int64

	head spoolPos // first record not yet acknowledged
	rd   *spoolReader

	bytes   atomic.Int64
	records atomic.Int64
}

// spoolPos is a record's place: segment number and byte offset.
type spoolPos struct {
	seg uint64
	off int64
}

type spoolReader struct {
	pos spoolPos
	f   *os.File
	br  *bufio.Reader
}

// openSpool opens (creating it) the spool in dir, takes its lock, and
// counts the records it already holds.
func openSpool(dir string) (*spool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit spool %s: %w", dir, err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	sp := &spool{dir: dir, lock: lock}
	if err := sp.scan(); err != nil {
		sp.close()
		return nil, err
	}
	return sp, nil
}

func (sp *spool) segPath(n uint64) string {
	return filepath.Join(sp.dir, fmt.Sprintf("%016d.spool", n))
}

// scan reads the head file and every segment, cuts a torn tail, and sets
// the counters.
func (sp *spool) scan() error {
	ents, err := os.ReadDir(sp.dir)
	if err != nil {
		return fmt.Errorf("audit spool %s: %w", sp.dir, err)
	}
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".spool")
		if !ok || !e.Type().IsRegular() {
			continue
		}
		n, err := strconv.ParseUint(name, 10, 64)
		if err != nil {
			continue
		}
		sp.segs = append(sp.segs, n)
	}
	slices.Sort(sp.segs)
	if b, err := os.ReadFile(filepath.Join(sp.dir, "head")); err == nil {
		f := strings.Fields(string(b))
		if len(f) == 2 {
			sp.head.seg, _ = strconv.ParseUint(f[0], 10, 64)
			sp.head.off, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	// Segments wholly before the head were written to Redis already.
	for len(sp.segs) > 0 && sp.segs[0] < sp.head.seg {
		_ = os.Remove(sp.segPath(sp.segs[0]))
		sp.segs = sp.segs[1:]
	}
	if len(sp.segs) == 0 || sp.segs[0] != sp.head.seg {
		sp.head.off = 0
		if len(sp.segs) > 0 {
			sp.head.seg = sp.segs[0]
		}
	}
	var bytes, records int64
	for i, n := range sp.segs {
		from := int64(0)
		if n == sp.head.seg {
			from = sp.head.off
		}
		good, count, err := scanSegment(sp.segPath(n), from)
		if err != nil {
			return err
		}
		if i == len(sp.segs)-1 {
			// Cut a torn last line so appends continue after good data.
			if err := os.Truncate(sp.segPath(n), good); err != nil {
				return fmt.Errorf("audit spool: cut torn tail: %w", err)
			}
		}
		bytes += good - from
		records += count
	}
	sp.bytes.Store(bytes)
	sp.records.Store(records)
	return nil
}

// scanSegment returns the end of the last good line from off, and how
// many good lines there are.
func scanSegment(path string, off int64) (int64, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, fmt.Errorf("audit spool: %w", err)
	}
	defer f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return 0, 0, fmt.Errorf("audit spool: %w", err)
	}
	br := bufio.NewReaderSize(f, 64<<10)
	good, n := off, int64(0)
	for {
		line, err := br.ReadBytes('\n')
		if err != nil {
			return good, n, nil // EOF, or a torn line without its newline
		}
		if _, ok := decodeSpoolLine(line); !ok {
			return good, n, nil
		}
		good += int64(len(line))
		n++
	}
}

func encodeSpoolLine(rec *Record) ([]byte, error) {
	j, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	line := make([]byte, 0, len(j)+10)
	line = fmt.Appendf(line, "%08x ", crc32.ChecksumIEEE(j))
	line = append(line, j...)
	return append(line, '\n'), nil
}

func decodeSpoolLine(line []byte) (*Record, bool) {
	if len(line) < 11 || line[8] != ' ' || line[len(line)-1] != '\n' {
		return nil, false
	}
	sum, err := strconv.ParseUint(string(line[:8]), 16, 32)
	j := line[9 : len(line)-1]
	if err != nil || uint32(sum) != crc32.ChecksumIEEE(j) {
		return nil, false
	}
	var rec Record
	if err := json.Unmarshal(j, &rec); err != nil {
		return nil, false
	}
	return &rec, true
}

// append writes recs at the tail and fsyncs them. On error nothing is
// counted: the caller keeps the records.
func (sp *spool) append(recs []*Record) error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if len(recs) == 0 {
		return nil
	}
	var buf []byte
	for _, r := range recs {
		line, err := encodeSpoolLine(r)
		if err != nil {
			return fmt.Errorf("audit spool: encode: %w", err)
		}
		buf = append(buf, line...)
	}
	if sp.w == nil || sp.wLen >= spoolSegmentBytes {
		if err := sp.rotate(); err != nil {
			return err
		}
	}
	start := sp.wLen
	if _, err := sp.w.Write(buf); err != nil {
		_ = sp.w.Truncate(start) // leave no partial line behind
		return fmt.Errorf("%w: write: %w", ErrSpoolUnavailable, err)
	}
	if err := sp.w.Sync(); err != nil {
		return fmt.Errorf("%w: fsync: %w", ErrSpoolUnavailable, err)
	}
	sp.wLen += int64(len(buf))
	sp.bytes.Add(int64(len(buf)))
	sp.records.Add(int64(len(recs)))
	return nil
}

// rotate opens the tail segment for appending: the last one if it has
// room, else a new one.
func (sp *spool) rotate() error {
	if sp.w != nil {
		_ = sp.w.Close()
		sp.w = nil
	}
	var n uint64
	if len(sp.segs) > 0 {
		n = sp.segs[len(sp.segs)-1]
		if st, err := os.Stat(sp.segPath(n)); err == nil && st.Size() < spoolSegmentBytes {
			f, err := os.OpenFile(sp.segPath(n), os.O_WRONLY|os.O_APPEND, 0o600)
			if err != nil {
				return fmt.Errorf("%w: %w", ErrSpoolUnavailable, err)
			}
			sp.w, sp.wLen = f, st.Size()
			return nil
		}
		n++
	}
	f, err := os.OpenFile(sp.segPath(n), os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrSpoolUnavailable, err)
	}
	if err := spoolSyncDir(sp.dir); err != nil {
		f.Close()
		return fmt.Errorf("%w: %w", ErrSpoolUnavailable, err)
	}
	if len(sp.segs) == 0 {
		sp.head = spoolPos{seg: n}
	}
	sp.segs = append(sp.segs, n)
	sp.w, sp.wLen = f, 0
	return nil
}

// read returns up to max records from the read position (the head, the
// first time after an ack), the position after them and their size.
func (sp *spool) read(max int) ([]*Record, spoolPos, int64, error) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.rd == nil || sp.rd.pos != sp.head {
		if sp.rd != nil {
			sp.rd.f.Close()
		}
		sp.rd = nil
		if len(sp.segs) == 0 {
			return nil, sp.head, 0, nil
		}
		f, err := os.Open(sp.segPath(sp.head.seg))
		if err != nil {
			return nil, sp.head, 0, fmt.Errorf("audit spool: %w", err)
		}
		if _, err := f.Seek(sp.head.off, io.SeekStart); err != nil {
			f.Close()
			return nil, sp.head, 0, fmt.Errorf("audit spool: %w", err)
		}
		sp.rd = &spoolReader{pos: sp.head, f: f, br: bufio.NewReaderSize(f, 64<<10)}
	}
	var out []*Record
	var size int64
	for len(out) < max {
		line, err := sp.rd.br.ReadBytes('\n')
		if err != nil {
			// Lines are appended whole by this goroutine, so this is the
			// end of a segment: go on to the next one if there is one.
			i := slices.Index(sp.segs, sp.rd.pos.seg)
			if len(line) > 0 || i < 0 || i == len(sp.segs)-1 {
				break
			}
			sp.rd.f.Close()
			next := sp.segs[i+1]
			f, err := os.Open(sp.segPath(next))
			if err != nil {
				sp.rd = nil
				return nil, sp.head, 0, fmt.Errorf("audit spool: %w", err)
			}
			sp.rd.f, sp.rd.br, sp.rd.pos = f, bufio.NewReaderSize(f, 64<<10), spoolPos{seg: next}
			continue
		}
		rec, ok := decodeSpoolLine(line)
		if !ok {
			break // cannot happen after scan; stop rather than skip
		}
		sp.rd.pos.off += int64(len(line))
		size += int64(len(line))
		out = append(out, rec)
	}
	return out, sp.rd.pos, size, nil
}

// ack records that the n records (size bytes) before pos are in Redis: it
// moves the head, removes finished segments, and empties the spool when
// nothing is left.
func (sp *spool) ack(pos spoolPos, n int, size int64) error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	for len(sp.segs) > 0 && sp.segs[0] < pos.seg {
		_ = os.Remove(sp.segPath(sp.segs[0]))
		sp.segs = sp.segs[1:]
	}
	sp.head = pos
	sp.bytes.Add(-size)
	sp.records.Add(-int64(n))
	if sp.records.Load() <= 0 {
		return sp.reset()
	}
	return writeFileSync(filepath.Join(sp.dir, "head"), fmt.Appendf(nil, "%d %d\n", pos.seg, pos.off))
}

// reset empties the spool: every record is in Redis.
func (sp *spool) reset() error {
	if sp.rd != nil {
		sp.rd.f.Close()
		sp.rd = nil
	}
	if sp.w != nil {
		sp.w.Close()
		sp.w = nil
	}
	for _, n := range sp.segs {
		_ = os.Remove(sp.segPath(n))
	}
	sp.segs, sp.head, sp.wLen = nil, spoolPos{}, 0
	sp.bytes.Store(0)
	sp.records.Store(0)
	_ = os.Remove(filepath.Join(sp.dir, "head"))
	return spoolSyncDir(sp.dir)
}

func (sp *spool) len() int64 { return sp.records.Load() }

func (sp *spool) close() {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.rd != nil {
		sp.rd.f.Close()
	}
	if sp.w != nil {
		sp.w.Close()
	}
	if sp.lock != nil {
		unlockDir(sp.lock)
	}
}

func writeFileSync(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("audit spool: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("audit spool: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("audit spool: %w", err)
	}
	f.Close()
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("audit spool: %w", err)
	}
	return spoolSyncDir(filepath.Dir(path))
}

func spoolSyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

type spoolMetrics struct {
	records  prometheus.GaugeFunc
	bytes    prometheus.GaugeFunc
	written  prometheus.Counter
	replayed prometheus.Counter
	errors   prometheus.Counter
}

// newSpoolMetrics registers the spool's series; the gauges read s's
// current spool (none: 0).
func newSpoolMetrics(reg prometheus.Registerer, s *Stream) *spoolMetrics {
	read := func(f func(*spool) int64) func() float64 {
		return func() float64 {
			if sp := s.bl.spool.Load(); sp != nil {
				return float64(f(sp))
			}
			return 0
		}
	}
	m := &spoolMetrics{
		records: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "passport_audit_spool_records",
			Help: "Outcome records waiting on disk for Redis (the spool).",
		}, read(func(sp *spool) int64 { return sp.records.Load() })),
		bytes: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "passport_audit_spool_bytes",
			Help: "Bytes of outcome records waiting on disk for Redis; at spool_max_bytes new calls are refused (503).",
		}, read(func(sp *spool) int64 { return sp.bytes.Load() })),
		written: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "passport_audit_spool_written_total",
			Help: "Outcome records written to the spool because Redis could not take them.",
		}),
		replayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "passport_audit_spool_replayed_total",
			Help: "Spooled outcome records written to Redis after it came back.",
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "passport_audit_spool_errors_total",
			Help: "Failed spool writes or reads (disk full, permissions); the records stay in memory and new calls are refused.",
		}),
	}
	// Gauges of a second stream in the process are not registered: the
	// first stream's series stand (as for the other audit metrics).
	if reg != nil {
		_ = reg.Register(m.records)
		_ = reg.Register(m.bytes)
	}
	m.written = register(reg, m.written)
	m.replayed = register(reg, m.replayed)
	m.errors = register(reg, m.errors)
	return m
}

// backlog is the stream's state for outcome records Redis has not taken
// yet: the spool, and the signals the proxy reads (Degraded, OutcomeRoom).
// The spool and held are owned by the flusher (Run); the rest is atomic.
type backlog struct {
	mu      sync.Mutex // opening the spool
	spool   atomic.Pointer[spool]
	temp    string                 // the spool's directory when it is a private temporary one
	blocked atomic.Bool            // the flusher has records waiting for Redis
	fail    atomic.Int64           // unix ns of the last failed write-ahead Append
	err     atomic.Pointer[string] // the spool's last error, nil when it works
	held    []*Record              // records neither Redis nor the spool took
}

// Backlog is implemented by sinks that can fall behind their store (the
// Stream): the proxy asks it before forwarding and before writing a
// refusal record.
type Backlog interface {
	// Degraded reports that records are waiting for the store (a write
	// failed within the last second, or outcome records wait in memory or
	// in the spool): refusals should then be summarised (Aggregator), so
	// that they never crowd out the outcome records of forwarded calls.
	Degraded() bool
	// OutcomeRoom returns nil while an outcome record is sure to find room
	// (memory or spool); else ErrSpoolFull or ErrSpoolUnavailable, and the
	// caller must not forward: a forwarded call must get its outcome.
	OutcomeRoom() error
}

// Degraded implements Backlog.
func (s *Stream) Degraded() bool {
	return s.bl.blocked.Load() || time.Now().UnixNano()-s.bl.fail.Load() < int64(time.Second)
}

// OutcomeRoom implements Backlog.
func (s *Stream) OutcomeRoom() error {
	if e := s.bl.err.Load(); e != nil {
		return fmt.Errorf("%w: %s", ErrSpoolUnavailable, *e)
	}
	if sp := s.bl.spool.Load(); sp != nil && sp.bytes.Load() >= s.cfg.SpoolMaxBytes {
		return ErrSpoolFull
	}
	return nil
}

// noteAppendFailure marks the store degraded for a second.
func (s *Stream) noteAppendFailure() { s.bl.fail.Store(time.Now().UnixNano()) }

// openSpool opens the configured spool directory (at NewStream, so a
// directory another process holds is an error at start), or a private
// temporary one the first time it is needed.
func (s *Stream) openSpool() (*spool, error) {
	if sp := s.bl.spool.Load(); sp != nil {
		return sp, nil
	}
	s.bl.mu.Lock()
	defer s.bl.mu.Unlock()
	if sp := s.bl.spool.Load(); sp != nil {
		return sp, nil
	}
	dir := s.cfg.SpoolDir
	if dir == "" {
		d, err := os.MkdirTemp("", "passport-spool-")
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrSpoolUnavailable, err)
		}
		dir, s.bl.temp = d, d
	}
	sp, err := openSpool(dir)
	if err != nil {
		return nil, err
	}
	s.bl.spool.Store(sp)
	if n := sp.len(); n > 0 {
		s.log.Warn("audit spool holds records from an earlier run; replaying them once Redis answers", "dir", dir, "records", n)
	}
	return sp, nil
}

func (s *Stream) spooled() int64 {
	if sp := s.bl.spool.Load(); sp != nil {
		return sp.len()
	}
	return 0
}

func (s *Stream) setSpoolErr(err error) {
	if err == nil {
		s.bl.err.Store(nil)
		return
	}
	msg := err.Error()
	s.bl.err.Store(&msg)
	s.sm.errors.Inc()
	s.log.Error("audit spool write failed; new calls are refused until it works", "err", err)
}

// spill moves recs to the spool: Redis is behind, and the records must
// wait somewhere that survives. Behind records already held in memory
// they are held too, to keep the order.
func (s *Stream) spill(recs []*Record) {
	if len(s.bl.held) > 0 {
		s.bl.held = append(s.bl.held, recs...)
		return
	}
	s.spoolAppend(recs)
}

// spoolAppend writes recs to the spool, or holds them in memory when it
// cannot (and OutcomeRoom then refuses new calls). Run's goroutine only.
func (s *Stream) spoolAppend(recs []*Record) bool {
	if err := s.spoolWrite(recs); err != nil {
		s.bl.held = append(s.bl.held, recs...)
		return false
	}
	return true
}

// spoolWrite writes recs to the spool (opening it if need be) and keeps
// the spool's error state; safe from any goroutine.
func (s *Stream) spoolWrite(recs []*Record) error {
	sp, err := s.openSpool()
	if err == nil {
		err = sp.append(recs)
	}
	s.setSpoolErr(err)
	if err == nil {
		s.sm.written.Add(float64(len(recs)))
	}
	return err
}

// spoolBatch is a batch read from the spool, acknowledged once written.
type spoolBatch struct {
	pos  spoolPos
	n    int
	size int64
}

func (s *Stream) ackSpool(b *spoolBatch) {
	sp := s.bl.spool.Load()
	if sp == nil || b == nil {
		return
	}
	s.sm.replayed.Add(float64(b.n))
	if err := sp.ack(b.pos, b.n, b.size); err != nil {
		// The records are in Redis; a stale head only replays them again.
		s.log.Error("audit spool: recording progress failed", "err", err)
		s.sm.errors.Inc()
	}
}

// closeSpool releases the spool; a private one is removed when empty, and
// named in the log when records are left in it.
func (s *Stream) closeSpool() {
	sp := s.bl.spool.Load()
	if sp == nil {
		return
	}
	n := sp.len()
	sp.close()
	switch {
	case n > 0:
		s.log.Error("audit records left in the spool; start a writer with spool_dir set to this directory to replay them",
			"dir", sp.dir, "records", n)
	case s.bl.temp != "":
		_ = os.RemoveAll(s.bl.temp)
	}
}
