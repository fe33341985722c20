package proxy

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentpassport/passport/proxy/policy"
)

// metrics are the proxy's collectors, on the registry passed in. Labels are
// bounded: route names and actions come from the config, decisions and
// statuses from small fixed sets; never an agent id or a raw path.
type metrics struct {
	requests           *prometheus.CounterVec
	decisionSeconds    prometheus.Histogram
	upstreamSeconds    *prometheus.HistogramVec
	keyRefreshes       *prometheus.CounterVec
	auditFailures      *prometheus.CounterVec
	credentialFailures *prometheus.CounterVec
	passportRecords    prometheus.Counter
	refusals           *prometheus.CounterVec
	verifyCache        *prometheus.CounterVec
	shadowDisagree     *prometheus.CounterVec
	outcomeReports     *prometheus.CounterVec
	subscriptionUp     prometheus.Gauge
	revocationLoads    prometheus.Counter
	revocationFallback prometheus.Counter
	policy             *policy.Metrics
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_proxy_requests_total",
			Help: "Requests by route, action, decision (allow, deny, error) and status code.",
		}, []string{"route", "action", "decision", "status"}),
		decisionSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "passport_proxy_decision_duration_seconds",
			Help:    "Time to decide a call: passport verification, revocation and reputation checks, and policy.",
			Buckets: []float64{10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 50e-3},
		}),
		upstreamSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "passport_proxy_upstream_duration_seconds",
			Help:    "Time from forwarding a call to the upstream's response headers, by route.",
			Buckets: []float64{250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1, 5, 30},
		}, []string{"route"}),
		keyRefreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_proxy_key_refreshes_total",
			Help: "JWKS fetches from the authority by result (success, failure).",
		}, []string{"result"}),
		auditFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_proxy_audit_failures_total",
			Help: "Write-ahead audit appends that failed (the call was refused with 503), by kind.",
		}, []string{"kind"}),
		passportRecords: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "passport_proxy_passport_records_total",
			Help: "Passport records written: a passport's claims, recorded once and referenced by its decisions.",
		}),
		credentialFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_proxy_upstream_credential_failures_total",
			Help: "Allowed calls not forwarded because the upstream's credential could not be had, by upstream.",
		}, []string{"upstream"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_proxy_refusals_total",
			Help: "Calls refused before the policy, by reason (expired, revoked, bad_path, ...).",
		}, []string{"reason"}),
		verifyCache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_proxy_verify_cache_total",
			Help: "Verified-passport cache lookups by result (hit, miss).",
		}, []string{"result"}),
		shadowDisagree: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_policy_shadow_disagreements_total",
			Help: "Calls where the shadow policy decided differently from the enforced one, by enforced decision.",
		}, []string{"enforced"}),
		outcomeReports: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_proxy_denial_reports_total",
			Help: "Policy denials reported to the authority's outcomes API, by result (sent, failed, dropped).",
		}, []string{"result"}),
		subscriptionUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "passport_proxy_revocation_subscription_up",
			Help: "1 while the revocation subscription is live, its sets loaded, and a heartbeat proved it current within 500ms.",
		}),
		revocationLoads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "passport_proxy_revocation_loads_total",
			Help: "Full loads of the revoked and blocked sets (at start and after each reconnect).",
		}),
		revocationFallback: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "passport_proxy_revocation_direct_checks_total",
			Help: "Revocation checks that asked Redis directly because the subscription was down or not proven current.",
		}),
	}
	reg.MustRegister(m.requests, m.decisionSeconds, m.upstreamSeconds, m.keyRefreshes, m.auditFailures,
		m.refusals, m.verifyCache, m.shadowDisagree, m.outcomeReports, m.subscriptionUp, m.revocationLoads,
		m.revocationFallback, m.passportRecords, m.credentialFailures)
	m.policy = policy.NewMetrics(reg)
	for _, r := range []string{"sent", "failed", "dropped"} {
		m.outcomeReports.WithLabelValues(r)
	}
	for _, r := range []string{"success", "failure"} {
		m.keyRefreshes.WithLabelValues(r)
	}
	m.auditFailures.WithLabelValues("decision")
	m.auditFailures.WithLabelValues("passport")
	return m
}

// routeMetrics are the pre-resolved series of one route, so the hot path
// does not hash label values on every call.
type routeMetrics struct {
	upstream prometheus.Observer
}
