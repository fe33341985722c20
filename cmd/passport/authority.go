package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/agentpassport/passport/authority"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/assemble"
	"github.com/agentpassport/passport/internal/config"
	"github.com/agentpassport/passport/internal/redisx"
	"github.com/agentpassport/passport/internal/stack"
	"github.com/agentpassport/passport/passport"
	"github.com/spf13/cobra"
)

// authorityDefaultURL is where the CLI finds the authority unless told.
const authorityDefaultURL = "http://127.0.0.1:8081"

// loadAuthorityConfig builds the authority config: defaults, then the YAML
// file, then the environment, then flags (applied by the caller).
func (a *app) loadAuthorityConfig(path string) (authority.Config, error) {
	cfg := authority.DefaultConfig()
	if err := config.Load(path, &cfg); err != nil {
		return cfg, err
	}
	cfg.ApplyEnv(a.getenv)
	return cfg, nil
}

func (a *app) authorityCmd() *cobra.Command {
	var cfgPath, listen, redisURL, issuer string
	var witness []string
	var tf tlsFlags
	cmd := &cobra.Command{
		Use:   "authority",
		Short: "Run the passport authority (token endpoint, JWKS, admin API)",
		Long: `Run the passport authority: it registers agents, exchanges their credentials for
short-lived signed passports (POST /oauth2/token), publishes its keys
(GET /.well-known/jwks.json), and serves the admin API under /v1/.

Configuration: flags, then environment (PASSPORT_REDIS_URL, PASSPORT_ADMIN_TOKEN,
PASSPORT_KEY_ENCRYPTION_KEY, PASSPORT_AUTHORITY_ISSUER, PASSPORT_TLS_CERT_FILE,
PASSPORT_TLS_KEY_FILE), then --config YAML, then defaults. See examples/authority.yaml
for every field and its default, and docs/tls.md for TLS.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := a.logger()
			if err != nil {
				return err
			}
			cfg, err := a.loadAuthorityConfig(cfgPath)
			if err != nil {
				return err
			}
			if listen != "" {
				cfg.Listen = listen
			}
			if redisURL != "" {
				cfg.Redis.URL = redisURL
			}
			if issuer != "" {
				cfg.Issuer = issuer
			}
			tf.apply(a, &cfg.TLS)
			a.redisEnv(&cfg.Redis)
			witnesses, err := a.writerWitnesses(witness, "")
			if err != nil {
				return err
			}
			svc, _, err := assemble.Authority(cmd.Context(), cfg, assemble.Env{Logger: log, Witnesses: witnesses,
				WitnessToken: a.getenv("PASSPORT_WITNESS_TOKEN")}, nil)
			if err != nil {
				return err
			}
			return svc.Run(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", "", "YAML config file (see examples/authority.yaml)")
	cmd.Flags().StringVar(&listen, "listen", "", "listen address HOST:PORT (default "+authority.DefaultListen+")")
	cmd.Flags().StringVar(&redisURL, "redis-url", "", "Redis URL (default $PASSPORT_REDIS_URL or "+redisx.DefaultURL+")")
	cmd.Flags().StringVar(&issuer, "issuer", "", "issuer URL written in every passport (default "+authority.DefaultIssuer+", https with TLS)")
	cmd.Flags().StringArrayVar(&witness, "witness", nil, "audit witness: a directory or an http(s):// URL of passport witness (repeatable; default PASSPORT_WITNESS)")
	tf.register(cmd.Flags())
	cmd.AddCommand(a.rotateKeysCmd())
	return cmd
}

func (a *app) rotateKeysCmd() *cobra.Command {
	var af authorityAdminFlags
	cmd := &cobra.Command{
		Use:   "rotate-keys",
		Short: "Rotate the authority's signing keys now (global admin token)",
		Long: `Rotate the signing keys of a running authority: the published next key becomes
current, the current key is retired (it stays in the JWKS until every passport it
signed has expired), and a new next key is published.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			adm, err := af.admin(a)
			if err != nil {
				return err
			}
			res, err := adm.RotateKeys(cmd.Context())
			if err != nil {
				return err
			}
			if af.json {
				return printAuthorityJSON(a.stdout, res)
			}
			fmt.Fprintf(a.stdout, "rotated: current kid %s, next kid %s\n", res.CurrentKID, res.NextKID)
			return nil
		},
	}
	af.register(cmd, false)
	return cmd
}

// authorityAdminFlags are the flags of every command that calls the admin API.
type authorityAdminFlags struct {
	authorityURL string
	tokenFile    string
	tenant       string
	data         string
	json         bool
	demo         *stack.Demo // read from --data, once
}

func (f *authorityAdminFlags) register(cmd *cobra.Command, tenant bool) {
	cmd.Flags().StringVar(&f.authorityURL, "authority", "", "authority URL (default: demo.json with --data, $PASSPORT_AUTHORITY_URL, "+authorityDefaultURL+")")
	cmd.Flags().StringVar(&f.tokenFile, "admin-token-file", "", "file holding the admin token (default: demo.json's with --data, $PASSPORT_ADMIN_TOKEN)")
	cmd.Flags().StringVar(&f.data, "data", "", "directory of a running 'passport up' (reads the authority URL and admin token from DIR/demo.json; default $PASSPORT_DATA)")
	cmd.Flags().BoolVar(&f.json, "json", false, "print JSON")
	if tenant {
		cmd.Flags().StringVar(&f.tenant, "tenant", "", "tenant (required)")
		_ = cmd.MarkFlagRequired("tenant")
	}
}

// loadDemo reads DIR/demo.json when --data is set.
func (f *authorityAdminFlags) loadDemo() (*stack.Demo, error) {
	if f.data == "" || f.demo != nil {
		return f.demo, nil
	}
	d, err := stack.ReadDemo(f.data)
	if err != nil {
		return nil, fmt.Errorf("--data %s: %w", f.data, err)
	}
	f.demo = &d
	return f.demo, nil
}

func (f *authorityAdminFlags) url(a *app) string {
	var fromDemo string
	if d, err := f.loadDemo(); err == nil && d != nil {
		fromDemo = d.URLs.Authority
	}
	return firstNonEmpty(f.authorityURL, fromDemo, a.getenv("PASSPORT_AUTHORITY_URL"), authorityDefaultURL)
}

// admin builds the admin client. The token comes from a file, demo.json
// (--data) or the environment, never from a flag value, so it does not
// show in `ps`.
func (f *authorityAdminFlags) admin(a *app) (*client.Admin, error) {
	d, err := f.loadDemo()
	if err != nil {
		return nil, err
	}
	tok := a.getenv("PASSPORT_ADMIN_TOKEN")
	if d != nil && d.AdminToken != "" {
		tok = d.AdminToken
	}
	if f.tokenFile != "" {
		b, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("admin token: %w", err)
		}
		tok = strings.TrimSpace(string(b))
	}
	if tok == "" {
		return nil, fmt.Errorf("no admin token: pass --data DIR of a running passport up, set PASSPORT_ADMIN_TOKEN or pass --admin-token-file")
	}
	opts, err := a.clientOptions()
	if err != nil {
		return nil, err
	}
	return client.NewAdmin(f.url(a), passport.Secret(tok), opts)
}
