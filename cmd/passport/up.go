package main

import (
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/agentpassport/passport/internal/config"
	"github.com/agentpassport/passport/internal/redisx"
	"github.com/agentpassport/passport/internal/stack"
)

func (a *app) upCmd() *cobra.Command {
	var (
		cfgPath, data, listen string
		cfg                   stack.Config
		noChaos               bool
		witness               string
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run the whole demo stack in one process: Redis, authority, proxy, fleet, healers, chaos, rogue agents, dashboard",
		Long: `Run the whole Agent Passport demo on loopback, in one process.

It starts a private redis-server with AOF under --data, requiring a generated password
(unless PASSPORT_REDIS_URL is set), the authority (:8081) with its signing keys encrypted
at rest by a generated key (--data/key-encryption-key, or PASSPORT_KEY_ENCRYPTION_KEY), the demo fleet's control API (:9000), the proxy in front of
it (:8080, admin :9080), and for each demo tenant (acme, globex) a healer, a chaos
simulator firing random faults and a rogue agent; then the dashboard (:8090).
It registers the demo agents and writes DIR/demo.json with the URLs, the Redis URL,
the admin token and every agent's credentials, for scripts and for
` + "`passport chaos fire --data DIR`" + `, ` + "`passport incidents --data DIR`" + ` and the rest.
Ctrl-C stops everything cleanly.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := a.logger()
			if err != nil {
				return err
			}
			if err := config.Load(cfgPath, &cfg); err != nil {
				return err
			}
			if cmd.Flags().Changed("data") || cfg.DataDir == "" {
				cfg.DataDir = data
			}
			if listen != "" {
				host, port, err := net.SplitHostPort(listen)
				if err != nil {
					return fmt.Errorf("--listen %q: want HOST:PORT", listen)
				}
				n, err := strconv.Atoi(port)
				if err != nil || n < 0 || n > 65535 {
					return fmt.Errorf("--listen %q: bad port", listen)
				}
				cfg.Host, cfg.DashboardPort = host, n
				if n == 0 {
					cfg.DashboardPort = -1
				}
			}
			config.Env(a.getenv).String("PASSPORT_REDIS_URL", &cfg.RedisURL)
			config.Env(a.getenv).String("PASSPORT_ADMIN_TOKEN", &cfg.AdminToken)
			config.Env(a.getenv).String("PASSPORT_KEY_ENCRYPTION_KEY", &cfg.KeyEncryptionKey)
			config.Env(a.getenv).String("PASSPORT_WITNESS", &cfg.Witness)
			if witness != "" {
				cfg.Witness = witness
			}
			config.Env(a.getenv).String("PASSPORT_WITNESS_TOKEN", &cfg.WitnessToken)
			if noChaos {
				cfg.ChaosInterval = -1
			}
			return stack.Run(cmd.Context(), cfg, log, func(d stack.Demo) { printTour(a.stdout, cfg.DataDir, d) })
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfgPath, "config", "", "YAML file of stack settings (tenants, ports, chaos_interval, policy_dir, ...)")
	f.StringVar(&data, "data", ".passport", "directory for Redis's data and demo.json")
	f.StringVar(&listen, "listen", "", "dashboard address HOST:PORT (default 127.0.0.1:8090; HOST is used by every service)")
	f.DurationVar(&cfg.ChaosInterval, "chaos-interval", 0, "how often random chaos strikes each tenant (default 20s)")
	f.BoolVar(&noChaos, "no-chaos", false, "no random chaos (fire faults from the dashboard or `passport chaos fire`)")
	f.Uint64Var(&cfg.ChaosSeed, "seed", 0, "seed for random chaos (0: from the clock)")
	f.BoolVar(&cfg.NoRogue, "no-rogue", false, "leave out the rogue agents")
	f.StringVar(&cfg.PolicyDir, "policy-dir", "", "enforce Rego from this directory (hot-reloaded) instead of the embedded library")
	f.StringVar(&witness, "witness", "", "audit witnesses: directories or http(s):// URLs, comma-separated; \"none\" for none (default $PASSPORT_WITNESS, else DIR/witness)")
	return cmd
}

func printTour(w io.Writer, dir string, d stack.Demo) {
	var b strings.Builder
	fmt.Fprintf(&b, "\nAgent Passport is up.\n\n")
	fmt.Fprintf(&b, "  dashboard   %s\n", d.DashboardLogin)
	fmt.Fprintf(&b, "              (the link signs you in; the token is in the URL fragment, never sent to a server)\n")
	fmt.Fprintf(&b, "  proxy       %s      (agents call the fleet here; admin and /metrics on %s)\n", d.URLs.Proxy, d.URLs.ProxyAdmin)
	fmt.Fprintf(&b, "  mcp         %s/mcp  (the demo MCP server's tools, through the proxy: docs/mcp.md)\n", d.URLs.Proxy)
	fmt.Fprintf(&b, "  authority   %s      (/.well-known/jwks.json, /oauth2/token, /v1/tenants/...)\n", d.URLs.Authority)
	fmt.Fprintf(&b, "  fleet       %s      (the control API the proxy protects; agents never call it directly)\n", d.URLs.Fleet)
	fmt.Fprintf(&b, "  redis       %s      (password-protected; the full URL is in demo.json)\n", redisx.Redact(d.RedisURL))
	fmt.Fprintf(&b, "  credentials %s (Redis URL, admin token and every demo agent's client secret; mode 0600)\n", stack.DemoFile(dir))
	fmt.Fprintf(&b, "  keys        signing keys encrypted at rest (key in %s unless PASSPORT_KEY_ENCRYPTION_KEY is set)\n\n", filepath.Join(dir, stack.KeyEncryptionKeyFile))
	fmt.Fprintf(&b, "A short tour (in another terminal):\n")
	fmt.Fprintf(&b, "  passport chaos fire service_down --target checkout --data %s   # break a service; watch the healer fix it\n", dir)
	fmt.Fprintf(&b, "  passport incidents --data %s                                   # DETECTED -> DISPATCHED -> RESOLVED\n", dir)
	fmt.Fprintf(&b, "  passport audit tail --data %s --tenant acme                    # every decision, recorded before forwarding\n", dir)
	fmt.Fprintf(&b, "  passport audit verify --data %s                                # prove nothing was removed, changed or reordered\n", dir)
	fmt.Fprintf(&b, "  curl -i %s/services                                    # no passport: 401\n", d.URLs.Proxy)
	fmt.Fprintf(&b, "The rogue agents keep trying restarts they may not do: watch them get denied, lose reputation and be blocked.\n")
	fmt.Fprintf(&b, "Ctrl-C stops everything.\n\n")
	_, _ = io.WriteString(w, b.String())
}
