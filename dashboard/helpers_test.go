package dashboard

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/feed"
	"github.com/agentpassport/passport/internal/redistest"
)

const (
	adminToken = "admin-0123456789abcdef"
	acmeToken  = "acme-0123456789abcdef"
)

type stack struct {
	url     string
	srv     *Server
	actions *fakeActions
	auth    *feed.StaticAuth
	sink    *audit.Stream
}

// startStack runs a real redis-server, the real audit stream writer, the
// dashboard on a loopback port and a fake Actions.
func startStack(t *testing.T, cfg Config) *stack {
	t.Helper()
	return startStackWith(t, cfg, nil)
}

// startStackWith lets host wrap the fake Actions (e.g. to add approvals).
func startStackWith(t *testing.T, cfg Config, host func(*fakeActions) Actions) *stack {
	t.Helper()
	rs := redistest.Start(t)
	rdb := rs.Client()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	sink, err := audit.NewStream(rdb, audit.StreamConfig{}, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sinkDone := make(chan error, 1)
	go func() { sinkDone <- sink.Run(ctx) }()
	auth := feed.NewStaticAuth(feed.Token{Secret: adminToken}, feed.Token{Secret: acmeToken, Tenants: []string{"acme"}})
	actions := newFakeActions(sink)
	if cfg.Tenants == nil {
		cfg.Tenants = []string{"acme", "globex"}
	}
	if cfg.Feed.Block == 0 {
		cfg.Feed.Block = 200 * time.Millisecond
	}
	var acts Actions = actions
	if host != nil {
		acts = host(actions)
	}
	srv, err := New(cfg, Deps{Redis: rdb, Logger: log, Auth: auth, Actions: acts})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Serve: %v", err)
		}
		<-sinkDone
	})
	return &stack{url: cfg.TLS.Scheme() + "://" + ln.Addr().String(), srv: srv, actions: actions, auth: auth, sink: sink}
}
