package agentcall

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/agentpassport/passport/internal/tlstest"
	"github.com/agentpassport/passport/internal/tlsx"
)

func TestCallsAnHTTPSProxyWithItsCA(t *testing.T) {
	ca := tlstest.NewCA(t, "proxy CA")
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Server("127.0.0.1").TLS}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	tc, err := tlsx.Client{CAFile: ca.File}.Config(tlsx.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c := &Client{BaseURL: srv.URL, HTTP: HTTPClient(time.Second, tc)}
	if _, err := c.Do(ctx, "tok", http.MethodGet, "/services", nil); err != nil {
		t.Fatalf("with the CA: %v", err)
	}
	c = &Client{BaseURL: srv.URL, HTTP: HTTPClient(time.Second, nil)}
	if _, err := c.Do(ctx, "tok", http.MethodGet, "/services", nil); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("with the system's roots: %v", err)
	}
}
