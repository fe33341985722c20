package audit

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/agentpassport/passport/internal/backoff"
	"github.com/agentpassport/passport/internal/run"
)

// Witness keeps writers' signed statements outside Redis, where whoever
// can write Redis cannot rewrite them (Certificate Transparency's witnesses
// and CloudTrail's digest files do the same job). A DirWitness is a local
// directory of fsynced, hash-chained files; an HTTPWitness is a `passport
// witness` server. A writer may have several.
type Witness interface {
	// Name identifies the witness in logs, metrics and reports.
	Name() string
	// Witness stores a signed statement durably. A *WitnessRefusal is a
	// definite no (rollback, fork, wrong key, ...); other errors may pass.
	Witness(ctx context.Context, statement []byte) error
	// Writers lists the writers the witness holds statements of.
	Writers(ctx context.Context) ([]string, error)
	// ReadLog calls fn with each stored line of a writer's log, in order.
	ReadLog(ctx context.Context, writer string, fn func(line []byte) error) error
}

// OpenWitness returns the witness a spec names: an http:// or https:// URL
// of `passport witness` (token, when set, is sent as a bearer token), or a
// directory. It connects to nothing and creates nothing.
func OpenWitness(spec, token string) (Witness, error) {
	spec = strings.TrimSpace(spec)
	switch {
	case spec == "":
		return nil, errors.New("witness: empty spec")
	case strings.HasPrefix(spec, "http://"), strings.HasPrefix(spec, "https://"):
		return NewHTTPWitness(spec, token, &http.Client{Timeout: 10 * time.Second})
	}
	return NewDirWitness(spec, DirWitnessOptions{})
}

// OpenWitnesses opens each spec; specs may also hold comma-separated lists
// (PASSPORT_WITNESS=/var/lib/passport/witness,https://witness.example).
func OpenWitnesses(specs []string, token string) ([]Witness, error) {
	var out []Witness
	for _, s := range specs {
		for _, one := range strings.Split(s, ",") {
			if strings.TrimSpace(one) == "" {
				continue
			}
			w, err := OpenWitness(one, token)
			if err != nil {
				return nil, err
			}
			out = append(out, w)
		}
	}
	return out, nil
}

// witnessPub is the writer's side: it keeps the last acknowledged
// checkpoint of every stream, turns them into signed statements once per
// checkpoint interval (or a heartbeat when nothing is new), and hands the
// latest to one delivery loop per witness. Statements are self-contained,
// so a witness that was down gets the newest one and misses nothing.
type witnessPub struct {
	writer    string
	key       ed25519.PrivateKey
	clock     func() time.Time
	heartbeat time.Duration
	timeout   time.Duration
	retryMin  time.Duration
	retryMax  time.Duration
	log       *slog.Logger
	sinks     []*witnessSink
	wg        sync.WaitGroup

	mu    sync.Mutex
	heads map[string]StreamHead
	dirty bool
	last  time.Time // time of the last statement
}

type signedStatement struct {
	raw []byte
	typ string
}

type witnessSink struct {
	w      Witness
	latest atomic.Pointer[signedStatement]
	wake   chan struct{}

	stored     prometheus.Counter
	failed     prometheus.Counter
	refused    prometheus.Counter
	lastOK     prometheus.Gauge
	refusalLog rate.Sometimes // one line per 10 s: a writer refused on every round must not flood the log
}

type witnessMetrics struct {
	statements *prometheus.CounterVec
	lastOK     *prometheus.GaugeVec
}

func newWitnessPub(cfg *StreamConfig, log *slog.Logger, reg prometheus.Registerer) *witnessPub {
	p := &witnessPub{
		writer: cfg.WriterID, key: cfg.SigningKey, clock: cfg.Clock,
		heartbeat: cfg.WitnessHeartbeat, timeout: cfg.WitnessTimeout,
		retryMin: cfg.RetryMin, retryMax: cfg.RetryMax,
		log: log, heads: map[string]StreamHead{},
	}
	if len(cfg.Witnesses) == 0 {
		return p
	}
	m := witnessMetrics{
		statements: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_audit_witness_statements_total",
			Help: "Signed statements sent to each witness, by result (stored, refused, failed).",
		}, []string{"witness", "result"})),
		lastOK: register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "passport_audit_witness_last_stored_timestamp_seconds",
			Help: "When each witness last stored a statement of this writer (Unix time).",
		}, []string{"witness"})),
	}
	for _, w := range cfg.Witnesses {
		p.sinks = append(p.sinks, &witnessSink{
			w: w, wake: make(chan struct{}, 1), refusalLog: rate.Sometimes{Interval: 10 * time.Second},
			stored:  m.statements.WithLabelValues(w.Name(), "stored"),
			failed:  m.statements.WithLabelValues(w.Name(), "failed"),
			refused: m.statements.WithLabelValues(w.Name(), "refused"),
			lastOK:  m.lastOK.WithLabelValues(w.Name()),
		})
	}
	return p
}

// noteCheckpoint records an acknowledged checkpoint record (committer).
func (p *witnessPub) noteCheckpoint(rec *Record, typ string) {
	p.mu.Lock()
	p.heads[rec.Tenant] = StreamHead{Tenant: rec.Tenant, Seq: rec.Seq, Hash: rec.Hash, Checkpoint: typ,
		Time: rec.Time.UTC().Format(time.RFC3339Nano)}
	p.dirty = true
	p.mu.Unlock()
}

// sealedTenants lists the tenants with an acknowledged checkpoint.
func (p *witnessPub) sealedTenants() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.heads))
	for t := range p.heads {
		out = append(out, t)
	}
	return out
}

// start runs the delivery loops until ctx is done and announces the
// writer (which pins its key at the witnesses before anything is sealed).
func (p *witnessPub) start(ctx context.Context) {
	for _, k := range p.sinks {
		p.wg.Go(func() { _ = run.Guarded(ctx, "audit.witness", func() error { p.deliver(ctx, k); return nil })() })
	}
	p.publish(StatementHeartbeat)
}

// publish builds a statement and hands it to every witness: typ when set,
// else a checkpoint statement when something new was sealed, else a
// heartbeat once per WitnessHeartbeat while the writer has sealed streams.
func (p *witnessPub) publish(typ string) *signedStatement {
	if len(p.sinks) == 0 {
		return nil
	}
	p.mu.Lock()
	now := p.clock().UTC()
	if !now.After(p.last) {
		now = p.last.Add(time.Nanosecond) // strictly increasing, whatever the clock does
	}
	if typ == "" {
		switch {
		case p.dirty:
			typ = StatementCheckpoint
		case len(p.heads) > 0 && now.Sub(p.last) >= p.heartbeat:
			typ = StatementHeartbeat
		default:
			p.mu.Unlock()
			return nil
		}
	}
	st := Statement{V: StatementVersion, Type: typ, Writer: p.writer, Time: now.Format(time.RFC3339Nano),
		Streams: make([]StreamHead, 0, len(p.heads))}
	for _, h := range p.heads {
		st.Streams = append(st.Streams, h)
	}
	sortHeads(st.Streams)
	raw, err := SignStatement(&st, p.key)
	if err != nil {
		p.mu.Unlock()
		p.log.Error("audit witness statement not signed", "err", err)
		return nil
	}
	p.dirty, p.last = false, now
	p.mu.Unlock()
	s := &signedStatement{raw: raw, typ: typ}
	for _, k := range p.sinks {
		k.latest.Store(s)
		select {
		case k.wake <- struct{}{}:
		default:
		}
	}
	return s
}

// deliver sends each witness the newest statement, retrying with backoff;
// a newer statement replaces one still waiting. A slow witness delays no
// other, and never a write: the witness is evidence, not the write path.
func (p *witnessPub) deliver(ctx context.Context, k *witnessSink) {
	var sent *signedStatement
	retry := backoff.Backoff{Min: p.retryMin, Max: p.retryMax}
	failing := false
	for {
		st := k.latest.Load()
		if st == nil || st == sent {
			select {
			case <-ctx.Done():
				return
			case <-k.wake:
				continue
			}
		}
		err := p.send(ctx, k, st)
		if ctx.Err() != nil {
			return
		}
		switch {
		case err == nil:
			sent = st
			retry.Reset()
			if failing {
				p.log.Info("audit witness reachable again", "witness", k.w.Name())
				failing = false
			}
		case errors.Is(err, ErrWitnessRefused):
			sent = st // resending cannot help; the next statement may
		default:
			if !failing {
				p.log.Warn("audit witness unreachable; retrying with the newest statement", "witness", k.w.Name(), "err", err)
				failing = true
			}
			if !retry.Wait(ctx) {
				return
			}
		}
	}
}

func (p *witnessPub) send(ctx context.Context, k *witnessSink, st *signedStatement) error {
	wctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	err := k.w.Witness(wctx, st.raw)
	switch {
	case err == nil:
		k.stored.Inc()
		k.lastOK.Set(float64(time.Now().Unix()))
	case errors.Is(err, ErrWitnessRefused):
		k.refused.Inc()
		// A refusal is news: the witness holds a later or other chain than
		// this writer (Redis lost or rewrote sealed records), or another key.
		k.refusalLog.Do(func() {
			p.log.Error("audit witness refused a statement", "witness", k.w.Name(), "type", st.typ, "err", err)
		})
	default:
		k.failed.Inc()
	}
	return err
}

// close stops the delivery loops and hands every witness the final
// statement — a close when the final checkpoints all succeeded, else a
// heartbeat, so that a writer whose tail stayed unsealed is not taken for
// one that stopped cleanly — retrying until ctx ends.
func (p *witnessPub) close(ctx context.Context, clean bool) {
	p.wg.Wait() // the loops stop with Run's context
	if len(p.sinks) == 0 {
		return
	}
	typ := StatementClose
	if !clean {
		typ = StatementHeartbeat
	}
	st := p.publish(typ)
	if st == nil {
		return
	}
	var wg sync.WaitGroup
	for _, k := range p.sinks {
		wg.Go(func() {
			for {
				err := p.send(ctx, k, st)
				if err == nil || errors.Is(err, ErrWitnessRefused) {
					return
				}
				select {
				case <-ctx.Done():
					p.log.Warn("audit witness did not get the closing statement", "witness", k.w.Name(), "err", err)
					return
				case <-time.After(p.retryMin):
				}
			}
		})
	}
	wg.Wait()
}

// witnessConfig checks the witness settings of cfg.
func witnessConfig(cfg *StreamConfig) error {
	if len(cfg.Witnesses) == 0 {
		return nil
	}
	if err := validWriterID(cfg.WriterID); err != nil {
		return fmt.Errorf("audit witness: %w", err)
	}
	for i, w := range cfg.Witnesses {
		if w == nil {
			return fmt.Errorf("audit witness %d: nil", i)
		}
	}
	return nil
}
