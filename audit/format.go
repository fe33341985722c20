package audit

// The readable and JSON-line forms of stored records and of verify's
// reports, and following the streams: what `passport audit tail`,
// `export` and `verify` print, kept beside the record they describe.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"
)

// Follow blocks on XREAD over the streams in last (stream key → the id
// read last) and hands each new entry to fn, until ctx ends. With
// allTenants it also follows every tenant that appears, picked up each
// time a read times out.
func Follow(ctx context.Context, rdb redis.UniversalClient, allTenants bool, last map[string]string, fn func(stream string, m redis.XMessage)) error {
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		return followCluster(ctx, cc, allTenants, last, fn)
	}
	for ctx.Err() == nil {
		if allTenants {
			if ts, err := ListTenants(ctx, rdb); err == nil {
				for _, t := range ts {
					if _, ok := last[StreamKey(t)]; !ok {
						last[StreamKey(t)] = "0-0"
					}
				}
			}
		}
		if len(last) == 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(2 * time.Second):
				continue
			}
		}
		res, err := readStreams(ctx, rdb, last, 5*time.Second)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("follow audit streams: %w", err)
		}
		for _, s := range res {
			for _, m := range s.Messages {
				fn(s.Stream, m)
				last[s.Stream] = m.ID
			}
		}
	}
	return nil
}

// readStreams is one blocking XREAD over the streams of last: new entries,
// or none when block passes.
func readStreams(ctx context.Context, rdb redis.Cmdable, last map[string]string, block time.Duration) ([]redis.XStream, error) {
	keys := make([]string, 0, len(last))
	for k := range last {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	args := append([]string(nil), keys...)
	for _, k := range keys {
		args = append(args, last[k])
	}
	res, err := rdb.XRead(ctx, &redis.XReadArgs{Streams: args, Block: block, Count: 500}).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	return res, err
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

// followCluster is Follow on a Cluster, where one XREAD over streams in
// several slots is refused (CROSSSLOT): a reader per primary blocks on the
// streams that primary holds, and hands what it read to this goroutine,
// which calls fn and moves last on before that reader reads again.
func followCluster(ctx context.Context, cc *redis.ClusterClient, allTenants bool, last map[string]string, fn func(stream string, m redis.XMessage)) error {
	type news struct {
		res  []redis.XStream
		err  error
		done chan struct{} // closed once last holds res
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var mu sync.Mutex // guards last against the readers' reads of it
	ch := make(chan news)
	var wg sync.WaitGroup
	defer wg.Wait()
	readers := map[string]bool{}
	reader := func(addr string) {
		defer wg.Done()
		for ctx.Err() == nil {
			mine := map[string]string{}
			mu.Lock()
			for k, id := range last {
				if node, err := cc.MasterForKey(ctx, k); err == nil && node.Options().Addr == addr {
					mine[k] = id
				}
			}
			mu.Unlock()
			node, ok := masterAt(ctx, cc, addr)
			if !ok {
				return // no longer a primary: the next listing starts its successor's reader
			}
			if len(mine) == 0 {
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
				continue
			}
			res, err := readStreams(ctx, node, mine, 2*time.Second)
			if len(res) == 0 && err == nil {
				continue
			}
			n := news{res: res, err: err, done: make(chan struct{})}
			select {
			case ch <- n:
				<-n.done
			case <-ctx.Done():
			}
		}
	}
	list := func() {
		if allTenants {
			if ts, err := ListTenants(ctx, cc); err == nil {
				mu.Lock()
				for _, t := range ts {
					if _, ok := last[StreamKey(t)]; !ok {
						last[StreamKey(t)] = "0-0"
					}
				}
				mu.Unlock()
			}
		}
		_ = cc.ForEachMaster(ctx, func(_ context.Context, node *redis.Client) error {
			mu.Lock()
			defer mu.Unlock()
			if addr := node.Options().Addr; !readers[addr] {
				readers[addr] = true
				wg.Add(1)
				go reader(addr)
			}
			return nil
		})
	}
	list()
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			list()
		case n := <-ch:
			if n.err != nil && ctx.Err() == nil {
				close(n.done)
				return fmt.Errorf("follow audit streams: %w", n.err)
			}
			for _, s := range n.res {
				for _, m := range s.Messages {
					fn(s.Stream, m)
					mu.Lock()
					last[s.Stream] = m.ID
					mu.Unlock()
				}
			}
			close(n.done)
		}
	}
}

// masterAt is the client of the primary at addr, if it still is one.
func masterAt(ctx context.Context, cc *redis.ClusterClient, addr string) (*redis.Client, bool) {
	var found *redis.Client
	var mu sync.Mutex
	_ = cc.ForEachMaster(ctx, func(_ context.Context, node *redis.Client) error {
		if node.Options().Addr == addr {
			mu.Lock()
			found = node
			mu.Unlock()
		}
		return nil
	})
	return found, found != nil
}
