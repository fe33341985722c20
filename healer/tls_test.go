package healer

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/internal/tlstest"
	"github.com/agentpassport/passport/internal/tlsx"
)

// The incidents API serves TLS, and health checks of https services are
// verified with Deps.TLS.
func TestHealerOverTLS(t *testing.T) {
	srv := redistest.Start(t)
	ca := tlstest.NewCA(t, "healer CA")
	leaf := ca.Server("127.0.0.1")
	svc := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"healthy"}`))
	}))
	svc.TLS = &tls.Config{Certificates: []tls.Certificate{leaf.TLS}}
	svc.StartTLS()
	t.Cleanup(svc.Close)
	clientTLS, err := tlsx.Client{CAFile: ca.File}.Config(tlsx.Options{})
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name   string
		tls    *tls.Config
		result string // the check result counted
	}{
		{"with the CA", clientTLS, "pass"},
		{"system roots", nil, TypeServiceDown},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			cfg := Config{Listen: "127.0.0.1:0", TLS: tlsx.Server{CertFile: leaf.CertFile, KeyFile: leaf.KeyFile},
				Checks: []CheckConfig{{Target: "checkout", URL: svc.URL + "/healthz", Interval: 20 * time.Millisecond}}}
			h, err := New(cfg, Deps{Logger: discard(), Passports: &fakePassports{}, Store: NewStore(srv.Client(), 0),
				AdminToken: "tok", Registry: reg, TLS: tc.tls, Sink: audit.Discard})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- h.Run(ctx) }()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					t.Error(err)
				}
			}()
			eventually(t, 5*time.Second, "a "+tc.result+" check", func() bool {
				return testutil.ToFloat64(h.checks.WithLabelValues(tc.result)) > 0
			})

			hc, err := tlsx.HTTPClient(ca.File, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			req, _ := http.NewRequest("GET", "https://"+h.APIAddr()+"/v1/tenants/acme/incidents", nil)
			req.Header.Set("Authorization", "Bearer tok")
			resp, err := hc.Do(req)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("incidents API over TLS: %v %v", resp, err)
			}
			resp.Body.Close()
		})
	}
}
