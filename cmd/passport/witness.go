package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/audit/witness"
	"github.com/agentpassport/passport/internal/config"
)

func (a *app) witnessCmd() *cobra.Command {
	var cfgPath, listen, dir, trusted string
	var tf tlsFlags
	cmd := &cobra.Command{
		Use:   "witness",
		Short: "Run an audit witness: keep writers' signed checkpoints outside Redis",
		Long: `Run an HTTP witness for the audit trail. Audit writers whose PASSPORT_WITNESS (or
the stack's witness setting) names this server's URL post a signed statement after each
checkpoint round (at most a second apart while records flow), a heartbeat while idle and a
closing statement at a clean stop. The witness keeps them in --dir, one hash-chained,
fsynced file series per writer, and "passport audit verify --witness URL" compares Redis
with them.

It pins each writer's key on its first statement (or takes the keys from
--trusted-keys FILE and then refuses every other writer), and refuses a replayed, rolled
back or forked statement (409). PASSPORT_WITNESS_TOKEN, when set, is required as a bearer
token on every request, from writers and verifiers alike.

API: POST /v1/statements, GET /v1/writers, GET /v1/writers/{writer}/log; /metrics, /healthz.
TLS: tls.cert_file and tls.key_file (--tls-cert, --tls-key, PASSPORT_TLS_CERT_FILE,
PASSPORT_TLS_KEY_FILE); writers and verifiers then use an https:// URL and trust its CA
with PASSPORT_CA_FILE. See docs/audit.md and docs/tls.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := a.logger()
			if err != nil {
				return err
			}
			cfg := witness.Default()
			if err := config.Load(cfgPath, &cfg); err != nil {
				return err
			}
			if listen != "" {
				cfg.Listen = listen
			}
			if dir != "" {
				cfg.Dir = dir
			}
			if trusted != "" {
				cfg.TrustedKeysFile = trusted
			}
			config.Env(a.getenv).String("PASSPORT_WITNESS_TOKEN", &cfg.Token)
			tf.apply(a, &cfg.TLS)
			reg := prometheus.NewRegistry()
			reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
			srv, err := witness.New(cfg, witness.Deps{Logger: log, Registry: reg})
			if err != nil {
				return err
			}
			return srv.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfgPath, "config", "", "YAML file (listen, dir, trusted_keys_file, rotate_bytes, max_writers)")
	f.StringVar(&listen, "listen", "", "address of the API, /metrics and /healthz (default "+witness.DefaultListen+")")
	f.StringVar(&dir, "dir", "", "directory of the writers' logs (required here or in --config)")
	f.StringVar(&trusted, "trusted-keys", "", "accept only these writers and keys (lines \"<writer-id> <base64 key>\")")
	tf.register(f)
	return cmd
}

// writerWitnesses are the witnesses of this process's audit writers:
// --witness, else the witness of the stack in --data DIR, else
// PASSPORT_WITNESS (each a directory or an http(s):// URL, comma-separated
// for several), with PASSPORT_WITNESS_TOKEN for HTTP witnesses.
func (a *app) writerWitnesses(flags []string, demo string) ([]audit.Witness, error) {
	specs := flags
	if len(specs) == 0 {
		if s := strings.TrimSpace(firstNonEmpty(demo, a.getenv("PASSPORT_WITNESS"))); s != "" {
			specs = []string{s}
		}
	}
	return a.openWitnesses(specs)
}

// openWitnesses is audit.OpenWitnesses with PASSPORT_WITNESS_TOKEN, whose
// https:// witnesses are verified with caFile (--ca-file,
// PASSPORT_CA_FILE) when one is set.
func (a *app) openWitnesses(specs []string) ([]audit.Witness, error) {
	token := a.getenv("PASSPORT_WITNESS_TOKEN")
	if a.caFile() == "" {
		ws, err := audit.OpenWitnesses(specs, token)
		if err != nil {
			return nil, fmt.Errorf("witness: %w", err)
		}
		return ws, nil
	}
	hc, err := a.httpClient(10 * time.Second)
	if err != nil {
		return nil, fmt.Errorf("witness: %w", err)
	}
	var out []audit.Witness
	for _, s := range specs {
		for _, one := range strings.Split(s, ",") {
			one = strings.TrimSpace(one)
			var w audit.Witness
			switch {
			case one == "":
				continue
			case strings.HasPrefix(one, "https://"):
				w, err = audit.NewHTTPWitness(one, token, hc)
			default:
				w, err = audit.OpenWitness(one, token)
			}
			if err != nil {
				return nil, fmt.Errorf("witness: %w", err)
			}
			out = append(out, w)
		}
	}
	return out, nil
}
