package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/agentpassport/passport/approval"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/passport"
)

// approvalCmd is `passport approval list|show|approve|deny`: a person's
// side of approvals, on the authority's approvals API.
func (a *app) approvalCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "approval",
		Short: "List, show, approve and deny calls that wait for a person",
		Long: `When the policy asks for a person, the proxy refuses the call with approval_required
and an approval id; the call goes through once approved, exactly as it was made, once.
These commands talk to the authority's approvals API (docs/approvals.md).

Authority: --authority, else the authority of DIR/demo.json (--data DIR, from
passport up), else PASSPORT_AUTHORITY_URL, else ` + authorityDefaultURL + `.
Token: --token-file, else PASSPORT_APPROVER_TOKEN (an approver token: decisions
carry its approver's name), else the admin token of DIR/demo.json, else
PASSPORT_ADMIN_TOKEN (decisions made with an admin token are recorded as "admin").`,
	}
	cmd.AddCommand(a.approvalListCmd(), a.approvalShowCmd(), a.approvalDecideCmd(true), a.approvalDecideCmd(false))
	return cmd
}

// approvalFlags are the flags every approval command takes.
type approvalFlags struct {
	authority, tokenFile, data, tenant string
	json                               bool
}

func (f *approvalFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.tenant, "tenant", "", "tenant (required)")
	fl.StringVar(&f.authority, "authority", "", "authority URL (default: demo.json with --data, $PASSPORT_AUTHORITY_URL, "+authorityDefaultURL+")")
	fl.StringVar(&f.tokenFile, "token-file", "", "file holding an approver or admin token (default $PASSPORT_APPROVER_TOKEN, demo.json's admin token, $PASSPORT_ADMIN_TOKEN)")
	fl.StringVar(&f.data, "data", "", "directory of a running 'passport up' (reads DIR/demo.json)")
	fl.BoolVar(&f.json, "json", false, "print JSON")
	_ = cmd.MarkFlagRequired("tenant")
}

// client resolves the authority and the token. The token never comes
// from a flag value, so it does not show in ps.
func (f *approvalFlags) client(a *app) (*client.Admin, error) {
	var dAuth, dAdmin string
	if f.data != "" {
		demo, err := loadAgentDemoFile(f.data)
		if err != nil {
			return nil, err
		}
		dAuth, dAdmin = demo.URLs.Authority, demo.AdminToken
	}
	tok := firstNonEmpty(a.getenv("PASSPORT_APPROVER_TOKEN"), dAdmin, a.getenv("PASSPORT_ADMIN_TOKEN"))
	if f.tokenFile != "" {
		b, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("token: %w", err)
		}
		tok = strings.TrimSpace(string(b))
	}
	if tok == "" {
		return nil, fmt.Errorf("no token: set PASSPORT_APPROVER_TOKEN (or PASSPORT_ADMIN_TOKEN), pass --token-file, or --data DIR")
	}
	url := firstNonEmpty(f.authority, dAuth, a.getenv("PASSPORT_AUTHORITY_URL"), authorityDefaultURL)
	opts, err := a.clientOptions()
	if err != nil {
		return nil, err
	}
	return client.NewAdmin(url, passport.Secret(tok), opts)
}

func (a *app) approvalListCmd() *cobra.Command {
	var (
		f     approvalFlags
		state string
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List a tenant's approvals (default: pending ones)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := approval.ParseState(state)
			if err != nil {
				return fmt.Errorf("--state: %w (or \"all\")", err)
			}
			c, err := f.client(a)
			if err != nil {
				return err
			}
			list, err := c.ListApprovals(cmd.Context(), f.tenant, st)
			if err != nil {
				return err
			}
			if f.json {
				return printAuthorityJSON(a.stdout, list)
			}
			tw := tabwriter.NewWriter(a.stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTATE\tAGENT\tCALL\tACTION\tRESOURCE\tAPPROVERS\tEXPIRES")
			for _, ap := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\n", ap.ID, ap.State, agentLabel(ap), callLine(ap),
					ap.Action, ap.Resource, len(ap.Approvers), ap.RequiredApprovers, ap.ExpiresAt.Local().Format(time.DateTime))
			}
			return tw.Flush()
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&state, "state", string(approval.StatePending), "pending, granted, denied, used, expired, or \"\" for every state")
	return cmd
}

func (a *app) approvalShowCmd() *cobra.Command {
	var f approvalFlags
	cmd := &cobra.Command{
		Use:   "show APPROVAL_ID",
		Short: "Show one approval: the exact call, the body, the reasons and the decisions",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client(a)
			if err != nil {
				return err
			}
			ap, err := c.GetApproval(cmd.Context(), f.tenant, args[0])
			if err != nil {
				return err
			}
			if f.json {
				return printAuthorityJSON(a.stdout, ap)
			}
			printApproval(a.stdout, ap)
			return nil
		},
	}
	f.register(cmd)
	return cmd
}

func (a *app) approvalDecideCmd(approve bool) *cobra.Command {
	var (
		f       approvalFlags
		comment string
	)
	use, short := "deny APPROVAL_ID", "Deny the call an approval holds (one denial is enough)"
	if approve {
		use, short = "approve APPROVAL_ID", "Approve the call an approval holds (granted once enough distinct approvers approved)"
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client(a)
			if err != nil {
				return err
			}
			decide := c.Deny
			if approve {
				decide = c.Approve
			}
			ap, err := decide(cmd.Context(), f.tenant, args[0], approval.DecisionRequest{Comment: comment})
			if err != nil {
				return err
			}
			if f.json {
				return printAuthorityJSON(a.stdout, ap)
			}
			fmt.Fprintf(a.stdout, "%s: %s (%d of %d approvers) for %s %s by %s\n", ap.ID, ap.State,
				len(ap.Approvers), ap.RequiredApprovers, ap.Method, ap.Path, agentLabel(ap))
			return nil
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&comment, "comment", "", "why (kept with the decision in the audit trail)")
	return cmd
}

func agentLabel(ap approval.Approval) string {
	if ap.AgentName != "" {
		return ap.AgentName
	}
	return ap.AgentID
}

func callLine(ap approval.Approval) string {
	s := ap.Method + " " + ap.Path
	if ap.Query != "" {
		s += "?" + ap.Query
	}
	return s
}

func printApproval(w io.Writer, ap approval.Approval) {
	fmt.Fprintf(w, "id:          %s\n", ap.ID)
	fmt.Fprintf(w, "state:       %s\n", ap.State)
	fmt.Fprintf(w, "agent:       %s (%s, %s)\n", agentLabel(ap), ap.AgentID, ap.AgentType)
	fmt.Fprintf(w, "call:        %s\n", callLine(ap))
	fmt.Fprintf(w, "action:      %s on %s\n", ap.Action, ap.Resource)
	fmt.Fprintf(w, "reasons:     %s\n", strings.Join(ap.Reasons, ", "))
	if ap.Reason != "" {
		fmt.Fprintf(w, "why:         %s\n", ap.Reason)
	}
	fmt.Fprintf(w, "body:        %d bytes, sha256 %s\n", ap.BodyBytes, ap.BodySHA256)
	if ap.Body != "" {
		note := ""
		if ap.BodyEncoding != "" {
			note = " (" + ap.BodyEncoding + ")"
		}
		if ap.BodyTruncated {
			note += fmt.Sprintf(" (first %d bytes)", approval.MaxBodyPreview)
		}
		// The body is the agent's: shown with control and invisible
		// characters escaped, so it cannot rewrite what the terminal shows.
		fmt.Fprintf(w, "body text%s:\n  %s\n", note, strings.ReplaceAll(approval.Visible(ap.Body), "\n", "\n  "))
	}
	fmt.Fprintf(w, "approvers:   %d of %d", len(ap.Approvers), ap.RequiredApprovers)
	if ap.ExcludeOwner {
		fmt.Fprint(w, " (the agent's owner may not approve)")
	}
	fmt.Fprintln(w)
	for _, v := range ap.Approvers {
		printVote(w, "approved", v)
	}
	if ap.DeniedBy != nil {
		printVote(w, "denied", *ap.DeniedBy)
	}
	fmt.Fprintf(w, "created:     %s\n", ap.CreatedAt.Local().Format(time.RFC3339))
	fmt.Fprintf(w, "expires:     %s\n", ap.ExpiresAt.Local().Format(time.RFC3339))
	if ap.UsedAt != nil {
		fmt.Fprintf(w, "used:        %s (request %s)\n", ap.UsedAt.Local().Format(time.RFC3339), ap.UsedRequestID)
	}
}

func printVote(w io.Writer, what string, v approval.Vote) {
	fmt.Fprintf(w, "  %s by %s at %s", what, v.Approver, v.At.Local().Format(time.RFC3339))
	if v.Via != "" {
		fmt.Fprintf(w, " via %s", v.Via)
	}
	if v.Comment != "" {
		fmt.Fprintf(w, ": %s", v.Comment)
	}
	fmt.Fprintln(w)
}
