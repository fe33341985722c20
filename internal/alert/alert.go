// Package alert delivers operator alerts to chat webhooks (Slack- and
// Discord-compatible JSON bodies): critical chaos starting, an incident
// escalated or resolved slowly, an agent blocked.
//
// Notify never blocks: alerts go into a bounded queue that Run drains,
// retrying each delivery with exponential backoff. When the queue is full
// the alert is dropped and counted, because a slow chat service must never
// slow down the healer that is repairing production.
package alert

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/internal/backoff"
	"github.com/agentpassport/passport/passport"
)

// Alert kinds.
const (
	KindChaosCritical     = "chaos_critical"
	KindIncidentEscalated = "incident_escalated"
	KindSlowResolution    = "slow_resolution"
	KindAgentBlocked      = "agent_blocked"
	KindApprovalRequested = "approval_requested" // the proxy: a policy asked a person to approve a call
)

// Alert is one thing an operator should know about.
type Alert struct {
	Kind     string    `json:"kind"`
	Severity string    `json:"severity"` // "critical" or "warning"
	Tenant   string    `json:"tenant"`
	Text     string    `json:"text"`
	Time     time.Time `json:"time"`
}

// Notifier is what components that raise alerts depend on.
type Notifier interface {
	// Notify queues a; it never blocks.
	Notify(a Alert)
}

// Nop discards alerts; use it when no webhook is configured.
type Nop struct{}

// Notify implements Notifier.
func (Nop) Notify(Alert) {}

// Webhook formats.
const (
	FormatAuto    = "auto"    // discord when the host name contains "discord", else slack
	FormatSlack   = "slack"   // {"text": "..."}
	FormatDiscord = "discord" // {"content": "..."}
)

// Webhook is one destination.
type Webhook struct {
	// URL is the webhook URL. It usually embeds a token, so it is never
	// logged; only its host is.
	URL string `yaml:"url"`
	// Format is auto (default), slack or discord.
	Format string `yaml:"format"`
}

// Config configures delivery. Zero fields take the documented defaults.
type Config struct {
	// Webhooks are the destinations; none means alerts are only counted.
	Webhooks []Webhook `yaml:"webhooks"`
	// QueueSize bounds alerts waiting for delivery. Default 256.
	QueueSize int `yaml:"queue_size"`
	// MaxAttempts per webhook per alert. Default 5.
	MaxAttempts int `yaml:"max_attempts"`
	// Backoff is the first retry delay; it doubles up to MaxBackoff.
	// Default 250ms.
	Backoff time.Duration `yaml:"backoff"`
	// MaxBackoff caps a retry delay, including a server's Retry-After.
	// Default 5s.
	MaxBackoff time.Duration `yaml:"max_backoff"`
	// Timeout bounds one HTTP attempt. Default 5s.
	Timeout time.Duration `yaml:"timeout"`
}

func (c Config) withDefaults() Config {
	if c.QueueSize == 0 {
		c.QueueSize = 256
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 5
	}
	if c.Backoff == 0 {
		c.Backoff = 250 * time.Millisecond
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = 5 * time.Second
	}
	if c.Timeout == 0 {
		c.Timeout = 5 * time.Second
	}
	for i := range c.Webhooks {
		if c.Webhooks[i].Format == "" {
			c.Webhooks[i].Format = FormatAuto
		}
	}
	return c
}

// Validate reports every problem in the configuration.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	for i, w := range c.Webhooks {
		u, err := url.Parse(w.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("webhooks[%d]: url must be an absolute http(s) URL", i))
		}
		switch w.Format {
		case FormatAuto, FormatSlack, FormatDiscord:
		default:
			errs = append(errs, fmt.Errorf("webhooks[%d]: format %q: want auto, slack or discord", i, w.Format))
		}
	}
	if c.QueueSize < 1 || c.MaxAttempts < 1 || c.Backoff < 0 || c.MaxBackoff < c.Backoff || c.Timeout <= 0 {
		errs = append(errs, errors.New("queue_size and max_attempts must be positive, backoff <= max_backoff, timeout > 0"))
	}
	return errors.Join(errs...)
}

// Deps are the alerter's collaborators.
type Deps struct {
	Logger *slog.Logger // required
	// Registry receives the metrics; nil keeps them private. Instances
	// sharing a registry need wrapped registerers (WrapRegistererWith).
	Registry prometheus.Registerer
	Client   *http.Client // nil: a client with Config.Timeout
}

// Alerter queues and delivers alerts.
type Alerter struct {
	cfg    Config
	log    *slog.Logger
	client *http.Client
	queue  chan Alert

	queued     *prometheus.CounterVec
	dropped    prometheus.Counter
	deliveries *prometheus.CounterVec
	runOnce    sync.Once
}

// New builds an Alerter; call Run to deliver.
func New(cfg Config, deps Deps) (*Alerter, error) {
	if deps.Logger == nil {
		return nil, errors.New("alert: logger is required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("alert config: %w", err)
	}
	cfg = cfg.withDefaults()
	client := deps.Client
	if client == nil {
		client = &http.Client{Timeout: cfg.Timeout}
	}
	a := &Alerter{
		cfg: cfg, log: deps.Logger, client: client, queue: make(chan Alert, cfg.QueueSize),
		queued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_alert_raised_total", Help: "Alerts raised, by kind.",
		}, []string{"kind"}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "passport_alert_dropped_total", Help: "Alerts dropped because the delivery queue was full or the process stopped.",
		}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_alert_deliveries_total", Help: "Webhook delivery attempts, by result (ok, retry, failed).",
		}, []string{"result"}),
	}
	var reg prometheus.Registerer = prometheus.NewRegistry()
	if deps.Registry != nil {
		reg = deps.Registry
	}
	for _, c := range []prometheus.Collector{a.queued, a.dropped, a.deliveries} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register alert metrics: %w", err)
		}
	}
	return a, nil
}

// Notify queues an alert without blocking; a full queue drops it.
func (a *Alerter) Notify(al Alert) {
	if al.Time.IsZero() {
		al.Time = time.Now()
	}
	a.queued.WithLabelValues(al.Kind).Inc()
	if len(a.cfg.Webhooks) == 0 {
		return
	}
	select {
	case a.queue <- al:
	default:
		a.dropped.Inc()
		a.log.Warn("alert dropped: queue full", "kind", al.Kind)
	}
}

// Run delivers queued alerts until ctx is done.
func (a *Alerter) Run(ctx context.Context) error {
	err := errors.New("alert: Run called twice")
	a.runOnce.Do(func() {
		err = nil
		for {
			select {
			case <-ctx.Done():
				a.dropped.Add(float64(len(a.queue)))
				return
			case al := <-a.queue:
				for _, w := range a.cfg.Webhooks {
					a.deliver(ctx, w, al)
				}
			}
		}
	})
	return err
}

// Body returns the JSON body for a webhook format: Slack reads "text",
// Discord reads "content".
func Body(format, rawURL string, al Alert) []byte {
	msg := Message(al)
	key := "text"
	if format == FormatDiscord || (format == FormatAuto && isDiscord(rawURL)) {
		key = "content"
	}
	b, _ := json.Marshal(map[string]string{key: msg}) // a map of strings cannot fail
	return b
}

// Message renders an alert as one line of chat text.
func Message(al Alert) string {
	// Unicode, not ":shortcodes:": Slack and Discord both render it.
	icon := "⚠️"
	if al.Severity == "critical" {
		icon = "🚨"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s [%s] ", icon, strings.ToUpper(al.Severity))
	if al.Tenant != "" {
		fmt.Fprintf(&b, "tenant %s: ", al.Tenant)
	}
	b.WriteString(al.Text)
	return b.String()
}

func isDiscord(raw string) bool {
	u, err := url.Parse(raw)
	return err == nil && strings.Contains(strings.ToLower(u.Hostname()), "discord")
}

func hostOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "?"
	}
	return u.Host
}

// deliver posts al to w, retrying transport errors, 429 and 5xx with
// exponential backoff (honouring Retry-After up to MaxBackoff).
func (a *Alerter) deliver(ctx context.Context, w Webhook, al Alert) {
	body := Body(w.Format, w.URL, al)
	retry := backoff.Backoff{Min: a.cfg.Backoff, Max: a.cfg.MaxBackoff}
	for attempt := 1; ; attempt++ {
		retryAfter, err := a.post(ctx, w.URL, body)
		if err == nil {
			a.deliveries.WithLabelValues("ok").Inc()
			return
		}
		var perm permanentError
		if errors.As(err, &perm) || attempt >= a.cfg.MaxAttempts || ctx.Err() != nil {
			a.deliveries.WithLabelValues("failed").Inc()
			a.log.Warn("alert delivery failed", "kind", al.Kind, "host", hostOf(w.URL), "attempts", attempt, "err", err)
			return
		}
		a.deliveries.WithLabelValues("retry").Inc()
		wait := retry.Next()
		if retryAfter > 0 {
			wait = retryAfter
		}
		wait = min(wait, a.cfg.MaxBackoff)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			a.deliveries.WithLabelValues("failed").Inc()
			return
		case <-t.C:
		}
	}
}

type permanentError struct{ code int }

func (e permanentError) Error() string { return "webhook answered " + strconv.Itoa(e.code) }

func (a *Alerter) post(ctx context.Context, rawURL string, body []byte) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, rawURL, bytes.NewReader(body))
	if err != nil {
		return 0, permanentError{0}
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.client.Do(req)
	if err != nil {
		// The error text of a failed request contains the URL, which
		// carries the webhook token: keep only a generic description.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return 0, fmt.Errorf("post webhook: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return 0, nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		var ra time.Duration
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
			ra = time.Duration(s) * time.Second
		}
		return ra, fmt.Errorf("webhook answered %d", resp.StatusCode)
	default:
		return 0, permanentError{resp.StatusCode}
	}
}

// WatchBlocks raises an agent_blocked alert for every block the authority
// announces on passport.RevocationChannel, until ctx is done. Run it once
// per deployment (not once per healer) to avoid duplicate alerts.
func WatchBlocks(ctx context.Context, rdb redis.UniversalClient, n Notifier, log *slog.Logger) error {
	sub := rdb.Subscribe(ctx, passport.RevocationChannel)
	defer sub.Close()
	ch := sub.Channel()
	for {
		select {
		case <-ctx.Done():
			return nil
		case m, ok := <-ch:
			if !ok {
				return nil
			}
			var ev passport.RevocationEvent
			if err := json.Unmarshal([]byte(m.Payload), &ev); err != nil {
				log.Warn("revocation event not understood", "err", err)
				continue
			}
			if ev.Type != passport.EventBlock {
				continue
			}
			text := fmt.Sprintf("agent %s blocked", ev.AgentID)
			if r := ev.Reason; r != "" {
				if len(r) > 200 {
					r = r[:200] + "…"
				}
				text += ": " + r
			}
			n.Notify(Alert{Kind: KindAgentBlocked, Severity: "critical", Tenant: ev.Tenant, Text: text})
		}
	}
}

var _ Notifier = (*Alerter)(nil)
var _ Notifier = Nop{}
