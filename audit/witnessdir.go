package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DirWitness keeps writers' statements in a directory on disk: one folder
// per writer, holding numbered files of JSON lines, appended and fsynced one
// statement at a time and rotated by size. Each line links to the one
// before it by hash, across files, so a line removed, changed or reordered
// in the middle breaks the chain; the statements themselves are signed by
// their writers.
//
// A line is {"n": 1, "prev": "<sha256 hex of the previous line>",
// "received": "<RFC 3339>", "statement": {...}}; the first line's prev is "".
//
// It is both a writer's local witness and the store of `passport witness`.
// One process appends to a directory at a time (the writers' ids differ,
// and a witness server owns its directory); readers may read while it
// appends.
type DirWitness struct {
	dir  string
	opts DirWitnessOptions

	mu      sync.Mutex
	logs    map[string]*writerLog
	counted bool
	writers int
}

// DirWitnessOptions tune a DirWitness. Zero values mean the defaults.
type DirWitnessOptions struct {
	// RotateBytes starts a new file once the current one is this large.
	// Default 16 MiB.
	RotateBytes int64
	// TrustedKeys, when not nil, are the only writers accepted, with
	// these keys. Default: the first key a writer signs with is pinned.
	TrustedKeys map[string]ed25519.PublicKey
	// MaxWriters bounds how many writers the directory holds, so that
	// strangers cannot fill the disk with new writer ids. Default 100,000.
	MaxWriters int
	// Clock stamps "received". Default time.Now.
	Clock func() time.Time
}

type writerLog struct {
	mu     sync.Mutex
	dir    string
	isNew  bool // no folder on disk when opened: counts against MaxWriters once stored
	dead   bool // dropped from DirWitness.logs: look it up again
	loaded bool
	file   int   // number of the current file (0: none yet)
	size   int64 // its size
	n      uint64
	last   string // hash of the last line
	raw    []byte // the last statement, to answer a resent one
	state  *WitnessedWriter
}

// NewDirWitness returns a witness storing in dir. It creates nothing until
// the first statement.
func NewDirWitness(dir string, opts DirWitnessOptions) (*DirWitness, error) {
	if dir == "" {
		return nil, errors.New("witness directory: empty path")
	}
	if opts.RotateBytes <= 0 {
		opts.RotateBytes = 16 << 20
	}
	if opts.MaxWriters <= 0 {
		opts.MaxWriters = 100000
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	return &DirWitness{dir: dir, opts: opts, logs: map[string]*writerLog{}}, nil
}

// Name is "dir:<path>".
func (d *DirWitness) Name() string { return "dir:" + d.dir }

// Dir is the directory.
func (d *DirWitness) Dir() string { return d.dir }

var safeWriterDir = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// writerDirName names a writer's folder: the id itself when it is a plain
// file name, else "~" and its base64url, so no id can climb out of the
// directory or collide with another.
func writerDirName(w string) string {
	if safeWriterDir.MatchString(w) {
		return w
	}
	return "~" + base64.RawURLEncoding.EncodeToString([]byte(w))
}

func writerFromDirName(name string) (string, bool) {
	if strings.HasPrefix(name, "~") {
		b, err := base64.RawURLEncoding.DecodeString(name[1:])
		if err != nil || validWriterID(string(b)) != nil {
			return "", false
		}
		return string(b), true
	}
	if !safeWriterDir.MatchString(name) || validWriterID(name) != nil {
		return "", false
	}
	return name, true
}

func logFileName(n int) string { return fmt.Sprintf("%08d.jsonl", n) }

// witnessLine is one stored line.
type witnessLine struct {
	N         uint64          `json:"n"`
	Prev      string          `json:"prev"`
	Received  string          `json:"received"`
	Statement json.RawMessage `json:"statement"`
}

func lineHash(line []byte) string {
	sum := sha256.Sum256(line)
	return hex.EncodeToString(sum[:])
}

// Witness checks raw (a signed statement) against what the directory holds
// for its writer and appends it, fsynced. Resending the last statement is
// answered nil without storing it twice.
func (d *DirWitness) Witness(_ context.Context, raw []byte) error {
	st, pub, compact, err := ParseStatement(raw)
	if err != nil {
		return &WitnessRefusal{Code: RefusedInvalid, Detail: err.Error()}
	}
	for {
		wl, err := d.writerLog(st.Writer)
		if err != nil {
			return err
		}
		wl.mu.Lock()
		if wl.dead {
			wl.mu.Unlock()
			continue
		}
		err = d.witnessLocked(wl, st, pub, compact)
		if wl.n == 0 {
			// Nothing stored for this writer: forget it, so that refused
			// strangers cost no memory.
			d.mu.Lock()
			delete(d.logs, st.Writer)
			wl.dead = true
			d.mu.Unlock()
		}
		wl.mu.Unlock()
		return err
	}
}

func (d *DirWitness) witnessLocked(wl *writerLog, st *Statement, pub ed25519.PublicKey, compact []byte) error {
	if err := wl.load(); err != nil {
		return err
	}
	if wl.raw != nil && bytes.Equal(wl.raw, compact) {
		return nil
	}
	if err := wl.state.check(st, pub, d.opts.TrustedKeys); err != nil {
		return err
	}
	now := d.opts.Clock().UTC()
	if err := wl.append(compact, now, d.opts.RotateBytes); err != nil {
		return err
	}
	wl.state.apply(st, pub, now)
	wl.raw = compact
	if wl.isNew {
		wl.isNew = false
		d.mu.Lock()
		d.writers++
		d.mu.Unlock()
	}
	return nil
}

// State reads writer's log from disk and returns what it holds (nil if
// nothing), whichever process appended it.
func (d *DirWitness) State(writer string) (*WitnessedWriter, error) {
	if validWriterID(writer) != nil {
		return nil, nil
	}
	chk := newLogChecker(writer, false)
	if err := d.ReadLog(context.Background(), writer, chk.line); err != nil {
		return nil, err
	}
	if chk.state.Last == nil {
		return nil, nil
	}
	return chk.state, nil
}

// writerLog returns the writer's log handle, counting new writers against
// MaxWriters.
func (d *DirWitness) writerLog(writer string) (*writerLog, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if wl := d.logs[writer]; wl != nil {
		return wl, nil
	}
	dir := filepath.Join(d.dir, writerDirName(writer))
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if !d.counted {
			ents, err := os.ReadDir(d.dir)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("witness %s: %w", d.dir, err)
			}
			d.writers, d.counted = len(ents), true
		}
		if d.writers >= d.opts.MaxWriters {
			return nil, &WitnessRefusal{Code: RefusedFull, Detail: fmt.Sprintf("the witness holds %d writers already", d.writers)}
		}
		wl := &writerLog{dir: dir, isNew: true, state: newWitnessedWriter(writer, false)}
		d.logs[writer] = wl
		return wl, nil
	}
	wl := &writerLog{dir: dir, state: newWitnessedWriter(writer, false)}
	d.logs[writer] = wl
	return wl, nil
}

// load reads the writer's existing files once: it recovers the chain's end
// and the state, and cuts a torn last line (a crash in the middle of an
// append) so the next line starts clean. A log that does not check out is
// not appended to: the operator has to look first.
func (wl *writerLog) load() error {
	if wl.loaded {
		return nil
	}
	files, err := logFiles(wl.dir)
	if err != nil {
		return err
	}
	chk := newLogChecker(wl.state.Writer, false)
	for _, f := range files {
		path := filepath.Join(wl.dir, logFileName(f))
		good, err := readLines(path, chk.line)
		if err != nil {
			return fmt.Errorf("witness log %s: %w", path, err)
		}
		if len(chk.problems) > 0 {
			return fmt.Errorf("witness log %s is broken, not appending to it: %s", path, chk.problems[0].Detail)
		}
		st, err := os.Stat(path)
		if err != nil {
			return fmt.Errorf("witness log %s: %w", path, err)
		}
		if good < st.Size() {
			if f != files[len(files)-1] {
				return fmt.Errorf("witness log %s ends in a torn line but is not the last file", path)
			}
			if err := os.Truncate(path, good); err != nil {
				return fmt.Errorf("witness log %s: cut torn line: %w", path, err)
			}
		}
		wl.file, wl.size = f, good
	}
	wl.state = chk.state
	wl.n, wl.last, wl.raw = chk.n, chk.last, chk.lastRaw
	wl.loaded = true
	return nil
}

// append writes one line and fsyncs it (and the directory when a file is
// created, so the file itself survives a crash).
func (wl *writerLog) append(statement []byte, received time.Time, rotate int64) error {
	line, err := json.Marshal(witnessLine{N: wl.n + 1, Prev: wl.last, Received: received.Format(time.RFC3339Nano), Statement: statement})
	if err != nil {
		return fmt.Errorf("witness line: %w", err)
	}
	created := false
	if wl.file == 0 || wl.size >= rotate {
		if err := os.MkdirAll(wl.dir, 0o700); err != nil {
			return fmt.Errorf("witness: %w", err)
		}
		wl.file++
		wl.size = 0
		created = true
	}
	path := filepath.Join(wl.dir, logFileName(wl.file))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("witness: %w", err)
	}
	_, werr := f.Write(append(line, '\n'))
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		// The line may be partly written: reload before the next append,
		// which cuts a torn line.
		wl.loaded = false
		return fmt.Errorf("witness append %s: %w", path, err)
	}
	if created {
		if err := syncDir(wl.dir); err != nil {
			wl.loaded = false
			return fmt.Errorf("witness: %w", err)
		}
	}
	wl.size += int64(len(line) + 1)
	wl.n++
	wl.last = lineHash(line)
	return nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// logFiles lists a writer folder's file numbers in order.
func logFiles(dir string) ([]int, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("witness: %w", err)
	}
	var out []int
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".jsonl")
		if !ok || e.IsDir() {
			continue
		}
		n, err := strconv.Atoi(name)
		if err != nil || n <= 0 || logFileName(n) != e.Name() {
			continue
		}
		out = append(out, n)
	}
	sort.Ints(out)
	return out, nil
}

// readLines calls fn for each complete line of path and returns the offset
// after the last one; a last line without its newline is in progress or
// torn, and is left out.
func readLines(path string, fn func(line []byte) error) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	off, _, err := scanLines(f, fn)
	return off, err
}

// scanLines calls fn for each complete line of r, bounded in length, and
// returns the offset after the last one and whether a partial line
// followed it.
func scanLines(rd io.Reader, fn func(line []byte) error) (int64, bool, error) {
	const maxLine = MaxStatementBytes + 4096
	r := bufio.NewReaderSize(rd, 64<<10)
	var off int64
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A line longer than the buffer: gather it, within bounds.
			buf := append([]byte(nil), line...)
			for errors.Is(err, bufio.ErrBufferFull) {
				if len(buf) > maxLine {
					return off, false, fmt.Errorf("line at offset %d is longer than %d bytes", off, maxLine)
				}
				line, err = r.ReadSlice('\n')
				buf = append(buf, line...)
			}
			line = buf
		}
		if err == io.EOF {
			return off, len(line) > 0, nil
		}
		if err != nil {
			return off, false, err
		}
		off += int64(len(line))
		if err := fn(line[:len(line)-1]); err != nil {
			return off, false, err
		}
	}
}

// Writers lists the writers the directory holds logs of.
func (d *DirWitness) Writers(_ context.Context) ([]string, error) {
	ents, err := os.ReadDir(d.dir)
	if err != nil {
		return nil, fmt.Errorf("witness %s: %w", d.dir, err)
	}
	var out []string
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		if w, ok := writerFromDirName(e.Name()); ok {
			out = append(out, w)
		}
	}
	sort.Strings(out)
	return out, nil
}

// ReadLog calls fn with each stored line of writer's log, oldest first.
func (d *DirWitness) ReadLog(ctx context.Context, writer string, fn func(line []byte) error) error {
	if err := validWriterID(writer); err != nil {
		return fmt.Errorf("witness: %w", err)
	}
	dir := filepath.Join(d.dir, writerDirName(writer))
	files, err := logFiles(dir)
	if err != nil {
		return err
	}
	for _, f := range files {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := readLines(filepath.Join(dir, logFileName(f)), fn); err != nil {
			return fmt.Errorf("witness log %s: %w", filepath.Join(dir, logFileName(f)), err)
		}
	}
	return nil
}

// logChecker replays a writer's log: the line chain, each statement's
// signature under the writer's pinned key, and the rules a witness applies
// when it accepts one. Whatever does not hold is a problem of the witness's
// own copy (witness_corrupt).
type logChecker struct {
	writer   string
	state    *WitnessedWriter
	n        uint64
	last     string
	lastRaw  []byte
	problems []Problem
}

func newLogChecker(writer string, history bool) *logChecker {
	return &logChecker{writer: writer, state: newWitnessedWriter(writer, history)}
}

func (c *logChecker) fail(n uint64, format string, args ...any) {
	if len(c.problems) < maxProblems {
		c.problems = append(c.problems, Problem{Writer: c.writer, Seq: n, Kind: ProblemWitnessCorrupt,
			Detail: fmt.Sprintf("witness log line %d: ", n) + fmt.Sprintf(format, args...)})
	}
}

// line takes one stored line. It never returns an error: problems are
// collected and reading goes on, so one bad line does not hide the rest.
func (c *logChecker) line(b []byte) error {
	var l witnessLine
	if err := json.Unmarshal(b, &l); err != nil {
		c.fail(c.n+1, "not a witness line: %v", err)
		c.n++
		c.last = lineHash(b)
		return nil
	}
	defer func() { c.n, c.last = l.N, lineHash(b) }()
	if l.N != c.n+1 {
		c.fail(l.N, "line number %d after %d (lines removed or reordered)", l.N, c.n)
	}
	if l.Prev != c.last {
		c.fail(l.N, "does not link to the line before it (a line was removed, changed or inserted)")
	}
	received, err := time.Parse(time.RFC3339Nano, l.Received)
	if err != nil {
		c.fail(l.N, "received time: %v", err)
	}
	st, pub, compact, err := ParseStatement(l.Statement)
	if err != nil {
		c.fail(l.N, "%v", err)
		return nil
	}
	if st.Writer != c.writer {
		c.fail(l.N, "statement of writer %q in the log of %q", st.Writer, c.writer)
		return nil
	}
	if err := c.state.check(st, pub, nil); err != nil {
		var r *WitnessRefusal
		if errors.As(err, &r) {
			err = errors.New(r.Detail)
		}
		c.fail(l.N, "%v", err)
		if c.state.Key != nil && !c.state.Key.Equal(pub) {
			return nil
		}
	}
	c.state.apply(st, pub, received)
	c.lastRaw = compact
	return nil
}

// Interface guard.
var _ Witness = (*DirWitness)(nil)
