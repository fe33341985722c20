package audit

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentpassport/passport/passport"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Errors of the writer.
var (
	// ErrClosed is returned by Append after Close.
	ErrClosed = errors.New("audit stream closed")
	// ErrTimeout means the record was not acknowledged within WriteTimeout.
	// The record may or may not be stored; the caller must fail closed.
	ErrTimeout = errors.New("audit write timed out")
	// ErrNotReplicated means Redis stored the batch but fewer replicas than
	// WaitReplicas confirmed it within WaitTimeout.
	ErrNotReplicated = errors.New("audit records not confirmed by enough replicas")
	// ErrWriterKeyMismatch means the writer id is registered in Redis with
	// another public key: two processes must never share a writer id.
	ErrWriterKeyMismatch = errors.New("audit writer id is registered with another public key")
	// errChainMoved is the Lua script's answer when the stored chain head is
	// not the one this writer expected (a lost reply, or a writer id used
	// twice). The writer re-reads the head before its next write.
	errChainMoved = errors.New("audit chain head moved")
)

// StreamConfig tunes the writer. Zero values mean the documented defaults.
type StreamConfig struct {
	// WriterID names this writer's chains. Default "<hostname>-<random>",
	// a fresh chain per process start. Set it (with SigningKey) to keep one
	// identity across restarts; the chain then resumes from its stored head.
	WriterID string
	// SigningKey signs checkpoints. Default: a fresh key per start, which is
	// registered in the writers hash. Pin keys with a trusted-keys file for
	// verify to stop trusting whatever Redis says.
	SigningKey ed25519.PrivateKey
	// MaxBatch is the most records in one pipeline round trip. Default 256.
	MaxBatch int
	// MaxWait is how long a batch that already holds two or more records
	// someone waits for (Append, Checkpoint) lingers for more before it is
	// sent, yielding the processor to the goroutines about to append. A
	// lone such record never waits. Default 200µs; negative: never linger
	// (batches form only while one is in flight).
	MaxWait time.Duration
	// OutcomeDelay is how long Enqueued (outcome) records wait in the
	// committer for a record someone waits for, to go in its batch rather
	// than in one of their own: a call's write-ahead record then never
	// waits behind a batch of outcomes. Default 20ms; negative: none.
	OutcomeDelay time.Duration
	// WriteTimeout bounds one Append (queueing and the write). Default 2s.
	WriteTimeout time.Duration
	// WaitReplicas, when > 0, makes every batch also wait (Redis WAIT) until
	// that many replicas have received it, for at most WaitTimeout (default
	// 500ms; keep it below the Redis client's read timeout). With fewer
	// replicas the batch's Appends fail: the records are on the primary,
	// but a failover could still lose them. Not supported with Cluster.
	WaitReplicas int
	WaitTimeout  time.Duration
	// OutcomeBuffer is how many Enqueued records may wait in memory. While
	// Redis cannot take them they move to the spool; a refusal record that
	// finds the buffer full is dropped and counted, any other record waits
	// for room (up to WriteTimeout). Default 10000.
	OutcomeBuffer int
	// SpoolDir is where outcome records wait, fsynced, while Redis cannot
	// take them; they are written to Redis in order once it can. Default
	// "": a private directory under the system's temporary directory,
	// made when first needed and removed when empty at Close. Set it to
	// keep them across a restart: a writer replays what it finds there.
	// One process per directory (it is locked).
	SpoolDir string
	// SpoolMaxBytes bounds the spool: at this size OutcomeRoom fails, so
	// the proxy forwards nothing new (503) while the records of calls
	// already forwarded still go in. Default 256 MiB.
	SpoolMaxBytes int64
	// RetryMin and RetryMax bound the backoff of outcome retries.
	// Defaults 50ms and 5s.
	RetryMin, RetryMax time.Duration
	// ShutdownTimeout bounds the final flush in Run. Default 5s.
	ShutdownTimeout time.Duration
	// CheckpointEvery writes a signed checkpoint after this many records
	// of one chain. Default 1000.
	CheckpointEvery int
	// CheckpointInterval writes a checkpoint for every chain with unsealed
	// records this often, and hands the new heads to the witnesses: while
	// records flow, none stays unsealed longer than this. Default 1s.
	CheckpointInterval time.Duration
	// Witnesses receive the writer's signed statements (the heads of its
	// checkpoints) outside Redis; see Witness. Default none.
	Witnesses []Witness
	// WitnessHeartbeat is how often a writer with sealed streams tells its
	// witnesses it is still running when nothing new was sealed, so that a
	// writer that stopped without a closing statement can be told from a
	// quiet one. Default 10s.
	WitnessHeartbeat time.Duration
	// WitnessTimeout bounds one delivery to a witness. Default 2s.
	WitnessTimeout time.Duration
	// Retention trims entries older than this from the streams this writer
	// writes. Default 0: never trimmed. The Redis user needs XTRIM.
	Retention time.Duration
	// RetentionInterval is how often trimming runs. Default 1h.
	RetentionInterval time.Duration
	// DurabilityInterval is how often CONFIG GET is repeated. Default 1m.
	DurabilityInterval time.Duration
	// MaxField and MaxJSON cap string fields and Input/Details, in bytes.
	// Defaults DefaultMaxField and DefaultMaxJSON.
	MaxField, MaxJSON int
	// Clock is the time source. Default time.Now.
	Clock func() time.Time
}

func (c *StreamConfig) defaults() error {
	if c.WriterID == "" {
		host, _ := os.Hostname()
		if host == "" {
			host = "writer"
		}
		var b [4]byte
		_, _ = rand.Read(b[:])
		c.WriterID = host + "-" + hex.EncodeToString(b[:])
	}
	if strings.ContainsAny(c.WriterID, " \t\r\n") {
		return fmt.Errorf("audit writer id %q: no whitespace allowed", c.WriterID)
	}
	if c.SigningKey == nil {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return fmt.Errorf("generate audit signing key: %w", err)
		}
		c.SigningKey = k
	} else if len(c.SigningKey) != ed25519.PrivateKeySize {
		return errors.New("audit signing key: not an Ed25519 private key")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = 256
	}
	def(&c.MaxWait, 200*time.Microsecond)
	def(&c.OutcomeDelay, 20*time.Millisecond)
	def(&c.WriteTimeout, 2*time.Second)
	if c.OutcomeBuffer <= 0 {
		c.OutcomeBuffer = 10000
	}
	if c.SpoolMaxBytes <= 0 {
		c.SpoolMaxBytes = DefaultSpoolMaxBytes
	}
	def(&c.WaitTimeout, 500*time.Millisecond)
	if c.WaitReplicas < 0 || (c.WaitReplicas > 0 && c.WaitTimeout >= c.WriteTimeout) {
		return errors.New("audit wait_replicas: must not be negative, and wait_timeout must be below write_timeout")
	}
	def(&c.RetryMin, 50*time.Millisecond)
	def(&c.RetryMax, 5*time.Second)
	def(&c.ShutdownTimeout, 5*time.Second)
	if c.CheckpointEvery <= 0 {
		c.CheckpointEvery = 1000
	}
	def(&c.CheckpointInterval, time.Second)
	def(&c.WitnessHeartbeat, 10*time.Second)
	def(&c.WitnessTimeout, 2*time.Second)
	if err := witnessConfig(c); err != nil {
		return err
	}
	def(&c.RetentionInterval, time.Hour)
	def(&c.DurabilityInterval, time.Minute)
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.Retention < 0 {
		return errors.New("audit retention: must not be negative")
	}
	return nil
}

// Stream writes audit records to the per-tenant Redis streams with group
// commit: concurrent Appends are sent together in one pipeline round trip.
// Each record goes through a Lua script that appends it only if the
// writer's chain head in Redis is the one the record links to, and moves the
// head in the same step; so a retried or duplicated write can never fork a
// chain or store one record twice under different sequence numbers.
//
// NewStream starts nothing. Run starts the committer, runs the outcome
// flusher, the checkpointer and retention, and when its context ends
// drains, seals and stops the committer: Run owns the writer's whole
// life. A writer used without Run (tools, tests) starts its committer at
// the first write, and Close stops it.
type Stream struct {
	rdb redis.UniversalClient
	cfg StreamConfig
	log *slog.Logger
	m   *metrics

	reqs chan *item
	outq chan *Record

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	startOnce sync.Once // starts the committer (Run, or the first write)

	durability atomic.Pointer[Durability]
	wit        *witnessPub

	bl backlog // outcome records Redis has not taken yet (spool.go)
	sm *spoolMetrics

	batches   atomic.Uint64
	written   atomic.Uint64
	dropped   atomic.Uint64
	resent    atomic.Uint64
	appending atomic.Int64 // Appends waiting for their acknowledgement
	pipelined atomic.Uint64
	inflight  atomic.Int64 // outcome records Run has taken and not yet written or spooled

	fresh  bool     // the writer id was generated: no earlier chain exists
	seen   sync.Map // tenants written to (string -> struct{})
	listed tenantRegistry

	// mu guards the chains and the flights: the committer stages a batch
	// and a sender settles one with it held.
	mu         sync.Mutex
	chains     map[string]*chain
	registered bool
	last       *flight // the newest batch sent by the committer
	flying     int     // the committer's batches sent and not yet settled
	retry      []*item // refused behind an earlier batch: sent again (pipeline.go)
	kick       chan struct{}
	slots      chan struct{} // one per batch in flight
	flights    sync.WaitGroup
}

// Stats are counters of the writer, for tests and status pages.
type Stats struct {
	Batches uint64 // pipeline round trips with records
	Written uint64 // records acknowledged
	Dropped uint64 // outcome records dropped
	// Pipelined counts chain groups sent while an earlier one of the
	// same chain was in flight; Resent, records sent again after Redis
	// refused their pipelined group.
	Pipelined, Resent uint64
}

type chain struct {
	tenant    string
	known     bool // seq/hash are the stored head
	seq       uint64
	hash      string
	sinceCkpt uint64
	ambiguous []*item // failed writes whose fate the next resync decides
	// acked is the newest record Redis acknowledged; a stored head found
	// behind it on resync means acknowledged records were lost, which
	// lost holds until a loss checkpoint saying so is stored.
	acked     uint64
	ackedHash string
	lost      *LostRange
	flying    int // batches in flight with records of this chain
}

type result struct {
	id  string
	rec Record
	err error
}

type item struct {
	rec  *Record
	body *body // rec's encoded members, prepared by the caller
	ctx  context.Context
	done chan result // buffered 1; nil for internal records
	// checkpoint, when not "", asks the committer to write a checkpoint of
	// this type for rec.Tenant (rec carries only the tenant).
	checkpoint string
	anchors    map[string]Anchor
	minID      string
	segment    *SegmentRef // retention by the archiver: the segment trimmed
	lost       *LostRange
	// background marks an outcome record: nobody waits for it, so it may
	// wait for company (OutcomeDelay).
	background bool
	// attempt is the seq the last failed write used, for the retry path.
	attempt uint64
	stored  bool // resync found the failed write stored
	settled bool // stored is known
	retried bool // sent again once after a pipelined refusal
}

// appendScript appends a writer's records to one stream if the writer's
// chain head is as expected, and moves the head, in one atomic step: a lost
// reply, a client-side retry or a second process with the same writer id
// can therefore never fork a chain, leave a gap, or store one record twice.
// KEYS[1] stream, KEYS[2] heads hash; ARGV[1] writer, ARGV[2] expected head
// ("" for a new chain), ARGV[3] new head, ARGV[4..] record JSON.
var appendScript = redis.NewScript(`
local cur = redis.call('HGET', KEYS[2], ARGV[1]) or ''
if cur ~= ARGV[2] then return redis.error_reply('PASSPORTCHAIN head moved') end
local ids = {}
for i = 4, #ARGV do ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', 'r', ARGV[i]) end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return ids
`)

// NewStream returns a writer on rdb; it starts no goroutine. It checks the
// Redis persistence settings and registers the writer's public key; when
// Redis does not answer it still returns (writes fail closed until Redis is
// back), but a writer id registered with another key is an error.
// reg may be nil (no metrics exported).
func NewStream(rdb redis.UniversalClient, cfg StreamConfig, logger *slog.Logger, reg prometheus.Registerer) (*Stream, error) {
	if rdb == nil {
		return nil, errors.New("new audit stream: nil redis client")
	}
	if logger == nil {
		return nil, errors.New("new audit stream: nil logger")
	}
	fresh := cfg.WriterID == ""
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	s := &Stream{
		fresh:  fresh,
		rdb:    rdb,
		cfg:    cfg,
		log:    logger.With("component", "audit", "writer", cfg.WriterID),
		m:      newMetrics(reg),
		reqs:   make(chan *item, cfg.MaxBatch*4),
		outq:   make(chan *Record, cfg.OutcomeBuffer),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
		chains: map[string]*chain{},
		kick:   make(chan struct{}, 1),
		slots:  make(chan struct{}, max(maxInFlight, 1)),
	}
	s.wit = newWitnessPub(&s.cfg, s.log, reg)
	s.sm = newSpoolMetrics(reg, s)
	if cfg.SpoolDir != "" {
		if _, err := s.openSpool(); err != nil {
			return nil, fmt.Errorf("new audit stream: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.WriteTimeout)
	defer cancel()
	s.checkDurability(ctx)
	if err := s.register(ctx); err != nil {
		if errors.Is(err, ErrWriterKeyMismatch) {
			return nil, err
		}
		s.log.Warn("audit writer not yet registered; will retry before the first write", "err", err)
	}
	return s, nil
}

// WriterID is the id of this writer's chains.
func (s *Stream) WriterID() string { return s.cfg.WriterID }

// PublicKey is the writer's checkpoint verification key.
func (s *Stream) PublicKey() ed25519.PublicKey {
	return s.cfg.SigningKey.Public().(ed25519.PublicKey)
}

// Durability is the persistence level seen at the last check.
func (s *Stream) Durability() Durability {
	if d := s.durability.Load(); d != nil {
		return *d
	}
	return Durability{Level: DurabilityUnknown}
}

// Stats returns the writer's counters.
func (s *Stream) Stats() Stats {
	return Stats{Batches: s.batches.Load(), Written: s.written.Load(), Dropped: s.dropped.Load(),
		Pipelined: s.pipelined.Load(), Resent: s.resent.Load()}
}

func (s *Stream) checkDurability(ctx context.Context) {
	d := CheckDurability(ctx, s.rdb)
	prev := s.durability.Swap(&d)
	for _, l := range durabilityLevels {
		v := 0.0
		if l == d.Level {
			v = 1
		}
		s.m.durability.WithLabelValues(l).Set(v)
	}
	if prev != nil && prev.Level == d.Level {
		return
	}
	if d.Level == DurabilityAlways {
		s.log.Info("audit durability", "level", d.Level)
		return
	}
	s.log.Warn("audit durability weaker than appendfsync always: acknowledged records can be lost in a Redis crash",
		"level", d.Level, "detail", d.String())
}

// register publishes the writer's public key with HSETNX: the first key
// registered for an id wins, so no process can take over another's id.
func (s *Stream) register(ctx context.Context) error {
	pub := base64.StdEncoding.EncodeToString(s.PublicKey())
	ok, err := s.rdb.HSetNX(ctx, WritersKey, s.cfg.WriterID, pub).Result()
	if err != nil {
		return fmt.Errorf("register audit writer: %w", err)
	}
	if !ok {
		cur, err := s.rdb.HGet(ctx, WritersKey, s.cfg.WriterID).Result()
		if err != nil {
			return fmt.Errorf("register audit writer: %w", err)
		}
		if cur != pub {
			return fmt.Errorf("%w: %s", ErrWriterKeyMismatch, s.cfg.WriterID)
		}
	}
	s.registered = true
	return nil
}

// prepare fills the version and time and applies the length caps.
func (s *Stream) prepare(r *Record) {
	if r.V == 0 {
		r.V = Version
	}
	if r.Time.IsZero() {
		r.Time = s.cfg.Clock()
	}
	r.Time = r.Time.UTC().Round(0)
	r.Cap(s.cfg.MaxField, s.cfg.MaxJSON)
	if _, ok := s.seen.Load(r.Tenant); !ok {
		s.seen.Store(r.Tenant, struct{}{})
	}
}

// Append writes rec and returns its receipt (its stream id) once Redis
// acknowledged it, together with the other records that arrived meanwhile
// (group commit).
// It fills rec's Writer, Seq, Prev and Hash (and V and Time when unset).
// Any error means the caller must treat the record as not stored.
func (s *Stream) Append(ctx context.Context, rec *Record) (rc Receipt, err error) {
	defer func() {
		if err != nil {
			s.noteAppendFailure()
		}
	}()
	if rec == nil {
		return Receipt{}, errors.New("append audit record: nil record")
	}
	if err := validTenant(rec.Tenant); err != nil {
		return Receipt{}, fmt.Errorf("append audit record: %w", err)
	}
	r := *rec
	s.prepare(&r)
	start := time.Now()
	defer func() { s.m.appendDur.Observe(time.Since(start).Seconds()) }()
	b, err := encodeBody(&r)
	if err != nil {
		return Receipt{}, fmt.Errorf("append audit record: %w", err)
	}
	wctx, cancel := context.WithTimeout(ctx, s.cfg.WriteTimeout)
	defer cancel()
	s.appending.Add(1)
	defer s.appending.Add(-1)
	it := &item{rec: &r, body: b, ctx: wctx, done: make(chan result, 1)}
	s.startCommitter()
	select {
	case <-s.stop:
		s.m.failures.WithLabelValues("closed").Inc()
		return Receipt{}, ErrClosed
	default:
	}
	select {
	case s.reqs <- it:
	case <-s.stop:
		s.m.failures.WithLabelValues("closed").Inc()
		return Receipt{}, ErrClosed
	case <-wctx.Done():
		s.m.failures.WithLabelValues("timeout").Inc()
		return Receipt{}, fmt.Errorf("append audit record: queue: %w", ErrTimeout)
	}
	select {
	case res := <-it.done:
		if res.err != nil {
			return Receipt{}, fmt.Errorf("append audit record: %w", res.err)
		}
		rec.V, rec.Time = res.rec.V, res.rec.Time
		rec.Writer, rec.Seq, rec.Prev, rec.Hash = res.rec.Writer, res.rec.Seq, res.rec.Prev, res.rec.Hash
		return receiptOf(res.id, rec), nil
	case <-s.done:
		// The committer has stopped; it answered everything it took.
		select {
		case res := <-it.done:
			if res.err == nil {
				rec.Writer, rec.Seq, rec.Prev, rec.Hash = res.rec.Writer, res.rec.Seq, res.rec.Prev, res.rec.Hash
				return receiptOf(res.id, rec), nil
			}
		default:
		}
		s.m.failures.WithLabelValues("closed").Inc()
		return Receipt{}, ErrClosed
	case <-wctx.Done():
		s.m.failures.WithLabelValues("timeout").Inc()
		return Receipt{}, fmt.Errorf("append audit record: %w", ErrTimeout)
	}
}

// validTenant keeps tenant names inside their hash tag and out of trouble
// (passport.ValidTenant): a "}" would move the record to another tenant's
// slot, control characters would forge lines in logs and tools.
func validTenant(t string) error {
	if !passport.ValidTenant(t) {
		return fmt.Errorf("tenant %q: want lowercase letters, digits, '-' and '_', at most 63 bytes", t)
	}
	return nil
}

// Enqueue hands rec to the background flusher (Run). It returns at once
// unless the buffer is full: then a refusal (decision) record is dropped
// and counted, and any other record, an outcome above all, is written to
// the spool (or, if the spool fails too, waits up to WriteTimeout for
// room before it is dropped and counted).
func (s *Stream) Enqueue(rec *Record) {
	if rec == nil || validTenant(rec.Tenant) != nil {
		s.drop(1) // counted, never silent
		return
	}
	r := *rec
	s.prepare(&r)
	select {
	case <-s.stop:
		s.drop(1) // closed: nothing will flush it
		return
	default:
	}
	select {
	case s.outq <- &r:
		s.m.bufferDepth.Set(float64(len(s.outq)) + float64(s.inflight.Load()))
		return
	default:
	}
	if r.Kind == KindDecision {
		s.drop(1)
		return
	}
	// The flusher is behind (a burst, a checkpoint waiting on a hung
	// Redis): put the record in the spool ourselves rather than wait or
	// drop it. It may then be written before older records still queued.
	if s.spoolWrite([]*Record{&r}) == nil {
		return
	}
	t := time.NewTimer(s.cfg.WriteTimeout)
	defer t.Stop()
	select {
	case s.outq <- &r:
	case <-s.stop:
		s.drop(1)
	case <-t.C:
		s.drop(1) // no flusher running, or a disk that does not answer
	}
}

func (s *Stream) drop(n int) {
	if n <= 0 {
		return
	}
	d := s.dropped.Add(uint64(n))
	s.m.dropped.Add(float64(n))
	// Log the first drop and then every 1000th, so a flood does not flood
	// the log too; the metric has the exact count.
	if d == uint64(n) || d/1000 != (d-uint64(n))/1000 {
		s.log.Error("audit outcome records dropped", "total_dropped", d)
	}
}

// startCommitter starts the committer once; Close waits for it.
func (s *Stream) startCommitter() { s.startOnce.Do(func() { go s.commitLoop() }) }

// Close stops the committer. Appends waiting in the queue fail with
// ErrClosed. Run closes the writer itself once it has drained; Close is
// for a writer used without Run, and is safe to call again.
func (s *Stream) Close() error {
	s.startCommitter() // so that done closes even if nothing was written
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.done
		s.closeSpool()
	})
	<-s.done
	return nil
}

// linger lets a batch that holds two or more records someone waits for
// collect more until deadline. It yields the processor instead of sleeping:
// the goroutines that are about to append run first, and their records join
// the batch. A timer this short would sleep for a whole millisecond on an
// idle machine (the runtime's network poller waits in milliseconds): that
// millisecond was the p99 of an Append at 1,000 calls a second.
func (s *Stream) linger(batch []*item, deadline time.Time) []*item {
	for len(batch) < s.cfg.MaxBatch {
		select {
		case it := <-s.reqs:
			batch = append(batch, it)
			continue
		case <-s.stop:
			return batch
		default:
		}
		if !time.Now().Before(deadline) {
			return batch
		}
		runtime.Gosched()
	}
	return batch
}

func (s *Stream) failQueued() {
	for {
		select {
		case it := <-s.reqs:
			s.finish(it, result{err: ErrClosed})
		default:
			return
		}
	}
}

func (s *Stream) finish(it *item, res result) {
	if it.done != nil {
		it.done <- res
	}
}

func headValue(seq uint64, hash string) string {
	if seq == 0 {
		return ""
	}
	return strconv.FormatUint(seq, 10) + ":" + hash
}

func parseHead(v string) (uint64, string, error) {
	if v == "" {
		return 0, "", nil
	}
	seqS, hash, ok := strings.Cut(v, ":")
	seq, err := strconv.ParseUint(seqS, 10, 64)
	if !ok || err != nil {
		return 0, "", fmt.Errorf("malformed chain head %q", v)
	}
	return seq, hash, nil
}

func (s *Stream) chainFor(tenant string, known bool) *chain {
	c := s.chains[tenant]
	if c == nil {
		// A generated writer id is new, so its chains start empty; a
		// configured one may have stored heads from an earlier run.
		c = &chain{tenant: tenant, known: known}
		s.chains[tenant] = c
	}
	return c
}

// group is one chain's records in a batch: one script call.
type group struct {
	c       *chain
	expect  string
	head    string // the head once stored
	replErr error  // wait_replicas not met on this group's connection
	// pipelined: an earlier batch of this chain was in flight when this
	// one was staged, so its expected head was computed, not read.
	pipelined bool
	items     []*item
	recs      []*Record
	raws      []any
	cmd       *redis.Cmd
}

// send writes the groups of a batch: one pipeline with one script call
// per chain, then WAIT with wait_replicas. WAIT covers the writes of its
// own connection, so on a Cluster each primary gets its own pipeline (its
// groups, then WAIT), all at once; a primary that does not answer fails
// only its own groups.
func (s *Stream) send(ctx context.Context, order []*group) {
	cc, cluster := s.rdb.(*redis.ClusterClient)
	if !cluster || s.cfg.WaitReplicas == 0 {
		s.sendOn(ctx, s.rdb, order)
		return
	}
	byNode := map[*redis.Client][]*group{}
	for _, g := range order {
		node, err := cc.MasterForKey(ctx, StreamKey(g.c.tenant))
		if err != nil {
			g.cmd = redis.NewCmd(ctx)
			g.cmd.SetErr(err)
			continue
		}
		byNode[node] = append(byNode[node], g)
	}
	var wg sync.WaitGroup
	for node, gs := range byNode {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.sendOn(ctx, node, gs)
		}()
	}
	wg.Wait()
}

// sendOn writes groups through one pipeline of rdb.
func (s *Stream) sendOn(ctx context.Context, rdb redis.Cmdable, order []*group) {
	pipe := rdb.Pipeline()
	for _, g := range order {
		args := make([]any, 0, 3+len(g.raws))
		args = append(args, s.cfg.WriterID, g.expect, g.head)
		args = append(args, g.raws...)
		g.cmd = appendScript.Eval(ctx, pipe, []string{StreamKey(g.c.tenant), HeadsKey(g.c.tenant)}, args...)
	}
	var wait *redis.Cmd
	if s.cfg.WaitReplicas > 0 {
		// Same connection, after the appends: WAIT covers them.
		wait = pipe.Do(ctx, "wait", s.cfg.WaitReplicas, s.cfg.WaitTimeout.Milliseconds())
	}
	_, _ = pipe.Exec(ctx)
	if wait == nil {
		return
	}
	var replErr error
	if got, err := wait.Int64(); err != nil {
		replErr = fmt.Errorf("%w: %v", ErrNotReplicated, err)
	} else if got < int64(s.cfg.WaitReplicas) {
		replErr = fmt.Errorf("%w: %d of %d replicas", ErrNotReplicated, got, s.cfg.WaitReplicas)
	}
	for _, g := range order {
		g.replErr = replErr
	}
}

// generatedID reports whether the writer id was generated for this process
// (so no earlier chain can exist).
func (s *Stream) generatedID() bool { return s.fresh }

func (s *Stream) failAll(batch []*item, err error) {
	reason := "redis"
	if errors.Is(err, context.DeadlineExceeded) {
		reason = "timeout"
	}
	for _, it := range batch {
		s.m.failures.WithLabelValues(reason).Inc()
		s.finish(it, result{err: err})
	}
}

// resync re-reads the stored heads of the batch's chains that are unknown,
// in one pipeline, and settles the fate of earlier ambiguous writes.
func (s *Stream) resync(ctx context.Context, batch []*item) error {
	var need []*chain
	seen := map[string]bool{}
	for _, it := range batch {
		c := s.chainFor(it.rec.Tenant, s.generatedID())
		if !c.known && !seen[c.tenant] {
			seen[c.tenant] = true
			need = append(need, c)
		}
	}
	if len(need) == 0 {
		return nil
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(need))
	for i, c := range need {
		cmds[i] = pipe.HGet(ctx, HeadsKey(c.tenant), s.cfg.WriterID)
	}
	_, _ = pipe.Exec(ctx)
	for i, c := range need {
		v, err := cmds[i].Result()
		if errors.Is(err, redis.Nil) {
			v, err = "", nil
		}
		if err != nil {
			return fmt.Errorf("read audit chain head: %w", err)
		}
		seq, hash, err := parseHead(v)
		if err != nil {
			return fmt.Errorf("read audit chain head: %w", err)
		}
		if c.acked > seq {
			// Acknowledged, then gone: the primary that acknowledged them
			// died before a replica had them, or someone rewrote the head.
			lost := &LostRange{First: seq + 1, Last: c.acked, LastHash: c.ackedHash}
			if c.lost != nil {
				lost.First = min(lost.First, c.lost.First)
				if c.lost.Last > lost.Last {
					lost.Last, lost.LastHash = c.lost.Last, c.lost.LastHash
				}
			}
			c.lost = lost
			s.m.lost.Add(float64(c.acked - seq))
			s.log.Error("acknowledged audit records lost; writing a loss checkpoint", "tenant", c.tenant,
				"writer", s.cfg.WriterID, "first_seq", lost.First, "last_seq", lost.Last, "stored_head_seq", seq)
			c.acked, c.ackedHash = seq, hash
		}
		c.seq, c.hash, c.known = seq, hash, true
		for _, a := range c.ambiguous {
			a.stored, a.settled = a.attempt <= seq, true
		}
		c.ambiguous = nil
	}
	return nil
}

// checkpointRecord builds the signed checkpoint record for chain c.
func (s *Stream) checkpointRecord(it *item, c *chain, now time.Time) (*Record, error) {
	rec := &Record{
		V:      Version,
		Kind:   KindCheckpoint,
		Time:   now,
		Tenant: c.tenant,
		Writer: s.cfg.WriterID,
		Seq:    c.seq + 1,
		Prev:   c.hash,
	}
	cp := Checkpoint{
		Type:    it.checkpoint,
		Stream:  StreamKey(c.tenant),
		Writer:  s.cfg.WriterID,
		Seq:     rec.Seq,
		Head:    c.hash,
		Records: c.seq,
		Time:    now.Format(time.RFC3339Nano),
		MinID:   it.minID,
		Anchors: it.anchors,
		Segment: it.segment,
		Lost:    it.lost,
	}
	if err := cp.Sign(s.cfg.SigningKey); err != nil {
		return nil, err
	}
	d, err := json.Marshal(cp)
	if err != nil {
		return nil, fmt.Errorf("encode checkpoint: %w", err)
	}
	rec.Details = d
	return rec, nil
}

// submit queues an internal item and waits for its result.
func (s *Stream) submit(ctx context.Context, it *item) result {
	it.done = make(chan result, 1)
	it.ctx = ctx
	s.startCommitter()
	select {
	case s.reqs <- it:
	case <-s.stop:
		return result{err: ErrClosed}
	case <-ctx.Done():
		return result{err: ctx.Err()}
	}
	select {
	case r := <-it.done:
		return r
	case <-s.done:
		select {
		case r := <-it.done:
			return r
		default:
			return result{err: ErrClosed}
		}
	case <-ctx.Done():
		return result{err: ctx.Err()}
	}
}

// Checkpoint writes a signed checkpoint now for every chain of this writer
// that has records since its last one.
func (s *Stream) Checkpoint(ctx context.Context, typ string) error {
	var errs []error
	for _, t := range s.tenants() {
		r := s.submit(ctx, &item{rec: &Record{Tenant: t}, checkpoint: typ})
		if r.err != nil {
			errs = append(errs, fmt.Errorf("checkpoint %s: %w", t, r.err))
		}
	}
	return errors.Join(errs...)
}

// tenants lists the tenants this writer has written to.
func (s *Stream) tenants() []string {
	var out []string
	s.seen.Range(func(k, _ any) bool {
		out = append(out, k.(string))
		return true
	})
	return out
}

// Interface guards.
var (
	_ Sink    = (*Stream)(nil)
	_ Backlog = (*Stream)(nil)
)

// isNetTimeout reports a network timeout (a read or write deadline).
func isNetTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
