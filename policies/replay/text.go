package replay

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteText prints the report for people: a summary line, then the calls
// the candidate would now deny and now allow, grouped by tenant, action
// and agent, largest group first.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	span := "the whole stream"
	if !r.From.IsZero() {
		span = r.From.Format(time.RFC3339) + " to " + r.To.Format(time.RFC3339)
	}
	tenants := strings.Join(r.Tenants, ", ")
	if tenants == "" {
		tenants = "no tenant (no audit stream found)"
	}
	fmt.Fprintf(&b, "replayed %d of %d decisions, tenants %s, %s\n", r.Replayed, r.Decisions, tenants, span)
	if r.Revision != "" {
		fmt.Fprintf(&b, "candidate revision %s\n", r.Revision)
	}
	writeGroup(&b, "now denied", "candidate reasons", r.NowDenied)
	writeGroup(&b, "now allowed", "recorded reasons", r.NowAllowed)
	fmt.Fprintf(&b, "\nunchanged: %d", r.Unchanged)
	if r.ReasonsChanged > 0 {
		fmt.Fprintf(&b, " (%d still denied, for other reasons)", r.ReasonsChanged)
	}
	fmt.Fprintf(&b, "; candidate errors: %d", r.CandidateErrors)
	if len(r.Skipped) > 0 {
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(r.Skipped)) {
			parts = append(parts, fmt.Sprintf("%s %d", k, r.Skipped[k]))
		}
		fmt.Fprintf(&b, "; skipped: %s", strings.Join(parts, ", "))
	}
	b.WriteString("\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func writeGroup(b *strings.Builder, title, reasonsTitle string, cs []*Change) {
	n := Total(cs)
	fmt.Fprintf(b, "\n%s: %d %s\n", title, n, plural(n, "call", "calls"))
	if len(cs) == 0 {
		return
	}
	tw := tabwriter.NewWriter(b, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "  COUNT\tTENANT\tACTION\tAGENT\t%s\n", strings.ToUpper(reasonsTitle))
	for _, c := range cs {
		agent := c.AgentID
		if c.AgentName != "" {
			agent = fmt.Sprintf("%s (%s)", c.AgentName, c.AgentID)
		}
		var rs []string
		for _, r := range c.SortedReasons() {
			rs = append(rs, fmt.Sprintf("%s×%d", r, c.Reasons[r]))
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\n", c.Count, c.Tenant, c.Action, agent, strings.Join(rs, " "))
	}
	_ = tw.Flush() // writes to a strings.Builder cannot fail
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
