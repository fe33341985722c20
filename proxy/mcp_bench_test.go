package proxy

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
	"github.com/agentpassport/passport/policies"
	"github.com/agentpassport/passport/proxy/internal/testkeys"
)

// BenchmarkServeMCP is the whole handler on the real library for the same
// restart as a REST call and as an MCP tools/call (issue 20: within 1.2x
// its CPU per call).
func BenchmarkServeMCP(b *testing.B) {
	keys := testkeys.New(b)
	srv := redistest.Start(b)
	rdb := srv.Client()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path == "/mcp" {
			_, _ = w.Write([]byte(`{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"restarted checkout"}]}}`))
			return
		}
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	b.Cleanup(up.Close)
	cfg := testConfig(up.URL, keys.URL())
	cfg.Policy.Dir = ""
	cfg.Policy.Timeout = time.Second
	mcpRoute := FleetMCPRoute()
	mcpRoute.Upstream = ""
	cfg.Routes = []Route{{Match: "POST /services/{name}/restart", Action: "service.restart", Resource: "{name}"}, mcpRoute}
	p, err := New(cfg, Deps{Redis: rdb, Audit: discardSink{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registry: prometheus.NewRegistry(), Policies: policies.FS})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = p.revoked.Run(ctx); close(done) }()
	b.Cleanup(func() { cancel(); <-done })
	waitFor(b, "revocations live", func() bool { return p.revoked.live.Load() })
	now := time.Now()
	if err := rdb.HSet(ctx, passport.AgentKey("acme", "healer-1"), passport.FieldReputation, 90,
		passport.FieldReputationAt, now.UnixMilli()).Err(); err != nil {
		b.Fatal(err)
	}
	tok := keys.Sign(b, testkeys.Claims(now, "acme", "healer-1", "healer", passport.TrustHigh, "service.restart"))
	h := p.Handler()
	const call = `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"},"name":"restart_service","arguments":{"name":"checkout"}}}`
	for _, tc := range []struct {
		name, path, body string
	}{
		{"rest", "/services/checkout/restart", ""},
		{"mcp", "/mcp", call},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				req := httptest.NewRequest("POST", tc.path, strings.NewReader(tc.body))
				req.RemoteAddr = "127.0.0.1:4711"
				req.Header.Set("Authorization", "Bearer "+tok)
				if tc.body != "" {
					req.Header.Set("Content-Type", "application/json")
					req.Header.Set("Mcp-Protocol-Version", "2026-07-28")
					req.Header.Set("Mcp-Method", "tools/call")
					req.Header.Set("Mcp-Name", "restart_service")
				}
				w := httptest.NewRecorder()
				h.ServeHTTP(w, req)
				if w.Code != http.StatusOK || strings.Contains(w.Body.String(), `"error"`) {
					b.Fatalf("status %d: %s", w.Code, w.Body)
				}
			}
		})
	}
}
