package main

import (
	"github.com/spf13/cobra"

	"github.com/agentpassport/passport/examples/fleet"
	"github.com/agentpassport/passport/internal/assemble"
	"github.com/agentpassport/passport/internal/config"
)

func (a *app) fleetCmd() *cobra.Command {
	var cfgPath, listen string
	var tf tlsFlags
	cmd := &cobra.Command{
		Use:   "fleet",
		Short: "Run the demo fleet: a control API and services with real faults",
		Long: `Run the demo fleet standalone: the control API at --listen (GET /services,
GET /services/{name}, POST /services/{name}/restart|scale, POST /deployments/{name},
POST /deployments/{name}/rollback, POST /caches/{name}/warm, POST|DELETE /faults/{name},
plus /metrics and /healthz) and each service on its own port with GET /healthz.
Put the proxy in front of it; the fleet itself has no authentication.
With tls.cert_file and tls.key_file (or --tls-cert/--tls-key, PASSPORT_TLS_CERT_FILE and
PASSPORT_TLS_KEY_FILE) the control API and every service serve TLS with that certificate.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := a.logger()
			if err != nil {
				return err
			}
			cfg := fleet.Default()
			cfg.Services = nil // the file's services replace the defaults
			if err := config.Load(cfgPath, &cfg); err != nil {
				return err
			}
			if cmd.Flags().Changed("listen") || cfg.Listen == "" {
				cfg.Listen = listen
			}
			tf.apply(a, &cfg.TLS)
			svc, _, err := assemble.Fleet(cfg, assemble.Env{Logger: log})
			if err != nil {
				return err
			}
			return svc.Run(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", "", "fleet YAML (fleet.Config; see examples/fleet.yaml)")
	cmd.Flags().StringVar(&listen, "listen", fleet.DefaultListen, "control API address")
	tf.register(cmd.Flags())
	return cmd
}
