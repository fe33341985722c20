package feed

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"

	"github.com/gorilla/websocket"

	"github.com/agentpassport/passport/internal/problem"
)

// Paths the hub serves. Mount the hub on both (or on a prefix that ends in
// them): mux.Handle(feed.Path, hub); mux.Handle(feed.TicketPath, hub).
const (
	Path       = "/v1/feed"
	TicketPath = "/v1/feed/ticket"
)

// ServeHTTP serves POST .../ticket and GET (WebSocket upgrade) on any other
// path, so the hub can be mounted on several listeners.
func (h *Hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasSuffix(r.URL.Path, "/ticket") {
		h.serveTicket(w, r)
		return
	}
	h.serveFeed(w, r)
}

// serveTicket trades an operator token (Authorization: Bearer) for a
// single-use ticket for one tenant: POST {"tenant":"acme"} → 201
// {"ticket","tenant","expires_in"}.
func (h *Hub) serveTicket(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		problem.Answer(w, http.StatusMethodNotAllowed, "method_not_allowed", "use POST")
		return
	}
	p, ok := h.Authenticate(w, r)
	if !ok {
		return
	}
	var body struct {
		Tenant string `json:"tenant"`
	}
	if r.ContentLength != 0 {
		if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&body); err != nil {
			problem.Answer(w, http.StatusBadRequest, "invalid_json", "body must be JSON {\"tenant\": \"...\"}")
			return
		}
	}
	if body.Tenant == "" {
		body.Tenant = r.URL.Query().Get("tenant")
	}
	if !p.CanRead(body.Tenant) {
		problem.Answer(w, http.StatusForbidden, "forbidden", "credential may not watch this tenant")
		return
	}
	ticket, err := issueTicket(r.Context(), h.rdb, p, body.Tenant, h.cfg.TicketTTL)
	if err != nil {
		h.log.ErrorContext(r.Context(), "feed ticket failed", "err", err)
		problem.Answer(w, http.StatusServiceUnavailable, "unavailable", "ticket store unavailable")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"ticket": ticket, "tenant": body.Tenant, "expires_in": int(h.cfg.TicketTTL.Seconds()),
	})
}

// Authenticate reads the Bearer token of r and answers 401 itself when it
// is missing or invalid. Exported for the dashboard's API.
func (h *Hub) Authenticate(w http.ResponseWriter, r *http.Request) (Principal, bool) {
	tok, ok := bearer(r)
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer realm="passport"`)
		problem.Answer(w, http.StatusUnauthorized, "unauthenticated", "operator token required (Authorization: Bearer)")
		return Principal{}, false
	}
	p, err := h.auth.Authenticate(r.Context(), tok)
	if err != nil {
		if !errors.Is(err, ErrUnauthorized) && !errors.Is(err, ErrRevoked) {
			h.log.ErrorContext(r.Context(), "feed authenticate failed", "err", err)
			problem.Answer(w, http.StatusServiceUnavailable, "unavailable", "authentication unavailable")
			return Principal{}, false
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="passport", error="invalid_token"`)
		problem.Answer(w, http.StatusUnauthorized, "unauthenticated", "invalid operator token")
		return Principal{}, false
	}
	return p, true
}

func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
		return "", false
	}
	return strings.TrimSpace(tok), true
}

// serveFeed authenticates, checks the origin and the parameters, and only
// then upgrades, so every refusal is a plain HTTP answer.
//
// Query: ticket= (from POST /v1/feed/ticket) or an Authorization header
// with tenant=; since=<stream id> or tail=<n>; types=, agent=, decision=.
func (h *Hub) serveFeed(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		problem.Answer(w, http.StatusMethodNotAllowed, "method_not_allowed", "use GET with a WebSocket upgrade")
		return
	}
	// Origin first: a cross-site page must learn nothing, and must not burn
	// a ticket it somehow got hold of.
	if !h.checkOrigin(r) {
		h.m.refused.WithLabelValues("origin").Inc()
		problem.Answer(w, http.StatusForbidden, "origin_not_allowed", "origin not allowed")
		return
	}
	if !websocket.IsWebSocketUpgrade(r) {
		problem.Answer(w, http.StatusBadRequest, "upgrade_required", "WebSocket upgrade required")
		return
	}
	q := r.URL.Query()
	filter, err := parseFilter(q)
	if err != nil {
		problem.Answer(w, http.StatusBadRequest, "invalid_filter", err.Error())
		return
	}
	var since *streamID
	if s := q.Get("since"); s != "" {
		id, err := parseID(s)
		if err != nil {
			problem.Answer(w, http.StatusBadRequest, "invalid_filter", "since: not a stream id")
			return
		}
		since = &id
	}
	tail := 0
	if s := q.Get("tail"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > h.cfg.MaxTail {
			problem.Answer(w, http.StatusBadRequest, "invalid_filter", "tail: a number from 0 to "+strconv.Itoa(h.cfg.MaxTail))
			return
		}
		tail = n
	}

	var p Principal
	var tenant string
	if t := q.Get("ticket"); t != "" {
		v, err := redeemTicket(r.Context(), h.rdb, t)
		if err != nil {
			if errors.Is(err, ErrUnauthorized) {
				h.m.refused.WithLabelValues("auth").Inc()
				problem.Answer(w, http.StatusUnauthorized, "unauthenticated", "invalid or used ticket")
				return
			}
			h.log.ErrorContext(r.Context(), "feed ticket redeem failed", "err", err)
			problem.Answer(w, http.StatusServiceUnavailable, "unavailable", "ticket store unavailable")
			return
		}
		// The ticket outlives nothing: check the credential behind it now.
		if err := h.auth.Check(r.Context(), v.Principal); err != nil {
			h.m.refused.WithLabelValues("auth").Inc()
			problem.Answer(w, http.StatusUnauthorized, "unauthenticated", "credential no longer valid")
			return
		}
		p, tenant = v.Principal, v.Tenant
	} else {
		var ok bool
		if p, ok = h.Authenticate(w, r); !ok {
			h.m.refused.WithLabelValues("auth").Inc()
			return
		}
		tenant = q.Get("tenant")
	}
	if !p.CanRead(tenant) {
		h.m.refused.WithLabelValues("scope").Inc()
		problem.Answer(w, http.StatusForbidden, "forbidden", "credential may not watch this tenant")
		return
	}

	up := websocket.Upgrader{
		// A typical batch fits one buffer, so a frame is one write syscall;
		// the pool lends the buffer only while a frame is written, so idle
		// connections hold none.
		ReadBufferSize: 1024, WriteBufferSize: 16 << 10, WriteBufferPool: writePool,
		CheckOrigin: h.checkOrigin,
		Error: func(w http.ResponseWriter, _ *http.Request, status int, reason error) {
			problem.Answer(w, status, "upgrade_failed", reason.Error())
		},
	}
	conn, err := up.Upgrade(w, r, nil)
	if err != nil {
		return // Upgrade answered already
	}
	c := &client{
		hub: h, conn: conn, tenant: tenant, principal: p, filter: filter, since: since, tail: tail,
		send: make(chan []byte, h.cfg.SendBuffer), done: make(chan struct{}),
		lagged: make(chan struct{}, 1), recheckNow: make(chan struct{}, 1),
	}
	h.log.DebugContext(r.Context(), "feed connected", "tenant", tenant, "principal", p.ID)
	c.serve()
}

var writePool = &sync.Pool{}

// checkOrigin allows requests without Origin (not a browser, so no
// cross-site hijacking is possible), the feed's own origin, and the
// configured allow-list. Everything else, "null" included, is refused:
// without this any web page could open the feed with the operator's
// ambient credentials (cross-site WebSocket hijacking).
func (h *Hub) checkOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	n, err := normalizeOrigin(origin)
	if err != nil {
		return false
	}
	u, _ := url.Parse(n)
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	return h.origins[n]
}

// normalizeOrigin lowercases scheme://host[:port] and refuses anything else.
func normalizeOrigin(o string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(o))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return "", errors.New("origin " + strconv.Quote(o) + " is not scheme://host[:port]")
	}
	return strings.ToLower(u.Scheme + "://" + u.Host), nil
}
