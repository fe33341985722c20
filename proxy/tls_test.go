package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/tlstest"
	"github.com/agentpassport/passport/internal/tlsx"
	"github.com/agentpassport/passport/passport"
	"github.com/agentpassport/passport/proxy/internal/testkeys"
)

// newTLSHarness is a harness whose agent and admin ports serve TLS with a
// certificate of a fresh CA for 127.0.0.1.
func newTLSHarness(t *testing.T, mod ...func(*Config)) (*harness, *tlstest.CA) {
	t.Helper()
	ca := tlstest.NewCA(t, "proxy test CA")
	leaf := ca.Server("127.0.0.1")
	mods := append([]func(*Config){func(c *Config) {
		c.TLS = tlsx.Server{CertFile: leaf.CertFile, KeyFile: leaf.KeyFile}
	}}, mod...)
	return newHarness(t, mods...), ca
}

// tlsClient trusts roots; h2 offers HTTP/2 through ALPN, else only HTTP/1.1.
func tlsClient(t *testing.T, roots *x509.CertPool, h2 bool) *http.Client {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: h2}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

type tlsResp struct {
	resp
	proto string
	id    string
}

func (h *harness) doWith(c *http.Client, method, path, token string, body io.Reader) tlsResp {
	h.t.Helper()
	req, err := http.NewRequest(method, h.url+path, body)
	if err != nil {
		h.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := c.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return tlsResp{resp{res.StatusCode, res.Header, string(b)}, res.Proto, res.Header.Get("X-Request-Id")}
}

// unsized hides a body's length, so HTTP/2 sends it without content-length
// (and HTTP/1.1 chunked).
func unsized(s string) io.Reader { return io.MultiReader(strings.NewReader(s)) }

func TestHTTP2OnTheAgentPortIsEnforcedAndAuditedPerRequest(t *testing.T) {
	h, ca := newTLSHarness(t)
	_, tok := h.healer()
	h.agent("acme", "obs-1", 90)
	obs := h.keys.Sign(t, testkeys.Claims(h.now(), "acme", "obs-1", "observer", passport.TrustLow, "service.list", "service.get"))
	c := tlsClient(t, ca.Pool(), true)

	// Several calls share one HTTP/2 connection; each one is decided and
	// recorded on its own.
	allow := h.doWith(c, "POST", "/services/checkout/restart", tok, nil)
	deny := h.doWith(c, "POST", "/services/checkout/restart", obs, nil)
	if allow.proto != "HTTP/2.0" || deny.proto != "HTTP/2.0" {
		t.Fatalf("protocols %s, %s: want HTTP/2.0 through ALPN", allow.proto, deny.proto)
	}
	if allow.status != 200 || deny.status != 403 || !strings.Contains(deny.body, "trust_level_too_low") {
		t.Fatalf("allow %d, deny %d %s", allow.status, deny.status, deny.body)
	}
	if n := h.up.hits.Load(); n != 1 {
		t.Fatalf("upstream hits %d, want 1 (the allowed call only)", n)
	}
	req, _ := h.up.lastReq()
	if req.Proto != "HTTP/1.1" || req.Header.Get(HeaderAgent) != "healer-1" || req.Header.Get("Authorization") != "" {
		t.Fatalf("upstream got %s, agent %q, authorization %q", req.Proto, req.Header.Get(HeaderAgent), req.Header.Get("Authorization"))
	}
	var recs []*audit.Record
	waitFor(t, "outcome record", func() bool { recs = h.sink.byRequest(allow.id); return len(recs) == 2 })
	if recs[0].Kind != audit.KindDecision || recs[0].Decision != audit.DecisionAllow || recs[1].Kind != audit.KindOutcome || recs[1].Status != 200 {
		t.Fatalf("allow records %+v %+v", recs[0], recs[1])
	}
	if recs := h.sink.byRequest(deny.id); len(recs) != 1 || recs[0].Decision != audit.DecisionDeny ||
		!slices.Contains(recs[0].Reasons, "trust_level_too_low") {
		t.Fatalf("deny records %+v", recs)
	}

	// Bodies without content-length (HTTP/2 DATA frames) are read, bounded
	// and shown to the policy exactly as over HTTP/1.1.
	if r := h.doWith(c, "POST", "/services/checkout/scale", tok, unsized(`{"replicas": 3}`)); r.status != 200 {
		t.Fatalf("scale 3: %d %s", r.status, r.body)
	}
	if _, body := h.up.lastReq(); body != `{"replicas": 3}` {
		t.Fatalf("upstream body %q", body)
	}
	hits := h.up.hits.Load()
	for _, tc := range []struct {
		body   string
		status int
	}{
		{`{"replicas": 50}`, 403},
		{`{"replicas": 3, "pad": "` + strings.Repeat("x", 2000) + `"}`, 413},
		{strings.Repeat("x", 2<<20), 413},
	} {
		path := "/services/checkout/scale"
		if tc.status == 413 && len(tc.body) > 1<<20 {
			path = "/services/checkout/restart"
		}
		if r := h.doWith(c, "POST", path, tok, unsized(tc.body)); r.status != tc.status {
			t.Fatalf("%d-byte body: status %d, want %d", len(tc.body), r.status, tc.status)
		}
	}
	if h.up.hits.Load() != hits {
		t.Fatal("a refused HTTP/2 call reached the upstream")
	}
	// Identity headers sent over HTTP/2 are stripped as over HTTP/1.1.
	req2, _ := http.NewRequest("GET", h.url+"/services/checkout", nil)
	req2.Header.Set("Authorization", "Bearer "+tok)
	req2.Header["x-passport-agent"] = []string{"root"}
	req2.Header["X_Passport_Tenant"] = []string{"globex"}
	res, err := c.Do(req2)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	up, _ := h.up.lastReq()
	if res.StatusCode != 200 || up.Header.Get(HeaderAgent) != "healer-1" || len(up.Header.Values(HeaderAgent)) != 1 || up.Header.Get("X_Passport_Tenant") != "" {
		t.Fatalf("status %d, upstream identity headers %v", res.StatusCode, up.Header)
	}
}

func TestH2CStaysRefused(t *testing.T) {
	h, ca := newTLSHarness(t)
	_, tok := h.healer()
	addr := strings.TrimPrefix(h.url, "https://")

	t.Run("upgrade header over TLS", func(t *testing.T) {
		req, _ := http.NewRequest("GET", h.url+"/services/checkout", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Connection", "Upgrade, HTTP2-Settings")
		req.Header.Set("Upgrade", "h2c")
		req.Header.Set("HTTP2-Settings", "AAMAAABkAAQAAP__")
		res, err := tlsClient(t, ca.Pool(), false).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 400 || h.up.hits.Load() != 0 {
			t.Fatalf("status %d, upstream hits %d", res.StatusCode, h.up.hits.Load())
		}
	})
	t.Run("prior knowledge over TLS without h2 in ALPN", func(t *testing.T) {
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.Pool(), NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if status := preface(t, conn); status == "200" || h.up.hits.Load() != 0 {
			t.Fatalf("status %q, upstream hits %d", status, h.up.hits.Load())
		}
	})
	t.Run("prior knowledge in clear text to the TLS port", func(t *testing.T) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if status := preface(t, conn); status == "200" || h.up.hits.Load() != 0 {
			t.Fatalf("status %q, upstream hits %d", status, h.up.hits.Load())
		}
	})
	t.Run("prior knowledge to a plain port", func(t *testing.T) {
		p := newHarness(t)
		conn, err := net.Dial("tcp", strings.TrimPrefix(p.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if status := preface(t, conn); status != "400" || p.up.hits.Load() != 0 {
			t.Fatalf("status %q, upstream hits %d", status, p.up.hits.Load())
		}
	})
}

// preface sends the HTTP/2 client preface and a SETTINGS frame as a
// prior-knowledge h2c client would, and returns the HTTP/1 status answered
// ("" when the server answered nothing readable or closed).
func preface(t *testing.T, conn net.Conn) string {
	t.Helper()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	msg := append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0, 0, 0, 4, 0, 0, 0, 0, 0)
	if _, err := conn.Write(msg); err != nil {
		return ""
	}
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return ""
	}
	res.Body.Close()
	return res.Status[:3]
}

func TestHTTP2ConnectionSpecificHeadersAreRefused(t *testing.T) {
	// HTTP/2 has no Connection header (RFC 9113 §8.2.2): a client cannot
	// name a header hop-by-hop to have the proxy drop what it set. Go's
	// client will not send one, so the frames are written by hand.
	h, ca := newTLSHarness(t)
	_, tok := h.healer()
	addr := strings.TrimPrefix(h.url, "https://")
	base := [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", addr}, {":path", "/services/checkout"},
		{"authorization", "Bearer " + tok}}
	if got := h2Raw(t, addr, ca.Pool(), base); got != "200" {
		t.Fatalf("a valid request got %s, want 200", got)
	}
	hits := h.up.hits.Load()
	for _, extra := range [][2]string{
		{"connection", "x-passport-agent"},
		{"keep-alive", "timeout=5"},
		{"proxy-connection", "keep-alive"},
		{"transfer-encoding", "chunked"},
		{"upgrade", "h2c"},
		{"te", "gzip"},
	} {
		// net/http answers 400 itself; the proxy's handler never sees it.
		if got := h2Raw(t, addr, ca.Pool(), append(slices.Clone(base), extra)); got != "400" && got != "RST_STREAM" {
			t.Errorf("%s: got %s, want 400 or RST_STREAM", extra[0], got)
		}
	}
	if h.up.hits.Load() != hits {
		t.Fatal("a malformed HTTP/2 request reached the upstream")
	}
}

const (
	frameHeaders   = 0x1
	frameRSTStream = 0x3
	frameGoAway    = 0x7
)

// h2Raw sends one HTTP/2 request made of fields (HPACK literals, no
// Huffman) on stream 1 and returns what the server's first frame on that
// stream says: "200", "400" or "404" (a HEADERS frame whose :status is an
// entry of the HPACK static table), "HEADERS" for another status,
// "RST_STREAM", or "GOAWAY".
func h2Raw(t *testing.T, addr string, roots *x509.CertPool, fields [][2]string) string {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("ALPN chose %q", p)
	}
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	var block []byte
	for _, f := range fields {
		block = append(block, 0) // literal without indexing, new name
		block = hpackString(block, f[0])
		block = hpackString(block, f[1])
	}
	out := []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
	out = appendFrame(out, 0x4, 0, 0, nil)                  // SETTINGS
	out = appendFrame(out, frameHeaders, 0x1|0x4, 1, block) // END_STREAM|END_HEADERS
	if _, err := conn.Write(out); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	for {
		var hdr [9]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			t.Fatalf("reading frames: %v", err)
		}
		n := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
		typ, stream := hdr[3], binary.BigEndian.Uint32(hdr[5:])&0x7fffffff
		payload := make([]byte, n)
		if _, err := io.ReadFull(r, payload); err != nil {
			t.Fatal(err)
		}
		if typ == 0x4 && hdr[4]&0x1 == 0 { // SETTINGS: acknowledge
			if _, err := conn.Write(appendFrame(nil, 0x4, 0x1, 0, nil)); err != nil {
				t.Fatal(err)
			}
		}
		switch {
		case typ == frameGoAway:
			return "GOAWAY"
		case stream != 1:
		case typ == frameRSTStream:
			return "RST_STREAM"
		case typ == frameHeaders && len(payload) > 0:
			// Static table indexes 8, 12 and 13 (RFC 7541 Appendix A).
			if st, ok := map[byte]string{0x88: "200", 0x8c: "400", 0x8d: "404"}[payload[0]]; ok {
				return st
			}
			return "HEADERS"
		}
	}
}

func appendFrame(b []byte, typ, flags byte, stream uint32, payload []byte) []byte {
	n := len(payload)
	b = append(b, byte(n>>16), byte(n>>8), byte(n), typ, flags)
	b = binary.BigEndian.AppendUint32(b, stream)
	return append(b, payload...)
}

func hpackString(b []byte, s string) []byte {
	// Length with a 7-bit prefix (RFC 7541 §5.1), Huffman bit off.
	n := len(s)
	if n < 127 {
		b = append(b, byte(n))
	} else {
		b = append(b, 127)
		for n -= 127; n >= 128; n >>= 7 {
			b = append(b, byte(n%128+128))
		}
		b = append(b, byte(n))
	}
	return append(b, s...)
}

func TestAdminPortServesTLS(t *testing.T) {
	h, ca := newTLSHarness(t)
	res, err := tlsClient(t, ca.Pool(), true).Get(h.admin + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("admin /healthz over TLS: %d", res.StatusCode)
	}
	res, err = http.Get("http://" + strings.TrimPrefix(h.admin, "https://") + "/healthz")
	if err == nil {
		res.Body.Close()
		if res.StatusCode == 200 {
			t.Fatal("the admin port answered plain HTTP")
		}
	}
}

func TestResourceMetadataIsHTTPSWithTLS(t *testing.T) {
	h, ca := newTLSHarness(t)
	r := h.doWith(tlsClient(t, ca.Pool(), true), "GET", "/.well-known/oauth-protected-resource", "", nil)
	want := `"resource":"https://` + h.p.cfg.Listen + `"`
	if r.status != 200 || !strings.Contains(r.body, want) {
		t.Fatalf("metadata %d %s, want %s", r.status, r.body, want)
	}
	if got := h.p.metaURL; !strings.HasPrefix(got, "https://") {
		t.Fatalf("WWW-Authenticate resource_metadata %q", got)
	}
}

func TestRotatedCertificateOnTheAgentPort(t *testing.T) {
	ca := tlstest.NewCA(t, "proxy test CA")
	first, second := ca.Server("127.0.0.1"), ca.Server("127.0.0.1")
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	first.WriteTo(t, certFile, keyFile)
	h := newHarness(t, func(c *Config) { c.TLS = tlsx.Server{CertFile: certFile, KeyFile: keyFile} })
	_, tok := h.healer()
	serial := func() string {
		// A new connection each time: a rotation applies to new handshakes.
		c := tlsClient(t, ca.Pool(), true)
		req, _ := http.NewRequest("GET", h.url+"/services/checkout", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		c.CloseIdleConnections()
		if res.StatusCode != 200 {
			t.Fatalf("status %d", res.StatusCode)
		}
		return res.TLS.PeerCertificates[0].SerialNumber.String()
	}
	if serial() != first.Cert.SerialNumber.String() {
		t.Fatal("not serving the first certificate")
	}
	second.WriteTo(t, certFile, keyFile)
	waitFor(t, "the rotated certificate", func() bool { return serial() == second.Cert.SerialNumber.String() })
	if v := metricValue(t, h, "passport_tls_certificate_reloads_total"); v != 1 {
		t.Fatalf("reloads %v, want 1", v)
	}
}

// metricValue sums every series of name in h's registry.
func metricValue(t *testing.T, h *harness, name string) float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var v float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				v += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return v
}

// tlsUpstream serves a recording upstream over TLS with leaf; with
// clientCA it requires client certificates of that CA.
func tlsUpstream(t *testing.T, leaf *tlstest.Leaf, clientCA *tlstest.CA) (string, *atomic.Int64) {
	t.Helper()
	var hits atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{leaf.TLS}}
	if clientCA != nil {
		srv.TLS.ClientCAs, srv.TLS.ClientAuth = clientCA.Pool(), tls.RequireAndVerifyClientCert
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.URL, &hits
}

func TestHTTPSUpstreams(t *testing.T) {
	ca := tlstest.NewCA(t, "upstream CA")
	other := tlstest.NewCA(t, "another CA")
	now := time.Now()
	byIP, _ := tlsUpstream(t, ca.Server("127.0.0.1"), nil)
	byName, _ := tlsUpstream(t, ca.Server("fleet.internal"), nil)
	expired, _ := tlsUpstream(t, ca.Issue(tlstest.Options{NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)}, "127.0.0.1"), nil)
	mutual, _ := tlsUpstream(t, ca.Server("127.0.0.1"), ca)
	client := ca.Issue(tlstest.Options{Client: true}, "proxy")
	cases := []struct {
		name   string
		up     Upstream
		status int
	}{
		{"the upstream's CA", Upstream{URL: byIP, TLS: tlsx.Client{CAFile: ca.File}}, 200},
		{"system roots", Upstream{URL: byIP}, 502},
		{"another CA", Upstream{URL: byIP, TLS: tlsx.Client{CAFile: other.File}}, 502},
		{"expired certificate", Upstream{URL: expired, TLS: tlsx.Client{CAFile: ca.File}}, 502},
		{"name not in the certificate", Upstream{URL: byName, TLS: tlsx.Client{CAFile: ca.File}}, 502},
		{"pinned server name", Upstream{URL: byName, TLS: tlsx.Client{CAFile: ca.File, ServerName: "fleet.internal"}}, 200},
		{"pinned to another name", Upstream{URL: byIP, TLS: tlsx.Client{CAFile: ca.File, ServerName: "fleet.internal"}}, 502},
		{"client certificate", Upstream{URL: mutual, TLS: tlsx.Client{CAFile: ca.File, CertFile: client.CertFile, KeyFile: client.KeyFile}}, 200},
		{"no client certificate", Upstream{URL: mutual, TLS: tlsx.Client{CAFile: ca.File}}, 502},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, func(c *Config) { c.Upstreams = map[string]Upstream{"fleet": tc.up} })
			_, tok := h.healer()
			r := h.do("GET", "/services/checkout", tok, nil, "")
			if r.status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.status, tc.status, r.body)
			}
		})
	}
}

func TestJWKSOverTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "authority CA")
	keys := testkeys.New(t)
	srv := httptest.NewUnstartedServer(keys.Server.Config.Handler)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Server("127.0.0.1").TLS}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	jwks := srv.URL + "/.well-known/jwks.json"

	t.Run("with the authority's CA", func(t *testing.T) {
		h := newHarness(t, func(c *Config) { c.JWKSURL, c.AuthorityTLS = jwks, tlsx.Client{CAFile: ca.File} })
		h.agent("acme", "healer-1", 90)
		tok := keys.Sign(t, testkeys.Claims(h.now(), "acme", "healer-1", "healer", passport.TrustHigh, "service.get"))
		waitFor(t, "keys fetched over TLS", func() bool { return h.p.Ready(context.Background()) })
		if r := h.do("GET", "/services/checkout", tok, nil, ""); r.status != 200 {
			t.Fatalf("status %d: %s", r.status, r.body)
		}
	})
	t.Run("without it", func(t *testing.T) {
		before := keys.Fetches.Load()
		h := newHarness(t, func(c *Config) { c.JWKSURL = jwks })
		h.agent("acme", "healer-1", 90)
		tok := keys.Sign(t, testkeys.Claims(h.now(), "acme", "healer-1", "healer", passport.TrustHigh, "service.get"))
		if r := h.do("GET", "/services/checkout", tok, nil, ""); r.status != 503 || !strings.Contains(r.body, "keys_unavailable") || h.up.hits.Load() != 0 {
			t.Fatalf("status %d, upstream hits %d: keys from an unverified server were used", r.status, h.up.hits.Load())
		}
		if h.p.Ready(context.Background()) || keys.Fetches.Load() != before {
			t.Fatal("keys were fetched from a server the proxy cannot verify")
		}
	})
}

func TestTLSConfigValidation(t *testing.T) {
	ok := testConfig("http://127.0.0.1:1", "http://127.0.0.1:2/jwks")
	cases := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"tls on an http upstream", func(c *Config) { c.Upstreams["fleet"] = Upstream{URL: "http://x", TLS: tlsx.Client{CAFile: "ca.pem"}} }, "url is http://"},
		{"authority_tls with http urls", func(c *Config) { c.AuthorityTLS = tlsx.Client{CAFile: "ca.pem"} }, "authority_tls: set, but"},
		{"cert without key", func(c *Config) { c.TLS = tlsx.Server{CertFile: "c.pem"} }, "tls.cert_file and key_file"},
		{"upstream client cert without key", func(c *Config) {
			c.Upstreams["fleet"] = Upstream{URL: "https://x", TLS: tlsx.Client{CertFile: "c.pem"}}
		}, "upstreams.fleet.tls.cert_file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			c.Upstreams = map[string]Upstream{"fleet": ok.Upstreams["fleet"]}
			tc.mod(&c)
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want %q", err, tc.want)
			}
		})
	}
	// Unreadable files are refused when the proxy is built, not at the
	// first call.
	c := ok
	c.Upstreams = map[string]Upstream{"fleet": {URL: "https://x", TLS: tlsx.Client{CAFile: filepath.Join(t.TempDir(), "missing.pem")}}}
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer rdb.Close()
	_, err := New(c, Deps{Redis: rdb, Audit: &fakeSink{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registry: prometheus.NewRegistry(), Policies: os.DirFS("testdata/policy")})
	if err == nil || !strings.Contains(err.Error(), "missing.pem") {
		t.Fatalf("New = %v, want an error naming the CA file", err)
	}
}

func TestSilentClientsOnTheTLSPortAreDropped(t *testing.T) {
	// A connection that never sends a ClientHello, or completes the
	// handshake and then sends nothing, holds a socket only until
	// timeouts.read_header (HTTP/1.1) or timeouts.idle (HTTP/2, once its
	// preface is in; net/http waits 10 s for the preface itself).
	h, ca := newTLSHarness(t, func(c *Config) {
		c.Timeouts.ReadHeader, c.Timeouts.Idle = 200*time.Millisecond, 300*time.Millisecond
	})
	addr := strings.TrimPrefix(h.url, "https://")
	// dropped reads whatever the server sends (an HTTP/2 server's
	// SETTINGS) until the server closes, or 5 s pass.
	dropped := func(c net.Conn) bool {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := io.Copy(io.Discard, c)
		var ne net.Error
		return !(errors.As(err, &ne) && ne.Timeout())
	}
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if !dropped(raw) {
		t.Fatal("a connection without a handshake was kept open")
	}
	for _, proto := range []string{"http/1.1", "h2"} {
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.Pool(), NextProtos: []string{proto}})
		if err != nil {
			t.Fatal(err)
		}
		if proto == "h2" {
			pre := appendFrame([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0x4, 0, 0, nil)
			if _, err := c.Write(pre); err != nil {
				t.Fatal(err)
			}
		}
		if !dropped(c) {
			t.Fatalf("%s: a silent connection after the handshake was kept open", proto)
		}
		c.Close()
	}
}
