package audit

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// pipeConn is one dedicated connection on which the committer keeps up to
// MaxInFlight batches in flight. Redis runs the commands of one connection
// in the order it receives them, so batch k+1, which links to the head batch
// k will leave, is always executed after batch k: the chain order holds
// without waiting for each round trip. (go-redis cannot do this: a pooled or
// sticky connection is held for a whole request and its reply.)
//
// It speaks RESP2 to a standalone Redis (*redis.Client): Cluster, Sentinel
// and Ring clients keep one batch in flight through go-redis.
type pipeConn struct {
	nc      net.Conn
	bw      *bufio.Writer
	br      *bufio.Reader
	pending chan *flight // sent, waiting for replies (FIFO)

	mu       sync.Mutex
	broken   bool
	dead     chan struct{} // closed when broken
	loaded   bool          // EVAL ran on this connection: the script is cached
	finished chan struct{}
}

// flight is one batch on the wire.
type flight struct {
	pc       *pipeConn // nil when sent through go-redis
	groups   []*group
	wait     []any // WAIT command following the groups, or nil
	deadline time.Time
	start    time.Time
	n        int
	// Results, filled by the reader.
	replies []any
	err     error
}

// redisError is an error reply: the command failed, the connection is fine.
type redisError string

func (e redisError) Error() string { return string(e) }

// dialPipe opens the dedicated connection with the client's own dialer
// (TLS included), credentials and database.
func dialPipe(ctx context.Context, cl *redis.Client, depth int, onReply func(*flight)) (*pipeConn, error) {
	opt := cl.Options()
	nc, err := opt.Dialer(ctx, opt.Network, opt.Addr)
	if err != nil {
		return nil, fmt.Errorf("dial audit connection: %w", err)
	}
	p := &pipeConn{
		nc:       nc,
		bw:       bufio.NewWriterSize(nc, 64<<10),
		br:       bufio.NewReaderSize(nc, 16<<10),
		pending:  make(chan *flight, depth),
		dead:     make(chan struct{}),
		finished: make(chan struct{}),
	}
	user, pass := opt.Username, opt.Password
	if opt.CredentialsProviderContext != nil {
		if user, pass, err = opt.CredentialsProviderContext(ctx); err != nil {
			_ = nc.Close()
			return nil, fmt.Errorf("audit connection credentials: %w", err)
		}
	} else if opt.CredentialsProvider != nil {
		user, pass = opt.CredentialsProvider()
	}
	var setup [][]any
	switch {
	case user != "":
		setup = append(setup, []any{"AUTH", user, pass})
	case pass != "":
		setup = append(setup, []any{"AUTH", pass})
	}
	if opt.DB != 0 {
		setup = append(setup, []any{"SELECT", opt.DB})
	}
	if len(setup) > 0 {
		if dl, ok := ctx.Deadline(); ok {
			_ = nc.SetDeadline(dl)
		}
		for _, c := range setup {
			writeCommand(p.bw, c)
		}
		err := p.bw.Flush()
		for range setup {
			if err != nil {
				break
			}
			var r any
			if r, err = readReply(p.br); err == nil {
				if re, ok := r.(redisError); ok {
					err = re
				}
			}
		}
		if err != nil {
			_ = nc.Close()
			return nil, fmt.Errorf("set up audit connection: %w", err)
		}
		_ = nc.SetDeadline(time.Time{})
	}
	go p.readLoop(onReply)
	return p, nil
}

// send writes f's commands and queues it for its replies. It is called by
// the committer only, so flights are written in order.
func (p *pipeConn) send(f *flight, writer string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.broken {
		return errors.New("audit connection closed")
	}
	for _, g := range f.groups {
		args := make([]any, 0, 6+len(g.raws))
		if p.loaded {
			args = append(args, "EVALSHA", appendScript.Hash())
		} else {
			// The first script call on a connection is an EVAL, which
			// (re)loads the script into Redis's cache: after a Redis
			// restart the cache is empty, and the EVALSHAs queued behind
			// it on this connection run after it.
			args = append(args, "EVAL", appendSrc)
			p.loaded = true
		}
		args = append(args, 2, StreamKey(g.c.tenant), HeadsKey(g.c.tenant), writer, g.expect, g.head)
		args = append(args, g.raws...)
		writeCommand(p.bw, args)
	}
	if f.wait != nil {
		writeCommand(p.bw, f.wait)
	}
	_ = p.nc.SetWriteDeadline(f.deadline)
	if err := p.bw.Flush(); err != nil {
		p.breakLocked()
		return fmt.Errorf("write audit batch: %w", err)
	}
	p.pending <- f // never blocks: depth slots are taken before sending
	return nil
}

// noscript marks the connection's script cache as lost (SCRIPT FLUSH):
// the next batch sends an EVAL again.
func (p *pipeConn) noscript() {
	p.mu.Lock()
	p.loaded = false
	p.mu.Unlock()
}

func (p *pipeConn) breakLocked() {
	if !p.broken {
		p.broken = true
		close(p.dead)
		_ = p.nc.Close()
	}
}

// isBroken reports whether the connection failed; the committer then dials
// a new one.
func (p *pipeConn) isBroken() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.broken
}

// close stops the connection; flights still pending fail.
func (p *pipeConn) close() {
	p.mu.Lock()
	p.breakLocked()
	p.mu.Unlock()
	<-p.finished
}

// readLoop reads the replies of the flights in the order they were sent.
// Any read error (including a flight's deadline passing) breaks the
// connection: every flight still pending fails, since their fate is unknown.
func (p *pipeConn) readLoop(onReply func(*flight)) {
	defer close(p.finished)
	for {
		var f *flight
		select {
		case f = <-p.pending:
		case <-p.dead:
			p.drain(onReply)
			return
		}
		_ = p.nc.SetReadDeadline(f.deadline)
		want := len(f.groups)
		if f.wait != nil {
			want++
		}
		f.replies = make([]any, 0, want)
		for range want {
			r, err := readReply(p.br)
			if err != nil {
				f.err = err
				break
			}
			f.replies = append(f.replies, r)
		}
		if f.err != nil {
			p.mu.Lock()
			p.breakLocked()
			p.mu.Unlock()
			onReply(f)
			p.drain(onReply)
			return
		}
		onReply(f)
	}
}

// drain fails the flights that can no longer be answered. After broken is
// set no flight is queued any more.
func (p *pipeConn) drain(onReply func(*flight)) {
	for {
		select {
		case f := <-p.pending:
			f.err = errors.New("audit connection closed")
			onReply(f)
		default:
			return
		}
	}
}

func writeCommand(w *bufio.Writer, args []any) {
	w.WriteByte('*')
	w.WriteString(strconv.Itoa(len(args)))
	w.WriteString("\r\n")
	for _, a := range args {
		var s string
		switch v := a.(type) {
		case string:
			s = v
		case int:
			s = strconv.Itoa(v)
		case int64:
			s = strconv.FormatInt(v, 10)
		default:
			s = fmt.Sprint(v)
		}
		w.WriteByte('$')
		w.WriteString(strconv.Itoa(len(s)))
		w.WriteString("\r\n")
		w.WriteString(s)
		w.WriteString("\r\n")
	}
}

// readReply reads one RESP2 reply: string, redisError, int64, nil or []any.
func readReply(r *bufio.Reader) (any, error) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		return nil, err
	}
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return nil, fmt.Errorf("audit connection: malformed reply %q", line)
	}
	body := string(line[1 : len(line)-2])
	switch line[0] {
	case '+':
		return body, nil
	case '-':
		return redisError(body), nil
	case ':':
		return strconv.ParseInt(body, 10, 64)
	case '$':
		n, err := strconv.Atoi(body)
		if err != nil {
			return nil, err
		}
		if n < 0 {
			return nil, nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(body)
		if err != nil {
			return nil, err
		}
		if n < 0 {
			return nil, nil
		}
		out := make([]any, n)
		for i := range out {
			if out[i], err = readReply(r); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("audit connection: unexpected reply type %q", line[0])
}
