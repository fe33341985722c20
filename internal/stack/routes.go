package stack

import (
	"time"

	"github.com/agentpassport/passport/examples/fleet"
	"github.com/agentpassport/passport/proxy"
)

// DemoProxyConfig is the demo proxy's configuration: passports from the
// authority at authorityURL, the fleet's control API (proxy.FleetRoutes, at
// the same paths) upstream at fleetURL, and, when mcpURL is set, the demo
// MCP server (examples/mcpserver) at POST /mcp (proxy.FleetMCPRoute).
func DemoProxyConfig(authorityURL, fleetURL, mcpURL string) proxy.Config {
	c := proxy.FleetConfig(fleetURL)
	if mcpURL != "" {
		for i := range c.Routes {
			c.Routes[i].Upstream = "fleet"
		}
		c.Upstreams["mcp"] = proxy.Upstream{URL: mcpURL, Timeout: 10 * time.Second}
		c.Routes = append(c.Routes, proxy.FleetMCPRoute())
	}
	c.Issuer = authorityURL
	c.JWKSURL = authorityURL + "/.well-known/jwks.json"
	c.AuthorityURL = authorityURL
	up := c.Upstreams["fleet"]
	up.Timeout = 10 * time.Second
	c.Upstreams["fleet"] = up
	return c
}

// mcpFleet is the fleet as the demo MCP server's tools see it.
type mcpFleet struct{ *fleet.Fleet }

// List is the services of tenant (none without one: the proxy always
// names the tenant it verified).
func (f mcpFleet) List(tenant string) any {
	out := []fleet.Status{}
	for _, st := range f.Services() {
		if tenant != "" && st.Tenant == tenant {
			out = append(out, st)
		}
	}
	return out
}
