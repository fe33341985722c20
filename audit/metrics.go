package audit

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the stream's Prometheus collectors. Labels are bounded: kind
// (the Kind constants), reason (a fixed set), level (durability levels).
type metrics struct {
	written     *prometheus.CounterVec
	batches     prometheus.Counter
	batchSize   prometheus.Histogram
	latency     prometheus.Histogram
	appendDur   prometheus.Histogram
	failures    *prometheus.CounterVec
	bufferDepth prometheus.Gauge
	dropped     prometheus.Counter
	checkpoints prometheus.Counter
	durability  *prometheus.GaugeVec
	lost        prometheus.Counter
	resent      prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		written: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_audit_records_written_total",
			Help: "Audit records acknowledged by Redis, by kind.",
		}, []string{"kind"}),
		batches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "passport_audit_batches_total",
			Help: "Group-commit batches sent to Redis (one pipeline round trip each).",
		}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "passport_audit_batch_size_records",
			Help:    "Records per group-commit batch.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512},
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "passport_audit_write_duration_seconds",
			Help:    "Time of one batch write round trip to Redis.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		appendDur: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "passport_audit_append_duration_seconds",
			Help:    "Time a write-ahead Append waited for its acknowledgement (queue, batch and round trip), successful or not.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_audit_write_failures_total",
			Help: "Audit records not acknowledged, by reason (timeout, redis, chain, replication, closed).",
		}, []string{"reason"}),
		bufferDepth: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "passport_audit_outcome_buffer_records",
			Help: "Outcome records waiting to be written (buffered or being retried).",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "passport_audit_outcome_dropped_total",
			Help: "Outcome records dropped because the buffer was full or shutdown flushing timed out.",
		}),
		checkpoints: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "passport_audit_checkpoints_total",
			Help: "Signed checkpoints written.",
		}),
		lost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "passport_audit_lost_records_total",
			Help: "Records Redis acknowledged and later no longer had (a failover without wait_replicas, or a rewritten head); each loss is written as a signed loss checkpoint.",
		}),
		resent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "passport_audit_resent_total",
			Help: "Records sent again because Redis refused their pipelined batch (it ran before the batch it follows, or the chain head moved); each is sent once more, after the head is re-read.",
		}),
		durability: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "passport_audit_durability_status",
			Help: "1 for the Redis persistence level seen at the last check: always, everysec, no, off or unknown.",
		}, []string{"level"}),
	}
	m.written = register(reg, m.written)
	m.batches = register(reg, m.batches)
	m.batchSize = register(reg, m.batchSize)
	m.latency = register(reg, m.latency)
	m.appendDur = register(reg, m.appendDur)
	m.failures = register(reg, m.failures)
	m.bufferDepth = register(reg, m.bufferDepth)
	m.dropped = register(reg, m.dropped)
	m.checkpoints = register(reg, m.checkpoints)
	m.durability = register(reg, m.durability)
	m.lost = register(reg, m.lost)
	m.resent = register(reg, m.resent)
	return m
}

// register adds c to reg, or returns the collector already registered
// under the same name (two streams in one process share the series).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if ex, ok := are.ExistingCollector.(C); ok {
				return ex
			}
		}
	}
	return c
}
