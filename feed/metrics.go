package feed

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	clients      prometheus.Gauge
	sent         prometheus.Counter
	dropped      *prometheus.CounterVec
	refused      *prometheus.CounterVec
	lagging      prometheus.Counter
	tailErrors   prometheus.Counter
	decodeErrors prometheus.Counter
}

func newMetrics(reg *prometheus.Registry) (*metrics, error) {
	m := &metrics{
		clients: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "passport_feed_clients", Help: "Open feed connections.",
		}),
		sent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "passport_feed_events_sent_total", Help: "Events written to feed connections.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_feed_clients_dropped_total", Help: "Connections closed by the server, by reason (slow, revoked, unavailable).",
		}, []string{"reason"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_feed_connections_refused_total", Help: "Feed handshakes refused, by reason (origin, auth, scope).",
		}, []string{"reason"}),
		lagging: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "passport_feed_lag_episodes_total", Help: "Times a connection overflowed its buffer and was switched to catching up from the stream.",
		}),
		tailErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "passport_feed_tail_errors_total", Help: "Failed reads of the audit streams.",
		}),
		decodeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "passport_feed_decode_errors_total", Help: "Audit stream entries that could not be decoded.",
		}),
	}
	for _, c := range []prometheus.Collector{m.clients, m.sent, m.dropped, m.refused, m.lagging, m.tailErrors, m.decodeErrors} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register feed metrics: %w", err)
		}
	}
	return m, nil
}
