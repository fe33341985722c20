package stack

import (
	"time"

	"github.com/agentpassport/passport/proxy"
)

// DemoProxyConfig is the demo proxy's configuration: passports from the
// authority at authorityURL, the fleet's control API (proxy.FleetRoutes, at
// the same paths) upstream at fleetURL.
func DemoProxyConfig(authorityURL, fleetURL string) proxy.Config {
	c := proxy.FleetConfig(fleetURL)
	c.Issuer = authorityURL
	c.JWKSURL = authorityURL + "/.well-known/jwks.json"
	c.AuthorityURL = authorityURL
	up := c.Upstreams["fleet"]
	up.Timeout = 10 * time.Second
	c.Upstreams["fleet"] = up
	return c
}
