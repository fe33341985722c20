package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

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
	archive  string
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
	pf.StringVar(&o.archive, "archive", "", "audit archive directory (audit.archive.dir): export and verify read its segments, then Redis, as one history")
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
			RedisURL   string   `json:"redis_url"`
			RedisAddrs []string `json:"redis_addrs"`
		}
		if err := json.Unmarshal(b, &demo); err != nil {
			return nil, fmt.Errorf("--data %s: demo.json: %w", o.dataDir, err)
		}
		if demo.RedisURL == "" && len(demo.RedisAddrs) == 0 {
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
	ts, err := audit.ListTenants(ctx, rdb)
	if err != nil || o.archive == "" {
		return ts, err
	}
	return audit.WithArchiveTenants(ts, o.archive)
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
			sort.SliceStable(recent, func(i, j int) bool { return audit.IDLess(recent[i].msg.ID, recent[j].msg.ID) })
			if n >= 0 && int64(len(recent)) > n {
				recent = recent[int64(len(recent))-n:]
			}
			for _, e := range recent {
				audit.Print(a.stdout, e.stream, e.msg, asJSON)
			}
			if !follow {
				return nil
			}
			return audit.Follow(ctx, rdb, o.tenant == "", last, func(stream string, m redis.XMessage) { audit.Print(a.stdout, stream, m, asJSON) })
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
			start, err := audit.ParseSince(since, time.Now())
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
				err := audit.ScanHistory(ctx, rdb, t, audit.HistoryOptions{Archive: o.archive, Start: start, Before: audit.NotePassports(ir)}, func(m redis.XMessage) error {
					line := audit.ExportLine(key, m)
					if rec, _, err := audit.ParseMessage(m); err == nil {
						ir.Note(m.ID, rec)
						if rec.PassportID != "" {
							in, err := ir.Input(ctx, rec)
							if err != nil && !errors.Is(err, audit.ErrPassportRef) {
								return err
							}
							line = audit.ExportLineInput(key, m, in)
							if err != nil {
								line = audit.ExportLineErr(key, m, err)
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

With --archive DIR (the audit.archive.dir of the writers), each tenant's archived segments
are read first, then Redis from just past them, as one history: a segment missing, cut
short, swapped or changed is a verdict (segment_missing, segment_corrupt), as is every
record in it that no longer verifies.

Writer keys come from the witness, else the writers hash in Redis, or only from
--trusted-keys FILE (lines "<writer-id> <base64 public key>"; see "passport audit writers").

Exit status: 0 when everything verifies, 2 on any verdict (the first one is named by
stream and id), 1 on usage or connection errors.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			opts := audit.VerifyAllOptions{Tenant: o.tenant, StaleAfter: staleAfter}
			opts.Archive = o.archive
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
					audit.PrintReport(a.stdout, rep)
				}
			}
			for _, wr := range res.Witnesses {
				if asJSON {
					b, _ := json.Marshal(wr)
					fmt.Fprintln(a.stdout, string(b))
				} else {
					audit.PrintWitness(a.stdout, wr)
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
					fmt.Fprintf(a.stdout, "# skipped malformed entry %s\n", audit.Safe(id))
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
