// Package replay re-evaluates recorded policy decisions against a
// candidate policy, so that a security team sees what a change would do to
// real traffic before enforcing it: which calls would now be denied and
// which would now be allowed, by tenant, action and agent.
//
// It reads the decision records of the tenant audit streams
// ("passport:{t:<tenant>}:audit") with XRANGE, rebuilds the policy input
// from Record.Input (the proxy stores the input document minus secrets),
// and asks the candidate. Replay only reads: it never writes to Redis.
package replay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/proxy/policy"
)

// Decider is the candidate policy; *policy.Engine implements it, so a
// replay evaluates exactly as the proxy would (same loader, capabilities,
// strict builtin errors and decision checks).
type Decider interface {
	Decide(ctx context.Context, input ast.Value) (policy.Decision, error)
}

// Options configures a replay.
type Options struct {
	// Client reads the audit streams.
	Client redis.UniversalClient
	// Archive is the audit archive directory (audit.archive.dir): its
	// segments are read before Redis, as one history. Default "": Redis
	// alone.
	Archive string
	// Candidate is the policy to evaluate.
	Candidate Decider
	// Tenants to replay. Empty means every tenant that has an audit
	// stream (found with SCAN on every primary).
	Tenants []string
	// Since replays records from Now()-Since on. Zero means the whole
	// stream.
	Since time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// PageSize is the XRANGE COUNT. Default 500.
	PageSize int64
	// Limit stops after this many decision records in all. 0: no limit.
	Limit int
	// Examples is how many stream ids each change group keeps. Default 3.
	Examples int
}

// Change is a group of calls whose decision the candidate changes.
type Change struct {
	Tenant    string `json:"tenant"`
	Action    string `json:"action"`
	AgentID   string `json:"agent_id"`
	AgentName string `json:"agent_name,omitempty"`
	AgentType string `json:"agent_type,omitempty"`
	Count     int    `json:"count"`
	// Reasons are the candidate's deny reasons (now denied) or the
	// recorded deny reasons (now allowed), with how often each appeared.
	Reasons map[string]int `json:"reasons,omitempty"`
	// Examples are stream ids of affected records, to look them up.
	Examples []string `json:"examples,omitempty"`
}

// Report is the outcome of a replay.
type Report struct {
	Tenants  []string  `json:"tenants"`
	From     time.Time `json:"from,omitzero"`
	To       time.Time `json:"to"`
	Revision string    `json:"candidate_revision,omitempty"`
	// Decisions is the number of decision records read.
	Decisions int `json:"decisions"`
	// Replayed is how many were evaluated (they carried an input).
	Replayed int `json:"replayed"`
	// Unchanged kept their outcome (allow stays allow, deny stays deny).
	Unchanged int `json:"unchanged"`
	// ReasonsChanged stayed denied but for different reasons.
	ReasonsChanged int `json:"reasons_changed"`
	// Skipped records carry no replayable input, by cause: no_input (the
	// call was refused before policy, e.g. 401), truncated (the input was
	// over the audit size cap), unsupported_input (not an input document
	// version 1), malformed (the record or its input does not decode).
	Skipped map[string]int `json:"skipped"`
	// CandidateErrors counts evaluations that failed; they count as
	// denies (the proxy fails closed), with reason "policy_error".
	CandidateErrors int       `json:"candidate_errors"`
	NowDenied       []*Change `json:"now_denied"`
	NowAllowed      []*Change `json:"now_allowed"`
}

// Run replays the decision records and reports what the candidate changes.
func Run(ctx context.Context, opts Options) (*Report, error) {
	if opts.Client == nil || opts.Candidate == nil {
		return nil, errors.New("replay: a Redis client and a candidate policy are required")
	}
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	if opts.PageSize <= 0 {
		opts.PageSize = 500
	}
	if opts.Examples <= 0 {
		opts.Examples = 3
	}
	rep := &Report{To: now().UTC(), Skipped: map[string]int{}}
	if opts.Since > 0 {
		rep.From = rep.To.Add(-opts.Since)
	}
	if r, ok := opts.Candidate.(interface{ Revision() string }); ok {
		rep.Revision = r.Revision()
	}
	tenants := opts.Tenants
	if len(tenants) == 0 {
		var err error
		if tenants, err = Tenants(ctx, opts.Client); err != nil {
			return nil, err
		}
	}
	rep.Tenants = tenants
	g := &grouper{denied: map[key]*Change{}, allowed: map[key]*Change{}, examples: opts.Examples}
	for _, t := range tenants {
		if err := replayTenant(ctx, opts, rep, g, t); err != nil {
			return nil, err
		}
		if opts.Limit > 0 && rep.Decisions >= opts.Limit {
			break
		}
	}
	rep.NowDenied = sortChanges(g.denied)
	rep.NowAllowed = sortChanges(g.allowed)
	return rep, nil
}

func replayTenant(ctx context.Context, opts Options, rep *Report, g *grouper, tenant string) error {
	ir := audit.NewInputResolver(opts.Client, tenant)
	start := "-"
	if !rep.From.IsZero() {
		start = fmt.Sprintf("%d-0", rep.From.UnixMilli())
	}
	errLimit := errors.New("limit")
	err := audit.ScanHistory(ctx, opts.Client, tenant, audit.HistoryOptions{Archive: opts.Archive, Start: start, PageSize: opts.PageSize, Before: audit.NotePassports(ir)}, func(m redis.XMessage) error {
		if opts.Limit > 0 && rep.Decisions >= opts.Limit {
			return errLimit
		}
		return replayOne(ctx, opts, rep, g, ir, m)
	})
	if errors.Is(err, errLimit) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read audit history of %s: %w", tenant, err)
	}
	return nil
}

func replayOne(ctx context.Context, opts Options, rep *Report, g *grouper, ir *audit.InputResolver, m redis.XMessage) error {
	rec, _, err := audit.ParseMessage(m)
	if err != nil {
		// A record that does not decode cannot be a decision we can
		// replay; `passport audit verify` is the tool for broken entries.
		rep.Skipped["malformed"]++
		return nil
	}
	ir.Note(m.ID, rec)
	if rec.Kind != audit.KindDecision {
		return nil
	}
	rep.Decisions++
	raw, err := ir.Input(ctx, rec)
	if err != nil {
		if !errors.Is(err, audit.ErrPassportRef) {
			return err
		}
		rep.Skipped["passport_unresolved"]++
		return nil
	}
	in, cause := inputOf(raw)
	if cause != "" {
		rep.Skipped[cause]++
		return nil
	}
	d, err := opts.Candidate.Decide(ctx, in)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		rep.CandidateErrors++
		d.Allow, d.Reasons = false, []string{"policy_error"}
	}
	rep.Replayed++
	// A recorded error failed closed: it was a deny.
	wasAllowed := rec.Decision == audit.DecisionAllow
	switch {
	case wasAllowed && !d.Allow:
		g.add(g.denied, rec, m.ID, d.Reasons)
	case !wasAllowed && d.Allow:
		reasons := rec.Reasons
		if rec.Decision == audit.DecisionError && len(reasons) == 0 {
			reasons = []string{"policy_error"}
		}
		g.add(g.allowed, rec, m.ID, reasons)
	default:
		rep.Unchanged++
		if !wasAllowed && !sameSet(rec.Reasons, d.Reasons) {
			rep.ReasonsChanged++
		}
	}
	return nil
}

// inputOf rebuilds the policy input of a decision record, or says why it
// cannot.
func inputOf(input []byte) (ast.Value, string) {
	raw := bytes.TrimSpace(input)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, "no_input"
	}
	v, err := ast.ValueFromReader(bytes.NewReader(raw))
	if err != nil {
		return nil, "malformed"
	}
	obj, ok := v.(ast.Object)
	if !ok {
		return nil, "malformed"
	}
	if t := obj.Get(ast.StringTerm("truncated")); t != nil && t.Value.Compare(ast.Boolean(true)) == 0 {
		return nil, "truncated"
	}
	if ver := obj.Get(ast.StringTerm("version")); ver == nil || ver.Value.Compare(ast.Number("1")) != 0 {
		return nil, "unsupported_input"
	}
	return v, ""
}

// Tenants lists the tenants that have an audit stream, sorted. In Redis
// Cluster every primary is scanned.
func Tenants(ctx context.Context, c redis.UniversalClient) ([]string, error) {
	var mu sync.Mutex // ForEachMaster scans the primaries concurrently
	seen := map[string]bool{}
	scan := func(ctx context.Context, c redis.Cmdable) error {
		iter := c.ScanType(ctx, 0, "passport:{t:*}:audit", 1000, "stream").Iterator()
		for iter.Next(ctx) {
			if t, ok := audit.TenantFromStreamKey(iter.Val()); ok {
				mu.Lock()
				seen[t] = true
				mu.Unlock()
			}
		}
		return iter.Err()
	}
	var err error
	if cc, ok := c.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error { return scan(ctx, n) })
	} else {
		err = scan(ctx, c)
	}
	if err != nil {
		return nil, fmt.Errorf("find audit streams: %w", err)
	}
	out := make([]string, 0, len(seen))
	for t := range seen {
		out = append(out, t)
	}
	slices.Sort(out)
	return out, nil
}

type key struct{ tenant, action, agent string }

type grouper struct {
	denied, allowed map[key]*Change
	examples        int
}

func (g *grouper) add(m map[key]*Change, rec *audit.Record, id string, reasons []string) {
	k := key{rec.Tenant, rec.Action, rec.AgentID}
	c := m[k]
	if c == nil {
		c = &Change{Tenant: rec.Tenant, Action: rec.Action, AgentID: rec.AgentID, AgentName: rec.AgentName,
			AgentType: rec.AgentType, Reasons: map[string]int{}}
		m[k] = c
	}
	c.Count++
	for _, r := range reasons {
		c.Reasons[r]++
	}
	if len(c.Examples) < g.examples {
		c.Examples = append(c.Examples, id)
	}
}

// sortChanges orders groups by count (largest first), then tenant,
// action and agent, so the output is stable.
func sortChanges(m map[key]*Change) []*Change {
	out := make([]*Change, 0, len(m))
	for _, c := range m {
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b *Change) int {
		if a.Count != b.Count {
			return b.Count - a.Count
		}
		return strings.Compare(a.Tenant+"\x00"+a.Action+"\x00"+a.AgentID, b.Tenant+"\x00"+b.Action+"\x00"+b.AgentID)
	})
	return out
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

// Total returns the number of calls in a list of changes.
func Total(cs []*Change) int {
	n := 0
	for _, c := range cs {
		n += c.Count
	}
	return n
}

// SortedReasons returns a change's reasons, most frequent first.
func (c *Change) SortedReasons() []string {
	out := make([]string, 0, len(c.Reasons))
	for r := range c.Reasons {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b string) int {
		if c.Reasons[a] != c.Reasons[b] {
			return c.Reasons[b] - c.Reasons[a]
		}
		return strings.Compare(a, b)
	})
	return out
}
