package netfault

import (
	"bytes"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Direction selects one or both halves of a connection.
type Direction int

// Directions. Up is client to server, Down server to client.
const (
	Up Direction = 1 << iota
	Down
	Both = Up | Down
)

// Relay accepts connections on a loopback port and forwards each to the
// target.
type Relay struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	conns  []*Conn
	hole   Direction // black-holed directions of new connections
	delay  time.Duration
	refuse bool // reset new connections at once
	closed bool
	wg     sync.WaitGroup
}

// Start starts a relay to target and stops it with t.Cleanup.
func Start(t testing.TB, target string) *Relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("netfault: listen: %v", err)
	}
	r := &Relay{ln: ln, target: target}
	r.wg.Add(1)
	go r.accept()
	t.Cleanup(r.Close)
	return r
}

// Addr is the relay's host:port; clients dial it instead of the target.
func (r *Relay) Addr() string { return r.ln.Addr().String() }

// Close stops accepting and closes every connection.
func (r *Relay) Close() {
	r.mu.Lock()
	r.closed = true
	conns := r.conns
	r.mu.Unlock()
	_ = r.ln.Close()
	for _, c := range conns {
		c.close()
	}
	r.wg.Wait()
}

func (r *Relay) accept() {
	defer r.wg.Done()
	for {
		client, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		hole, delay, refuse, closed := r.hole, r.delay, r.refuse, r.closed
		r.mu.Unlock()
		if closed || refuse {
			reset(client)
			continue
		}
		server, err := net.DialTimeout("tcp", r.target, 2*time.Second)
		if err != nil {
			reset(client)
			continue
		}
		c := &Conn{client: client, server: server}
		c.hole.Store(int64(hole))
		c.delay.Store(int64(delay))
		r.mu.Lock()
		r.conns = append(r.conns, c)
		r.mu.Unlock()
		var halves sync.WaitGroup
		halves.Add(2)
		r.wg.Add(3)
		go func() { defer r.wg.Done(); c.pump(client, server, Up, halves.Done) }()
		go func() { defer r.wg.Done(); c.pump(server, client, Down, halves.Done) }()
		go func() { defer r.wg.Done(); halves.Wait(); c.close() }()
	}
}

// Conns returns the connections accepted so far (open or not).
func (r *Relay) Conns() []*Conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*Conn(nil), r.conns...)
}

// Open returns the connections still open.
func (r *Relay) Open() []*Conn {
	var out []*Conn
	for _, c := range r.Conns() {
		if !c.Closed() {
			out = append(out, c)
		}
	}
	return out
}

// BlackHole black-holes d on every open connection and on new ones.
func (r *Relay) BlackHole(d Direction) {
	r.mu.Lock()
	r.hole = d
	r.mu.Unlock()
	for _, c := range r.Conns() {
		c.BlackHole(d)
	}
}

// Delay delays every byte by d, on every open connection and on new ones.
func (r *Relay) Delay(d time.Duration) {
	r.mu.Lock()
	r.delay = d
	r.mu.Unlock()
	for _, c := range r.Conns() {
		c.Delay(d)
	}
}

// Refuse makes new connections reset at once (the target is "down").
func (r *Relay) Refuse(on bool) {
	r.mu.Lock()
	r.refuse = on
	r.mu.Unlock()
}

// Heal ends every fault for open and new connections.
func (r *Relay) Heal() {
	r.mu.Lock()
	r.hole, r.delay, r.refuse = 0, 0, false
	r.mu.Unlock()
	for _, c := range r.Conns() {
		c.BlackHole(0)
		c.Delay(0)
	}
}

// ResetAll resets every open connection.
func (r *Relay) ResetAll() {
	for _, c := range r.Conns() {
		c.Reset()
	}
}

// Conn is one relayed connection.
type Conn struct {
	client, server net.Conn

	hole  atomic.Int64
	delay atomic.Int64

	mu     sync.Mutex
	sawUp  []byte // the first bytes the client sent, for Saw
	closed bool
}

const sniffBytes = 4096

// Saw reports whether the client sent s (case-insensitive ASCII) within
// its first 4 KiB: a test finds, say, the connection that subscribed.
func (c *Conn) Saw(s string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Contains(bytes.ToLower(c.sawUp), bytes.ToLower([]byte(s)))
}

// Closed reports whether the connection has ended.
func (c *Conn) Closed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// BlackHole drops the bytes of d from now on (0 ends it). The connection
// stays open: the sender's writes succeed, nothing arrives.
func (c *Conn) BlackHole(d Direction) { c.hole.Store(int64(d)) }

// Delay holds every byte for d before forwarding it (0 ends it).
func (c *Conn) Delay(d time.Duration) { c.delay.Store(int64(d)) }

// Reset closes both sides with a TCP reset.
func (c *Conn) Reset() {
	reset(c.client)
	reset(c.server)
	c.markClosed()
}

func (c *Conn) close() {
	_ = c.client.Close()
	_ = c.server.Close()
	c.markClosed()
}

func (c *Conn) markClosed() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
}

// pump copies src to dst, applying the faults of direction d. A reader
// stamps each chunk with its due time and a writer forwards it then, so a
// delay holds every byte for the same time and keeps their order.
func (c *Conn) pump(src, dst net.Conn, d Direction, done func()) {
	type chunk struct {
		due  time.Time
		data []byte
	}
	q := make(chan chunk, 1024)
	go func() {
		defer close(q)
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if d == Up {
					c.mu.Lock()
					if len(c.sawUp) < sniffBytes {
						c.sawUp = append(c.sawUp, buf[:min(n, sniffBytes-len(c.sawUp))]...)
					}
					c.mu.Unlock()
				}
				q <- chunk{time.Now().Add(time.Duration(c.delay.Load())), append([]byte(nil), buf[:n]...)}
			}
			if err != nil {
				return
			}
		}
	}()
	defer done()
	for ch := range q {
		if wait := time.Until(ch.due); wait > 0 {
			time.Sleep(wait) // the fault under test: this chunk is due later
		}
		if Direction(c.hole.Load())&d != 0 {
			continue
		}
		if _, err := dst.Write(ch.data); err != nil {
			c.close()
			for range q {
			}
			return
		}
	}
	// src ended: pass the half-close on, as TCP would.
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // close sends RST
	}
	_ = c.Close()
}
