package proxy

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/agentpassport/passport/audit"
)

// TestInterruptedAnswerIsRecorded: an answer that breaks off after it
// began (the agent goes away mid-body, or the upstream drops its
// connection mid-body) still leaves the forwarded call exactly one outcome
// record, with the upstream's status and the reason interrupted.
// ReverseProxy ends such a handler with a panic, which used to skip the
// outcome record.
func TestInterruptedAnswerIsRecorded(t *testing.T) {
	for _, tc := range []struct {
		name        string
		agentLeaves bool
	}{{"agent leaves", true}, {"upstream breaks off", false}} {
		t.Run(tc.name, func(t *testing.T) {
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusAccepted)
				_, _ = w.Write([]byte("0123456789"))
				w.(http.Flusher).Flush()
				if tc.agentLeaves {
					<-r.Context().Done()
					return
				}
				panic(http.ErrAbortHandler) // the chunked body ends without its last chunk
			}))
			defer up.Close()
			h := newHarness(t, func(c *Config) {
				c.Upstreams = map[string]Upstream{"fleet": {URL: up.URL}}
				c.fill()
			})
			_, tok := h.healer()

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", h.url+"/services/checkout", nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			id := res.Header.Get(HeaderXRequest)
			if res.StatusCode != http.StatusAccepted || id == "" {
				t.Fatalf("answer %d, request id %q", res.StatusCode, id)
			}
			if _, err := io.ReadFull(res.Body, make([]byte, 10)); err != nil {
				t.Fatalf("the first bytes: %v", err)
			}
			if tc.agentLeaves {
				cancel()
			} else if _, err := io.ReadAll(res.Body); err == nil {
				t.Fatal("the broken answer read whole")
			}
			res.Body.Close()

			var out []*audit.Record
			waitFor(t, "the outcome record", func() bool {
				out = out[:0]
				for _, rec := range h.sink.byRequest(id) {
					if rec.Kind == audit.KindOutcome {
						out = append(out, rec)
					}
				}
				return len(out) > 0
			})
			if len(out) != 1 || out[0].Status != http.StatusAccepted || !slices.Equal(out[0].Reasons, []string{"interrupted"}) {
				t.Fatalf("outcome records %+v, want one with status 202 and reason interrupted", out)
			}
			decisions := 0
			for _, rec := range h.sink.byRequest(id) {
				if rec.Kind == audit.KindDecision {
					decisions++
				}
			}
			if decisions != 1 {
				t.Fatalf("%d decision records", decisions)
			}
		})
	}
}

// TestMCPStreamClosedAfterItsAnswer: an MCP client may close the POST's
// event stream as soon as its JSON-RPC answer is in, before the server
// ends it. That call's outcome record carries the answer and is not
// marked interrupted.
func TestMCPStreamClosedAfterItsAnswer(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "id: e1\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"content\":[]}}\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done() // the stream stays open until the agent leaves
	}))
	defer up.Close()
	h := newHarness(t, mcpConfig(up.URL))
	tok := h.mcpAgent()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", h.url+"/mcp", strings.NewReader(restartWeb))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	for k, v := range cur("tools/call", "restart_deployment") {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	id := res.Header.Get(HeaderXRequest)
	br := bufio.NewReader(res.Body)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("the event: %v (status %d)", err, res.StatusCode)
		}
		if line == "\n" {
			break
		}
	}
	cancel()
	res.Body.Close()

	var out *audit.Record
	waitFor(t, "the outcome record", func() bool {
		for _, rec := range h.sink.byRequest(id) {
			if rec.Kind == audit.KindOutcome {
				out = rec
				return true
			}
		}
		return false
	})
	if out.Status != 200 || len(out.Reasons) != 0 || !strings.Contains(string(out.Details), `"outcome":{"result":"result"}`) {
		t.Fatalf("outcome status %d reasons %v details %s, want status 200, no reason, result", out.Status, out.Reasons, out.Details)
	}
}
