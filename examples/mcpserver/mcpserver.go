// Package mcpserver is the demo's MCP server: the fleet's control
// operations as MCP tools (list_services, restart_service, scale_service,
// deploy_service) over the Streamable HTTP transport, built with the
// official Go SDK. It knows nothing of passports: the proxy fronts it on an
// MCP route (docs/mcp.md), as an existing MCP server is dropped behind the
// proxy unchanged, and judges every tool call before it gets here.
//
// It serves both protocol revisions the way the SDK does: the current one
// (2026-07-28) statelessly, and clients of the older one (2025-11-25) with
// initialize and no session.
package mcpserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// Fleet is what the tools act on (the demo fleet).
type Fleet interface {
	// List is the services of a tenant, as a JSON value.
	List(tenant string) any
	Restart(name string) error
	Scale(name string, replicas int) error
	Deploy(name, version string) error
}

// TenantHeader names the tenant the proxy verified (proxy.HeaderTenant):
// list_services lists that tenant's services only.
const TenantHeader = "X-Passport-Tenant"

// Server is the demo MCP server.
type Server struct {
	fleet Fleet
	log   *slog.Logger
	mcp   *mcp.Server
}

// New builds the server; it starts nothing.
func New(f Fleet, log *slog.Logger) (*Server, error) {
	if f == nil || log == nil {
		return nil, errors.New("mcpserver: a fleet and a logger are required")
	}
	s := &Server{fleet: f, log: log,
		mcp: mcp.NewServer(&mcp.Implementation{Name: "passport-demo-fleet", Version: "1.0.0"}, nil)}
	s.addTools()
	return s, nil
}

// Arguments of the tools. Names are lower case: the proxy's default
// body_names rule (folded) takes nothing else.
type (
	// Target names a service.
	Target struct {
		Name string `json:"name" jsonschema:"the service"`
	}
	// ScaleArgs are scale_service's arguments.
	ScaleArgs struct {
		Name     string `json:"name" jsonschema:"the service"`
		Replicas int    `json:"replicas" jsonschema:"the number of replicas"`
	}
	// DeployArgs are deploy_service's arguments.
	DeployArgs struct {
		Name    string `json:"name" jsonschema:"the service"`
		Version string `json:"version" jsonschema:"the version to deploy, e.g. v2.1"`
	}
)

func text(format string, a ...any) *mcp.CallToolResult {
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: fmt.Sprintf(format, a...)}}}
}

func (s *Server) addTools() {
	mcp.AddTool(s.mcp, &mcp.Tool{Name: "list_services", Description: "List the services of your tenant and their state"},
		func(_ context.Context, req *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, any, error) {
			tenant := ""
			if req.Extra != nil {
				tenant = req.Extra.Header.Get(TenantHeader)
			}
			return nil, map[string]any{"services": s.fleet.List(tenant)}, nil
		})
	mcp.AddTool(s.mcp, &mcp.Tool{Name: "restart_service", Description: "Restart a service"},
		func(_ context.Context, _ *mcp.CallToolRequest, in Target) (*mcp.CallToolResult, any, error) {
			if err := s.fleet.Restart(in.Name); err != nil {
				return nil, nil, err
			}
			s.log.Info("mcp tool", "tool", "restart_service", "service", in.Name)
			return text("restarted %s", in.Name), nil, nil
		})
	mcp.AddTool(s.mcp, &mcp.Tool{Name: "scale_service", Description: "Scale a service to a number of replicas"},
		func(_ context.Context, _ *mcp.CallToolRequest, in ScaleArgs) (*mcp.CallToolResult, any, error) {
			if err := s.fleet.Scale(in.Name, in.Replicas); err != nil {
				return nil, nil, err
			}
			s.log.Info("mcp tool", "tool", "scale_service", "service", in.Name, "replicas", in.Replicas)
			return text("scaled %s to %d replicas", in.Name, in.Replicas), nil, nil
		})
	mcp.AddTool(s.mcp, &mcp.Tool{Name: "deploy_service", Description: "Deploy a version of a service"},
		func(_ context.Context, _ *mcp.CallToolRequest, in DeployArgs) (*mcp.CallToolResult, any, error) {
			if err := s.fleet.Deploy(in.Name, in.Version); err != nil {
				return nil, nil, err
			}
			s.log.Info("mcp tool", "tool", "deploy_service", "service", in.Name, "version", in.Version)
			return text("deploying %s %s", in.Name, in.Version), nil, nil
		})
}

// Handler is the Streamable HTTP endpoint (any path).
func (s *Server) Handler() http.Handler {
	return mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s.mcp },
		&mcp.StreamableHTTPOptions{Stateless: true, Logger: s.log})
}

// Serve serves the endpoint on ln until ctx ends.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("mcp server: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("mcp server: %w", err)
	}
	return nil
}
