package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redisx"
)

// auditOpts are the flags shared by the audit subcommands.
type auditOpts struct {
	redisURL string
	dataDir  string
	tenant   string
}

func (a *app) auditCmd() *cobra.Command {
	o := &auditOpts{}
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Read, export and verify the tamper-evident audit streams in Redis",
		Long: `The audit streams hold one record per decision, outcome and event, one Redis stream per
tenant ("passport:{t:<tenant>}:audit"), hash-chained per writer with signed checkpoints.

Redis: --redis URL, else the redis_url of DIR/demo.json (--data DIR, from passport up),
else PASSPORT_REDIS_URL, else ` + redisx.DefaultURL + `.`,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&o.redisURL, "redis", "", "Redis URL (default $PASSPORT_REDIS_URL)")
	pf.StringVar(&o.dataDir, "data", "", "directory of a running passport up (reads redis_url from DIR/demo.json)")
	pf.StringVar(&o.tenant, "tenant", "", "only this tenant (default: every tenant with an audit stream)")
	cmd.AddCommand(a.auditTailCmd(o), a.auditExportCmd(o), a.auditVerifyCmd(o), a.auditWritersCmd(o), a.auditKeygenCmd())
	return cmd
}

// client opens Redis from --redis, --data, the environment or the default.
func (o *auditOpts) client(a *app) (redis.UniversalClient, error) {
	url := o.redisURL
	if url == "" && o.dataDir != "" {
		b, err := os.ReadFile(filepath.Join(o.dataDir, "demo.json"))
		if err != nil {
			return nil, fmt.Errorf("--data %s: %w", o.dataDir, err)
		}
		var demo struct {
			RedisURL string `json:"redis_url"`
		}
		if err := json.Unmarshal(b, &demo); err != nil {
			return nil, fmt.Errorf("--data %s: demo.json: %w", o.dataDir, err)
		}
		if demo.RedisURL == "" {
			return nil, fmt.Errorf("--data %s: demo.json has no redis_url", o.dataDir)
		}
		url = demo.RedisURL
	}
	if url == "" {
		url = a.getenv("PASSPORT_REDIS_URL")
	}
	return redisx.New(a.redisConfig(url))
}

// tenants is --tenant, or every tenant that has an audit stream.
func (o *auditOpts) tenants(ctx context.Context, rdb redis.UniversalClient) ([]string, error) {
	if o.tenant != "" {
		return []string{o.tenant}, nil
	}
	return audit.ListTenants(ctx, rdb)
}

func (a *app) auditTailCmd(o *auditOpts) *cobra.Command {
	var (
		follow bool
		asJSON bool
		n      int64
	)
	cmd := &cobra.Command{
		Use:   "tail",
		Short: "Print the latest audit records (one readable line each, or JSON), optionally following",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			rdb, err := o.client(a)
			if err != nil {
				return err
			}
			defer rdb.Close()
			tenants, err := o.tenants(ctx, rdb)
			if err != nil {
				return err
			}
			last := map[string]string{} // stream -> last id printed
			var recent []redisEntry
			for _, t := range tenants {
				key := audit.StreamKey(t)
				// At least one, so --follow knows where the stream ends.
				msgs, err := rdb.XRevRangeN(ctx, key, "+", "-", max(n, 1)).Result()
				if err != nil && !errors.Is(err, redis.Nil) {
					return fmt.Errorf("read %s: %w", key, err)
				}
				last[key] = "0-0"
				if len(msgs) > 0 {
					last[key] = msgs[0].ID
				}
				for i := min(int64(len(msgs)), max(n, 0)) - 1; i >= 0; i-- {
					recent = append(recent, redisEntry{stream: key, msg: msgs[i]})
				}
			}
			// Interleave the tenants by time (stream ids are milliseconds).
			sort.SliceStable(recent, func(i, j int) bool { return auditIDLess(recent[i].msg.ID, recent[j].msg.ID) })
			if n >= 0 && int64(len(recent)) > n {
				recent = recent[int64(len(recent))-n:]
			}
			for _, e := range recent {
				auditPrint(a.stdout, e.stream, e.msg, asJSON)
			}
			if !follow {
				return nil
			}
			return auditFollow(ctx, a, o, rdb, last, asJSON)
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&follow, "follow", "f", false, "keep printing new records as they arrive")
	f.BoolVar(&asJSON, "json", false, "print each record as a JSON line")
	f.Int64VarP(&n, "lines", "n", 20, "how many of the latest records to print first")
	return cmd
}

type redisEntry struct {
	stream string
	msg    redis.XMessage
}

// auditFollow blocks on XREAD over every tenant's stream; new tenants are
// picked up each time the read times out.
func auditFollow(ctx context.Context, a *app, o *auditOpts, rdb redis.UniversalClient, last map[string]string, asJSON bool) error {
	for ctx.Err() == nil {
		if o.tenant == "" {
			if ts, err := audit.ListTenants(ctx, rdb); err == nil {
				for _, t := range ts {
					if _, ok := last[audit.StreamKey(t)]; !ok {
						last[audit.StreamKey(t)] = "0-0"
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
		keys := make([]string, 0, len(last))
		for k := range last {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		args := append([]string(nil), keys...)
		for _, k := range keys {
			args = append(args, last[k])
		}
		res, err := rdb.XRead(ctx, &redis.XReadArgs{Streams: args, Block: 5 * time.Second, Count: 500}).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("follow audit streams: %w", err)
		}
		for _, s := range res {
			for _, m := range s.Messages {
				auditPrint(a.stdout, s.Stream, m, asJSON)
				last[s.Stream] = m.ID
			}
		}
	}
	return nil
}

func auditIDLess(a, b string) bool {
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

// auditPrint writes one entry, as a JSON line or a readable line.
func auditPrint(w io.Writer, stream string, m redis.XMessage, asJSON bool) {
	if asJSON {
		fmt.Fprintln(w, string(auditExportLine(stream, m)))
		return
	}
	fmt.Fprintln(w, auditLine(m))
}

// auditExportLine is the JSON line of export and tail --json: the stored
// record verbatim (its hash can be re-checked offline) with its place.
func auditExportLine(stream string, m redis.XMessage) []byte {
	return auditExportLineInput(stream, m, nil)
}

// auditExportLineInput is auditExportLine with "input": the decision's
// full policy input, its passport reference resolved, when the record
// references a passport record (the stored record stays verbatim).
func auditExportLineInput(stream string, m redis.XMessage, input json.RawMessage) []byte {
	raw, _ := m.Values[audit.FieldRecord].(string)
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

// auditExportLineErr is the line of a decision whose passport reference
// does not resolve: the stored record, and why its input is missing.
func auditExportLineErr(stream string, m redis.XMessage, err error) []byte {
	raw, _ := m.Values[audit.FieldRecord].(string)
	b, _ := json.Marshal(struct {
		Stream string          `json:"stream"`
		ID     string          `json:"id"`
		Record json.RawMessage `json:"record"`
		Error  string          `json:"error"`
	}{stream, m.ID, json.RawMessage(raw), err.Error()})
	return b
}

// auditSafe makes a value from a record safe to print on one terminal
// line: anything stored in Redis may be hostile, so control characters
// (CR, LF, ESC, C1), format characters (bidi overrides) and spaces get
// the value quoted with escapes instead of being written raw. A forged
// record can therefore never fake a second line or recolor the terminal.
func auditSafe(s string) string {
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

// auditLine is the readable form of one entry.
func auditLine(m redis.XMessage) string {
	raw, _ := m.Values[audit.FieldRecord].(string)
	rec, err := audit.DecodeRecord([]byte(raw))
	if err != nil {
		return fmt.Sprintf("%s MALFORMED %s", m.ID, auditSafe(raw))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s %s", m.ID, rec.Time.UTC().Format("2006-01-02T15:04:05.000Z"), auditSafe(rec.Tenant), auditSafe(string(rec.Kind)))
	kv := func(k, v string) {
		if v != "" {
			fmt.Fprintf(&b, " %s=%s", k, auditSafe(v))
		}
	}
	switch rec.Kind {
	case audit.KindDecision, audit.KindOutcome:
		if rec.Decision != "" {
			b.WriteString(" " + auditSafe(rec.Decision))
		}
		if rec.Status != 0 {
			fmt.Fprintf(&b, " status=%d latency=%.1fms", rec.Status, rec.LatencyMS)
		}
		if rec.Method != "" {
			b.WriteString(" " + auditSafe(rec.Method))
		}
		if rec.Path != "" {
			b.WriteString(" " + auditSafe(rec.Path))
		}
		kv("action", rec.Action)
		kv("resource", rec.Resource)
		kv("agent", rec.AgentName)
		kv("agent_id", rec.AgentID)
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
	case audit.KindRefusals:
		var sum audit.RefusalSummary
		_ = json.Unmarshal(rec.Details, &sum)
		if rec.Decision != "" {
			b.WriteString(" " + auditSafe(rec.Decision))
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
	case audit.KindCheckpoint:
		var cp audit.Checkpoint
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
	fmt.Fprintf(&b, " writer=%s seq=%d", auditSafe(rec.Writer), rec.Seq)
	return b.String()
}

var auditStreamIDRe = regexp.MustCompile(`^\d+(-\d+)?$`)

// auditSince turns --since (a stream id, an RFC 3339 time or a duration
// back from now) into an XRANGE start.
func auditSince(s string, now time.Time) (string, error) {
	switch {
	case s == "":
		return "-", nil
	case auditStreamIDRe.MatchString(s):
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

func (a *app) auditExportCmd(o *auditOpts) *cobra.Command {
	var since string
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Write audit records as JSON lines (for a SIEM), oldest first",
		Long: `Write audit records as JSON lines, oldest first, one tenant after the other:
{"stream": "passport:{t:acme}:audit", "id": "<stream id>", "record": {<the stored record, verbatim>}}
The record is byte-for-byte what is stored, so its hash can be re-checked offline. A
decision that references its passport record (passport_id, passport_sha256) also gets
"input": its full policy input with the passport's claims put back; a reference that
does not resolve gets "error" instead.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			start, err := auditSince(since, time.Now())
			if err != nil {
				return err
			}
			rdb, err := o.client(a)
			if err != nil {
				return err
			}
			defer rdb.Close()
			tenants, err := o.tenants(ctx, rdb)
			if err != nil {
				return err
			}
			for _, t := range tenants {
				key := audit.StreamKey(t)
				ir := audit.NewInputResolver(rdb, t)
				err := audit.ScanStream(ctx, rdb, key, start, 1000, func(m redis.XMessage) error {
					line := auditExportLine(key, m)
					if rec, _, err := audit.ParseMessage(m); err == nil {
						ir.Note(m.ID, rec)
						if rec.PassportID != "" {
							in, err := ir.Input(ctx, rec)
							if err != nil && !errors.Is(err, audit.ErrPassportRef) {
								return err
							}
							line = auditExportLineInput(key, m, in)
							if err != nil {
								line = auditExportLineErr(key, m, err)
							}
						}
					}
					_, err := fmt.Fprintln(a.stdout, string(line))
					return err
				})
				if err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&since, "since", "", "start at a stream id, an RFC 3339 time, or a duration back from now (24h)")
	return cmd
}

func (a *app) auditVerifyCmd(o *auditOpts) *cobra.Command {
	var (
		trusted    string
		asJSON     bool
		witnesses  []string
		staleAfter time.Duration
		accept     []string
	)
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check every writer's hash chain, signed checkpoints and the witnesses; exit 2 at the first broken place",
		Long: `Walk each tenant's audit stream and check, for every writer: each record's hash, the
links between consecutive records, the sequence numbers (deleted, inserted, reordered
records), the chain head stored in Redis (records deleted at the tail; a missing or
corrupt head is itself a finding), duplicate request ids, and each checkpoint's Ed25519
signature.

With a witness (--witness DIR|URL, repeatable; default the witness of "passport up --data
DIR", else PASSPORT_WITNESS), Redis is compared with the checkpoints the writers handed
to it outside Redis, and every tenant the witness knows is checked, not only the streams
that still exist. Verdicts, by code: stream_missing, heads_missing, head_missing,
head_corrupt, head_rewritten, tail_cut, rolled_back, checkpoint_mismatch,
checkpoint_missing, records_after_close, writer_unclosed (stopped without a closing
statement: crashed or killed), writer_key_changed, witness_corrupt; and from the chain
itself malformed, changed, deleted, reordered, duplicate, bad_checkpoint, unknown_writer,
wrong_tenant. See docs/audit.md.

Writer keys come from the witness, else the writers hash in Redis, or only from
--trusted-keys FILE (lines "<writer-id> <base64 public key>"; see "passport audit writers").

Exit status: 0 when everything verifies, 2 on any verdict (the first one is named by
stream and id), 1 on usage or connection errors.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			opts := audit.VerifyAllOptions{Tenant: o.tenant, StaleAfter: staleAfter}
			if trusted != "" {
				f, err := os.Open(trusted)
				if err != nil {
					return fmt.Errorf("--trusted-keys: %w", err)
				}
				keys, err := audit.ParseTrustedKeys(f)
				f.Close()
				if err != nil {
					return fmt.Errorf("--trusted-keys %s: %w", trusted, err)
				}
				opts.TrustedKeys = keys
			}
			if len(accept) > 0 {
				opts.AcceptUnclosed = map[string]bool{}
				for _, w := range accept {
					opts.AcceptUnclosed[w] = true
				}
			}
			specs, err := o.witnessSpecs(a, witnesses)
			if err != nil {
				return err
			}
			if opts.Witnesses, err = a.openWitnesses(specs); err != nil {
				return err
			}
			rdb, err := o.client(a)
			if err != nil {
				return err
			}
			defer rdb.Close()
			res, err := audit.VerifyAll(ctx, rdb, opts)
			if err != nil {
				return err
			}
			if len(res.Streams) == 0 && len(res.Witnesses) == 0 {
				fmt.Fprintln(a.stdout, "no audit streams found")
				return nil
			}
			for _, rep := range res.Streams {
				if asJSON {
					b, _ := json.Marshal(rep)
					fmt.Fprintln(a.stdout, string(b))
				} else {
					auditPrintReport(a.stdout, rep)
				}
			}
			for _, wr := range res.Witnesses {
				if asJSON {
					b, _ := json.Marshal(wr)
					fmt.Fprintln(a.stdout, string(b))
				} else {
					auditPrintWitness(a.stdout, wr)
				}
			}
			if len(opts.Witnesses) == 0 && !asJSON {
				fmt.Fprintln(a.stdout, "no witness: a stream deleted with its heads, or a tail cut with its head rewritten, cannot be seen from Redis alone (see --witness)")
			}
			if first := res.First(); first != nil {
				return &exitError{code: 2, err: fmt.Errorf("audit verify failed: %s", first)}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&trusted, "trusted-keys", "", "file of pinned writer keys; when set, only these writers are trusted")
	f.BoolVar(&asJSON, "json", false, "print each stream's report, then each witness's, as JSON lines (\"kind\" is the verdict code)")
	f.StringArrayVar(&witnesses, "witness", nil, "witness to compare with: a directory or an http(s):// URL of passport witness (repeatable; default: demo.json's with --data, else $PASSPORT_WITNESS)")
	f.DurationVar(&staleAfter, "stale-after", time.Minute, "a writer unheard of this long without a closing statement is reported writer_unclosed")
	f.StringArrayVar(&accept, "accept-unclosed", nil, "writer id whose unclean stop was looked into: listed, not failed (repeatable)")
	return cmd
}

// witnessSpecs are the witnesses verify compares with: --witness, else
// the witness of the stack in --data DIR, else PASSPORT_WITNESS (the same
// order as for Redis).
func (o *auditOpts) witnessSpecs(a *app, flags []string) ([]string, error) {
	if len(flags) > 0 {
		return flags, nil
	}
	if o.dataDir != "" {
		b, err := os.ReadFile(filepath.Join(o.dataDir, "demo.json"))
		if err != nil {
			return nil, fmt.Errorf("--data %s: %w", o.dataDir, err)
		}
		var demo struct {
			Witness string `json:"witness"`
		}
		if err := json.Unmarshal(b, &demo); err != nil {
			return nil, fmt.Errorf("--data %s: demo.json: %w", o.dataDir, err)
		}
		if demo.Witness != "" {
			return []string{demo.Witness}, nil
		}
	}
	if env := strings.TrimSpace(a.getenv("PASSPORT_WITNESS")); env != "" {
		return []string{env}, nil
	}
	return nil, nil
}

func auditPrintReport(w io.Writer, rep *audit.Report) {
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
			auditSafe(n), wr.FirstSeq, wr.LastSeq, anchored, wr.Records, wr.Checkpoints, wr.Unsealed)
	}
	if rep.OpenAllows > 0 {
		fmt.Fprintf(w, "  %d allowed calls have no outcome record (first: %s): in flight, or their outcome was dropped or lost\n",
			rep.OpenAllows, auditSafe(rep.FirstOpenAllow))
	}
	auditPrintProblems(w, rep.Problems)
}

func auditPrintWitness(w io.Writer, wr *audit.WitnessReport) {
	status := "OK"
	if len(wr.Problems) > 0 {
		status = "FAILED"
	}
	fmt.Fprintf(w, "%s witness %s: %d writers (%d closed cleanly, %d running)\n", status, auditSafe(wr.Witness), wr.Writers, wr.Closed, wr.Running)
	for _, a := range wr.Accepted {
		fmt.Fprintf(w, "  writer %s stopped without a closing statement (accepted with --accept-unclosed)\n", auditSafe(a))
	}
	auditPrintProblems(w, wr.Problems)
}

func auditPrintProblems(w io.Writer, ps []audit.Problem) {
	for i, p := range ps {
		if i == 20 {
			fmt.Fprintf(w, "  ... %d more problems\n", len(ps)-20)
			break
		}
		if p.Stream == "" {
			fmt.Fprintf(w, "  %s writer=%s: %s\n", p.Kind, auditSafe(p.Writer), auditSafe(p.Detail))
			continue
		}
		if p.Writer == "" {
			fmt.Fprintf(w, "  %s %s: %s\n", p.Kind, auditOrEnd(p.ID), auditSafe(p.Detail))
			continue
		}
		fmt.Fprintf(w, "  %s %s writer=%s seq=%d: %s\n", p.Kind, auditOrEnd(p.ID), auditSafe(p.Writer), p.Seq, auditSafe(p.Detail))
	}
}

func auditOrEnd(id string) string {
	if id == "" {
		return "end-of-stream"
	}
	return id
}

func (a *app) auditWritersCmd(o *auditOpts) *cobra.Command {
	return &cobra.Command{
		Use:   "writers",
		Short: "Print the registered writer keys in trusted-keys format (review, then pin with verify --trusted-keys)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rdb, err := o.client(a)
			if err != nil {
				return err
			}
			defer rdb.Close()
			m, err := rdb.HGetAll(cmd.Context(), audit.WritersKey).Result()
			if err != nil {
				return fmt.Errorf("read %s: %w", audit.WritersKey, err)
			}
			ids := make([]string, 0, len(m))
			for id := range m {
				ids = append(ids, id)
			}
			sort.Strings(ids)
			fmt.Fprintln(a.stdout, "# writer-id ed25519-public-key (base64), from "+audit.WritersKey)
			for _, id := range ids {
				if _, err := audit.ParsePublicKey(m[id]); err != nil || strings.ContainsAny(id, " \t\r\n") {
					fmt.Fprintf(a.stdout, "# skipped malformed entry %s\n", auditSafe(id))
					continue
				}
				fmt.Fprintf(a.stdout, "%s %s\n", id, m[id])
			}
			return nil
		},
	}
}

func (a *app) auditKeygenCmd() *cobra.Command {
	var writer, out string
	cmd := &cobra.Command{
		Use:   "keygen --writer ID --out FILE",
		Short: "Create a writer's Ed25519 checkpoint key; print its trusted-keys line",
		Long: `Create an Ed25519 private key (PEM, PKCS #8, mode 0600) for an audit writer with a fixed id,
and print the line to add to the trusted-keys file that "passport audit verify --trusted-keys"
pins. The file must not exist yet.`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if writer == "" || out == "" || strings.ContainsAny(writer, " \t\r\n") {
				return errors.New("audit keygen: --writer (no whitespace) and --out are required")
			}
			_, key, err := ed25519.GenerateKey(rand.Reader)
			if err != nil {
				return fmt.Errorf("audit keygen: %w", err)
			}
			pemBytes, err := audit.MarshalSigningKey(key)
			if err != nil {
				return err
			}
			f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return fmt.Errorf("audit keygen: %w", err)
			}
			if _, err := f.Write(pemBytes); err != nil {
				f.Close()
				return fmt.Errorf("audit keygen: %w", err)
			}
			if err := f.Close(); err != nil {
				return fmt.Errorf("audit keygen: %w", err)
			}
			fmt.Fprintln(a.stdout, audit.TrustedKeyLine(writer, key.Public().(ed25519.PublicKey)))
			return nil
		},
	}
	cmd.Flags().StringVar(&writer, "writer", "", "writer id the key belongs to")
	cmd.Flags().StringVar(&out, "out", "", "private key file to create")
	return cmd
}
