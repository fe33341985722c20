package audit

// The readable and JSON-line forms of stored records and of verify's
// reports, and following the streams: what `passport audit tail`,
// `export` and `verify` print, kept beside the record they describe.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"
)

// Follow hands each new entry of the streams in last (stream key → the
// id read last) to fn, until ctx ends or a read fails. With allTenants it
// also follows every tenant that appears (listed every 2 s). It follows
// with a Tail: one blocking XREAD over every stream on a single node or
// Sentinel, one pipeline a poll on a Cluster.
func Follow(ctx context.Context, rdb redis.UniversalClient, allTenants bool, last map[string]string, fn func(stream string, m redis.XMessage)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	tail := NewTail(rdb, TailConfig{Block: 5 * time.Second, Count: 500, OnError: func(err error) error {
		return fmt.Errorf("follow audit streams: %w", err)
	}})
	known := map[string]bool{}
	for k, id := range last {
		tail.Add(k, id)
		known[k] = true
	}
	if allTenants {
		list := func() {
			ts, err := ListTenants(ctx, rdb)
			if err != nil {
				return // the next listing tries again; reads report a lost Redis
			}
			for _, t := range ts {
				if k := StreamKey(t); !known[k] {
					tail.Add(k, "0-0")
					known[k] = true
				}
			}
		}
		list()
		go func() {
			tick := time.NewTicker(2 * time.Second)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
					list()
				}
			}
		}()
	}
	return tail.Run(ctx, func(stream string, msgs []redis.XMessage) {
		for _, m := range msgs {
			fn(stream, m)
			last[stream] = m.ID
		}
	})
}

// IDLess orders two stream ids.
func IDLess(a, b string) bool {
	am, as, _ := strings.Cut(a, "-")
	bm, bs, _ := strings.Cut(b, "-")
	ami, _ := strconv.ParseUint(am, 10, 64)
	bmi, _ := strconv.ParseUint(bm, 10, 64)
	if ami != bmi {
		return ami < bmi
	}
	asi, _ := strconv.ParseUint(as, 10, 64)
	bsi, _ := strconv.ParseUint(bs, 10, 64)
	return asi < bsi
}

// Print writes one entry, as a JSON line or a readable line.
func Print(w io.Writer, stream string, m redis.XMessage, asJSON bool) {
	if asJSON {
		fmt.Fprintln(w, string(ExportLine(stream, m)))
		return
	}
	fmt.Fprintln(w, Line(m))
}

// ExportLine is the JSON line of export and tail --json: the stored
// record verbatim (its hash can be re-checked offline) with its place.
func ExportLine(stream string, m redis.XMessage) []byte {
	return ExportLineInput(stream, m, nil)
}

// ExportLineInput is ExportLine with "input": the decision's full policy
// input, its passport reference resolved, when the record references a
// passport record (the stored record stays verbatim).
func ExportLineInput(stream string, m redis.XMessage, input json.RawMessage) []byte {
	raw, _ := m.Values[FieldRecord].(string)
	line := struct {
		Stream string          `json:"stream"`
		ID     string          `json:"id"`
		Record json.RawMessage `json:"record,omitempty"`
		Input  json.RawMessage `json:"input,omitempty"`
		Error  string          `json:"error,omitempty"`
		Raw    string          `json:"raw,omitempty"`
	}{Stream: stream, ID: m.ID, Input: input}
	if json.Valid([]byte(raw)) && strings.HasPrefix(strings.TrimSpace(raw), "{") {
		line.Record = json.RawMessage(raw)
	} else {
		line.Error, line.Raw = "malformed record", raw
	}
	b, _ := json.Marshal(line)
	return b
}

// ExportLineErr is the line of a decision whose passport reference does
// not resolve: the stored record, and why its input is missing.
func ExportLineErr(stream string, m redis.XMessage, err error) []byte {
	raw, _ := m.Values[FieldRecord].(string)
	b, _ := json.Marshal(struct {
		Stream string          `json:"stream"`
		ID     string          `json:"id"`
		Record json.RawMessage `json:"record"`
		Error  string          `json:"error"`
	}{stream, m.ID, json.RawMessage(raw), err.Error()})
	return b
}

// Safe makes a value from a record safe to print on one terminal
// line: anything stored in Redis may be hostile, so control characters
// (CR, LF, ESC, C1), format characters (bidi overrides) and spaces get
// the value quoted with escapes instead of being written raw. A forged
// record can therefore never fake a second line or recolor the terminal.
func Safe(s string) string {
	const max = 256
	if len(s) > max {
		cut := max
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	if s == "" {
		return `""`
	}
	for _, r := range s {
		if r == utf8.RuneError || r == ' ' || r == '"' || r == '\\' || !unicode.IsPrint(r) {
			return strconv.QuoteToGraphic(s)
		}
	}
	return s
}

// Line is the readable form of one entry.
func Line(m redis.XMessage) string {
	raw, _ := m.Values[FieldRecord].(string)
	rec, err := DecodeRecord([]byte(raw))
	if err != nil {
		return fmt.Sprintf("%s MALFORMED %s", m.ID, Safe(raw))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s %s", m.ID, rec.Time.UTC().Format("2006-01-02T15:04:05.000Z"), Safe(rec.Tenant), Safe(string(rec.Kind)))
	kv := func(k, v string) {
		if v != "" {
			fmt.Fprintf(&b, " %s=%s", k, Safe(v))
		}
	}
	switch rec.Kind {
	case KindDecision, KindOutcome:
		if rec.Decision != "" {
			b.WriteString(" " + Safe(rec.Decision))
		}
		if rec.Status != 0 {
			fmt.Fprintf(&b, " status=%d latency=%.1fms", rec.Status, rec.LatencyMS)
		}
		if rec.Method != "" {
			b.WriteString(" " + Safe(rec.Method))
		}
		if rec.Path != "" {
			b.WriteString(" " + Safe(rec.Path))
		}
		kv("action", rec.Action)
		kv("resource", rec.Resource)
		kv("agent", rec.AgentName)
		kv("agent_id", rec.AgentID)
		kv("on_behalf_of", onBehalfOf(rec.Chain))
		kv("type", rec.AgentType)
		kv("trust", rec.TrustLevel)
		if rec.Reputation != 0 {
			fmt.Fprintf(&b, " rep=%.1f", rec.Reputation)
		}
		if len(rec.Reasons) > 0 {
			kv("reasons", strings.Join(rec.Reasons, ","))
		}
		kv("policy", rec.PolicyRevision)
		kv("req", rec.RequestID)
		kv("jti", rec.JTI)
	case KindRefusals:
		var sum RefusalSummary
		_ = json.Unmarshal(rec.Details, &sum)
		if rec.Decision != "" {
			b.WriteString(" " + Safe(rec.Decision))
		}
		fmt.Fprintf(&b, " status=%d count=%d", rec.Status, sum.Count)
		kv("reasons", strings.Join(rec.Reasons, ","))
		kv("route", rec.Route)
		kv("source", sum.Source)
		kv("agent_id", rec.AgentID)
		if !sum.First.IsZero() {
			kv("first", sum.First.UTC().Format("2006-01-02T15:04:05.000Z"))
		}
		kv("first_req", sum.FirstRequestID)
		kv("last_req", sum.LastRequestID)
		if sum.Outage {
			b.WriteString(" outage")
		}
	case KindCheckpoint:
		var cp Checkpoint
		_ = json.Unmarshal(rec.Details, &cp)
		kv("type", cp.Type)
		fmt.Fprintf(&b, " records=%d", cp.Records)
	default:
		kv("agent", rec.AgentName)
		kv("agent_id", rec.AgentID)
		if len(rec.Details) > 0 {
			kv("details", string(rec.Details))
		}
	}
	fmt.Fprintf(&b, " writer=%s seq=%d", Safe(rec.Writer), rec.Seq)
	return b.String()
}

// onBehalfOf is a delegated call's chain as read from the acting agent
// back to the root, "B<A" for B on behalf of A: each agent by name (its
// id when it has none), the acting agent itself left out.
func onBehalfOf(chain []ChainLink) string {
	if len(chain) < 2 {
		return ""
	}
	names := make([]string, 0, len(chain)-1)
	for i := len(chain) - 2; i >= 0; i-- {
		n := chain[i].Name
		if n == "" {
			n = chain[i].ID
		}
		names = append(names, n)
	}
	return strings.Join(names, "<")
}

var streamIDRe = regexp.MustCompile(`^\d+(-\d+)?$`)

// ParseSince turns --since (a stream id, an RFC 3339 time or a duration
// back from now) into an XRANGE start.
func ParseSince(s string, now time.Time) (string, error) {
	switch {
	case s == "":
		return "-", nil
	case streamIDRe.MatchString(s):
		return s, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return strconv.FormatInt(t.UnixMilli(), 10) + "-0", nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return strconv.FormatInt(now.Add(-d).UnixMilli(), 10) + "-0", nil
	}
	return "", fmt.Errorf("--since %q: want a stream id (1700000000000-0), an RFC 3339 time or a duration (24h)", s)
}

// PrintReport writes verify's report of one stream, readable.
func PrintReport(w io.Writer, rep *Report) {
	status := "OK"
	if !rep.OK() {
		status = "FAILED"
	}
	fmt.Fprintf(w, "%s %s: %d records, %d writers\n", status, rep.Stream, rep.Records, len(rep.Writers))
	names := make([]string, 0, len(rep.Writers))
	for n := range rep.Writers {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		wr := rep.Writers[n]
		anchored := ""
		if wr.Anchored {
			anchored = " (after retention trim)"
		}
		fmt.Fprintf(w, "  writer %s: seq %d..%d%s, %d records, %d checkpoints, %d unsealed\n",
			Safe(n), wr.FirstSeq, wr.LastSeq, anchored, wr.Records, wr.Checkpoints, wr.Unsealed)
	}
	if rep.OpenAllows > 0 {
		fmt.Fprintf(w, "  %d allowed calls have no outcome record (first: %s): in flight, or their outcome was dropped or lost\n",
			rep.OpenAllows, Safe(rep.FirstOpenAllow))
	}
	PrintProblems(w, rep.Problems)
}

// PrintWitness writes verify's report of one witness, readable.
func PrintWitness(w io.Writer, wr *WitnessReport) {
	status := "OK"
	if len(wr.Problems) > 0 {
		status = "FAILED"
	}
	fmt.Fprintf(w, "%s witness %s: %d writers (%d closed cleanly, %d running)\n", status, Safe(wr.Witness), wr.Writers, wr.Closed, wr.Running)
	for _, a := range wr.Accepted {
		fmt.Fprintf(w, "  writer %s stopped without a closing statement (accepted with --accept-unclosed)\n", Safe(a))
	}
	PrintProblems(w, wr.Problems)
}

// PrintProblems writes the first 20 problems, one a line.
func PrintProblems(w io.Writer, ps []Problem) {
	for i, p := range ps {
		if i == 20 {
			fmt.Fprintf(w, "  ... %d more problems\n", len(ps)-20)
			break
		}
		if p.Stream == "" {
			fmt.Fprintf(w, "  %s writer=%s: %s\n", p.Kind, Safe(p.Writer), Safe(p.Detail))
			continue
		}
		if p.Writer == "" {
			fmt.Fprintf(w, "  %s %s: %s\n", p.Kind, orEnd(p.ID), Safe(p.Detail))
			continue
		}
		fmt.Fprintf(w, "  %s %s writer=%s seq=%d: %s\n", p.Kind, orEnd(p.ID), Safe(p.Writer), p.Seq, Safe(p.Detail))
	}
}

func orEnd(id string) string {
	if id == "" {
		return "end-of-stream"
	}
	return id
}
