package redistest

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/internal/redisx"
)

// ClusterOptions tunes StartCluster. The zero value is a 3-primary /
// 3-replica cluster with AOF (appendfsync always) and a 1 s node timeout.
type ClusterOptions struct {
	// Primaries is the number of primaries; default 3 (the fewest with
	// which a majority of primaries survives the loss of one).
	Primaries int
	// Replicas is the number of replicas of each primary; default 1.
	Replicas int
	// NodeTimeout is cluster-node-timeout: how long a silent node takes to
	// be suspected, so the floor of a failover's duration. Default 1s.
	NodeTimeout time.Duration
	// Fsync is the appendfsync policy; default "always". AOF is always on.
	Fsync string
	// Args are extra redis-server arguments for every node, e.g.
	// "--min-replicas-to-write", "1".
	Args []string
}

// Cluster is a running private Redis Cluster. Nodes keep their index for
// the whole test; their roles change with failovers.
type Cluster struct {
	t     testing.TB
	opts  ClusterOptions
	Nodes []*ClusterNode

	// owned is, per node id, the slot ranges it served at the last healthy
	// check, so WaitFailover knows which slots to look for after a kill.
	owned map[string][][2]int
}

// ClusterNode is one redis-server of a Cluster.
type ClusterNode struct {
	*Server
	// ID is the node's cluster id; nodes.conf keeps it across restarts.
	ID string
	// BusPort is the cluster bus port, chosen free like Port (the default
	// Port+10000 could exceed 65535 for ephemeral ports).
	BusPort int
}

// StartCluster starts a Redis Cluster for t from the redis-server binary
// (slots assigned with CLUSTER ADDSLOTSRANGE, nodes joined with CLUSTER
// MEET, replicas attached with CLUSTER REPLICATE, which is what
// `redis-cli --cluster create` does, without its one-second polls) and
// returns once every node reports cluster_state:ok and every replica is
// linked. The nodes stop when the test ends.
func StartCluster(t testing.TB, opts ...ClusterOptions) *Cluster {
	t.Helper()
	var o ClusterOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.Primaries == 0 {
		o.Primaries = 3
	}
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	if o.NodeTimeout == 0 {
		o.NodeTimeout = time.Second
	}
	requireBinary(t)
	c := &Cluster{t: t, opts: o}
	c.Nodes = make([]*ClusterNode, o.Primaries*(1+o.Replicas))
	// Started side by side: one at a time costs ~0.3 s a node on a busy
	// machine.
	errs := make([]error, len(c.Nodes))
	var wg sync.WaitGroup
	for i := range c.Nodes {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c.Nodes[i], errs[i] = c.startNode()
		}(i)
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("redistest: start cluster nodes: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.form(ctx); err != nil {
		t.Fatalf("redistest: form cluster: %v", err)
	}
	c.WaitHealthy()
	return c
}

func (c *Cluster) startNode() (*ClusterNode, error) {
	node := &ClusterNode{}
	srv, err := tryLaunch(c.t, Options{AOF: true, Fsync: c.opts.Fsync, Args: c.opts.Args}, func(s *Server) error {
		var err error
		if node.BusPort, err = pickPort(); err != nil {
			return err
		}
		s.extra = []string{
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", strconv.FormatInt(c.opts.NodeTimeout.Milliseconds(), 10),
			"--cluster-port", strconv.Itoa(node.BusPort),
			// A replica whose primary has been silent a while may still
			// take over: tests kill primaries on a busy machine.
			"--cluster-replica-validity-factor", "0",
			// Full syncs start at once instead of waiting 5 s for more
			// replicas to batch with.
			"--repl-diskless-sync-delay", "0",
			// SIGINT at cleanup must not wait for lagging replicas.
			"--shutdown-timeout", "0",
		}
		return nil
	})
	node.Server = srv
	return node, err
}

// form assigns slots, joins the nodes and attaches the replicas: node i <
// Primaries is a primary, node Primaries*k+i is a replica of node i.
func (c *Cluster) form(ctx context.Context) error {
	for _, n := range c.Nodes {
		id, err := n.do(ctx, "cluster", "myid").Text()
		if err != nil {
			return fmt.Errorf("cluster myid on %s: %w", n.Addr, err)
		}
		n.ID = id
	}
	p := c.opts.Primaries
	for i := 0; i < p; i++ {
		lo, hi := i*16384/p, (i+1)*16384/p-1
		n := c.Nodes[i]
		if err := n.do(ctx, "cluster", "addslotsrange", lo, hi).Err(); err != nil {
			return fmt.Errorf("addslotsrange %d-%d on %s: %w", lo, hi, n.Addr, err)
		}
		// Distinct epochs up front, as redis-cli does, so the nodes need
		// not resolve a collision before the cluster is usable.
		if err := n.do(ctx, "cluster", "set-config-epoch", i+1).Err(); err != nil {
			return fmt.Errorf("set-config-epoch on %s: %w", n.Addr, err)
		}
	}
	for _, n := range c.Nodes[1:] {
		if err := c.Nodes[0].do(ctx, "cluster", "meet", "127.0.0.1", n.Port, n.BusPort).Err(); err != nil {
			return fmt.Errorf("meet %s: %w", n.Addr, err)
		}
	}
	// CLUSTER REPLICATE needs the primary to be known to the replica. A
	// handshake that does not finish within the node timeout (a loaded
	// machine) is forgotten, so a node that misses a peer is introduced to
	// it again. Only to the peers it misses: a MEET of a peer it knows
	// starts one more handshake (CLUSTER NODES lists it under a random id
	// until the peer answers and Redis drops the duplicate), so meeting
	// every peer at each poll kept a node with handshakes in flight on a
	// loaded machine, never settling ("knows 9 nodes" of 6 for 30 s).
	if err := poll(ctx, "every node knows every other", func(ctx context.Context) error {
		for _, n := range c.Nodes {
			view, err := n.nodes(ctx)
			if err != nil {
				return err
			}
			known := map[string]bool{}
			for _, v := range view {
				if !v.flags["noaddr"] {
					known[v.addr] = true
				}
			}
			missing := 0
			for _, o := range c.Nodes {
				if o != n && !known[o.Addr] {
					missing++
					_ = n.do(ctx, "cluster", "meet", "127.0.0.1", o.Port, o.BusPort).Err()
				}
			}
			if missing > 0 {
				return fmt.Errorf("%s misses %d of its peers", n.Addr, missing)
			}
			for _, v := range view {
				if v.flags["handshake"] {
					// Under way, or stuck: Redis forgets a handshake
					// after the node timeout, and the peer is then
					// missing and met again above.
					return fmt.Errorf("%s sees %s in %v", n.Addr, v.addr, v.flags)
				}
			}
			if len(view) != len(c.Nodes) {
				return fmt.Errorf("%s knows %d nodes", n.Addr, len(view))
			}
		}
		return nil
	}); err != nil {
		return err
	}
	for i, n := range c.Nodes[p:] {
		primary := c.Nodes[i%p]
		if err := n.do(ctx, "cluster", "replicate", primary.ID).Err(); err != nil {
			return fmt.Errorf("%s replicate %s: %w", n.Addr, primary.Addr, err)
		}
	}
	return nil
}

// Addrs are the seed addresses of every node, for redisx.Config.Addrs.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		addrs[i] = n.Addr
	}
	return addrs
}

// Config is the redisx configuration that reaches the cluster.
func (c *Cluster) Config() redisx.Config { return redisx.Config{Addrs: c.Addrs()} }

// Client returns a new cluster client built by redisx, closed when the test
// ends.
func (c *Cluster) Client() *redis.ClusterClient {
	c.t.Helper()
	u, err := redisx.New(c.Config())
	if err != nil {
		c.t.Fatalf("redistest: cluster client: %v", err)
	}
	cc, ok := u.(*redis.ClusterClient)
	if !ok {
		c.t.Fatalf("redistest: redisx.New gave %T for a cluster config", u)
	}
	c.t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// Node returns the node with the given cluster id, or nil.
func (c *Cluster) Node(id string) *ClusterNode {
	for _, n := range c.Nodes {
		if n.ID == id {
			return n
		}
	}
	return nil
}

// PrimaryOf returns the node that serves key's slot now, as a live node
// sees it.
func (c *Cluster) PrimaryOf(key string) *ClusterNode {
	c.t.Helper()
	slot := Slot(key)
	view := c.view()
	for _, v := range view {
		if v.owns(slot) {
			if n := c.Node(v.id); n != nil {
				return n
			}
		}
	}
	c.t.Fatalf("redistest: no node serves slot %d of %q", slot, key)
	return nil
}

// Primaries returns the live nodes that serve slots now.
func (c *Cluster) Primaries() []*ClusterNode {
	c.t.Helper()
	var out []*ClusterNode
	for _, v := range c.view() {
		if n := c.Node(v.id); n != nil && len(v.slots) > 0 && n.running() {
			out = append(out, n)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Port < out[j].Port })
	return out
}

// ReplicasOf returns the live nodes that replicate primary now.
func (c *Cluster) ReplicasOf(primary *ClusterNode) []*ClusterNode {
	c.t.Helper()
	var out []*ClusterNode
	for _, v := range c.view() {
		if n := c.Node(v.id); n != nil && v.master == primary.ID && n.running() {
			out = append(out, n)
		}
	}
	return out
}

// KillPrimaryOf kills, with SIGKILL, the primary serving key's slot and
// returns it.
func (c *Cluster) KillPrimaryOf(key string) *ClusterNode {
	c.t.Helper()
	n := c.PrimaryOf(key)
	n.Kill()
	return n
}

// WaitFailover waits until the slots old served at the last healthy check
// are served by another live node and the cluster is healthy again, and
// returns that node. The new primary answers writes when this returns.
func (c *Cluster) WaitFailover(old *ClusterNode) *ClusterNode {
	c.t.Helper()
	ranges := c.owned[old.ID]
	if len(ranges) == 0 {
		c.t.Fatalf("redistest: %s served no slots at the last healthy check", old.Addr)
	}
	c.WaitHealthy()
	slot := ranges[0][0]
	for _, v := range c.view() {
		if v.owns(slot) {
			n := c.Node(v.id)
			if n == nil || n == old {
				c.t.Fatalf("redistest: slot %d still served by %s after failover", slot, v.addr)
			}
			return n
		}
	}
	c.t.Fatalf("redistest: slot %d unserved after failover", slot)
	return nil
}

// Restart starts a killed node again on its port, directory and node id,
// and waits until it has rejoined (a former primary comes back as a
// replica of the node that took its slots).
func (c *Cluster) Restart(n *ClusterNode) {
	c.t.Helper()
	n.Restart()
	c.WaitHealthy()
}

// WaitHealthy waits until every live node reports cluster_state:ok with all
// slots served by live nodes, all live nodes agree on who serves what and on
// which node replicates which, every
// live node sees every other live node as connected and not failing, and
// every live replica's link to its primary is up.
func (c *Cluster) WaitHealthy() {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := poll(ctx, "cluster healthy", c.healthy); err != nil {
		c.t.Fatalf("redistest: %v", err)
	}
}

func (c *Cluster) healthy(ctx context.Context) error {
	var agreed string
	var owned map[string][][2]int
	for _, n := range c.Nodes {
		if !n.running() {
			continue
		}
		info, err := n.do(ctx, "cluster", "info").Text()
		if err != nil {
			return err
		}
		for _, want := range []string{"cluster_state:ok", "cluster_slots_ok:16384"} {
			if !strings.Contains(info, want+"\r\n") {
				return fmt.Errorf("%s: no %s", n.Addr, want)
			}
		}
		view, err := n.nodes(ctx)
		if err != nil {
			return err
		}
		var m []string
		o := map[string][][2]int{}
		for _, v := range view {
			peer := c.Node(v.id)
			if peer == nil {
				return fmt.Errorf("%s sees unknown node %s", n.Addr, v.id)
			}
			live := peer.running()
			if live && (v.flags["fail"] || v.flags["fail?"] || v.flags["handshake"] ||
				(!v.flags["myself"] && v.link != "connected")) {
				return fmt.Errorf("%s sees live %s as %v/%s", n.Addr, v.addr, v.flags, v.link)
			}
			if len(v.slots) > 0 {
				if !live {
					return fmt.Errorf("%s: dead %s still serves slots", n.Addr, v.addr)
				}
				o[v.id] = v.slots
			}
			// Roles too: a node learns through gossip that another
			// became a replica, after the slot map is settled.
			if live {
				m = append(m, fmt.Sprint(v.id, v.flags["master"], v.master, v.slots))
			}
			if v.flags["myself"] && v.flags["slave"] {
				repl, err := n.do(ctx, "info", "replication").Text()
				if err != nil {
					return err
				}
				if !strings.Contains(repl, "master_link_status:up") {
					return fmt.Errorf("replica %s: link to its primary not up", n.Addr)
				}
			}
		}
		sort.Strings(m)
		if s := strings.Join(m, " "); agreed == "" {
			agreed, owned = s, o
		} else if s != agreed {
			return fmt.Errorf("nodes disagree on the slot map or on roles")
		}
	}
	c.owned = owned
	return nil
}

// view is the cluster as the first live node that answers sees it.
func (c *Cluster) view() []nodeView {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var last error
	for _, n := range c.Nodes {
		if !n.running() {
			continue
		}
		v, err := n.nodes(ctx)
		if err == nil {
			return v
		}
		last = err
	}
	c.t.Fatalf("redistest: no live cluster node answers: %v", last)
	return nil
}

// do runs one command on this node alone with a short-lived connection.
func (s *Server) do(ctx context.Context, args ...any) *redis.Cmd {
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DialTimeout: time.Second,
		ReadTimeout: 2 * time.Second, DisableIdentity: true})
	defer c.Close()
	return c.Do(ctx, args...)
}

// nodeView is one line of CLUSTER NODES.
type nodeView struct {
	id, addr, master, link string
	flags                  map[string]bool
	slots                  [][2]int
}

func (v nodeView) owns(slot int) bool {
	for _, r := range v.slots {
		if r[0] <= slot && slot <= r[1] {
			return true
		}
	}
	return false
}

func (n *ClusterNode) nodes(ctx context.Context) ([]nodeView, error) {
	text, err := n.do(ctx, "cluster", "nodes").Text()
	if err != nil {
		return nil, fmt.Errorf("cluster nodes on %s: %w", n.Addr, err)
	}
	return parseNodes(text)
}

// parseNodes parses CLUSTER NODES: id addr flags master ping pong epoch
// link slot...; slots are "n", "lo-hi" or "[...]" for migrations.
func parseNodes(text string) ([]nodeView, error) {
	var out []nodeView
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			return nil, fmt.Errorf("cluster nodes line %q", line)
		}
		v := nodeView{id: f[0], addr: f[1], master: f[3], link: f[7], flags: map[string]bool{}}
		if i := strings.IndexAny(v.addr, "@,"); i >= 0 {
			v.addr = v.addr[:i]
		}
		for _, fl := range strings.Split(f[2], ",") {
			v.flags[fl] = true
		}
		for _, s := range f[8:] {
			if strings.HasPrefix(s, "[") {
				continue
			}
			lo, hi, _ := strings.Cut(s, "-")
			a, err := strconv.Atoi(lo)
			if err != nil {
				return nil, fmt.Errorf("slot %q: %w", s, err)
			}
			b := a
			if hi != "" {
				if b, err = strconv.Atoi(hi); err != nil {
					return nil, fmt.Errorf("slot %q: %w", s, err)
				}
			}
			v.slots = append(v.slots, [2]int{a, b})
		}
		out = append(out, v)
	}
	return out, nil
}

// Slot is the cluster hash slot of key: CRC16 (XMODEM) of the key, or of
// its hash tag (the text between the first "{" and the next "}" when not
// empty), modulo 16384.
func Slot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for k := 0; k < len(key); k++ {
		crc ^= uint16(key[k]) << 8
		for b := 0; b < 8; b++ {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % 16384
}
