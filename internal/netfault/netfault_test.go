package netfault

import (
	"bufio"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// echo is a line echo server on a free port.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if _, err := c.Write([]byte(sc.Text() + "\n")); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func roundTrip(c net.Conn, rd *bufio.Reader, s string, timeout time.Duration) (string, error) {
	if _, err := c.Write([]byte(s + "\n")); err != nil {
		return "", err
	}
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	line, err := rd.ReadString('\n')
	return strings.TrimSpace(line), err
}

func TestRelayFaults(t *testing.T) {
	r := Start(t, echo(t))
	c, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rd := bufio.NewReader(c)
	if got, err := roundTrip(c, rd, "hello", time.Second); err != nil || got != "hello" {
		t.Fatalf("forward: %q %v", got, err)
	}
	waitFor(t, func() bool { return len(r.Conns()) == 1 && r.Conns()[0].Saw("HELLO") })

	// Black hole, server to client: the write succeeds, no answer comes.
	r.BlackHole(Down)
	if _, err := roundTrip(c, rd, "lost", 200*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("black hole: %v, want a read timeout", err)
	}
	r.Heal()
	if got, err := roundTrip(c, rd, "back", time.Second); err != nil || got != "back" {
		t.Fatalf("healed: %q %v", got, err)
	}

	// Delay: the answer comes, late.
	r.Delay(150 * time.Millisecond)
	start := time.Now()
	if got, err := roundTrip(c, rd, "slow", 2*time.Second); err != nil || got != "slow" {
		t.Fatalf("delay: %q %v", got, err)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Fatalf("delay: answered after %s, want >= 300ms (both directions)", took)
	}
	r.Heal()

	// Reset: the client sees the connection end.
	r.ResetAll()
	if _, err := roundTrip(c, rd, "gone", time.Second); err == nil {
		t.Fatal("reset: the connection still answers")
	}

	// Refuse: new connections are reset at once.
	r.Refuse(true)
	c2, err := net.Dial("tcp", r.Addr())
	if err == nil {
		defer c2.Close()
		if _, err := roundTrip(c2, bufio.NewReader(c2), "x", time.Second); err == nil {
			t.Fatal("refuse: a new connection was served")
		}
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(2 * time.Millisecond)
	}
}
