package feed

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"
)

// Close codes the feed uses (RFC 6455 §7.4 and the IANA registry). A client
// reconnects (with since=) after 1001, 1011 and 1013; after 1008 it must
// get a new credential first.
const (
	closeGoingAway = websocket.CloseGoingAway       // 1001: server shutting down
	closePolicy    = websocket.ClosePolicyViolation // 1008: credential revoked or no longer valid
	closeInternal  = websocket.CloseInternalServerErr
	closeTryAgain  = websocket.CloseTryAgainLater // 1013: slow consumer, or audit store unavailable
)

// client is one feed connection: a reader goroutine (pongs, and noticing
// that the peer went away) and a writer goroutine that owns every write:
// the replay, the live events from its buffer, pings and the close frame.
type client struct {
	hub       *Hub
	conn      *websocket.Conn
	tenant    string
	principal Principal
	filter    Filter
	since     *streamID // nil: live only
	tail      int

	send  chan []byte // bounded; filled by the tenant hub, drained by writePump
	batch [][]byte    // the writer's reusable frame buffer
	// cursor is the last entry handed to this client (queued, or written
	// by the replay); guarded by tenantHub.mu while the client is live.
	cursor     streamID
	lagged     chan struct{} // signalled when the buffer overflowed
	recheckNow chan struct{} // signalled by Hub.Recheck
	lagSince   time.Time     // when; guarded by tenantHub.mu

	once        sync.Once
	done        chan struct{}
	closeCode   int
	closeReason string
}

// close asks the writer to send a close frame with code and reason and to
// end the connection. The first call wins.
func (c *client) close(code int, reason string) {
	c.once.Do(func() {
		c.closeCode, c.closeReason = code, reason
		close(c.done)
	})
}

// serve runs the connection until it ends.
func (c *client) serve() {
	th, hubCtx, err := c.hub.register(c)
	if err != nil {
		c.writeClose(closeTryAgain, "feed not running")
		_ = c.conn.Close()
		return
	}
	defer c.hub.unregister(c, th)
	ctx, cancel := context.WithCancel(hubCtx)
	defer cancel()
	go c.readPump()
	c.writePump(ctx, th)
	_ = c.conn.Close()
}

// readPump reads (and discards) what the client sends, so that pongs and
// close frames are processed; a read error ends the connection.
func (c *client) readPump() {
	c.conn.SetReadLimit(1024)
	_ = c.conn.SetReadDeadline(time.Now().Add(c.hub.cfg.PongWait))
	c.conn.SetPongHandler(func(string) error {
		return c.conn.SetReadDeadline(time.Now().Add(c.hub.cfg.PongWait))
	})
	for {
		if _, _, err := c.conn.NextReader(); err != nil {
			c.close(0, "")
			return
		}
		_ = c.conn.SetReadDeadline(time.Now().Add(c.hub.cfg.PongWait))
	}
}

// writePump replays what was asked, joins the live tail, then writes events,
// pings and credential checks until the connection ends.
func (c *client) writePump(ctx context.Context, th *tenantHub) {
	h := c.hub
	defer func() {
		if c.closeCode != 0 {
			c.writeClose(c.closeCode, c.closeReason)
		}
	}()
	select {
	case <-th.ready:
	case <-c.done:
		return
	case <-time.After(h.cfg.WriteWait):
		h.m.dropped.WithLabelValues("unavailable").Inc()
		c.close(closeTryAgain, "audit store unavailable")
		return
	}
	last, err := c.catchUp(ctx, th)
	if err != nil {
		if c.isDone() {
			return
		}
		if errors.Is(err, errWrite) {
			c.close(0, "")
			return
		}
		h.log.WarnContext(ctx, "feed replay failed", "tenant", c.tenant, "err", err)
		h.m.dropped.WithLabelValues("unavailable").Inc()
		c.close(closeTryAgain, "audit store unavailable")
		return
	}
	live, _ := json.Marshal(Event{V: SchemaVersion, Type: TypeLive, Tenant: c.tenant, LastID: last.String()})
	if !c.writeEvents([][]byte{live}) {
		return
	}

	ping := time.NewTicker(h.cfg.PingInterval)
	defer ping.Stop()
	recheck := time.NewTicker(h.cfg.RecheckInterval)
	defer recheck.Stop()
	for {
		// A dropped client must not get more events after the drop, so
		// done is checked before each write, not left to select's choice.
		if c.isDone() {
			return
		}
		select {
		case <-c.done:
			return
		case msg := <-c.send:
			// gorilla's chat pattern: whatever else is already queued goes
			// in the same frame, one event per line, so a busy feed costs a
			// syscall per batch, not per event.
			batch := append(c.batch[:0], msg)
			size := len(msg)
			for len(batch) < maxBatchEvents && size < maxBatchBytes {
				select {
				case m := <-c.send:
					batch = append(batch, m)
					size += len(m) + 1
					continue
				default:
				}
				break
			}
			c.batch = batch
			if c.isDone() || !c.writeEvents(batch) {
				return
			}
		case <-c.lagged:
			if !c.recover(ctx, th) {
				return
			}
		case <-ping.C:
			if err := c.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(h.cfg.WriteWait)); err != nil {
				c.close(0, "")
				return
			}
		case <-recheck.C:
			if !c.checkCredential(ctx) {
				return
			}
		case <-c.recheckNow:
			if !c.checkCredential(ctx) {
				return
			}
		}
	}
}

// checkCredential asks Auth whether the connection's credential is still
// valid and closes the connection (1008) when it is not. A failing check
// (the store is down) keeps the connection until the next one.
func (c *client) checkCredential(ctx context.Context) bool {
	h := c.hub
	err := h.auth.Check(ctx, c.principal)
	if err == nil {
		return true
	}
	if errors.Is(err, ErrRevoked) || errors.Is(err, ErrUnauthorized) {
		h.m.dropped.WithLabelValues("revoked").Inc()
		h.log.InfoContext(ctx, "feed credential revoked", "principal", c.principal.ID, "tenant", c.tenant)
		c.close(closePolicy, "credential revoked")
		return false
	}
	h.log.WarnContext(ctx, "feed credential check failed", "principal", c.principal.ID, "err", err)
	return true
}

var errWrite = errors.New("write to client")

// catchUp sends the replay the client asked for (since= or tail=), then
// joins the tenant's live tail at exactly the position the replay reached,
// so nothing is sent twice or skipped. It returns that position.
func (c *client) catchUp(ctx context.Context, th *tenantHub) (streamID, error) {
	h := c.hub
	var cursor streamID
	switch {
	case c.since != nil:
		cursor = *c.since
	case c.tail > 0:
		msgs, err := h.rdb.XRevRangeN(ctx, th.key, "+", "-", int64(c.tail)).Result()
		if err != nil {
			return cursor, err
		}
		slices.Reverse(msgs)
		if !c.sendEntries(msgs) {
			return cursor, errWrite
		}
		if len(msgs) > 0 {
			cursor, _ = parseID(msgs[len(msgs)-1].ID)
		}
	default:
		// Live only: start where the tail is now.
		th.mu.Lock()
		cursor = th.last
		th.mu.Unlock()
	}
	return c.follow(ctx, th, cursor, time.Time{})
}

// recover brings a client that overflowed its buffer back to the live
// fan-out: it writes what is still queued, then replays from the stream
// after the last entry it was handed, and rejoins. A client that has not
// caught up within LagTimeout is dropped with 1013.
func (c *client) recover(ctx context.Context, th *tenantHub) bool {
	h := c.hub
	for len(c.send) > 0 {
		batch := c.batch[:0]
		for len(batch) < maxBatchEvents && len(c.send) > 0 {
			batch = append(batch, <-c.send)
		}
		c.batch = batch
		if c.isDone() || !c.writeEvents(batch) {
			return false
		}
	}
	th.mu.Lock()
	cursor, since := c.cursor, c.lagSince
	th.mu.Unlock()
	_, err := c.follow(ctx, th, cursor, since.Add(h.cfg.LagTimeout))
	switch {
	case err == nil:
		return true
	case c.isDone():
	case errors.Is(err, errTooSlow):
		h.m.dropped.WithLabelValues("slow").Inc()
		c.close(closeTryAgain, "slow consumer: could not keep up, reconnect with since")
	case errors.Is(err, errWrite):
		c.close(0, "")
	default:
		h.log.WarnContext(ctx, "feed catch-up failed", "tenant", c.tenant, "err", err)
		h.m.dropped.WithLabelValues("unavailable").Inc()
		c.close(closeTryAgain, "audit store unavailable")
	}
	return false
}

var errTooSlow = errors.New("client too slow")

// follow replays from cursor until it reaches the tail, then joins the
// live fan-out at exactly that position, so nothing is sent twice or
// skipped. With a non-zero deadline it gives up (errTooSlow) once the
// deadline passes without having joined.
func (c *client) follow(ctx context.Context, th *tenantHub, cursor streamID, deadline time.Time) (streamID, error) {
	h := c.hub
	for {
		target, joined := th.join(c, cursor)
		if joined {
			return cursor, nil
		}
		if !deadline.IsZero() && time.Now().After(deadline) {
			return cursor, errTooSlow
		}
		// Replay (cursor, target] in pages.
		for cursor.less(target) {
			if !deadline.IsZero() && time.Now().After(deadline) {
				return cursor, errTooSlow
			}
			msgs, err := h.rdb.XRangeN(ctx, th.key, "("+cursor.String(), target.String(), int64(h.cfg.Batch)).Result()
			if err != nil {
				return cursor, err
			}
			if !c.sendEntries(msgs) {
				return cursor, errWrite
			}
			if len(msgs) > 0 {
				if id, err := parseID(msgs[len(msgs)-1].ID); err == nil {
					cursor = id
				}
			}
			if len(msgs) < h.cfg.Batch {
				cursor = target
			}
		}
	}
}

// sendEntries writes replayed entries that pass the filter, batched.
func (c *client) sendEntries(msgs []redis.XMessage) bool {
	batch := c.batch[:0]
	size := 0
	for _, m := range msgs {
		ev, raw := c.hub.encode(m)
		if ev == nil || !c.filter.Match(ev) {
			continue
		}
		batch = append(batch, raw)
		size += len(raw) + 1
		if len(batch) >= maxBatchEvents || size >= maxBatchBytes {
			if !c.writeEvents(batch) {
				return false
			}
			batch, size = batch[:0], 0
		}
	}
	c.batch = batch[:0]
	return len(batch) == 0 || c.writeEvents(batch)
}

// Bounds of one frame.
const (
	maxBatchEvents = 64
	maxBatchBytes  = 64 << 10
)

// writeEvents writes events as one text frame, one JSON object per line.
func (c *client) writeEvents(events [][]byte) bool {
	_ = c.conn.SetWriteDeadline(time.Now().Add(c.hub.cfg.WriteWait))
	w, err := c.conn.NextWriter(websocket.TextMessage)
	if err == nil {
		for i, ev := range events {
			if i > 0 {
				_, _ = w.Write(newline)
			}
			_, _ = w.Write(ev)
		}
		err = w.Close()
	}
	if err != nil {
		c.close(0, "")
		return false
	}
	c.hub.m.sent.Add(float64(len(events)))
	return true
}

var newline = []byte{'\n'}

// writeClose sends the close frame. It may wait behind everything already
// in the socket buffers, so it gets the full write_wait: a slow reader that
// is still reading then learns why it was dropped.
func (c *client) writeClose(code int, reason string) {
	msg := websocket.FormatCloseMessage(code, reason)
	_ = c.conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(c.hub.cfg.WriteWait))
}

func (c *client) isDone() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// encode decodes a stream entry and encodes its event once for every
// connection. ev is nil for entries that are not feed events.
func (h *Hub) encode(msg redis.XMessage) (ev *Event, raw []byte) {
	ev, err := decodeEntry(msg)
	if err != nil {
		if !errors.Is(err, errSkip) {
			h.m.decodeErrors.Inc()
		}
		return nil, nil
	}
	raw, err = json.Marshal(ev)
	if err != nil {
		h.m.decodeErrors.Inc()
		return nil, nil
	}
	return ev, raw
}
