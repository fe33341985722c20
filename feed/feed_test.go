package feed

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
)

const (
	adminToken = "admin-token-0123456789"
	acmeToken  = "acme-token-0123456789"
)

type env struct {
	t    testing.TB
	rdb  redis.UniversalClient
	hub  *Hub
	auth *StaticAuth
	srv  *httptest.Server
}

func newEnv(t *testing.T, cfg Config, opts ...func(*httptest.Server)) *env {
	return newTBEnv(t, cfg, opts...)
}

// newTBEnv starts Redis, a running hub and a test server; opts adjust the
// server before it starts.
func newTBEnv(t testing.TB, cfg Config, opts ...func(*httptest.Server)) *env {
	t.Helper()
	rs := redistest.Start(t)
	return newEnvOn(t, rs.Client(), cfg, opts...)
}

// newEnvOn is newTBEnv on a Redis of the caller's (a Cluster, a client
// with a small pool).
func newEnvOn(t testing.TB, rdb redis.UniversalClient, cfg Config, opts ...func(*httptest.Server)) *env {
	t.Helper()
	auth := NewStaticAuth(Token{Secret: adminToken}, Token{Secret: acmeToken, Tenants: []string{"acme"}})
	hub, err := New(cfg, Deps{Redis: rdb, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Auth: auth})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- hub.Run(ctx) }()
	mux := http.NewServeMux()
	mux.Handle(Path, hub)
	mux.Handle(TicketPath, hub)
	srv := httptest.NewUnstartedServer(mux)
	for _, o := range opts {
		o(srv)
	}
	srv.Start()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("hub.Run: %v", err)
		}
		srv.Close()
	})
	waitFor(t, func() bool { hub.mu.Lock(); defer hub.mu.Unlock(); return hub.ctx != nil })
	return &env{t: t, rdb: rdb, hub: hub, auth: auth, srv: srv}
}

// waitFor polls cond until it holds or 10 s pass.
func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// add writes a record into tenant's audit stream in the layout of
// audit and returns its stream id.
func add(t testing.TB, rdb redis.UniversalClient, rec audit.Record) string {
	t.Helper()
	rec.V = audit.Version
	if rec.Time.IsZero() {
		rec.Time = time.Now().UTC()
	}
	b, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	id, err := rdb.XAdd(context.Background(), &redis.XAddArgs{
		Stream: passport.AuditStreamKey(rec.Tenant), Values: []any{RecordField, string(b)},
	}).Result()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func decision(tenant, agent, dec string) audit.Record {
	return audit.Record{Kind: audit.KindDecision, Tenant: tenant, AgentID: agent, Decision: dec,
		Action: "service.restart", Resource: "checkout", Method: "POST", Path: "/services/checkout/restart"}
}

func (e *env) wsURL(q url.Values) string {
	return "ws" + strings.TrimPrefix(e.srv.URL, "http") + Path + "?" + q.Encode()
}

// dial opens the feed with a bearer token; q gets tenant= added.
func (e *env) dial(token, tenant string, q url.Values) *websocket.Conn {
	e.t.Helper()
	c, resp, err := e.tryDial(token, tenant, q, "")
	if err != nil {
		e.t.Fatalf("dial: %v (status %v)", err, status(resp))
	}
	return c
}

func (e *env) tryDial(token, tenant string, q url.Values, origin string) (*websocket.Conn, *http.Response, error) {
	if q == nil {
		q = url.Values{}
	}
	if tenant != "" {
		q.Set("tenant", tenant)
	}
	h := http.Header{}
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	if origin != "" {
		h.Set("Origin", origin)
	}
	c, resp, err := websocket.DefaultDialer.Dial(e.wsURL(q), h)
	if err == nil {
		e.t.Cleanup(func() { _ = c.Close() })
	}
	return c, resp, err
}

func status(r *http.Response) int {
	if r == nil {
		return 0
	}
	return r.StatusCode
}

// pending holds the events of a frame not yet returned by next: a frame
// carries one or more events, one per line.
var pending sync.Map // *websocket.Conn -> [][]byte

// next reads the next event.
func next(t testing.TB, c *websocket.Conn) Event {
	t.Helper()
	var lines [][]byte
	if v, ok := pending.Load(c); ok {
		lines = v.([][]byte)
	}
	if len(lines) == 0 {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, msg, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		lines = bytes.Split(msg, []byte("\n"))
	}
	var ev Event
	if err := json.Unmarshal(lines[0], &ev); err != nil {
		t.Fatalf("decode %s: %v", lines[0], err)
	}
	pending.Store(c, lines[1:])
	return ev
}

// untilLive reads the replay up to the live marker and returns it.
func untilLive(t testing.TB, c *websocket.Conn) []Event {
	t.Helper()
	var evs []Event
	for {
		ev := next(t, c)
		if ev.Type == TypeLive {
			return evs
		}
		evs = append(evs, ev)
	}
}

func ids(evs []Event) []string {
	var s []string
	for _, e := range evs {
		s = append(s, e.ID)
	}
	return s
}

func TestResumeReplaysExactlyTheMissedEvents(t *testing.T) {
	e := newEnv(t, Config{Batch: 3}) // small pages exercise the paging
	var all []string
	for i := range 4 {
		all = append(all, add(t, e.rdb, decision("acme", fmt.Sprint("a", i), "allow")))
	}
	c := e.dial(adminToken, "acme", url.Values{"since": {"0"}})
	got := untilLive(t, c)
	if fmt.Sprint(ids(got)) != fmt.Sprint(all) {
		t.Fatalf("since=0 replayed %v, want %v", ids(got), all)
	}
	// Live.
	all = append(all, add(t, e.rdb, decision("acme", "a4", "deny")))
	if ev := next(t, c); ev.ID != all[4] || ev.Decision != "deny" || ev.AgentID != "a4" || ev.V != 1 {
		t.Fatalf("live event %+v, want id %s", ev, all[4])
	}
	lastSeen := all[2] // pretend the client saw only up to the third
	_ = c.Close()

	// While disconnected, more happen.
	for i := 5; i < 12; i++ {
		all = append(all, add(t, e.rdb, decision("acme", fmt.Sprint("a", i), "allow")))
	}
	c2 := e.dial(adminToken, "acme", url.Values{"since": {lastSeen}})
	got = untilLive(t, c2)
	if fmt.Sprint(ids(got)) != fmt.Sprint(all[3:]) {
		t.Fatalf("resume replayed %v, want exactly %v", ids(got), all[3:])
	}
	// And it goes live with nothing repeated.
	id := add(t, e.rdb, decision("acme", "a12", "allow"))
	if ev := next(t, c2); ev.ID != id {
		t.Fatalf("after resume got %s, want %s", ev.ID, id)
	}
}

// TestResumeWhileWriting resumes while a writer keeps adding: the union of
// replay and live must be the exact sequence, with no gap and no repeat.
func TestResumeWhileWriting(t *testing.T) {
	e := newEnv(t, Config{Batch: 7})
	first := add(t, e.rdb, decision("acme", "a", "allow"))
	stop := make(chan struct{})
	written := make(chan []string, 1)
	go func() {
		var ws []string
		for {
			select {
			case <-stop:
				written <- ws
				return
			default:
			}
			b, _ := json.Marshal(audit.Record{V: 1, Kind: audit.KindDecision, Tenant: "acme", Decision: "allow"})
			id, err := e.rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: passport.AuditStreamKey("acme"), Values: []any{RecordField, string(b)}}).Result()
			if err != nil {
				written <- ws
				return
			}
			ws = append(ws, id)
		}
	}()
	c := e.dial(adminToken, "acme", url.Values{"since": {first}})
	var got []string
	for _, ev := range untilLive(t, c) {
		got = append(got, ev.ID)
	}
	close(stop)
	ws := <-written
	for len(got) < len(ws) {
		got = append(got, next(t, c).ID)
	}
	if fmt.Sprint(got) != fmt.Sprint(ws) {
		t.Fatalf("got %d events, wrote %d; sequences differ", len(got), len(ws))
	}
}

func TestTailAndFilters(t *testing.T) {
	e := newEnv(t, Config{})
	add(t, e.rdb, decision("acme", "a1", "allow"))
	d2 := add(t, e.rdb, decision("acme", "a2", "deny"))
	inc := add(t, e.rdb, audit.Record{Kind: audit.KindIncident, Tenant: "acme", Details: json.RawMessage(`{"id":"inc-1","state":"DETECTED"}`)})
	add(t, e.rdb, audit.Record{Kind: audit.KindCheckpoint, Tenant: "acme"})
	rep := add(t, e.rdb, audit.Record{Kind: audit.KindReputation, Tenant: "acme", Details: json.RawMessage(`{"agent_id":"a2","score":40}`)})
	out := add(t, e.rdb, audit.Record{Kind: audit.KindOutcome, Tenant: "acme", AgentID: "a2", Status: 200})

	tests := []struct {
		name string
		q    url.Values
		want []string
	}{
		{"tail 4 default types", url.Values{"tail": {"4"}}, []string{inc, rep}},
		{"deny only", url.Values{"since": {"0"}, "decision": {"deny"}, "types": {"decision"}}, []string{d2}},
		{"agent a2 lifts details", url.Values{"since": {"0"}, "agent": {"a2"}}, []string{d2, rep}},
		{"outcome on request", url.Values{"since": {"0"}, "types": {"outcome,incident"}}, []string{inc, out}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := e.dial(adminToken, "acme", tc.q)
			if got := ids(untilLive(t, c)); fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
	_, resp, err := e.tryDial(adminToken, "acme", url.Values{"types": {"bogus"}}, "")
	if err == nil || status(resp) != http.StatusBadRequest {
		t.Fatalf("unknown type: status %d, want 400", status(resp))
	}
}

func TestOtherTenantsEventsNeverArrive(t *testing.T) {
	e := newEnv(t, Config{})
	add(t, e.rdb, decision("globex", "g0", "allow"))
	acme := e.dial(acmeToken, "acme", url.Values{"since": {"0"}})
	globex := e.dial(adminToken, "globex", nil)
	if got := untilLive(t, acme); len(got) != 0 {
		t.Fatalf("acme replay got %v", got)
	}
	untilLive(t, globex)
	for i := range 20 {
		add(t, e.rdb, decision("globex", fmt.Sprint("g", i), "deny"))
	}
	marker := add(t, e.rdb, decision("acme", "a", "allow"))
	// globex's own client sees globex's events: the writes did happen.
	for range 20 {
		if ev := next(t, globex); ev.Tenant != "globex" {
			t.Fatalf("globex client got %+v", ev)
		}
	}
	// The acme client's next event is the acme marker, nothing before it.
	if ev := next(t, acme); ev.ID != marker || ev.Tenant != "acme" {
		t.Fatalf("acme client got %+v, want only the acme marker %s", ev, marker)
	}
	// A tenant-scoped credential cannot ask for another tenant.
	_, resp, err := e.tryDial(acmeToken, "globex", nil, "")
	if err == nil || status(resp) != http.StatusForbidden {
		t.Fatalf("acme token on globex: status %d, want 403", status(resp))
	}
}

func TestOriginChecked(t *testing.T) {
	e := newEnv(t, Config{AllowedOrigins: []string{"https://wall.example.com"}})
	self := e.srv.URL // same origin as the feed
	tests := []struct {
		origin string
		want   int
	}{
		{"", http.StatusSwitchingProtocols}, // not a browser
		{self, http.StatusSwitchingProtocols},
		{"https://wall.example.com", http.StatusSwitchingProtocols},
		{"https://WALL.example.com", http.StatusSwitchingProtocols},
		{"https://evil.example.com", http.StatusForbidden},
		{"http://wall.example.com", http.StatusForbidden}, // scheme matters
		{"null", http.StatusForbidden},
		{self + ".evil.example", http.StatusForbidden},
	}
	for _, tc := range tests {
		t.Run(tc.origin, func(t *testing.T) {
			c, resp, _ := e.tryDial(adminToken, "acme", nil, tc.origin)
			if c != nil {
				_ = c.Close()
			}
			if status(resp) != tc.want {
				t.Fatalf("origin %q: status %d, want %d", tc.origin, status(resp), tc.want)
			}
		})
	}
}

func TestTicketIsSingleUseAndScoped(t *testing.T) {
	e := newEnv(t, Config{})
	ticket := func(token, tenant string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, e.srv.URL+TicketPath, strings.NewReader(`{"tenant":"`+tenant+`"}`))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct{ Ticket string }
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body.Ticket
	}
	if code, _ := ticket("", "acme"); code != http.StatusUnauthorized {
		t.Fatalf("no token: %d", code)
	}
	if code, _ := ticket("wrong", "acme"); code != http.StatusUnauthorized {
		t.Fatalf("bad token: %d", code)
	}
	if code, _ := ticket(acmeToken, "globex"); code != http.StatusForbidden {
		t.Fatalf("out of scope: %d", code)
	}
	code, tk := ticket(acmeToken, "acme")
	if code != http.StatusCreated || len(tk) != 43 {
		t.Fatalf("ticket: %d %q", code, tk)
	}
	c, resp, err := e.tryDial("", "", url.Values{"ticket": {tk}}, "")
	if err != nil {
		t.Fatalf("dial with ticket: %v %d", err, status(resp))
	}
	untilLive(t, c)
	_, resp, err = e.tryDial("", "", url.Values{"ticket": {tk}}, "")
	if err == nil || status(resp) != http.StatusUnauthorized {
		t.Fatalf("reused ticket: status %d, want 401", status(resp))
	}
	_, resp, _ = e.tryDial("", "acme", nil, "")
	if status(resp) != http.StatusUnauthorized {
		t.Fatalf("no credential: status %d, want 401", status(resp))
	}
}

func TestRevokedCredentialClosesConnections(t *testing.T) {
	e := newEnv(t, Config{RecheckInterval: 50 * time.Millisecond})
	c := e.dial(acmeToken, "acme", nil)
	untilLive(t, c)
	other := e.dial(adminToken, "acme", nil)
	untilLive(t, other)
	e.auth.Set(Token{Secret: adminToken}) // the acme token is gone
	wantClose(t, c, websocket.ClosePolicyViolation, "credential revoked")
	// The admin connection is unaffected.
	id := add(t, e.rdb, decision("acme", "a", "allow"))
	if ev := next(t, other); ev.ID != id {
		t.Fatalf("admin client got %+v", ev)
	}
	// Immediate close by credential id.
	if n := e.hub.CloseCredential(Fingerprint(adminToken)); n != 1 {
		t.Fatalf("CloseCredential closed %d, want 1", n)
	}
	wantClose(t, other, websocket.ClosePolicyViolation, "credential revoked")
}

// wantClose reads until the connection closes and checks the close frame.
func wantClose(t testing.TB, c *websocket.Conn, code int, reasonPrefix string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		_, _, err := c.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("connection ended with %v, want close %d", err, code)
		}
		if ce.Code != code || !strings.HasPrefix(ce.Text, reasonPrefix) {
			t.Fatalf("closed with %d %q, want %d %q", ce.Code, ce.Text, code, reasonPrefix)
		}
		return
	}
}

// sockBuf is the kernel buffer size the slow-client tests pin: the send
// buffer of every server-side connection and the slow client's receive
// buffer. Left alone, Linux autotunes both (up to tcp_wmem's and tcp_rmem's
// maximum, 4 MiB and more), so how much a peer that does not read can have
// in flight, and so whether and when its writer blocks, would depend on the
// machine.
const sockBuf = 32 << 10

// pinSendBuffers sets every server-side connection's send buffer to
// sockBuf (SO_SNDBUF, which also stops the kernel autotuning it).
func pinSendBuffers(s *httptest.Server) {
	s.Config.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetWriteBuffer(sockBuf)
		}
		return ctx
	}
}

// slowSetup connects a fast client and a slow one that does not read, then
// writes n events of about 16 KiB. The fast client must get every event in
// order. It also returns when it saw that the slow client had overflowed
// its buffer (lagged); the server noted the overflow (lagSince) before.
//
// The outcome does not depend on the machine's speed:
//   - the hub must run with pinSendBuffers, and the slow client pins its
//     receive buffer: the kernel then holds a few hundred KiB for it at
//     most, so the slow client's buffer (send_buffer events, a MiB at 64)
//     fills and overflows long before n events, and its writer stays
//     blocked writing what was queued until the client reads again;
//   - events are written in rounds of half the send buffer, each once the
//     fast client has read the previous one, so the fast client never has
//     more than a round queued and never overflows, however the
//     goroutines are scheduled.
func slowSetup(t *testing.T, e *env, n int) (fast, slow *websocket.Conn, want []string, lagged time.Time) {
	t.Helper()
	round := e.hub.cfg.SendBuffer / 2
	if n < 4*e.hub.cfg.SendBuffer || round == 0 {
		t.Fatalf("slowSetup: %d events with send_buffer %d cannot overflow it for sure", n, e.hub.cfg.SendBuffer)
	}
	fast = e.dial(adminToken, "acme", nil)
	untilLive(t, fast)
	d := websocket.Dialer{NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil {
			err = c.(*net.TCPConn).SetReadBuffer(sockBuf)
		}
		return c, err
	}}
	slow, _, err := d.Dial(e.wsURL(url.Values{"tenant": {"acme"}}), http.Header{"Authorization": {"Bearer " + adminToken}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = slow.Close() })
	untilLive(t, slow)

	pad := json.RawMessage(`{"id":"x","pad":"` + strings.Repeat("p", 16<<10) + `"}`)
	var got []string
	for len(want) < n {
		recs := make([]audit.Record, min(round, n-len(want)))
		for i := range recs {
			recs[i] = audit.Record{Kind: audit.KindChaos, Tenant: "acme", Details: pad}
		}
		want = append(want, addMany(t, e.rdb, recs)...)
		for len(got) < len(want) {
			got = append(got, next(t, fast).ID)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("fast client got %d events, want exactly the %d written, in order", len(got), n)
	}
	// The fan-out handles one entry at a time, so once the fast client has
	// the last event, the slow client's overflow (far earlier) is counted;
	// and it is the slow client's, the fast one cannot overflow.
	if l := promValue(e.hub.m.lagging); l != 1 {
		t.Fatalf("%v lag episodes after %d events, want 1 (the slow client's)", l, n)
	}
	return fast, slow, want, time.Now()
}

func TestSlowClientDroppedFastKeepsReceiving(t *testing.T) {
	// The slow client overflows its buffer and then stays silent for longer
	// than the lag timeout. Its writer cannot have caught up meanwhile (it
	// is blocked sending the queued events), so when the client reads again
	// it is past its deadline and still behind the stream: it gets what
	// was in flight, then 1013.
	const lagTimeout = 100 * time.Millisecond
	e := newEnv(t, Config{SendBuffer: 64, Batch: 16, WriteWait: 20 * time.Second, LagTimeout: lagTimeout}, pinSendBuffers)
	fast, slow, _, lagged := slowSetup(t, e, 500)
	// Being slow is the behaviour under test, so this wait is the client's
	// silence, not a guess at how long the server takes: the server's
	// deadline (lagSince + lagTimeout) is before lagged + lagTimeout, and
	// it cannot decide before the client reads.
	time.Sleep(time.Until(lagged.Add(lagTimeout)))
	wantClose(t, slow, websocket.CloseTryAgainLater, "slow consumer")
	if d := promValue(e.hub.m.dropped.WithLabelValues("slow")); d != 1 {
		t.Fatalf("dropped %v as slow, want 1", d)
	}
	// And the fast one still receives.
	id := add(t, e.rdb, decision("acme", "a", "allow"))
	if ev := next(t, fast); ev.ID != id {
		t.Fatalf("fast client after drop got %s, want %s", ev.ID, id)
	}
}

// TestLaggingClientCatchesUp: a client that overflows its buffer but then
// reads again within the lag timeout is fed from the stream and rejoins,
// missing nothing and seeing nothing twice.
func TestLaggingClientCatchesUp(t *testing.T) {
	e := newEnv(t, Config{SendBuffer: 64, Batch: 16, WriteWait: 20 * time.Second, LagTimeout: time.Minute}, pinSendBuffers)
	_, slow, want, _ := slowSetup(t, e, 500)
	want = append(want, add(t, e.rdb, decision("acme", "a", "allow")))
	var got []string
	for len(got) < len(want) {
		got = append(got, next(t, slow).ID)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("lagging client got %d events, want exactly the %d written, in order", len(got), len(want))
	}
	if d := promValue(e.hub.m.dropped.WithLabelValues("slow")); d != 0 {
		t.Fatalf("dropped %v, want 0", d)
	}
	// It is live again.
	id := add(t, e.rdb, decision("acme", "b", "deny"))
	if ev := next(t, slow); ev.ID != id {
		t.Fatalf("after catching up got %s, want %s", ev.ID, id)
	}
}

// addMany writes records in one pipeline and returns their ids in order.
func addMany(t testing.TB, rdb redis.UniversalClient, recs []audit.Record) []string {
	t.Helper()
	ctx := context.Background()
	p := rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(recs))
	for i, rec := range recs {
		rec.V = audit.Version
		if rec.Time.IsZero() {
			rec.Time = time.Now().UTC()
		}
		b, _ := json.Marshal(rec)
		cmds[i] = p.XAdd(ctx, &redis.XAddArgs{Stream: passport.AuditStreamKey(rec.Tenant), Values: []any{RecordField, string(b)}})
	}
	if _, err := p.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	ids := make([]string, len(cmds))
	for i, c := range cmds {
		ids[i] = c.Val()
	}
	return ids
}

func TestHubNotRunning(t *testing.T) {
	rs := redistest.Start(t)
	hub, err := New(Config{}, Deps{Redis: rs.Client(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Auth: NewStaticAuth(Token{Secret: adminToken})})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(hub)
	defer srv.Close()
	h := http.Header{"Authorization": {"Bearer " + adminToken}}
	c, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+Path+"?tenant=acme", h)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	wantClose(t, c, websocket.CloseTryAgainLater, "feed not running")
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"defaults", Config{}, true},
		{"origin with path", Config{AllowedOrigins: []string{"https://a.example/x"}}, false},
		{"origin wildcard", Config{AllowedOrigins: []string{"*"}}, false},
		{"pong before ping", Config{PingInterval: time.Minute, PongWait: time.Second}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.cfg.Validate(); (err == nil) != tc.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func FuzzParseID(f *testing.F) {
	for _, s := range []string{"0", "0-0", "1732567000000-12", "-", "1-", "18446744073709551615-18446744073709551615"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := parseID(s)
		if err != nil {
			return
		}
		back, err := parseID(id.String())
		if err != nil || back != id {
			t.Fatalf("round trip of %q: %v %v", s, back, err)
		}
	})
}

func FuzzDecodeEntry(f *testing.F) {
	f.Add(`{"v":1,"kind":"decision","tenant":"acme","decision":"deny"}`)
	f.Add(`{"v":1,"kind":"reputation","tenant":"acme","details":{"agent_id":"a1"}}`)
	f.Add(`{"kind":"checkpoint"}`)
	f.Add(`not json`)
	f.Fuzz(func(t *testing.T, s string) {
		ev, err := decodeEntry(redis.XMessage{ID: "1-0", Values: map[string]any{RecordField: s}})
		if err == nil && (ev == nil || !knownTypes[ev.Type] || ev.ID != "1-0") {
			t.Fatalf("decoded %q into %+v", s, ev)
		}
	})
}

func promValue(c prometheus.Collector) float64 { return testutil.ToFloat64(c) }

// TestKeepAlive: the server pings; a peer that answers stays, a peer that
// never answers (it does not read, so it sends no pong) is cut after
// pong_wait.
func TestKeepAlive(t *testing.T) {
	e := newEnv(t, Config{PingInterval: 30 * time.Millisecond, PongWait: 300 * time.Millisecond})
	alive := e.dial(adminToken, "acme", nil)
	untilLive(t, alive)
	pings := make(chan struct{}, 100)
	alive.SetPingHandler(func(data string) error {
		select {
		case pings <- struct{}{}:
		default:
		}
		return alive.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
	})
	mute := e.dial(adminToken, "acme", nil)
	untilLive(t, mute)
	mute.SetPingHandler(func(string) error { return nil }) // swallow pings: no pong
	// Both read; only one answers.
	muteErr := make(chan error, 1)
	go func() {
		_ = mute.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			if _, _, err := mute.ReadMessage(); err != nil {
				muteErr <- err
				return
			}
		}
	}()
	aliveMsg := make(chan string, 1)
	go func() {
		_ = alive.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, msg, err := alive.ReadMessage()
		if err != nil {
			aliveMsg <- err.Error()
		}
		aliveMsg <- string(msg)
	}()
	select {
	case err := <-muteErr:
		var ce *websocket.CloseError
		if errors.As(err, &ce) && ce.Code == websocket.ClosePolicyViolation {
			t.Fatalf("mute peer closed with %v, want the connection cut", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a peer that never answers pings was not cut")
	}
	for range 5 { // several pong_waits' worth of pings answered
		<-pings
	}
	id := add(t, e.rdb, decision("acme", "a", "allow"))
	if msg := <-aliveMsg; !strings.Contains(msg, `"id":"`+id+`"`) {
		t.Fatalf("answering peer: %s, want the event %s", msg, id)
	}
}

// TestShutdownClosesWithGoingAway: when the hub stops, open connections get
// 1001 so that dashboards reconnect (to another instance) with since=.
func TestShutdownClosesWithGoingAway(t *testing.T) {
	rs := redistest.Start(t)
	hub, err := New(Config{Block: 100 * time.Millisecond}, Deps{Redis: rs.Client(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Auth: NewStaticAuth(Token{Secret: adminToken})})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- hub.Run(ctx) }()
	srv := httptest.NewServer(hub)
	defer srv.Close()
	var c *websocket.Conn
	waitFor(t, func() bool {
		var err error
		c, _, err = websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+Path+"?tenant=acme",
			http.Header{"Authorization": {"Bearer " + adminToken}})
		if err != nil {
			return false
		}
		_, msg, err := c.ReadMessage()
		if err != nil || !strings.Contains(string(msg), `"type":"live"`) {
			_ = c.Close()
			return false
		}
		return true
	})
	defer c.Close()
	cancel()
	wantClose(t, c, websocket.CloseGoingAway, "server shutting down")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestRecheckOnRevocationEvent: with the periodic check far away, a message
// on the authority's revocation channel makes open connections check their
// credential at once.
func TestRecheckOnRevocationEvent(t *testing.T) {
	e := newEnv(t, Config{RecheckInterval: time.Hour})
	c := e.dial(acmeToken, "acme", nil)
	untilLive(t, c)
	e.auth.Set(Token{Secret: adminToken}) // the acme token is revoked
	// Publish until the hub's subscription has seen one (it subscribes in
	// Run, possibly after this test's first publish).
	closed := make(chan error, 1)
	go func() {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				closed <- err
				return
			}
		}
	}()
	ev := passport.RevocationEvent{Type: passport.EventBlock, Tenant: "acme", AgentID: "a1"}.Marshal()
	for {
		if err := e.rdb.Publish(context.Background(), passport.RevocationChannel, ev).Err(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-closed:
			var ce *websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != websocket.ClosePolicyViolation || ce.Text != "credential revoked" {
				t.Fatalf("connection ended with %v, want 1008 credential revoked", err)
			}
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// A feed mounted under the proxy's restricted Redis user
// (audit.ProxyACLRules) can issue and redeem tickets, and nothing else
// beside the ticket keys.
func TestTicketsUnderProxyACLUser(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	args := []any{"ACL", "SETUSER", "passport-proxy", "on", ">proxy-secret"}
	for _, r := range strings.Fields(audit.ProxyACLRules) {
		args = append(args, r)
	}
	if err := srv.Client().Do(ctx, args...).Err(); err != nil {
		t.Fatalf("ACL SETUSER: %v", err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "passport-proxy", Password: "proxy-secret"})
	t.Cleanup(func() { _ = rdb.Close() })

	tk, err := issueTicket(ctx, rdb, Principal{ID: "ops"}, "acme", time.Minute)
	if err != nil {
		t.Fatalf("issue as proxy user: %v", err)
	}
	v, err := redeemTicket(ctx, rdb, tk)
	if err != nil || v.Tenant != "acme" {
		t.Fatalf("redeem as proxy user: %+v %v", v, err)
	}
	if _, err := redeemTicket(ctx, rdb, tk); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("second redemption: %v", err)
	}
	if err := rdb.Set(ctx, "passport:feed:other", "x", time.Minute).Err(); err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Fatalf("SET outside the ticket prefix: %v", err)
	}
}
