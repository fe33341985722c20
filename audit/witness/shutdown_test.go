package witness_test

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/agentpassport/passport/audit/witness"
)

// TestServeCutsWhatOutlastsTheGrace: a request whose headers never end
// holds its connection past the shutdown grace; Serve cuts it and returns
// nil (it returned the timeout as an error, failing the process's stop).
func TestServeCutsWhatOutlastsTheGrace(t *testing.T) {
	c := witness.Default()
	c.Dir = t.TempDir()
	srv, err := witness.New(c, witness.Deps{Logger: quiet()})
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
	conn := halfSentRequest(t, ln.Addr().String(), "GET /healthz HTTP/1.1\r\nHost: w\r\n")
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v, want nil once the grace period is over", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Serve did not return")
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Fatal("the half-sent request's connection is still open")
	}
}

// halfSentRequest waits until Serve answers a full request (so the next
// connection is accepted at once), then sends the start of a request on a
// connection of its own.
func halfSentRequest(t *testing.T, addr, start string) net.Conn {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			res.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond) // Serve starts in its goroutine
	}
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	if _, err := conn.Write([]byte(start)); err != nil {
		t.Fatal(err)
	}
	return conn
}
