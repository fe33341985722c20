package main

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
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
		noChaos, logStderr    bool
		noTLS                 bool
		witness               string
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run the whole demo stack in one process: Redis, authority, proxy, fleet, healers, chaos, rogue agents, dashboard",
		Long: `Run the whole Agent Passport demo on loopback, in one process.

It starts a private redis-server with AOF under --data, requiring a generated password
(unless PASSPORT_REDIS_URL, or --redis-addrs for a Cluster or Sentinel set, is given), the authority (:8081) with its signing keys encrypted
at rest by a generated key (--data/key-encryption-key, or PASSPORT_KEY_ENCRYPTION_KEY), the demo fleet's control API (:9000), the proxy in front of
it (:8080, admin :9080), and for each demo tenant (acme, globex) a healer, a chaos
simulator firing random faults and a rogue agent; then the dashboard (:8090).
It registers the demo agents and writes DIR/demo.json with the URLs, the Redis URL,
the admin token and every agent's credentials, for scripts and for
` + "`passport chaos fire --data DIR`" + `, ` + "`passport incidents --data DIR`" + ` and the rest.

Every service serves TLS with a certificate of the demo's own CA, made on first start
in DIR/tls (ca.crt, kept across restarts; keys mode 0600). demo.json names it (ca_file),
so commands given --data DIR trust it; curl takes --cacert DIR/tls/ca.crt, and a browser
shows no warning once told to trust it. --no-tls (or tls: false) serves plain HTTP.
Ctrl-C stops everything cleanly.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.TLS = true // the YAML's tls: false, then --no-tls, turn it off
			if err := config.Load(cfgPath, &cfg); err != nil {
				return err
			}
			if noTLS {
				cfg.TLS = false
			}
			if cmd.Flags().Changed("data") || cfg.DataDir == "" {
				cfg.DataDir = data
			}
			// The terminal keeps the banner and the events worth seeing;
			// every log line goes to DIR/passport.log.
			log, logPath := (*slog.Logger)(nil), ""
			if logStderr {
				l, err := a.logger()
				if err != nil {
					return err
				}
				log = l
			} else {
				l, path, closeLog, err := a.fileLogger(cfg.DataDir)
				if err != nil {
					return err
				}
				defer closeLog()
				log, logPath = l, path
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
			// --redis-addrs / PASSPORT_REDIS_ADDRS and --redis-master /
			// PASSPORT_REDIS_MASTER, over the file's redis_addrs and
			// redis_master, as for every other command.
			rc := redisx.Config{Addrs: cfg.RedisAddrs, MasterName: cfg.RedisMaster}
			a.redisSeeds(&rc)
			cfg.RedisAddrs, cfg.RedisMaster = rc.Addrs, rc.MasterName
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
			return stack.Run(cmd.Context(), cfg, log, func(d stack.Demo) { printTour(a.stdout, cfg.DataDir, logPath, d) })
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
	f.BoolVar(&noTLS, "no-tls", false, "serve plain HTTP instead of TLS with the demo's own CA (DIR/tls)")
	f.StringVar(&cfg.PolicyDir, "policy-dir", "", "enforce Rego from this directory (hot-reloaded) instead of the embedded library")
	f.BoolVar(&logStderr, "log-stderr", false, "write every log line to the terminal (stderr) instead of DIR/"+LogFile)
	f.IntVar(&cfg.RestartBudget, "restart-budget", 0, "declare the budget restarts-per-service: at most N restarts of a service in 10 minutes, then a person must approve (0: none)")
	f.StringVar(&witness, "witness", "", "audit witnesses: directories or http(s):// URLs, comma-separated; \"none\" for none (default $PASSPORT_WITNESS, else DIR/witness)")
	return cmd
}

func printTour(w io.Writer, dir, logPath string, d stack.Demo) {
	var b strings.Builder
	fmt.Fprintf(&b, "\nAgent Passport is up.\n\n")
	fmt.Fprintf(&b, "  dashboard   %s\n", d.DashboardLogin)
	fmt.Fprintf(&b, "              (the link signs you in; the token is in the URL fragment, never sent to a server)\n")
	fmt.Fprintf(&b, "  proxy       %s      (agents call the fleet here; admin and /metrics on %s)\n", d.URLs.Proxy, d.URLs.ProxyAdmin)
	fmt.Fprintf(&b, "  mcp         %s/mcp  (the demo MCP server's tools, through the proxy: docs/mcp.md)\n", d.URLs.Proxy)
	fmt.Fprintf(&b, "  authority   %s      (/.well-known/jwks.json, /oauth2/token, /v1/tenants/...)\n", d.URLs.Authority)
	fmt.Fprintf(&b, "  fleet       %s      (the control API the proxy protects; agents never call it directly)\n", d.URLs.Fleet)
	if len(d.RedisAddrs) > 0 {
		fmt.Fprintf(&b, "  redis       %s      (seeds; demo.json has them)\n", strings.Join(d.RedisAddrs, ","))
	} else {
		fmt.Fprintf(&b, "  redis       %s      (password-protected; the full URL is in demo.json)\n", redisx.Redact(d.RedisURL))
	}
	fmt.Fprintf(&b, "  credentials %s (Redis URL, admin token and every demo agent's client secret; mode 0600)\n", stack.DemoFile(dir))
	if logPath != "" {
		fmt.Fprintf(&b, "  logs        %s (this terminal shows one line per incident and per block)\n", logPath)
	}
	if d.CAFile != "" {
		fmt.Fprintf(&b, "  tls         every service over TLS, certificates from the demo's own CA %s\n", d.CAFile)
		fmt.Fprintf(&b, "              (browsers: import it as an authority, or for Chromium: certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n passport-demo -i %s)\n", shellQuote(d.CAFile))
	}
	fmt.Fprintf(&b, "  keys        signing keys encrypted at rest (key in %s unless PASSPORT_KEY_ENCRYPTION_KEY is set)\n", filepath.Join(dir, stack.KeyEncryptionKeyFile))
	for _, r := range d.Restored {
		fmt.Fprintf(&b, "  restored    %s\n", r)
	}
	fmt.Fprintf(&b, "\nIn another shell, this line points every passport command at this stack (no --data needed):\n")
	fmt.Fprintf(&b, "  %s\n\n", exportLine(dir, d))
	fmt.Fprintf(&b, "A short tour (in another terminal):\n")
	fmt.Fprintf(&b, "  passport chaos fire service_down --target checkout --data %s   # break a service; watch the healer fix it\n", dir)
	fmt.Fprintf(&b, "  passport incidents --data %s                                   # DETECTED -> DISPATCHED -> RESOLVED\n", dir)
	fmt.Fprintf(&b, "  passport audit tail --data %s --tenant acme                    # every decision, recorded before forwarding\n", dir)
	fmt.Fprintf(&b, "  passport audit verify --data %s                                # prove nothing was removed, changed or reordered\n", dir)
	curl := "curl -i"
	if d.CAFile != "" {
		curl += " --cacert " + shellQuote(d.CAFile)
	}
	fmt.Fprintf(&b, "  %s %s/services   # no passport: 401\n", curl, d.URLs.Proxy)
	fmt.Fprintf(&b, "  passport approval list --tenant acme --data %s                 # calls waiting for a person (deploys to payments need one)\n", dir)
	if slices.ContainsFunc(d.Agents, func(ag stack.DemoAgent) bool { return ag.Role == "rogue" }) {
		fmt.Fprintf(&b, "The rogue agents keep trying restarts they may not do: watch them get denied, lose reputation and be blocked.\n")
	}
	fmt.Fprintf(&b, "Ctrl-C stops everything.\n\n")
	_, _ = io.WriteString(w, b.String())
}

// exportLine sets up a shell for the stack: PASSPORT_DATA gives every
// command its --data (so URLs and tokens come from demo.json), the URLs
// serve scripts and curl, and PASSPORT_CA_FILE (with TLS) is the demo CA
// for curl --cacert and programs that take no --data.
func exportLine(dir string, d stack.Demo) string {
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	line := fmt.Sprintf("export PASSPORT_DATA=%s PASSPORT_AUTHORITY_URL=%s PASSPORT_PROXY_URL=%s",
		shellQuote(dir), shellQuote(d.URLs.Authority), shellQuote(d.URLs.Proxy))
	if d.CAFile != "" {
		line += " PASSPORT_CA_FILE=" + shellQuote(d.CAFile)
	}
	return line
}

// shellQuote quotes s for a POSIX shell when it holds anything but the
// characters of ordinary paths and URLs.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._-:+@,%=", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
