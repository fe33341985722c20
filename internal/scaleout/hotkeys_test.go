package scaleout

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
)

// The global keys and channel of issue 17's item 2: each sits in one slot,
// so on one node, whatever the number of tenants.
const (
	clientsKey = "passport:authority:clients"
	keysKey    = "passport:authority:keys"
)

// TestGlobalKeysAreNotHotSpots runs real traffic (passport requests,
// allowed and refused calls through two proxies, a revocation, a block, a
// new audit writer, and a resubscription of every proxy over 10,000
// revocations) on a Redis Cluster, and counts with MONITOR on every node
// the commands each node executes, by key, between markers that delimit
// the phases. It asserts what makes the global keys no hot spot: a call
// with a passport the proxy has seen reads neither passport:revoked nor
// passport:blocked (the proxy keeps both in memory and follows the
// channel), a passport request reads passport:authority:clients at most
// twice, and passport:audit:writers is written only when a writer starts.
// The table of commands per call, per passport request and per event,
// with the node that ran them, is logged for docs/scale-out.md.
func TestGlobalKeysAreNotHotSpots(t *testing.T) {
	if testing.Short() {
		t.Skip("a Redis Cluster, an authority and two proxies: not in -short")
	}
	c := redistest.StartCluster(t)
	cc := c.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	writer := func(id string) *audit.Stream {
		return runStream(t, newStream(t, cc, audit.StreamConfig{WriterID: id}))
	}
	authURL := startAuthority(t, cc, "", writer("authority-1"))
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	t.Cleanup(up.Close)
	const nProxies = 2
	var proxies []string
	var regs []*prometheus.Registry
	for i := range nProxies {
		reg := prometheus.NewRegistry()
		regs = append(regs, reg)
		proxies = append(proxies, startProxyWithRegistry(t, cc, up.URL, authURL, authURL, writer(fmt.Sprintf("proxy-%d", i)), reg))
	}
	admin, err := client.NewAdmin(authURL, adminToken, client.Options{})
	if err != nil {
		t.Fatal(err)
	}

	// Setup, not measured: three tenants on three primaries, two agents
	// each, a passport each, every passport seen by every proxy.
	type agent struct {
		tenant string
		id     string
		secret string
		tok    string
	}
	var agents []agent
	for _, tenant := range tenantsOnDistinctPrimaries(t, c, 3) {
		for j := range 2 {
			reg, err := admin.RegisterAgent(ctx, tenant, client.AgentSpec{Name: fmt.Sprintf("healer-%d", j), Type: passport.TypeHealer, TrustLevel: passport.TrustHigh})
			if err != nil {
				t.Fatalf("register in %s: %v", tenant, err)
			}
			ac, err := client.New(authURL, reg.ClientID, passport.Secret(reg.ClientSecret), client.Options{})
			if err != nil {
				t.Fatal(err)
			}
			tok, err := ac.Token(ctx, client.TokenRequest{Scope: []string{"service.list"}})
			if err != nil {
				t.Fatalf("passport in %s: %v", tenant, err)
			}
			agents = append(agents, agent{tenant: tenant, id: reg.ClientID, secret: reg.ClientSecret, tok: tok.Raw})
		}
	}
	call := func(base, method, path, tok string) int {
		req, _ := http.NewRequestWithContext(ctx, method, base+path, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Errorf("call %s: %v", base, err)
			return 0
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		return res.StatusCode
	}
	for _, a := range agents {
		for _, p := range proxies {
			if s := call(p, http.MethodGet, "/services", a.tok); s != http.StatusOK {
				t.Fatalf("first call of %s through %s: %d", a.id, p, s)
			}
		}
	}
	// calls sends n calls spread over the agents and proxies from four
	// workers, each expected to be answered want.
	calls := func(n int, method, path string, want int) {
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Go(func() {
				for i := w; i < n; i += 4 {
					a := agents[i%len(agents)]
					if s := call(proxies[(i/len(agents))%len(proxies)], method, path, a.tok); s != want {
						t.Errorf("%s %s by %s: %d, want %d", method, path, a.id, s, want)
						return
					}
				}
			})
		}
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
	}
	directChecks := func() float64 {
		var sum float64
		for _, reg := range regs {
			sum += counterValue(t, reg, "passport_proxy_revocation_direct_checks_total")
		}
		return sum
	}

	m := startMonitor(t, c)

	const tokenRequests = 30
	m.mark("tokens")
	for i := range tokenRequests {
		// Straight to the endpoint: the client library reuses a passport
		// it holds.
		a := agents[i%len(agents)]
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, authURL+"/oauth2/token",
			strings.NewReader("grant_type=client_credentials&scope=service.list"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth(url.QueryEscape(a.id), url.QueryEscape(a.secret))
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Fatalf("passport request %d: %d", i, res.StatusCode)
		}
	}

	const allowed, denied = 300, 60
	direct0 := directChecks()
	m.mark("allowed")
	calls(allowed, http.MethodGet, "/services", http.StatusOK)
	m.mark("denied")
	calls(denied, http.MethodPost, "/services/checkout/restart", http.StatusForbidden)
	m.mark("revoke")
	direct := directChecks() - direct0

	form := url.Values{"token": {agents[0].tok}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, authURL+"/oauth2/revoke", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "Bearer "+adminToken)
	res, err := http.DefaultClient.Do(req)
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("revoke: %v %v", err, res)
	}
	res.Body.Close()

	m.mark("block")
	if _, err := admin.Block(ctx, agents[1].tenant, agents[1].id, "hot-key test"); err != nil {
		t.Fatal(err)
	}
	// Every proxy checks a block event against the set once.
	if err := retry(10*time.Second, func() error {
		if n := m.count("block", passport.BlockedKey, "SISMEMBER"); n < nProxies {
			return fmt.Errorf("%d of %d proxies checked the block against %s", n, nProxies, passport.BlockedKey)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// A writer that starts registers its key once, at its first record.
	m.mark("writer")
	late := newStream(t, cc, audit.StreamConfig{WriterID: "late-writer"})
	if _, err := late.Append(ctx, decision(agents[0].tenant, 1)); err != nil {
		t.Fatal(err)
	}

	// 10,000 live revocations, then every subscription on every node cut:
	// what each proxy does after a failover of the channel's node.
	const seeded = 10000
	m.mark("seed")
	exp := float64(time.Now().Add(time.Hour).Unix())
	for i := 0; i < seeded; i += 1000 {
		zs := make([]redis.Z, 1000)
		for j := range zs {
			zs[j] = redis.Z{Score: exp, Member: randomJTI()}
		}
		if err := cc.ZAdd(ctx, passport.RevokedKey, zs...).Err(); err != nil {
			t.Fatal(err)
		}
	}
	revokedNode := m.node(c.PrimaryOf(passport.RevokedKey).Addr)
	calls0, usec0 := commandStats(t, revokedNode, "zrangebyscore")
	m.mark("reload")
	for _, n := range c.Nodes {
		if err := m.node(n.Addr).ClientKillByFilter(ctx, "TYPE", "pubsub").Err(); err != nil {
			t.Fatalf("client kill on %s: %v", n.Addr, err)
		}
	}
	// A load ends with SMEMBERS of the blocked set.
	if err := retry(10*time.Second, func() error {
		if n := m.count("reload", passport.BlockedKey, "SMEMBERS"); n < nProxies {
			return fmt.Errorf("%d of %d proxies reloaded", n, nProxies)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	m.mark("end")
	calls1, usec1 := commandStats(t, revokedNode, "zrangebyscore")
	reloadBytes := replyBytes(t, c.PrimaryOf(passport.RevokedKey).Addr,
		"ZRANGEBYSCORE", passport.RevokedKey, "-inf", "+inf", "WITHSCORES")

	units := []unit{
		{"tokens", "passport request", tokenRequests},
		{"allowed", "allowed call", allowed},
		{"denied", "refused call", denied},
		{"revoke", "revocation", 1},
		{"block", "block", 1},
		{"writer", "writer start", 1},
		{"reload", "resubscription of 2 proxies", 1},
	}
	m.log(t, c, units)
	t.Logf("a full read of %s with %d live revocations: %d bytes of reply (RESP3), %.0f bytes a revocation; "+
		"the resubscription of %d proxies cost its node %d ZRANGEBYSCORE taking %d µs of server time; %v direct checks in %d calls",
		passport.RevokedKey, cc.ZCard(ctx, passport.RevokedKey).Val(), reloadBytes, float64(reloadBytes)/float64(seeded),
		nProxies, calls1-calls0, usec1-usec0, direct, allowed+denied)

	// The steady call path reads neither set: the proxies answer from
	// memory. Only a direct check (subscription not proven current) reads
	// them, one ZSCORE and one SISMEMBER each, counted by the proxies.
	for _, phase := range []string{"allowed", "denied"} {
		for _, key := range []string{passport.RevokedKey, passport.BlockedKey} {
			if got := m.key(phase, key); float64(got) > direct {
				t.Errorf("%s calls: %d commands on %s, %v direct checks: the call path reads the set", phase, got, key, direct)
			}
		}
	}
	if direct > (allowed+denied)/20 {
		t.Errorf("%v direct checks in %d calls: the proxies' subscriptions were not current", direct, allowed+denied)
	}
	// Nor does a call touch the authority's or the writers' keys.
	for _, phase := range []string{"allowed", "denied"} {
		for _, key := range []string{clientsKey, keysKey, audit.WritersKey} {
			if got := m.key(phase, key); got != 0 {
				t.Errorf("%s calls: %d commands on %s", phase, got, key)
			}
		}
	}
	// A passport request reads the clients hash once or twice, never
	// scans it, and reads neither revocation set.
	if got := m.key("tokens", clientsKey); got < tokenRequests || got > 2*tokenRequests {
		t.Errorf("%d passport requests: %d commands on %s, want 1 or 2 each", tokenRequests, got, clientsKey)
	}
	if got := m.count("tokens", clientsKey, "HGETALL") + m.count("tokens", clientsKey, "HSCAN"); got != 0 {
		t.Errorf("passport requests read %s whole %d times", clientsKey, got)
	}
	for _, key := range []string{passport.RevokedKey, passport.BlockedKey, keysKey, audit.WritersKey} {
		if got := m.key("tokens", key); got != 0 {
			t.Errorf("%d passport requests: %d commands on %s", tokenRequests, got, key)
		}
	}
	// A block event costs each proxy one SISMEMBER (the event is a hint
	// checked against the set), and nothing more on the global keys.
	if got := m.count("block", passport.BlockedKey, "SISMEMBER"); got != nProxies {
		t.Errorf("a block: %d SISMEMBER on %s from %d proxies, want one each", got, passport.BlockedKey, nProxies)
	}
	if got := m.count("block", passport.BlockedKey, "SMEMBERS") + m.count("block", passport.RevokedKey, "ZRANGEBYSCORE"); got != 0 {
		t.Errorf("a block: %d full reads of the sets", got)
	}
	// The writers' hash: written when a writer starts, once, and in no
	// other phase.
	if got := m.count("writer", audit.WritersKey, "HSETNX"); got != 1 {
		t.Errorf("a writer start: %d HSETNX on %s, want 1", got, audit.WritersKey)
	}
	for _, phase := range []string{"tokens", "allowed", "denied", "revoke", "block", "reload"} {
		if got := m.key(phase, audit.WritersKey); got != 0 {
			t.Errorf("%s: %d commands on %s", phase, got, audit.WritersKey)
		}
	}
	// The tenant registry: one SADD per writer and tenant, at the writer's
	// first checkpoint there, never per call.
	total := 0
	for _, u := range units {
		total += m.key(u.phase, audit.TenantsKey)
	}
	if writers, tenants := nProxies+2, 3; total > writers*tenants {
		t.Errorf("%d commands on %s from %d writers in %d tenants", total, audit.TenantsKey, writers, tenants)
	}
	// A resubscription reads the revocations in chunks of at most 10,000
	// and the blocked set once, per proxy, all on the one node holding them.
	if got, most := m.count("reload", passport.RevokedKey, "ZRANGEBYSCORE"), nProxies*(seeded/10000+2); got < nProxies || got > most {
		t.Errorf("resubscription of %d proxies: %d ZRANGEBYSCORE on %s, want %d to %d", nProxies, got, passport.RevokedKey, nProxies, most)
	}
	if got := m.count("reload", passport.BlockedKey, "SMEMBERS"); got != nProxies {
		t.Errorf("resubscription of %d proxies: %d SMEMBERS on %s", nProxies, got, passport.BlockedKey)
	}
	for _, key := range []string{passport.RevokedKey, passport.BlockedKey} {
		if nodes := m.nodesOf("reload", key); len(nodes) != 1 || nodes[0] != c.PrimaryOf(key).Addr {
			t.Errorf("resubscription: %s read on %v, want only on its primary %s", key, nodes, c.PrimaryOf(key).Addr)
		}
	}
}

// commandStats reads how many times a node ran cmd and the server time
// they took (INFO commandstats).
func commandStats(t *testing.T, rdb *redis.Client, cmd string) (calls, usec int64) {
	t.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		v, ok := strings.CutPrefix(line, "cmdstat_"+cmd+":")
		if !ok {
			continue
		}
		for _, f := range strings.Split(v, ",") {
			name, val, _ := strings.Cut(f, "=")
			n, _ := strconv.ParseInt(val, 10, 64)
			switch name {
			case "calls":
				calls = n
			case "usec":
				usec = n
			}
		}
	}
	return calls, usec
}

func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			var sum float64
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
			return sum
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func randomJTI() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b) // as the authority's jti
}

// unit names what a phase's commands are divided by in the table.
type unit struct {
	phase string
	what  string
	n     int
}

// monitor counts the commands every node of a Cluster executes, by phase,
// node, key class and command, from a MONITOR connection to each node.
// Phases are delimited by a marker (ECHO) sent to every node: a node runs
// commands one at a time and MONITOR shows them in that order, so every
// command a node ran before the marker is counted in the phase before it.
type monitor struct {
	t       *testing.T
	peers   map[string]bool // node addresses: a replica's link to its primary is no client
	clients map[string]*redis.Client

	mu      sync.Mutex
	want    string            // the phase being marked
	reached chan struct{}     // closed when every node's stream reached want
	phase   map[string]string // node address -> the phase its stream is in
	counts  map[monKey]int
}

type monKey struct {
	phase, node, class, cmd string
}

const markerPrefix = "hotkeys-phase:"

func startMonitor(t *testing.T, c *redistest.Cluster) *monitor {
	t.Helper()
	m := &monitor{t: t, peers: map[string]bool{}, clients: map[string]*redis.Client{}, phase: map[string]string{},
		counts: map[monKey]int{}}
	var wg sync.WaitGroup
	var conns []net.Conn
	for _, n := range c.Nodes {
		m.peers[n.Addr] = true
		m.clients[n.Addr] = n.Client()
	}
	for _, n := range c.Nodes {
		conn, err := net.Dial("tcp", n.Addr)
		if err != nil {
			t.Fatal(err)
		}
		rd := bufio.NewReaderSize(conn, 1<<16)
		if _, err := conn.Write([]byte("MONITOR\r\n")); err != nil {
			t.Fatal(err)
		}
		if line, err := rd.ReadString('\n'); err != nil || line != "+OK\r\n" {
			t.Fatalf("MONITOR on %s: %q %v", n.Addr, line, err)
		}
		wg.Go(func() {
			for {
				line, err := rd.ReadString('\n')
				if err != nil {
					return
				}
				m.add(n.Addr, line)
			}
		})
		conns = append(conns, conn)
	}
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
	})
	return m
}

func (m *monitor) node(addr string) *redis.Client { return m.clients[addr] }

func (m *monitor) add(node, line string) {
	client, args, ok := parseMonitorLine(line)
	if !ok || len(args) == 0 || client == "lua" || m.peers[client] {
		return // a script's own commands are counted as its EVAL; replication is not traffic
	}
	cmd := strings.ToUpper(args[0])
	m.mu.Lock()
	defer m.mu.Unlock()
	if cmd == "ECHO" && len(args) == 2 && strings.HasPrefix(args[1], markerPrefix) {
		m.phase[node] = strings.TrimPrefix(args[1], markerPrefix)
		for addr := range m.clients {
			if m.phase[addr] != m.want {
				return
			}
		}
		if m.reached != nil {
			close(m.reached)
			m.reached = nil
		}
		return
	}
	k := monKey{phase: m.phase[node], node: node, class: keyClass(commandKey(cmd, args)), cmd: cmd}
	m.counts[k]++
}

// mark starts phase on every node and waits until every MONITOR stream
// has reached it.
func (m *monitor) mark(phase string) {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m.mu.Lock()
	m.want, m.reached = phase, make(chan struct{})
	reached := m.reached
	m.mu.Unlock()
	for _, c := range m.clients {
		if err := c.Echo(ctx, markerPrefix+phase).Err(); err != nil {
			m.t.Fatalf("marker %s: %v", phase, err)
		}
	}
	select {
	case <-reached:
	case <-ctx.Done():
		m.t.Fatalf("marker %s not seen on every node", phase)
	}
}

// count is how many cmd on class a phase saw, on all nodes.
func (m *monitor) count(phase, class, cmd string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for k, v := range m.counts {
		if k.phase == phase && k.class == class && k.cmd == cmd {
			n += v
		}
	}
	return n
}

// key is how many commands on class a phase saw, on all nodes.
func (m *monitor) key(phase, class string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for k, v := range m.counts {
		if k.phase == phase && k.class == class {
			n += v
		}
	}
	return n
}

// nodesOf are the nodes that ran commands on class in a phase.
func (m *monitor) nodesOf(phase, class string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for k := range m.counts {
		if k.phase == phase && k.class == class && !slices.Contains(out, k.node) {
			out = append(out, k.node)
		}
	}
	slices.Sort(out)
	return out
}

// log writes the table: per phase, per key class and command, the count,
// the count per unit, and the nodes (n<index>, p for a primary).
func (m *monitor) log(t *testing.T, c *redistest.Cluster, units []unit) {
	t.Helper()
	name := map[string]string{}
	for i, n := range c.Nodes {
		name[n.Addr] = fmt.Sprintf("n%d", i)
	}
	for _, p := range c.Primaries() {
		name[p.Addr] += "p"
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var b strings.Builder
	for _, u := range units {
		type row struct {
			class, cmd string
			n          int
			nodes      []string
		}
		rows := map[[2]string]*row{}
		total := 0
		for k, v := range m.counts {
			if k.phase != u.phase {
				continue
			}
			r := rows[[2]string{k.class, k.cmd}]
			if r == nil {
				r = &row{class: k.class, cmd: k.cmd}
				rows[[2]string{k.class, k.cmd}] = r
			}
			r.n += v
			total += v
			if !slices.Contains(r.nodes, name[k.node]) {
				r.nodes = append(r.nodes, name[k.node])
			}
		}
		sorted := make([]*row, 0, len(rows))
		for _, r := range rows {
			slices.Sort(r.nodes)
			sorted = append(sorted, r)
		}
		slices.SortFunc(sorted, func(a, b *row) int {
			if g := strings.Compare(globalFirst(a.class), globalFirst(b.class)); g != 0 {
				return g
			}
			return strings.Compare(a.cmd, b.cmd)
		})
		fmt.Fprintf(&b, "\n%s: %d %s(s), %d commands, %.2f per %s\n", u.phase, u.n, u.what, total, float64(total)/float64(u.n), u.what)
		for _, r := range sorted {
			fmt.Fprintf(&b, "  %-44s %-16s %6d %8.2f  %s\n", r.class, r.cmd, r.n, float64(r.n)/float64(u.n), strings.Join(r.nodes, ","))
		}
	}
	t.Logf("commands by phase, key class and command: count, count per unit, nodes (n<i>, p = primary):%s", b.String())
}

// globalFirst sorts global keys before tenant keys and keyless commands.
func globalFirst(class string) string {
	switch {
	case strings.HasPrefix(class, "passport:{"):
		return "1" + class
	case strings.HasPrefix(class, "passport:"), strings.HasPrefix(class, "channel "):
		return "0" + class
	}
	return "2" + class
}

// keyless are commands without a key (or whose first argument is no key).
var keyless = map[string]bool{
	"PING": true, "ECHO": true, "CLUSTER": true, "COMMAND": true, "INFO": true, "CLIENT": true, "HELLO": true,
	"READONLY": true, "READWRITE": true, "MULTI": true, "EXEC": true, "DISCARD": true, "WAIT": true, "TIME": true,
	"CONFIG": true, "SCAN": true, "DBSIZE": true, "SELECT": true, "AUTH": true, "SCRIPT": true, "FUNCTION": true,
	"ROLE": true, "MEMORY": true,
}

// commandKey is the first key of a command, "channel <name>" for pub/sub,
// or "(no key)".
func commandKey(cmd string, args []string) string {
	switch {
	case keyless[cmd] || len(args) < 2:
		return "(no key)"
	case cmd == "PUBLISH" || cmd == "SPUBLISH" || strings.HasSuffix(cmd, "SUBSCRIBE"):
		return "channel " + args[1]
	case cmd == "EVAL" || cmd == "EVALSHA" || cmd == "EVAL_RO" || cmd == "EVALSHA_RO" || cmd == "FCALL":
		if len(args) > 3 && args[2] != "0" {
			return args[3]
		}
		return "(no key)"
	case cmd == "XREAD" || cmd == "XREADGROUP":
		for i, a := range args {
			if strings.EqualFold(a, "STREAMS") && i+1 < len(args) {
				return args[i+1]
			}
		}
	}
	return args[1]
}

// tenantWords are the fixed parts of tenant keys; every other part (agent
// id, jti, incident id) is shown as *.
var tenantWords = map[string]bool{
	"audit": true, "heads": true, "agent": true, "agents": true, "issued": true, "issue-rate": true,
	"assertion": true, "incident": true, "incidents": true, "source": true, "client": true,
}

// keyClass groups keys: tenant and per-source keys by their shape, keys
// made per proof or ticket by their prefix, global keys as themselves.
func keyClass(key string) string {
	for _, p := range []string{"passport:dpop:jti:", "passport:feed:ticket:", "passport:authority:enroll:seen:"} {
		if strings.HasPrefix(key, p) {
			return p + "*"
		}
	}
	if !strings.HasPrefix(key, "passport:{") {
		return key
	}
	tag, rest, ok := strings.Cut(strings.TrimPrefix(key, "passport:{"), "}")
	if !ok {
		return key
	}
	kind, _, _ := strings.Cut(tag, ":")
	parts := strings.Split(strings.TrimPrefix(rest, ":"), ":")
	for i, p := range parts {
		if !tenantWords[p] {
			parts[i] = "*"
		}
	}
	return "passport:{" + kind + ":*}:" + strings.Join(parts, ":")
}

// parseMonitorLine splits a MONITOR line,
// `+1701770000.123456 [0 127.0.0.1:54321] "ZSCORE" "passport:revoked" "x"`,
// into the client ("lua" inside a script) and the unquoted arguments.
func parseMonitorLine(line string) (client string, args []string, ok bool) {
	line = strings.TrimRight(line, "\r\n")
	open, end := strings.IndexByte(line, '['), strings.IndexByte(line, ']')
	if !strings.HasPrefix(line, "+") || open < 0 || end < open {
		return "", nil, false
	}
	_, client, _ = strings.Cut(line[open+1:end], " ")
	s := line[end+1:]
	for {
		s = strings.TrimLeft(s, " ")
		if s == "" {
			return client, args, true
		}
		if s[0] != '"' {
			return "", nil, false
		}
		var b strings.Builder
		i := 1
		for ; i < len(s) && s[i] != '"'; i++ {
			if s[i] != '\\' || i+1 >= len(s) {
				b.WriteByte(s[i])
				continue
			}
			i++
			switch s[i] {
			case 'n':
				b.WriteByte('\n')
			case 'r':
				b.WriteByte('\r')
			case 't':
				b.WriteByte('\t')
			case 'a':
				b.WriteByte('\a')
			case 'b':
				b.WriteByte('\b')
			case 'x':
				if i+2 < len(s) {
					if v, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
						b.WriteByte(byte(v))
						i += 2
						continue
					}
				}
				b.WriteByte('x')
			default:
				b.WriteByte(s[i])
			}
		}
		if i >= len(s) {
			return "", nil, false
		}
		args = append(args, b.String())
		s = s[i+1:]
	}
}

func TestParseMonitorLine(t *testing.T) {
	for _, tc := range []struct {
		line, client string
		args         []string
	}{
		{`+1701770000.123456 [0 127.0.0.1:54321] "ZSCORE" "passport:revoked" "abc"` + "\r\n", "127.0.0.1:54321", []string{"ZSCORE", "passport:revoked", "abc"}},
		{`+1.2 [0 lua] "HGET" "passport:{t:acme}:audit:heads" "w\"1\\" "\x00\n"`, "lua", []string{"HGET", "passport:{t:acme}:audit:heads", `w"1\`, "\x00\n"}},
		{`+1.2 [0 127.0.0.1:1] "PING"`, "127.0.0.1:1", []string{"PING"}},
	} {
		client, args, ok := parseMonitorLine(tc.line)
		if !ok || client != tc.client || !slices.Equal(args, tc.args) {
			t.Errorf("parse %q: %q %q %v, want %q %q", tc.line, client, args, ok, tc.client, tc.args)
		}
	}
	for key, want := range map[string]string{
		"passport:{t:acme}:agent:agt_x1:issued":   "passport:{t:*}:agent:*:issued",
		"passport:{t:acme}:audit":                 "passport:{t:*}:audit",
		"passport:{authfail:127.0.0.1}:source":    "passport:{authfail:*}:source",
		"passport:dpop:jti:abc":                   "passport:dpop:jti:*",
		passport.RevokedKey:                       passport.RevokedKey,
		"passport:{t:acme}:assertion:agt_x:jti-1": "passport:{t:*}:assertion:*:*",
	} {
		if got := keyClass(key); got != want {
			t.Errorf("keyClass(%q) = %q, want %q", key, got, want)
		}
	}
}

// replyBytes sends one command to addr over RESP3 (as go-redis speaks)
// and returns the size of the reply on the wire.
func replyBytes(t *testing.T, addr string, args ...string) int {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	send := func(args ...string) {
		var b strings.Builder
		fmt.Fprintf(&b, "*%d\r\n", len(args))
		for _, a := range args {
			fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
		}
		if _, err := io.WriteString(conn, b.String()); err != nil {
			t.Fatal(err)
		}
	}
	cr := &countingReader{r: conn}
	rd := bufio.NewReader(cr)
	send("HELLO", "3")
	if err := skipReply(rd); err != nil {
		t.Fatal(err)
	}
	before := cr.n - rd.Buffered()
	send(args...)
	if err := skipReply(rd); err != nil {
		t.Fatal(err)
	}
	return cr.n - rd.Buffered() - before
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// skipReply reads one RESP2/RESP3 reply.
func skipReply(rd *bufio.Reader) error {
	line, err := rd.ReadString('\n')
	if err != nil {
		return err
	}
	if len(line) < 3 {
		return fmt.Errorf("short reply line %q", line)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(line[1:]))
	switch line[0] {
	case '$', '=', '!':
		if n >= 0 {
			_, err = rd.Discard(n + 2)
		}
		return err
	case '*', '~', '>':
	case '%', '|':
		n *= 2
	case '-':
		return fmt.Errorf("redis: %s", strings.TrimSpace(line[1:]))
	default:
		return nil
	}
	for range n {
		if err := skipReply(rd); err != nil {
			return err
		}
	}
	return nil
}
