package stack

import (
	"time"

	"github.com/agentpassport/passport/proxy"
)

// DemoRoutes are the routes the demo proxy puts in front of the fleet's
// control API, at the same paths. examples/proxy.yaml lists the same routes
// for a standalone proxy (a test keeps the two in step).
func DemoRoutes() []proxy.Route {
	nonProd := false
	return []proxy.Route{
		{Name: "services.list", Match: "GET /services", Action: "service.list", Resource: "*"},
		{Name: "services.get", Match: "GET /services/{name}", Action: "service.get", Resource: "{name}"},
		{Name: "services.restart", Match: "POST /services/{name}/restart", Action: "service.restart", Resource: "{name}"},
		{Name: "services.scale", Match: "POST /services/{name}/scale", Action: "service.scale", Resource: "{name}", PolicyBody: true},
		{Name: "deployments.deploy", Match: "POST /deployments/{name}", Action: "deployment.deploy", Resource: "{name}", PolicyBody: true},
		{Name: "deployments.rollback", Match: "POST /deployments/{name}/rollback", Action: "deployment.rollback", Resource: "{name}"},
		{Name: "caches.warm", Match: "POST /caches/{name}/warm", Action: "cache.warm", Resource: "{name}"},
		{Name: "faults.inject", Match: "POST /faults/{name}", Action: "chaos.inject", Resource: "{name}", Production: &nonProd, PolicyBody: true},
		{Name: "faults.clear", Match: "DELETE /faults/{name}", Action: "chaos.clear", Resource: "{name}", Production: &nonProd},
	}
}

// DemoProxyConfig is the demo proxy's configuration: passports from the
// authority at authorityURL, the fleet's control API at fleetURL upstream.
func DemoProxyConfig(authorityURL, fleetURL string) proxy.Config {
	c := proxy.Default()
	c.Issuer = authorityURL
	c.JWKSURL = authorityURL + "/.well-known/jwks.json"
	c.AuthorityURL = authorityURL
	c.Upstreams = map[string]proxy.Upstream{"fleet": {URL: fleetURL, Timeout: 10 * time.Second}}
	c.Routes = DemoRoutes()
	return c
}
