package main

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/healer"
)

func (a *app) incidentsCmd() *cobra.Command {
	var (
		tenant, data string
		asJSON       bool
		limit        int
	)
	cmd := &cobra.Command{
		Use:   "incidents [--tenant T] [--json] [--data DIR]",
		Short: "List the healer's incidents, newest first",
		Long: `List incidents from Redis (PASSPORT_REDIS_URL, or the redis_url of DIR/demo.json
with --data). Without --tenant, every tenant that has incidents is listed.
The table shows id, type, target, state, detected_at, dispatched_at, resolved_at;
--json prints a JSON array of the full incidents (with tenant, resolution_ms,
attempts and timeline).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			url := a.getenv("PASSPORT_REDIS_URL")
			if data != "" {
				d, err := loadAgentDemoFile(data)
				if err != nil {
					return err
				}
				if d.RedisURL != "" {
					url = d.RedisURL
				}
			}
			rdb, err := a.agentRedis(ctx, url)
			if err != nil {
				return err
			}
			defer rdb.Close()
			tenants := []string{tenant}
			if tenant == "" {
				tenants = nil
				err := audit.ScanKeys(ctx, rdb, "passport:{t:*}:incidents", "", func(k string) {
					t := strings.TrimSuffix(strings.TrimPrefix(k, "passport:{t:"), "}:incidents")
					if healer.ValidTenant(t) && !slices.Contains(tenants, t) {
						tenants = append(tenants, t)
					}
				})
				if err != nil {
					return fmt.Errorf("list tenants: %w", err)
				}
				sort.Strings(tenants)
			}
			store := healer.NewStore(rdb, 0)
			all := []*healer.Incident{}
			for _, t := range tenants {
				list, err := store.List(ctx, t, limit)
				if err != nil {
					return fmt.Errorf("tenant %s: %w", t, err)
				}
				all = append(all, list...)
			}
			sort.SliceStable(all, func(i, j int) bool { return all[i].DetectedAt.After(all[j].DetectedAt) })
			if asJSON {
				enc := json.NewEncoder(a.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(all)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tTENANT\tTYPE\tTARGET\tSTATE\tDETECTED_AT\tDISPATCHED_AT\tRESOLVED_AT\tRESOLUTION")
			ts := func(t *time.Time) string {
				if t == nil {
					return "-"
				}
				return t.UTC().Format("2006-01-02T15:04:05.000Z")
			}
			for _, in := range all {
				res := "-"
				if in.State == healer.StateResolved {
					res = (time.Duration(in.ResolutionMS) * time.Millisecond).String()
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", in.ID, in.Tenant, in.Type, in.Target, in.State,
					ts(&in.DetectedAt), ts(in.DispatchedAt), ts(in.ResolvedAt), res)
			}
			return tw.Flush()
		},
	}
	f := cmd.Flags()
	f.StringVar(&tenant, "tenant", "", "tenant (default: every tenant with incidents)")
	f.BoolVar(&asJSON, "json", false, "print a JSON array")
	f.StringVar(&data, "data", "", "directory of a running 'passport up' (reads DIR/demo.json)")
	f.IntVar(&limit, "limit", 100, "most incidents per tenant")
	return cmd
}
