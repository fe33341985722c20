package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
	"github.com/agentpassport/passport/proxy/internal/testkeys"
)

// fakeSink is an audit.Sink that keeps records and can fail Append.
type fakeSink struct {
	mu        sync.Mutex
	appended  []*audit.Record
	enqueued  []*audit.Record
	appendErr error
}

func (f *fakeSink) Append(_ context.Context, r *audit.Record) (audit.Receipt, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.appendErr != nil {
		return audit.Receipt{}, f.appendErr
	}
	f.appended = append(f.appended, r)
	return audit.ReceiptForTest(strconv.Itoa(len(f.appended))+"-0", r), nil
}

func (f *fakeSink) Enqueue(r *audit.Record) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.enqueued = append(f.enqueued, r)
}

func (f *fakeSink) setErr(err error) { f.mu.Lock(); f.appendErr = err; f.mu.Unlock() }

// all returns every record, appended first.
func (f *fakeSink) all() []*audit.Record {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append(append([]*audit.Record{}, f.appended...), f.enqueued...)
}

func (f *fakeSink) byRequest(id string) []*audit.Record {
	var out []*audit.Record
	for _, r := range f.all() {
		if r.RequestID == id {
			out = append(out, r)
		}
	}
	return out
}

// input is rec's full policy input: its passport reference resolved
// against the appended records (ids "N-0" are the N-th append).
func (f *fakeSink) input(t *testing.T, rec *audit.Record) json.RawMessage {
	t.Helper()
	in, err := audit.ExpandInput(rec, func(id string) (*audit.Record, error) {
		n, err := strconv.Atoi(strings.TrimSuffix(id, "-0"))
		f.mu.Lock()
		defer f.mu.Unlock()
		if err != nil || n < 1 || n > len(f.appended) {
			return nil, nil
		}
		return f.appended[n-1], nil
	})
	if err != nil {
		t.Fatalf("input of %s: %v", rec.RequestID, err)
	}
	return in
}

var _ audit.Sink = (*fakeSink)(nil)

// lockedBuffer is a log destination tests can read while the proxy writes.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len() > 8<<20 {
		return len(p), nil // a storm test: keep the first 8 MiB
	}
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// recorder is the upstream: it records what reached it.
type recorder struct {
	srv   *httptest.Server
	hits  atomic.Int64
	mu    sync.Mutex
	last  *http.Request
	body  string
	delay time.Duration
}

func newRecorder(t *testing.T) *recorder {
	rc := &recorder{}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rc.hits.Add(1)
		rc.mu.Lock()
		rc.last, rc.body = r, string(b)
		d := rc.delay
		rc.mu.Unlock()
		if d > 0 {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Request-Id", "upstream-own-id")
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *recorder) lastReq() (*http.Request, string) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.last, rc.body
}

type harness struct {
	t      *testing.T
	keys   *testkeys.Keys
	redis  *redistest.Server
	rdb    *redis.Client
	sink   *fakeSink
	up     *recorder
	p      *Proxy
	reg    *prometheus.Registry
	url    string
	admin  string
	logs   *lockedBuffer // everything the proxy logged
	offset atomic.Int64  // clock offset in ns
	stop   func() error  // cancels Serve and returns its result
}

func (h *harness) now() time.Time { return time.Now().Add(time.Duration(h.offset.Load())) }

func testConfig(upstream, jwks string) Config {
	c := Default()
	c.Issuer = testkeys.Issuer
	c.JWKSURL = jwks
	c.Audience = testkeys.Audience
	c.Policy.Dir = "testdata/policy"
	c.Policy.PollInterval = 20 * time.Millisecond
	c.Upstreams = map[string]Upstream{"fleet": {URL: upstream}}
	f := false
	c.Routes = []Route{
		{Match: "GET /services", Action: "service.list", Resource: "*"},
		{Match: "GET /services/{name}", Action: "service.get", Resource: "{name}"},
		{Match: "POST /services/{name}/restart", Action: "service.restart", Resource: "{name}"},
		{Match: "POST /services/{name}/scale", Action: "service.scale", Resource: "{name}", PolicyBody: true, BodyLimit: 1024},
		{Match: "POST /boom", Action: "boom.now", Resource: "x"},
		{Match: "GET /slow", Action: "service.get", Resource: "slow", Timeout: 200 * time.Millisecond},
		{Match: "POST /faults/{name}", Action: "chaos.inject", Resource: "{name}", Production: &f, Tenant: "acme"},
	}
	return c
}

func newHarness(t *testing.T, mod ...func(*Config)) *harness {
	t.Helper()
	return newHarnessWith(t, redistest.Start(t), mod...)
}

func newHarnessWith(t *testing.T, srv *redistest.Server, mod ...func(*Config)) *harness {
	t.Helper()
	return newHarnessWithSink(t, srv, nil, mod...)
}

// newHarnessWithSink uses sink (nil: a fakeSink kept in h.sink).
func newHarnessWithSink(t *testing.T, srv *redistest.Server, sink audit.Sink, mod ...func(*Config)) *harness {
	t.Helper()
	return newHarnessFull(t, srv, sink, nil, mod...)
}

// newHarnessFull also takes the proxy's own Redis client (nil: a direct
// one, shared with the test), e.g. one that goes through a faulty relay.
func newHarnessFull(t *testing.T, srv *redistest.Server, sink audit.Sink, proxyRedis redis.UniversalClient, mod ...func(*Config)) *harness {
	t.Helper()
	h := &harness{t: t, keys: testkeys.New(t), redis: srv, sink: &fakeSink{}, up: newRecorder(t), logs: &lockedBuffer{}}
	if sink == nil {
		sink = h.sink
	}
	h.rdb = h.redis.Client()
	if proxyRedis == nil {
		proxyRedis = h.rdb
	}
	cfg := testConfig(h.up.srv.URL, h.keys.URL())
	cfg.Redis.URL = h.redis.URL()
	for _, m := range mod {
		m(&cfg)
	}
	h.reg = prometheus.NewRegistry()
	p, err := New(cfg, Deps{Redis: proxyRedis, Audit: sink, Logger: slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registry: h.reg, Clock: h.now})
	if err != nil {
		t.Fatal(err)
	}
	h.p = p
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	aln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	scheme := cfg.TLS.Scheme() + "://"
	h.url, h.admin = scheme+ln.Addr().String(), scheme+aln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx, ln, aln) }()
	var once sync.Once
	var serveErr error
	h.stop = func() error {
		once.Do(func() { cancel(); serveErr = <-done })
		return serveErr
	}
	t.Cleanup(func() {
		if err := h.stop(); err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	waitFor(t, "revocation subscription", func() bool { return p.revoked.live.Load() })
	return h
}

// agent registers an agent hash in Redis, as the authority would.
func (h *harness) agent(tenant, id string, reputation float64) {
	h.t.Helper()
	err := h.rdb.HSet(context.Background(), passport.AgentKey(tenant, id),
		"name", id,
		passport.FieldReputation, reputation,
		passport.FieldReputationBaseline, reputation,
		passport.FieldReputationAt, time.Now().UnixMilli(),
		passport.FieldReputationHalfLife, int64(time.Hour/time.Millisecond),
	).Err()
	if err != nil {
		h.t.Fatal(err)
	}
}

// healer is a registered HIGH healer of acme and a passport for it.
func (h *harness) healer() (*passport.Claims, string) {
	h.agent("acme", "healer-1", 90)
	c := testkeys.Claims(h.now(), "acme", "healer-1", "healer", passport.TrustHigh,
		"service.list", "service.get", "service.restart", "service.scale", "chaos.inject", "boom.now")
	return c, h.keys.Sign(h.t, c)
}

type resp struct {
	status int
	header http.Header
	body   string
}

func (h *harness) do(method, path, token string, hdr map[string]string, body string) resp {
	h.t.Helper()
	req, err := http.NewRequest(method, h.url+path, strings.NewReader(body))
	if err != nil {
		h.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json") // unless hdr says otherwise
	}
	for k, v := range hdr {
		req.Header[k] = []string{v} // as given: no canonicalisation
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return resp{res.StatusCode, res.Header, string(b)}
}

// rawDo sends a request line byte for byte (paths Go's client would clean).
func (h *harness) rawDo(method, target, token string) resp {
	h.t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(h.url, "http://"))
	if err != nil {
		h.t.Fatal(err)
	}
	defer conn.Close()
	req := method + " " + target + " HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\nContent-Length: 0\r\n"
	if token != "" {
		req += "Authorization: Bearer " + token + "\r\n"
	}
	req += "\r\n"
	if _, err := conn.Write([]byte(req)); err != nil {
		h.t.Fatal(err)
	}
	res, err := http.ReadResponse(bufioReader(conn), nil)
	if err != nil {
		h.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return resp{res.StatusCode, res.Header, string(b)}
}

func bufioReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

var errAuditDown = errors.New("audit store down")
