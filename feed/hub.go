package feed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/backoff"
	"github.com/agentpassport/passport/internal/run"
	"github.com/agentpassport/passport/passport"
)

// Config tunes the feed. The zero value of every field means its default.
type Config struct {
	// AllowedOrigins lists the browser origins, exactly as a browser sends
	// them ("https://wall.example.com:8443"), that may open the feed besides
	// the feed's own origin. Default none: same-origin only.
	AllowedOrigins []string `yaml:"allowed_origins"`
	// SendBuffer is how many events may wait for one client. A client that
	// falls this far behind leaves the live fan-out and reads from the
	// stream until it catches up (see LagTimeout). Default 1024.
	SendBuffer int `yaml:"send_buffer"`
	// LagTimeout is how long a client that overflowed its buffer may take
	// to catch up with the stream before it is dropped (close 1013).
	// Default 10s.
	LagTimeout time.Duration `yaml:"lag_timeout"`
	// PingInterval is how often the server pings. Default 25s.
	PingInterval time.Duration `yaml:"ping_interval"`
	// PongWait is how long without a pong (or any frame) before the
	// connection is considered dead. Default 60s; must exceed PingInterval.
	PongWait time.Duration `yaml:"pong_wait"`
	// WriteWait bounds one write to a client; a client that does not read
	// at all is cut after it. Default 10s.
	WriteWait time.Duration `yaml:"write_wait"`
	// RecheckInterval is how often an open connection re-checks its
	// credential with Auth.Check. Default 10s.
	RecheckInterval time.Duration `yaml:"recheck_interval"`
	// TicketTTL is the lifetime of a connection ticket. Default 30s.
	TicketTTL time.Duration `yaml:"ticket_ttl"`
	// MaxTail bounds tail= (how many past entries a new connection may ask
	// for). Default 5000.
	MaxTail int `yaml:"max_tail"`
	// Block is how long one XREAD blocks. Default 2s.
	Block time.Duration `yaml:"block"`
	// Poll is how often the followed streams are read on a Redis Cluster,
	// where one XREAD cannot name streams in several slots. Default 250ms.
	Poll time.Duration `yaml:"poll"`
	// Batch is the COUNT of XREAD and XRANGE. Default 512.
	Batch int `yaml:"batch"`
}

// Defaults.
const (
	DefaultSendBuffer      = 1024
	DefaultLagTimeout      = 10 * time.Second
	DefaultPingInterval    = 25 * time.Second
	DefaultPongWait        = 60 * time.Second
	DefaultWriteWait       = 10 * time.Second
	DefaultRecheckInterval = 10 * time.Second
	DefaultTicketTTL       = 30 * time.Second
	DefaultMaxTail         = 5000
	DefaultBlock           = 2 * time.Second
	DefaultPoll            = 250 * time.Millisecond
	DefaultBatch           = 512
)

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if c.SendBuffer <= 0 {
		c.SendBuffer = DefaultSendBuffer
	}
	def(&c.LagTimeout, DefaultLagTimeout)
	def(&c.PingInterval, DefaultPingInterval)
	def(&c.PongWait, DefaultPongWait)
	def(&c.WriteWait, DefaultWriteWait)
	def(&c.RecheckInterval, DefaultRecheckInterval)
	def(&c.TicketTTL, DefaultTicketTTL)
	def(&c.Block, DefaultBlock)
	def(&c.Poll, DefaultPoll)
	if c.MaxTail <= 0 {
		c.MaxTail = DefaultMaxTail
	}
	if c.Batch <= 0 {
		c.Batch = DefaultBatch
	}
	return c
}

// Validate reports every problem with the configuration.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	if c.PongWait <= c.PingInterval {
		errs = append(errs, errors.New("feed.pong_wait: must exceed ping_interval"))
	}
	for _, o := range c.AllowedOrigins {
		if _, err := normalizeOrigin(o); err != nil {
			errs = append(errs, fmt.Errorf("feed.allowed_origins: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Deps are what the feed needs from its host.
type Deps struct {
	Redis  redis.UniversalClient
	Logger *slog.Logger
	// Registry receives the feed's metrics; nil means a private registry.
	Registry *prometheus.Registry
	Auth     Auth
}

// Hub is the feed: it tails each watched tenant's audit stream once (an
// audit.Tail: one blocking XREAD over every watched stream, or one
// pipeline a poll on a Cluster) and fans the events out to that tenant's
// connections, each through its own bounded buffer (gorilla's chat hub
// with a Redis stream as the source). It serves
// POST /v1/feed/ticket and GET /v1/feed (ServeHTTP), and must be running
// (Run) to accept connections.
type Hub struct {
	cfg     Config
	rdb     redis.UniversalClient
	log     *slog.Logger
	auth    Auth
	origins map[string]bool
	m       *metrics
	tail    *audit.Tail

	mu      sync.Mutex
	ctx     context.Context // set by Run; nil before and after
	tenants map[string]*tenantHub
	clients map[*client]struct{}
	wg      sync.WaitGroup
}

// New returns a hub; it serves connections once Run is called.
func New(cfg Config, deps Deps) (*Hub, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Redis == nil || deps.Logger == nil || deps.Auth == nil {
		return nil, errors.New("feed: Redis, Logger and Auth are required")
	}
	cfg = cfg.withDefaults()
	origins := map[string]bool{}
	for _, o := range cfg.AllowedOrigins {
		n, _ := normalizeOrigin(o)
		origins[n] = true
	}
	reg := deps.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	h := &Hub{
		cfg: cfg, rdb: deps.Redis, log: deps.Logger, auth: deps.Auth, origins: origins, m: m,
		tenants: map[string]*tenantHub{}, clients: map[*client]struct{}{},
	}
	h.tail = audit.NewTail(deps.Redis, audit.TailConfig{
		Block: cfg.Block, Poll: cfg.Poll, Count: cfg.Batch,
		OnError: func(err error) error {
			h.m.tailErrors.Inc()
			h.log.Warn("feed tail read failed", "err", err)
			return nil // retried with backoff; positions are kept, so nothing is lost
		},
	})
	return h, nil
}

// Run makes the hub accept connections until ctx is done; then it closes
// every connection with 1001 (going away), so that dashboards reconnect to
// another instance, and waits for its goroutines.
func (h *Hub) Run(ctx context.Context) error {
	h.mu.Lock()
	if h.ctx != nil {
		h.mu.Unlock()
		return errors.New("feed: Run called twice")
	}
	h.ctx = ctx
	h.mu.Unlock()
	var bg sync.WaitGroup
	bg.Go(func() {
		// A panic here is logged and counted; the feed then follows no
		// revocations, which the feed's metrics show.
		_ = run.Guarded(ctx, "feed.revocations", func() error { h.watchRevocations(ctx); return nil })()
	})
	bg.Go(func() {
		_ = run.Guarded(ctx, "feed.tail", func() error { return h.tail.Run(ctx, h.deliver) })()
	})
	<-ctx.Done()
	bg.Wait()
	h.mu.Lock()
	h.ctx = nil
	for c := range h.clients {
		c.close(closeGoingAway, "server shutting down")
	}
	h.mu.Unlock()
	h.wg.Wait()
	return nil
}

// Recheck makes every open connection check its credential now rather than
// at its next periodic check: call it after the set of operator tokens
// changed (a config reload). Run also calls it for every message on the
// authority's revocation channel.
func (h *Hub) Recheck() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for c := range h.clients {
		select {
		case c.recheckNow <- struct{}{}:
		default: // one is already pending
		}
	}
}

// watchRevocations follows passport.RevocationChannel and re-checks the
// open connections on each message, so a revocation that Auth can see
// takes effect at once. Missed messages (Redis down) only delay it to the
// periodic check.
func (h *Hub) watchRevocations(ctx context.Context) {
	sub := h.rdb.Subscribe(ctx, passport.RevocationChannel)
	defer sub.Close()
	ch := sub.Channel()
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-ch:
			if !ok {
				return
			}
			h.Recheck()
		}
	}
}

// CloseCredential closes every open connection made with the credential
// whose Principal.ID is id (close 1008), at once, without waiting for the
// periodic re-check. It returns how many it closed.
func (h *Hub) CloseCredential(id string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for c := range h.clients {
		if c.principal.ID == id {
			c.close(closePolicy, "credential revoked")
			n++
		}
	}
	return n
}

// register adds a connection and returns the tenant hub that feeds it, or
// an error when the hub is not running.
func (h *Hub) register(c *client) (*tenantHub, context.Context, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ctx == nil {
		return nil, nil, errNotRunning
	}
	th := h.tenants[c.tenant]
	if th == nil {
		tctx, cancel := context.WithCancel(h.ctx)
		th = &tenantHub{
			hub: h, tenant: c.tenant, key: passport.AuditStreamKey(c.tenant),
			ready: make(chan struct{}), cancel: cancel, clients: map[*client]struct{}{},
		}
		h.tenants[c.tenant] = th
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			_ = run.Guarded(tctx, "feed.follow", func() error { th.run(tctx); return nil })()
		}()
	}
	th.refs++
	h.clients[c] = struct{}{}
	h.m.clients.Inc()
	h.wg.Add(1) // the connection's own goroutines; Done in unregister
	return th, h.ctx, nil
}

// unregister removes a connection; the last one of a tenant stops its tail.
func (h *Hub) unregister(c *client, th *tenantHub) {
	th.leave(c)
	h.mu.Lock()
	delete(h.clients, c)
	th.refs--
	if th.refs == 0 {
		th.cancel()
		if h.tenants[c.tenant] == th {
			delete(h.tenants, c.tenant)
		}
	}
	h.mu.Unlock()
	h.m.clients.Dec()
	h.wg.Done()
}

var errNotRunning = errors.New("feed not running")

// tenantHub follows one tenant's stream and fans out to its connections.
type tenantHub struct {
	hub    *Hub
	tenant string
	key    string
	ready  chan struct{} // closed once last is known
	cancel context.CancelFunc
	refs   int // guarded by hub.mu

	mu      sync.Mutex
	last    streamID // last entry delivered (or the stream's end at start)
	clients map[*client]struct{}
}

// run finds the end of the stream, has the hub's tail follow it from
// there until ctx is done. Redis errors are retried with backoff.
func (t *tenantHub) run(ctx context.Context) {
	h := t.hub
	// Jittered: every dashboard replica that lost Redis together must not
	// come back in the same millisecond.
	retry := backoff.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}
	for {
		last, err := t.streamEnd(ctx)
		if err == nil {
			t.mu.Lock()
			t.last = last
			t.mu.Unlock()
			close(t.ready)
			break
		}
		if ctx.Err() != nil {
			return
		}
		h.m.tailErrors.Inc()
		h.log.WarnContext(ctx, "feed tail start failed", "tenant", t.tenant, "err", err)
		if !retry.Wait(ctx) {
			return
		}
	}
	t.mu.Lock()
	from := t.last.String()
	t.mu.Unlock()
	stop := h.tail.Add(t.key, from)
	<-ctx.Done()
	stop()
}

// deliver hands what the tail read of a stream to the tenant hub that
// follows it.
func (h *Hub) deliver(stream string, msgs []redis.XMessage) {
	tenant, ok := audit.TenantFromStreamKey(stream)
	if !ok {
		return
	}
	h.mu.Lock()
	th := h.tenants[tenant]
	h.mu.Unlock()
	if th != nil {
		th.broadcast(msgs)
	}
}

// streamEnd returns the id of the newest entry, or 0-0 for an empty stream.
func (t *tenantHub) streamEnd(ctx context.Context) (streamID, error) {
	msgs, err := t.hub.rdb.XRevRangeN(ctx, t.key, "+", "-", 1).Result()
	if err != nil {
		return streamID{}, fmt.Errorf("read end of %s: %w", t.key, err)
	}
	if len(msgs) == 0 {
		return streamID{}, nil
	}
	return parseID(msgs[0].ID)
}

// broadcast delivers entries to every joined connection that wants them.
// Sends never block: a connection whose buffer is full is dropped, so one
// slow reader never holds up the tail or the other readers.
func (t *tenantHub) broadcast(msgs []redis.XMessage) {
	h := t.hub
	for _, msg := range msgs {
		id, err := parseID(msg.ID)
		if err != nil {
			continue
		}
		ev, raw := h.encode(msg)
		t.mu.Lock()
		if t.last.less(id) {
			t.last = id
		}
		if ev != nil {
			for c := range t.clients {
				if !c.cursor.less(id) || !c.filter.Match(ev) {
					continue
				}
				select {
				case c.send <- raw:
					c.cursor = id
				default:
					// Buffer full: take the client off the live fan-out. Its
					// writer drains what is queued, then reads the rest from
					// the stream at its own pace (the stream is the buffer)
					// and rejoins; it is dropped only if it has not caught up
					// within LagTimeout. Memory stays bounded either way.
					delete(t.clients, c)
					c.lagSince = time.Now()
					h.m.lagging.Inc()
					select {
					case c.lagged <- struct{}{}:
					default:
					}
				}
			}
		}
		t.mu.Unlock()
	}
}

// join makes c live if it has caught up with the tail (cursor at or past
// the last delivered entry). Otherwise it returns the position to catch up
// to first.
func (t *tenantHub) join(c *client, cursor streamID) (target streamID, joined bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if cursor.less(t.last) {
		return t.last, false
	}
	c.cursor = cursor
	t.clients[c] = struct{}{}
	return cursor, true
}

func (t *tenantHub) leave(c *client) {
	t.mu.Lock()
	delete(t.clients, c)
	t.mu.Unlock()
}
