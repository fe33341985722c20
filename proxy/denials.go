package proxy

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/agentpassport/passport/passport"
)

// denialReporter reports policy denials to the authority's outcomes API so
// that its reputation model can block a rogue agent. Reports are queued
// and sent by one worker; a full queue drops and counts, it never slows a
// call down.
type denialReporter struct {
	url    string
	token  passport.Secret
	client *http.Client
	q      chan denial
	m      *metrics
	log    *slog.Logger
}

type denial struct{ tenant, agentID string }

func newDenialReporter(cfg *Config, client *http.Client, m *metrics, log *slog.Logger) *denialReporter {
	if cfg.ReportToken == "" {
		return nil
	}
	return &denialReporter{url: strings.TrimRight(cfg.AuthorityURL, "/"), token: cfg.ReportToken, client: client,
		q: make(chan denial, cfg.OutcomeQueue), m: m, log: log}
}

func (d *denialReporter) report(tenant, agentID string) {
	if d == nil {
		return
	}
	select {
	case d.q <- denial{tenant, agentID}:
	default:
		d.m.outcomeReports.WithLabelValues("dropped").Inc()
	}
}

var deniedBody = []byte(`{"outcome":"denied"}`)

// Run sends queued reports until ctx ends.
func (d *denialReporter) Run(ctx context.Context) error {
	if d == nil {
		<-ctx.Done()
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case x := <-d.q:
			d.send(ctx, x)
		}
	}
}

func (d *denialReporter) send(ctx context.Context, x denial) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	u := fmt.Sprintf("%s/v1/tenants/%s/agents/%s/outcomes", d.url, x.tenant, pathEscape(x.agentID))
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(deniedBody))
	if err != nil {
		d.m.outcomeReports.WithLabelValues("failed").Inc()
		return
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+d.token.Reveal())
	resp, err := d.client.Do(req)
	if err != nil {
		d.m.outcomeReports.WithLabelValues("failed").Inc()
		d.log.WarnContext(ctx, "denial report failed", "tenant", x.tenant, "agent_id", x.agentID, "error", err)
		return
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		d.m.outcomeReports.WithLabelValues("failed").Inc()
		d.log.WarnContext(ctx, "denial report refused", "tenant", x.tenant, "agent_id", x.agentID, "status", resp.StatusCode)
		return
	}
	d.m.outcomeReports.WithLabelValues("sent").Inc()
}

func pathEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}
