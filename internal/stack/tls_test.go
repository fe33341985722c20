package stack_test

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/stack"
)

// TestEndToEndTLS runs the whole demo over TLS, as `passport up` does by
// default: every URL in demo.json is https, a client trusting only
// demo.json's ca_file reaches every service, one trusting the system's
// roots is refused, plain HTTP to a TLS port is refused before the proxy,
// and the demo's own agents (healer, chaos, the MCP agent) work through
// TLS hops: a fault is healed through the proxy, and a tools/call reaches
// the MCP server behind it.
func TestEndToEndTLS(t *testing.T) {
	r := startStack(t, stack.Config{ChaosInterval: -1, NoRogue: true, TLS: true})
	d := r.demo

	if !filepath.IsAbs(d.CAFile) {
		t.Fatalf("demo.json ca_file %q is not an absolute path", d.CAFile)
	}
	if want := filepath.Join(r.dataDir, stack.TLSDir, stack.CACertFile); d.CAFile != want {
		t.Errorf("ca_file %s, want %s", d.CAFile, want)
	}
	for _, f := range []string{stack.CAKeyFile, stack.ServerKeyFile} {
		fi, err := os.Stat(filepath.Join(r.dataDir, stack.TLSDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
	urls := map[string]string{"proxy": d.URLs.Proxy, "proxy_admin": d.URLs.ProxyAdmin, "authority": d.URLs.Authority,
		"fleet": d.URLs.Fleet, "dashboard": d.URLs.Dashboard, "dashboard_login": d.DashboardLogin}
	for tenant, u := range d.HealerAPIs {
		urls["healer "+tenant] = u
	}
	for name, u := range urls {
		if !strings.HasPrefix(u, "https://") {
			t.Errorf("%s URL %s is not https", name, u)
		}
	}

	// Every listener serves TLS that the CA alone verifies.
	for name, u := range map[string]string{
		"authority": d.URLs.Authority + "/readyz", "proxy admin": d.URLs.ProxyAdmin + "/readyz",
		"dashboard": d.URLs.Dashboard + "/healthz", "healer acme": d.HealerAPIs["acme"] + "/healthz",
		"fleet": d.URLs.Fleet + "/healthz",
	} {
		if code, body := r.call(t, http.MethodGet, u, ""); code != http.StatusOK {
			t.Errorf("%s over TLS: %d %s", name, code, body)
		}
		// The system's roots do not know the demo CA.
		_, err := (&http.Client{Timeout: 5 * time.Second}).Get(u)
		var unknown x509.UnknownAuthorityError
		if !errors.As(err, &unknown) {
			t.Errorf("%s with the system's roots: want an unknown authority error, got %v", name, err)
		}
	}

	// The issuer is https, and so is everything its metadata names.
	code, body := r.call(t, http.MethodGet, d.URLs.Authority+"/.well-known/oauth-authorization-server", "")
	var meta struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.Unmarshal([]byte(body), &meta); code != http.StatusOK || err != nil ||
		meta.Issuer != d.URLs.Authority || !strings.HasPrefix(meta.JWKSURI, "https://") {
		t.Errorf("authority metadata: %d %s (%v)", code, body, err)
	}

	// Plain HTTP to the proxy's TLS port never reaches the proxy.
	u, _ := url.Parse(d.URLs.Proxy)
	code, body = call(t, http.MethodGet, "http://"+u.Host+"/services", "")
	if code != http.StatusBadRequest || !strings.Contains(body, "HTTPS") {
		t.Errorf("plain HTTP to the TLS proxy port: %d %s, want 400 from net/http", code, body)
	}

	// A fault fired through the proxy is healed: the healer's checks, the
	// fleet's announcements and the repair through the proxy all run
	// over TLS.
	r.fireChaos(t, "acme", "service_down", "checkout")
	eventually(t, 15*time.Second, "service_down incident RESOLVED", func() (bool, string) {
		for _, inc := range r.incidents(t, "acme") {
			if inc.Target == "checkout" && inc.Type == "service_down" {
				return inc.State == "RESOLVED", inc.State
			}
		}
		return false, "no incident yet"
	})

	// A tools/call through the proxy's MCP route reaches the MCP server
	// behind it (the proxy verifies it with the demo CA too).
	obs := r.passport(t, r.agent(t, "acme", "observer"), client.TokenRequest{})
	rpc := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"curl","version":"8"},"io.modelcontextprotocol/clientCapabilities":{}},"name":"list_services","arguments":{}}}`
	req, _ := http.NewRequest(http.MethodPost, d.URLs.Proxy+"/mcp", strings.NewReader(rpc))
	for k, v := range map[string]string{"Authorization": "Bearer " + obs, "Content-Type": "application/json",
		"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "list_services"} {
		req.Header.Set(k, v)
	}
	resp, err := r.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"checkout"`) {
		t.Fatalf("tools/call list_services over TLS: %d %s", resp.StatusCode, b)
	}

	// The demo's own MCP agent lists services on its own, over TLS.
	eventually(t, 45*time.Second, "the MCP agent's own calls", func() (bool, string) {
		n := 0
		for _, rec := range r.records(t, "acme") {
			if rec.Kind == audit.KindDecision && rec.Decision == audit.DecisionAllow && rec.Action == "service.list" &&
				strings.Contains(string(rec.Details), `"tool":"list_services"`) {
				n++
			}
		}
		// One is the call above; the agent makes the others.
		return n >= 2, fmt.Sprintf("%d list_services calls", n)
	})
}
