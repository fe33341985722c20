package audit

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// KindRefusals is a summary record: refused calls of one tenant, agent
// (when known), source address, route, reason and status, counted over
// one window (a second). It replaces a decision record per call where
// that would only repeat itself: calls without a valid passport (a flood
// of them must not grow Redis one record per call), and any refusal while
// the audit store is degraded (so that refusals never crowd out the
// outcome records of forwarded calls). Nothing is lost but the per-call
// detail: the count, the first and last time and request id remain.
// Its Details is a RefusalSummary; Decision, Reasons, Status, Route and
// Action are set as on the records it stands for.
const KindRefusals Kind = "refusals"

// RefusalSummary is the Details of a KindRefusals record.
type RefusalSummary struct {
	// Reason is the refusal's reason; the reasons of a policy denial with
	// several are joined with ",".
	Reason string `json:"reason"`
	Count  int    `json:"count"`
	// First and Last are the times of the first and the last refusal.
	First time.Time `json:"first"`
	Last  time.Time `json:"last"`
	// FirstRequestID and LastRequestID are the proxy's request ids of
	// those two calls, as in their answers and the logs.
	FirstRequestID string `json:"first_request_id,omitempty"`
	LastRequestID  string `json:"last_request_id,omitempty"`
	// Source is the client address the calls came from, or "other" when
	// too many sources were refused in one window.
	Source string `json:"source,omitempty"`
	// Outage is set when the refusals were summarised because the audit
	// store was degraded (they would otherwise have one record each).
	Outage bool `json:"outage,omitempty"`
}

// AggregatorConfig tunes an Aggregator. Zero values mean the defaults.
type AggregatorConfig struct {
	// Window is the period one summary covers. Default 1s.
	Window time.Duration
	// MaxKeys bounds the summaries of one window; past it, new sources
	// are counted under source "other" (and no agent). Default 10000.
	MaxKeys int
	// Clock is the time source. Default time.Now.
	Clock func() time.Time
}

// Aggregator folds refusal records into KindRefusals summaries and hands
// them to a Sink (Enqueue) at the end of each window. Its memory is
// bounded by MaxKeys whatever the flood.
type Aggregator struct {
	sink Sink
	cfg  AggregatorConfig
	m    *aggMetrics

	mu  sync.Mutex
	cur map[aggKey]*aggEntry
}

type aggKey struct {
	tenant, agent, source, route, action, reason, decision string
	status                                                 int
	outage                                                 bool
}

type aggEntry struct {
	rec *Record // the first refusal, as a template
	sum RefusalSummary
}

// NewAggregator returns an aggregator writing to sink. reg may be nil.
func NewAggregator(sink Sink, cfg AggregatorConfig, reg prometheus.Registerer) *Aggregator {
	if cfg.Window <= 0 {
		cfg.Window = time.Second
	}
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = 10000
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	return &Aggregator{sink: sink, cfg: cfg, m: newAggMetrics(reg), cur: map[aggKey]*aggEntry{}}
}

// Add counts one refused call. rec is its decision record (Tenant, Route,
// Action, Decision, Reasons[0], Status, RequestID, Time and AgentID are
// used); source is the client's address; outage says the audit store is
// degraded.
func (a *Aggregator) Add(rec *Record, source string, outage bool) {
	reason := strings.Join(rec.Reasons, ",")
	t := rec.Time
	if t.IsZero() {
		t = a.cfg.Clock()
	}
	k := aggKey{tenant: rec.Tenant, agent: rec.AgentID, source: source, route: rec.Route, action: rec.Action,
		reason: reason, decision: rec.Decision, status: rec.Status, outage: outage}
	a.m.folded.Inc()
	a.mu.Lock()
	defer a.mu.Unlock()
	e := a.cur[k]
	if e == nil && len(a.cur) >= a.cfg.MaxKeys {
		k.source, k.agent = "other", ""
		e = a.cur[k]
	}
	if e == nil {
		tmpl := &Record{V: Version, Kind: KindRefusals, Tenant: rec.Tenant, AgentID: k.agent, Route: rec.Route,
			Action: rec.Action, Decision: rec.Decision, Reasons: slices.Clone(rec.Reasons), Status: rec.Status,
			PolicyRevision: rec.PolicyRevision}
		if k.agent != "" {
			tmpl.AgentName, tmpl.AgentType, tmpl.TrustLevel = rec.AgentName, rec.AgentType, rec.TrustLevel
		}
		e = &aggEntry{rec: tmpl, sum: RefusalSummary{Reason: reason, First: t, FirstRequestID: rec.RequestID,
			Source: k.source, Outage: outage}}
		a.cur[k] = e
	}
	e.sum.Count++
	if t.Before(e.sum.First) {
		e.sum.First, e.sum.FirstRequestID = t, rec.RequestID
	}
	if !t.Before(e.sum.Last) {
		e.sum.Last, e.sum.LastRequestID = t, rec.RequestID
	}
}

// Flush hands the current window's summaries to the sink.
func (a *Aggregator) Flush() {
	a.mu.Lock()
	cur := a.cur
	a.cur = make(map[aggKey]*aggEntry, len(cur))
	a.mu.Unlock()
	for _, e := range cur {
		rec := e.rec
		rec.Time = e.sum.Last
		d, err := json.Marshal(e.sum)
		if err != nil {
			continue // a struct of strings, ints and times cannot fail
		}
		rec.Details = d
		a.sink.Enqueue(rec)
		a.m.summaries.Inc()
	}
}

// Run flushes every window until ctx ends, then flushes once more, so a
// refusal counted before shutdown is written with the last outcomes.
func (a *Aggregator) Run(ctx context.Context) error {
	t := time.NewTicker(a.cfg.Window)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			a.Flush()
			return nil
		case <-t.C:
			a.Flush()
		}
	}
}

type aggMetrics struct {
	folded    prometheus.Counter
	summaries prometheus.Counter
}

func newAggMetrics(reg prometheus.Registerer) *aggMetrics {
	m := &aggMetrics{
		folded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "passport_audit_refusals_summarised_total",
			Help: "Refused calls recorded in a refusals summary record instead of a record of their own.",
		}),
		summaries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "passport_audit_refusal_summaries_total",
			Help: "Refusals summary records handed to the audit writer.",
		}),
	}
	m.folded = register(reg, m.folded)
	m.summaries = register(reg, m.summaries)
	return m
}
