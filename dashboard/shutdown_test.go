package dashboard

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/feed"
	"github.com/agentpassport/passport/internal/redistest"
)

// TestServeCutsWhatOutlastsTheGrace: a request whose headers never end
// holds a connection past ShutdownTimeout; Serve cuts it and returns
// nil (it returned the timeout as an error, failing `passport up`'s stop).
func TestServeCutsWhatOutlastsTheGrace(t *testing.T) {
	rdb := redistest.Start(t).Client()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	sink, err := audit.NewStream(rdb, audit.StreamConfig{}, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{Tenants: []string{"acme"}, ShutdownTimeout: 200 * time.Millisecond},
		Deps{Redis: rdb, Logger: log, Auth: feed.NewStaticAuth(feed.Token{Secret: adminToken}), Actions: newFakeActions(sink)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	// Once Serve accepts connections (a full request answered), the
	// half-sent one is accepted at once.
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, err := http.Get("http://" + ln.Addr().String() + "/healthz")
		if err == nil {
			res.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond) // Serve starts in its goroutine
	}
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET /healthz HTTP/1.1\r\nHost: d\r\n")); err != nil { // headers never end
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v, want nil once the grace period is over", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Serve did not return")
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Fatal("the half-sent request's connection is still open")
	}
}
