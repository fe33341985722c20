package dashboard

import (
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/agentpassport/passport/feed"
	"github.com/agentpassport/passport/internal/tlstest"
	"github.com/agentpassport/passport/internal/tlsx"
)

// The page, its API and the feed (wss://) over TLS.
func TestDashboardOverTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "dashboard CA")
	leaf := ca.Server("127.0.0.1")
	s := startStack(t, Config{TLS: tlsx.Server{CertFile: leaf.CertFile, KeyFile: leaf.KeyFile}})
	if !strings.HasPrefix(s.url, "https://") {
		t.Fatalf("url %s", s.url)
	}
	hc, err := tlsx.HTTPClient(ca.File, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	res, err := hc.Get(s.url + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !strings.Contains(string(page), "<html") {
		t.Fatalf("page over TLS: %d", res.StatusCode)
	}
	d := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}, HandshakeTimeout: 5 * time.Second}
	h := http.Header{"Authorization": {"Bearer " + adminToken}, "Origin": {s.url}}
	c, resp, err := d.Dial("wss"+strings.TrimPrefix(s.url, "https")+feed.Path+"?tenant=acme", h)
	if err != nil {
		t.Fatalf("wss feed: %v (%v)", err, resp)
	}
	c.Close()
	// A page served over https may open the feed only from its own origin.
	h.Set("Origin", "https://evil.example")
	if _, resp, err := d.Dial("wss"+strings.TrimPrefix(s.url, "https")+feed.Path+"?tenant=acme", h); err == nil || resp == nil || resp.StatusCode != 403 {
		t.Fatalf("cross-origin feed over TLS: %v %v", err, resp)
	}
}
