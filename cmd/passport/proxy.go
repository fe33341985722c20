package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/agentpassport/passport/internal/assemble"
	"github.com/agentpassport/passport/internal/config"
	"github.com/agentpassport/passport/passport"
	"github.com/agentpassport/passport/proxy"
)

// defaultFleetURL is the demo fleet's control API, what a bare `passport
// proxy` fronts when no --config names an upstream.
const defaultFleetURL = "http://127.0.0.1:9000"

// loadProxyConfigFor builds the proxy config: defaults (the demo fleet's
// routes when no file is given), then the YAML file, then the environment.
// Flags are applied by the caller.
func (a *app) loadProxyConfigFor(path string) (proxy.Config, error) {
	cfg := proxy.FleetConfig(defaultFleetURL)
	if path != "" {
		// A file says everything about its upstreams and routes.
		cfg.Upstreams, cfg.Routes = nil, nil
		if err := config.Load(path, &cfg); err != nil {
			return cfg, err
		}
	}
	env := config.Env(a.getenv)
	env.String("PASSPORT_REDIS_URL", &cfg.Redis.URL)
	env.String("PASSPORT_AUDIT_SPOOL_DIR", &cfg.Audit.SpoolDir)
	// Denial reports need only a reporter token; the global admin token
	// is the fallback.
	var tok string
	env.String("PASSPORT_ADMIN_TOKEN", &tok)
	env.String("PASSPORT_REPORTER_TOKEN", &tok)
	if tok != "" {
		cfg.ReportToken = passport.Secret(tok)
	}
	return cfg, nil
}

func (a *app) proxyCmd() *cobra.Command {
	var cfgPath, listen, adminListen, policyDir, shadowDir, issuer, upstream string
	var witness []string
	var tf tlsFlags
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Run the enforcing sidecar proxy in front of a control API",
		Long: `Run the enforcing sidecar proxy. Every call must carry a passport; the proxy verifies
it against the authority's JWKS, evaluates the Rego policy, writes the decision to
the tenant's audit stream in Redis (and waits for the acknowledgement), and only
then forwards the call to the upstream.

Agents: --listen (default 127.0.0.1:8080). Operators: --admin-listen (default
127.0.0.1:9080) serves /metrics, /healthz and /readyz.

Configuration: flags, then environment (PASSPORT_REDIS_URL; PASSPORT_REPORTER_TOKEN, or else
PASSPORT_ADMIN_TOKEN, for reporting policy denials to the authority; PASSPORT_TLS_CERT_FILE
and PASSPORT_TLS_KEY_FILE to serve TLS; PASSPORT_CA_FILE to verify an https authority),
then --config YAML, then defaults. Without --config the proxy fronts the demo
fleet at http://127.0.0.1:9000 with its routes. See examples/proxy.yaml for every
field and its default. The policy is the library built into the binary unless
policy.dir (or --policy-dir) names a directory, which is then hot-reloaded.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := a.logger()
			if err != nil {
				return err
			}
			cfg, err := a.loadProxyConfigFor(cfgPath)
			if err != nil {
				return err
			}
			for _, f := range []struct {
				v   string
				dst *string
			}{{listen, &cfg.Listen}, {adminListen, &cfg.AdminListen}, {policyDir, &cfg.Policy.Dir},
				{shadowDir, &cfg.Policy.ShadowDir}, {issuer, &cfg.Issuer}} {
				if f.v != "" {
					*f.dst = f.v
				}
			}
			if upstream != "" {
				if len(cfg.Upstreams) != 1 {
					return errors.New("--upstream needs a config with exactly one upstream")
				}
				for name, u := range cfg.Upstreams {
					u.URL = upstream
					cfg.Upstreams[name] = u
				}
			}
			tf.apply(a, &cfg.TLS)
			a.redisEnv(&cfg.Redis)
			if err := cfg.Validate(); err != nil {
				return fmt.Errorf("proxy config: %w", err)
			}
			if cfg.AuthorityTLS.CAFile == "" && (strings.HasPrefix(cfg.JWKSURL, "https://") || strings.HasPrefix(cfg.AuthorityURL, "https://")) {
				cfg.AuthorityTLS.CAFile = a.caFile()
			}
			witnesses, err := a.writerWitnesses(witness, "")
			if err != nil {
				return err
			}
			svc, _, err := assemble.Proxy(cmd.Context(), cfg, assemble.Env{Logger: log, Witnesses: witnesses,
				WitnessToken: a.getenv("PASSPORT_WITNESS_TOKEN")}, assemble.ProxyOptions{})
			if err != nil {
				return err
			}
			return svc.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfgPath, "config", "", "YAML config file (see examples/proxy.yaml)")
	f.StringVar(&listen, "listen", "", "agent-facing address (default "+proxy.DefaultListen+")")
	f.StringVar(&adminListen, "admin-listen", "", "admin address for /metrics /healthz /readyz (default "+proxy.DefaultAdminListen+")")
	f.StringVar(&policyDir, "policy-dir", "", "enforced policy directory, hot-reloaded (default: the built-in library)")
	f.StringVar(&shadowDir, "shadow-policy-dir", "", "candidate policy evaluated beside the enforced one (shadow mode)")
	f.StringVar(&issuer, "issuer", "", "trusted passport issuer (default "+proxy.DefaultIssuer+")")
	f.StringVar(&upstream, "upstream", "", "URL of the single upstream (overrides the config's)")
	f.StringArrayVar(&witness, "witness", nil, "audit witness: a directory or an http(s):// URL of passport witness (repeatable; default PASSPORT_WITNESS)")
	tf.register(f)
	return cmd
}
