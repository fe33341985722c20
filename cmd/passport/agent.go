package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/passport"
	"github.com/spf13/cobra"
)

func (a *app) agentCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Register and manage agents through the authority's admin API",
		Long: `Register, list, show, block, unblock and delete agents. The commands talk to the
authority's admin API (--authority, default http://127.0.0.1:8081) with the admin
token from PASSPORT_ADMIN_TOKEN or --admin-token-file. With --data DIR (or
PASSPORT_DATA) of a running passport up, both come from DIR/demo.json.`,
	}
	cmd.AddCommand(a.agentRegisterCmd(), a.agentListCmd(), a.agentShowCmd(),
		a.agentBlockCmd(), a.agentUnblockCmd(), a.agentDeleteCmd())
	return cmd
}

func (a *app) agentRegisterCmd() *cobra.Command {
	var (
		af      authorityAdminFlags
		spec    client.AgentSpec
		trust   string
		keyFile string
	)
	cmd := &cobra.Command{
		Use:   "register",
		Short: "Register an agent; prints its client id and its client secret (shown once)",
		Example: `  passport agent register --tenant acme --name healer-1 --type healer --trust HIGH
  passport agent register --tenant acme --name deployer-1 --type deployer --trust MEDIUM \
      --capability service.list --capability deployment.deploy --public-key deployer.pub.pem --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := passport.ParseTrustLevel(trust)
			if err != nil {
				return err
			}
			spec.TrustLevel = t
			if keyFile != "" {
				b, err := os.ReadFile(keyFile)
				if err != nil {
					return fmt.Errorf("public key: %w", err)
				}
				spec.PublicKey = string(b)
			}
			adm, err := af.admin(a)
			if err != nil {
				return err
			}
			reg, err := adm.RegisterAgent(cmd.Context(), af.tenant, spec)
			if err != nil {
				return err
			}
			if af.json {
				return printAuthorityJSON(a.stdout, reg)
			}
			printAgentInfo(a.stdout, reg.Agent)
			fmt.Fprintf(a.stdout, "client_secret: %s\n", reg.ClientSecret)
			fmt.Fprintln(a.stderr, "The client secret is shown only this once; store it now.")
			return nil
		},
	}
	af.register(cmd, true)
	cmd.Flags().StringVar(&spec.Name, "name", "", "agent name (required)")
	cmd.Flags().StringVar(&spec.Type, "type", "", "agent type: healer, deployer, scaler, observer, chaos or a configured type (required)")
	cmd.Flags().StringVar(&trust, "trust", "", "trust level ceiling: HIGH, MEDIUM or LOW (required)")
	cmd.Flags().StringArrayVar(&spec.Capabilities, "capability", nil, "capability (action) the agent may be granted; repeat; default: the type's")
	cmd.Flags().StringVar(&keyFile, "public-key", "", "PEM or JWK file with the agent's public key, for private_key_jwt")
	cmd.Flags().StringVar(&spec.Owner, "owner", "", "who is accountable for the agent (team, on-call rotation); its passports carry it as oversight.owner")
	_ = cmd.MarkFlagRequired("name")
	_ = cmd.MarkFlagRequired("type")
	_ = cmd.MarkFlagRequired("trust")
	return cmd
}

func (a *app) agentListCmd() *cobra.Command {
	var af authorityAdminFlags
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List a tenant's agents with reputation and block state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			adm, err := af.admin(a)
			if err != nil {
				return err
			}
			agents, err := adm.ListAgents(cmd.Context(), af.tenant)
			if err != nil {
				return err
			}
			if af.json {
				return printAuthorityJSON(a.stdout, agents)
			}
			tw := tabwriter.NewWriter(a.stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tTYPE\tTRUST\tEFFECTIVE\tREPUTATION\tBLOCKED")
			for _, ag := range agents {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.1f\t%v\n", ag.ID, ag.Name, ag.Type, ag.TrustLevel, ag.EffectiveTrustLevel, ag.Reputation, ag.Blocked)
			}
			return tw.Flush()
		},
	}
	af.register(cmd, true)
	return cmd
}

func (a *app) agentShowCmd() *cobra.Command {
	return a.agentOneCmd("show AGENT_ID", "Show one agent", nil,
		func(ctx context.Context, adm *client.Admin, tenant, id string) (client.Agent, error) {
			return adm.GetAgent(ctx, tenant, id)
		})
}

func (a *app) agentBlockCmd() *cobra.Command {
	var reason string
	return a.agentOneCmd("block AGENT_ID", "Block an agent: revoke its passports and refuse new ones",
		func(cmd *cobra.Command) {
			cmd.Flags().StringVar(&reason, "reason", "", "why (kept in the audit record and shown to the agent)")
		},
		func(ctx context.Context, adm *client.Admin, tenant, id string) (client.Agent, error) {
			return adm.Block(ctx, tenant, id, reason)
		})
}

func (a *app) agentUnblockCmd() *cobra.Command {
	return a.agentOneCmd("unblock AGENT_ID", "Unblock an agent and reset its reputation to its baseline", nil,
		func(ctx context.Context, adm *client.Admin, tenant, id string) (client.Agent, error) {
			return adm.Unblock(ctx, tenant, id)
		})
}

// agentOneCmd is a command that acts on one agent through the admin API and
// prints the agent it answers (as JSON with --json).
func (a *app) agentOneCmd(use, short string, flags func(*cobra.Command),
	do func(ctx context.Context, adm *client.Admin, tenant, id string) (client.Agent, error)) *cobra.Command {
	var af authorityAdminFlags
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			adm, err := af.admin(a)
			if err != nil {
				return err
			}
			ag, err := do(cmd.Context(), adm, af.tenant, args[0])
			if err != nil {
				return err
			}
			if af.json {
				return printAuthorityJSON(a.stdout, ag)
			}
			printAgentInfo(a.stdout, ag)
			return nil
		},
	}
	af.register(cmd, true)
	if flags != nil {
		flags(cmd)
	}
	return cmd
}

func (a *app) agentDeleteCmd() *cobra.Command {
	var af authorityAdminFlags
	cmd := &cobra.Command{
		Use:   "delete AGENT_ID",
		Short: "Delete an agent and revoke its passports",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			adm, err := af.admin(a)
			if err != nil {
				return err
			}
			if err := adm.DeleteAgent(cmd.Context(), af.tenant, args[0]); err != nil {
				return err
			}
			if af.json {
				return printAuthorityJSON(a.stdout, map[string]any{"deleted": args[0]})
			}
			fmt.Fprintf(a.stdout, "deleted %s\n", args[0])
			return nil
		},
	}
	af.register(cmd, true)
	return cmd
}

func printAgentInfo(w io.Writer, ag client.Agent) {
	fmt.Fprintf(w, "id:           %s\n", ag.ID)
	fmt.Fprintf(w, "client_id:    %s\n", ag.ClientID)
	fmt.Fprintf(w, "tenant:       %s\n", ag.Tenant)
	fmt.Fprintf(w, "name:         %s\n", ag.Name)
	fmt.Fprintf(w, "type:         %s\n", ag.Type)
	if ag.Owner != "" {
		fmt.Fprintf(w, "owner:        %s\n", ag.Owner)
	}
	fmt.Fprintf(w, "trust_level:  %s (effective %s)\n", ag.TrustLevel, ag.EffectiveTrustLevel)
	fmt.Fprintf(w, "capabilities: %s\n", strings.Join(ag.Capabilities, " "))
	fmt.Fprintf(w, "reputation:   %.1f (baseline %.1f)\n", ag.Reputation, ag.ReputationBaseline)
	if ag.Blocked {
		fmt.Fprintf(w, "blocked:      true (%s)\n", ag.BlockedReason)
	} else {
		fmt.Fprintf(w, "blocked:      false\n")
	}
}

func printAuthorityJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
