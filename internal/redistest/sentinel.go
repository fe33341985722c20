package redistest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/internal/redisx"
)

// SentinelOptions tunes StartSentinel. The zero value is one primary, two
// replicas and three Sentinels (quorum 2) monitoring "mymaster", with AOF
// (appendfsync always) and a primary declared down after 1 s of silence.
type SentinelOptions struct {
	// MasterName is the name the Sentinels monitor; default "mymaster".
	MasterName string
	// Replicas is the number of replicas; default 2.
	Replicas int
	// Sentinels is the number of Sentinels; default 3, quorum a majority.
	Sentinels int
	// DownAfter is down-after-milliseconds; default 1s.
	DownAfter time.Duration
	// FailoverTimeout is failover-timeout; default 3s (it also bounds a
	// leader election, and a failed attempt is retried after twice it).
	FailoverTimeout time.Duration
	// Fsync is the appendfsync policy of the data nodes; default "always".
	Fsync string
	// Args are extra redis-server arguments for every data node.
	Args []string
}

// SentinelSet is a running private primary with replicas under Sentinel.
// Data[0] is the first primary; roles change with failovers.
type SentinelSet struct {
	t    testing.TB
	opts SentinelOptions
	// MasterName is the name the Sentinels monitor.
	MasterName string
	// Data are the redis-servers holding data; Sentinels watch them.
	Data      []*Server
	Sentinels []*Server
}

// StartSentinel starts a Sentinel set for t and returns once every
// Sentinel agrees on the primary and sees every replica linked and every
// other Sentinel. Everything stops when the test ends.
func StartSentinel(t testing.TB, opts ...SentinelOptions) *SentinelSet {
	t.Helper()
	var o SentinelOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.MasterName == "" {
		o.MasterName = "mymaster"
	}
	if o.Replicas == 0 {
		o.Replicas = 2
	}
	if o.Sentinels == 0 {
		o.Sentinels = 3
	}
	if o.DownAfter == 0 {
		o.DownAfter = time.Second
	}
	if o.FailoverTimeout == 0 {
		o.FailoverTimeout = 3 * time.Second
	}
	requireBinary(t)
	s := &SentinelSet{t: t, opts: o, MasterName: o.MasterName}
	primary := s.startData("")
	s.Data = append(s.Data, primary)
	for i := 0; i < o.Replicas; i++ {
		s.Data = append(s.Data, s.startData(primary.Addr))
	}
	// Replicas linked before the Sentinels start, and declared to them
	// along with the other Sentinels (as a Sentinel's own config rewrite
	// would), so nobody waits for the 10 s INFO or 2 s hello periods.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := poll(ctx, "replicas linked", func(ctx context.Context) error { return s.linked(ctx, primary) }); err != nil {
		t.Fatalf("redistest: %v", err)
	}
	ids := make([]string, o.Sentinels)
	ports := make([]int, o.Sentinels)
	for i := range ids {
		var err error
		if ports[i], err = pickPort(); err != nil {
			t.Fatalf("redistest: %v", err)
		}
		ids[i] = randomID()
	}
	for i := 0; i < o.Sentinels; i++ {
		i, first := i, true
		s.Sentinels = append(s.Sentinels, launch(t, Options{}, func(srv *Server) error {
			// The port the others were told about; on a retry (it was
			// taken) a new one, found by the others through hellos.
			if first {
				srv.Port, srv.Addr = ports[i], net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[i]))
				first = false
			}
			ports[i] = srv.Port
			return s.writeSentinelConf(srv, primary, ids, ports, i)
		}))
	}
	s.WaitHealthy()
	return s
}

func (s *SentinelSet) startData(replicaOf string) *Server {
	return launch(s.t, Options{AOF: true, Fsync: s.opts.Fsync, Args: s.opts.Args}, func(srv *Server) error {
		srv.extra = dataArgs(replicaOf)
		return nil
	})
}

func dataArgs(replicaOf string) []string {
	args := []string{
		// Full syncs start at once instead of waiting 5 s for more
		// replicas to batch with; SIGINT at cleanup does not wait for
		// lagging replicas.
		"--repl-diskless-sync-delay", "0",
		"--shutdown-timeout", "0",
	}
	if replicaOf != "" {
		host, port, _ := net.SplitHostPort(replicaOf)
		args = append(args, "--replicaof", host, port)
	}
	return args
}

// writeSentinelConf writes Sentinel i's config, declaring the other
// Sentinels at the ports chosen for them.
func (s *SentinelSet) writeSentinelConf(srv *Server, primary *Server, ids []string, ports []int, i int) error {
	name := s.MasterName
	var b strings.Builder
	fmt.Fprintf(&b, "sentinel myid %s\n", ids[i])
	fmt.Fprintf(&b, "sentinel monitor %s 127.0.0.1 %d %d\n", name, primary.Port, s.opts.Sentinels/2+1)
	fmt.Fprintf(&b, "sentinel down-after-milliseconds %s %d\n", name, s.opts.DownAfter.Milliseconds())
	fmt.Fprintf(&b, "sentinel failover-timeout %s %d\n", name, s.opts.FailoverTimeout.Milliseconds())
	fmt.Fprintf(&b, "sentinel parallel-syncs %s %d\n", name, s.opts.Replicas)
	for _, r := range s.Data[1:] {
		fmt.Fprintf(&b, "sentinel known-replica %s 127.0.0.1 %d\n", name, r.Port)
	}
	for j := range ids {
		if j != i {
			fmt.Fprintf(&b, "sentinel known-sentinel %s 127.0.0.1 %d %s\n", name, ports[j], ids[j])
		}
	}
	srv.sentinel = true
	srv.conf = filepath.Join(srv.dir, "sentinel.conf")
	return os.WriteFile(srv.conf, []byte(b.String()), 0o600)
}

func randomID() string {
	b := make([]byte, 20)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// SentinelAddrs are the Sentinels' addresses, for redisx.Config.Addrs.
func (s *SentinelSet) SentinelAddrs() []string {
	addrs := make([]string, len(s.Sentinels))
	for i, n := range s.Sentinels {
		addrs[i] = n.Addr
	}
	return addrs
}

// Config is the redisx configuration that reaches the primary through the
// Sentinels.
func (s *SentinelSet) Config() redisx.Config {
	return redisx.Config{Addrs: s.SentinelAddrs(), MasterName: s.MasterName}
}

// Client returns a new failover client built by redisx, closed when the
// test ends.
func (s *SentinelSet) Client() redis.UniversalClient {
	s.t.Helper()
	c, err := redisx.New(s.Config())
	if err != nil {
		s.t.Fatalf("redistest: sentinel client: %v", err)
	}
	s.t.Cleanup(func() { _ = c.Close() })
	return c
}

// Primary returns the data node the live Sentinels name as primary now (a
// key's "slot owner" here: one primary holds every key).
func (s *SentinelSet) Primary() *Server {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addr, err := s.agreedPrimary(ctx)
	if err != nil {
		s.t.Fatalf("redistest: %v", err)
	}
	return s.data(addr)
}

// KillPrimary kills, with SIGKILL, the current primary and returns it.
func (s *SentinelSet) KillPrimary() *Server {
	s.t.Helper()
	p := s.Primary()
	p.Kill()
	return p
}

// WaitFailover waits until every live Sentinel names a primary other than
// old and that node answers as a primary, and returns it.
func (s *SentinelSet) WaitFailover(old *Server) *Server {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var promoted *Server
	err := poll(ctx, "failover", func(ctx context.Context) error {
		addr, err := s.agreedPrimary(ctx)
		if err != nil {
			return err
		}
		if addr == old.Addr {
			return fmt.Errorf("sentinels still name %s", addr)
		}
		p := s.data(addr)
		if p == nil {
			return fmt.Errorf("sentinels name unknown %s", addr)
		}
		role, err := p.do(ctx, "role").Slice()
		if err != nil {
			return err
		}
		if len(role) == 0 || role[0] != "master" {
			return fmt.Errorf("%s is %v", addr, role)
		}
		promoted = p
		return nil
	})
	if err != nil {
		s.t.Fatalf("redistest: %v", err)
	}
	return promoted
}

// Restart starts a killed data node or Sentinel again on its port and
// directory. A data node comes back as a replica of the primary the
// Sentinels name (as a deployment that asks Sentinel at boot does; a
// former primary restarted as it was would serve stale writes until a
// Sentinel reconfigures it, up to ~20 s later). Then waits until healthy.
func (s *SentinelSet) Restart(n *Server) {
	s.t.Helper()
	if !n.sentinel {
		p := s.Primary()
		if p == n {
			n.extra = dataArgs("")
		} else {
			n.extra = dataArgs(p.Addr)
		}
	}
	n.Restart()
	s.WaitHealthy()
}

// WaitHealthy waits until every live Sentinel names the same primary, that
// node is a primary whose every live replica is linked, and every live
// Sentinel sees those replicas and the other live Sentinels without
// down or disconnected flags.
func (s *SentinelSet) WaitHealthy() {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := poll(ctx, "sentinel set healthy", s.healthy); err != nil {
		s.t.Fatalf("redistest: %v", err)
	}
}

func (s *SentinelSet) healthy(ctx context.Context) error {
	addr, err := s.agreedPrimary(ctx)
	if err != nil {
		return err
	}
	p := s.data(addr)
	if p == nil || !p.running() {
		return fmt.Errorf("sentinels name %s, not a live data node", addr)
	}
	if err := s.linked(ctx, p); err != nil {
		return err
	}
	for _, sn := range s.Sentinels {
		if !sn.running() {
			continue
		}
		m, err := sn.sentinelMaps(ctx, "replicas", s.MasterName)
		if err != nil {
			return err
		}
		for _, d := range s.Data {
			if d == p || !d.running() {
				continue
			}
			if !seen(m, d.Port, "slave", "s_down", "disconnected") {
				return fmt.Errorf("sentinel %s does not see replica %s up", sn.Addr, d.Addr)
			}
		}
		m, err = sn.sentinelMaps(ctx, "sentinels", s.MasterName)
		if err != nil {
			return err
		}
		for _, o := range s.Sentinels {
			if o == sn || !o.running() {
				continue
			}
			if !seen(m, o.Port, "sentinel", "s_down", "disconnected") {
				return fmt.Errorf("sentinel %s does not see sentinel %s up", sn.Addr, o.Addr)
			}
		}
	}
	return nil
}

// seen reports whether an entry of a SENTINEL REPLICAS/SENTINELS answer has
// the port and the flag want and none of the flags bad.
func seen(entries []map[string]string, port int, want string, bad ...string) bool {
	for _, e := range entries {
		if e["port"] != strconv.Itoa(port) {
			continue
		}
		flags := "," + e["flags"] + ","
		if !strings.Contains(flags, ","+want+",") {
			return false
		}
		for _, b := range bad {
			if strings.Contains(flags, ","+b+",") {
				return false
			}
		}
		return true
	}
	return false
}

// linked checks that every live data node other than p is a replica of p
// with its link up, as p sees it.
func (s *SentinelSet) linked(ctx context.Context, p *Server) error {
	for _, d := range s.Data {
		if d == p || !d.running() {
			continue
		}
		info, err := d.do(ctx, "info", "replication").Text()
		if err != nil {
			return err
		}
		if !strings.Contains(info, "master_port:"+strconv.Itoa(p.Port)+"\r\n") ||
			!strings.Contains(info, "master_link_status:up") {
			return fmt.Errorf("%s is not linked to %s", d.Addr, p.Addr)
		}
	}
	return nil
}

// agreedPrimary is the primary every live Sentinel names, or an error.
func (s *SentinelSet) agreedPrimary(ctx context.Context) (string, error) {
	var agreed string
	for _, sn := range s.Sentinels {
		if !sn.running() {
			continue
		}
		a, err := sn.do(ctx, "sentinel", "get-master-addr-by-name", s.MasterName).StringSlice()
		if err != nil {
			return "", fmt.Errorf("sentinel %s: %w", sn.Addr, err)
		}
		if len(a) != 2 {
			return "", fmt.Errorf("sentinel %s: primary %v", sn.Addr, a)
		}
		addr := net.JoinHostPort(a[0], a[1])
		if agreed == "" {
			agreed = addr
		} else if addr != agreed {
			return "", fmt.Errorf("sentinels disagree: %s and %s", agreed, addr)
		}
	}
	if agreed == "" {
		return "", fmt.Errorf("no live sentinel")
	}
	return agreed, nil
}

func (s *SentinelSet) data(addr string) *Server {
	for _, d := range s.Data {
		if d.Addr == addr {
			return d
		}
	}
	return nil
}

// sentinelMaps runs SENTINEL <sub> <name> and returns its entries as maps.
func (s *Server) sentinelMaps(ctx context.Context, sub, name string) ([]map[string]string, error) {
	rows, err := s.do(ctx, "sentinel", sub, name).Slice()
	if err != nil {
		return nil, fmt.Errorf("sentinel %s on %s: %w", sub, s.Addr, err)
	}
	var out []map[string]string
	for _, r := range rows {
		m := map[string]string{}
		switch r := r.(type) {
		case []any: // RESP2: flat field/value list
			for i := 0; i+1 < len(r); i += 2 {
				m[fmt.Sprint(r[i])] = fmt.Sprint(r[i+1])
			}
		case map[any]any: // RESP3
			for k, v := range r {
				m[fmt.Sprint(k)] = fmt.Sprint(v)
			}
		}
		out = append(out, m)
	}
	return out, nil
}

// poll runs cond until it returns nil or ctx ends.
func poll(ctx context.Context, what string, cond func(context.Context) error) error {
	for {
		err := cond(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: not reached: %v", what, err)
		// Replication, gossip and Sentinel each run on their own clock;
		// there is no event to wait on, so poll.
		case <-time.After(50 * time.Millisecond):
		}
	}
}
