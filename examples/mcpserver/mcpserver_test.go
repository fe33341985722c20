package mcpserver

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

type fakeFleet struct {
	mu    sync.Mutex
	calls []string
}

func (f *fakeFleet) List(tenant string) any { return []string{tenant + "-svc"} }
func (f *fakeFleet) record(s string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, s)
	if strings.Contains(s, "missing") {
		return errors.New("unknown service")
	}
	return nil
}
func (f *fakeFleet) Restart(name string) error      { return f.record("restart " + name) }
func (f *fakeFleet) Scale(name string, n int) error { return f.record("scale " + name) }
func (f *fakeFleet) Deploy(name, version string) error {
	return f.record("deploy " + name + " " + version)
}

// TestServerTools: the demo server's tools act on the fleet, list the
// tenant the proxy names, and report the fleet's errors as tool errors;
// the agent's round lists services through it.
func TestServerTools(t *testing.T) {
	f := &fakeFleet{}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := New(f, log)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Header.Set(TenantHeader, "acme") // as the proxy sets it
		s.Handler().ServeHTTP(w, r)
	}))
	defer srv.Close()
	a := &Agent{Endpoint: srv.URL, Log: log, Passport: func(context.Context) (string, error) { return "tok", nil }}
	ctx := t.Context()
	res, err := a.Call(ctx, "list_services", map[string]any{})
	if err != nil || res.IsError || !strings.Contains(res.Content[0].(*mcp.TextContent).Text, "acme-svc") {
		t.Fatalf("list_services: %v %+v", err, res)
	}
	for _, c := range []struct {
		tool string
		args map[string]any
	}{
		{"restart_service", map[string]any{"name": "checkout"}},
		{"scale_service", map[string]any{"name": "checkout", "replicas": 3}},
		{"deploy_service", map[string]any{"name": "checkout", "version": "v2"}},
	} {
		if res, err := a.Call(ctx, c.tool, c.args); err != nil || res.IsError {
			t.Fatalf("%s: %v %+v", c.tool, err, res)
		}
	}
	if res, err := a.Call(ctx, "restart_service", map[string]any{"name": "missing"}); err != nil || !res.IsError {
		t.Fatalf("a fleet error should be a tool error: %v %+v", err, res)
	}
	if want := []string{"restart checkout", "scale checkout", "deploy checkout v2", "restart missing"}; !slices.Equal(f.calls, want) {
		t.Fatalf("fleet calls %q, want %q", f.calls, want)
	}
	rctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := (&Agent{}).Run(rctx); err == nil {
		t.Fatal("an agent without endpoint, passport and logger should not run")
	}
}
