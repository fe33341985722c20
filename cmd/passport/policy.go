package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/tester"
	"github.com/spf13/cobra"

	"github.com/agentpassport/passport/budget"
	"github.com/agentpassport/passport/internal/redisx"
	"github.com/agentpassport/passport/policies"
	"github.com/agentpassport/passport/policies/replay"
	"github.com/agentpassport/passport/proxy/policy"
)

// policyCmd is `passport policy test|check|replay`: the Rego library's
// tools, so that a security team needs no separate OPA install.
func (a *app) policyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Test, check and replay Rego policies",
		Long: `Test, check and replay the Rego policy library (package passport.authz).

Without a directory, test and check use the library embedded in this binary.
See policies/README.md for the input document, the decision and the reason codes.`,
	}
	cmd.AddCommand(a.policyTestCmd(), a.policyCheckCmd(), a.policyReplayCmd())
	return cmd
}

// policySource is a policy directory given on the command line, read as
// the proxy reads it (policy.ReadDir: regular files inside the directory
// only, no symbolic link but a ConfigMap volume's with configMap), or the
// embedded library.
func policySource(args []string, embedded fs.FS, configMap bool) (fs.FS, string, error) {
	if len(args) == 0 {
		return embedded, "embedded library", nil
	}
	dir := args[0]
	st, err := os.Stat(dir)
	if err != nil {
		return nil, "", fmt.Errorf("policy directory: %w", err)
	}
	if !st.IsDir() {
		return nil, "", fmt.Errorf("policy directory %s: not a directory", dir)
	}
	fsys, err := policy.ReadDir(dir, policy.ParseDirLayout(configMap))
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", dir, err)
	}
	return fsys, dir, nil
}

func (a *app) policyTestCmd() *cobra.Command {
	var (
		verbose   bool
		coverage  bool
		threshold float64
		run       string
		lenient   bool
		timeout   time.Duration
		configMap bool
	)
	cmd := &cobra.Command{
		Use:   "test [DIR]",
		Short: "Run the *_test.rego tests of a policy directory (default: the embedded library)",
		Long: `Run the *_test.rego tests of a policy directory through OPA's tester, as
"opa test DIR" does. Every .rego file and every .json/.yaml data file is loaded.

Tests run as the proxy evaluates: with strict builtin errors (a builtin error
fails the test; --lenient-builtin-errors runs them as plain "opa test" does) and
without the builtins the proxy removes (http.send, net.lookup_ip_addr, opa.runtime).
--coverage prints line coverage per library file; --threshold N fails (exit 2)
when the coverage of the library files (tests left out) is below N percent.
Exit status: 0 all passed, 2 a test failed or coverage is below the threshold,
1 the policies did not load or compile.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if threshold < 0 || threshold > 100 {
				return fmt.Errorf("--threshold %v: want 0 to 100", threshold)
			}
			fsys, src, err := policySource(args, policies.TestFS, configMap)
			if err != nil {
				return err
			}
			rep, err := policies.Test(cmd.Context(), fsys, policies.TestOptions{
				Run:                 run,
				Coverage:            coverage || threshold > 0,
				Timeout:             timeout,
				Trace:               verbose,
				StrictBuiltinErrors: !lenient,
				Capabilities:        policy.Capabilities(),
			})
			if err != nil {
				return fmt.Errorf("%s: %w", src, err)
			}
			ch := make(chan *tester.Result, len(rep.Results))
			for _, r := range rep.Results {
				ch <- r
			}
			close(ch)
			if err := (tester.PrettyReporter{Output: a.stdout, Verbose: verbose}).Report(ch); err != nil {
				return err
			}
			if len(rep.Results) == 0 {
				return &exitError{2, fmt.Errorf("%s: no tests found (test rules are named test_*)", src)}
			}
			if rep.Coverage != nil {
				fmt.Fprintln(a.stdout, "--------------------------------------------------------------------------------")
				for _, name := range rep.LibraryFiles() {
					f := rep.Coverage.Files[name]
					if f == nil {
						fmt.Fprintf(a.stdout, "coverage %-24s   0.0%%\n", name)
						continue
					}
					line := fmt.Sprintf("coverage %-24s %5.1f%%", name, f.Coverage)
					if len(f.NotCovered) > 0 {
						var rows []string
						for _, r := range f.NotCovered {
							if r.Start.Row == r.End.Row {
								rows = append(rows, fmt.Sprint(r.Start.Row))
							} else {
								rows = append(rows, fmt.Sprintf("%d-%d", r.Start.Row, r.End.Row))
							}
						}
						line += "  not covered: lines " + strings.Join(rows, ", ")
					}
					fmt.Fprintln(a.stdout, line)
				}
				fmt.Fprintf(a.stdout, "coverage: library %.1f%%, all files (as opa test --coverage) %.1f%%\n",
					rep.LibraryCoverage, rep.Coverage.Coverage)
			}
			if !rep.Passed() {
				_, fail, errored := rep.Counts()
				return &exitError{2, fmt.Errorf("%s: %d failed, %d errors", src, fail, errored)}
			}
			if threshold > 0 && rep.LibraryCoverage < threshold {
				return &exitError{2, fmt.Errorf("%s: library coverage %.1f%% is below the threshold %.1f%%",
					src, rep.LibraryCoverage, threshold)}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&verbose, "verbose", "v", false, "print every test, with traces of failures")
	f.BoolVarP(&coverage, "coverage", "c", false, "report line coverage")
	f.Float64Var(&threshold, "threshold", 0, "fail when library line coverage is below this percentage (implies --coverage)")
	f.StringVarP(&run, "run", "r", "", "run only tests whose name matches this regular expression")
	f.BoolVar(&lenient, "lenient-builtin-errors", false, "builtin errors make expressions undefined instead of failing (plain opa test)")
	f.DurationVar(&timeout, "timeout", 5*time.Second, "time limit for each test")
	f.BoolVar(&configMap, "kubernetes-configmap", false, configMapFlagHelp)
	return cmd
}

func (a *app) policyCheckCmd() *cobra.Command {
	var checkFmt, configMap bool
	cmd := &cobra.Command{
		Use:   "check [DIR]",
		Short: "Compile a policy directory strictly, like opa check --strict (default: the embedded library)",
		Long: `Compile every .rego file of a policy directory (tests included) with the checks of
"opa check --strict" (unused variables and imports, deprecated builtins, type errors,
rule/data conflicts with the data files), against the proxy's capabilities (no
http.send, net.lookup_ip_addr or opa.runtime), and check that the directory defines
data.passport.authz.decision. The budgets declared at data.passport.budgets are
checked too (unique names, known action names, per agent|resource|tenant, limit at
least 1, window a positive Go duration), each problem with its file. With --fmt,
also list the files "opa fmt" would change.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			fsys, src, err := policySource(args, policies.TestFS, configMap)
			if err != nil {
				return err
			}
			// Budgets first: a policy whose budgets do not parse does not
			// load, and this check names the file of each problem.
			budgets, err := budget.CheckFS(fsys)
			if err != nil {
				return fmt.Errorf("%s: budgets: %w", src, err)
			}
			if err := policies.Check(fsys, policy.Capabilities()); err != nil {
				return fmt.Errorf("%s: %w", src, err)
			}
			if checkFmt {
				bad, err := policies.NotFormatted(fsys)
				if err != nil {
					return fmt.Errorf("%s: %w", src, err)
				}
				if len(bad) > 0 {
					if len(args) > 0 {
						for i := range bad {
							bad[i] = filepath.Join(args[0], bad[i])
						}
					}
					return fmt.Errorf("%s: not formatted (run opa fmt -w, or make fmt): %s", src, strings.Join(bad, ", "))
				}
			}
			fmt.Fprintf(a.stdout, "%s: ok\n", src)
			for _, b := range budgets {
				fmt.Fprintf(a.stdout, "budget %s: %s, %d per %v per %s\n", b.Name, strings.Join(b.Actions, " "), b.Limit, b.Window, b.Per)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&checkFmt, "fmt", false, "also fail when a .rego file is not formatted as opa fmt would")
	cmd.Flags().BoolVar(&configMap, "kubernetes-configmap", false, configMapFlagHelp)
	return cmd
}

func (a *app) policyReplayCmd() *cobra.Command {
	var (
		dir          string
		tenants      []string
		since        time.Duration
		redisURL     string
		dataDir      string
		asJSON       bool
		limit        int
		failOnChange bool
		configMap    bool
		archive      string
	)
	cmd := &cobra.Command{
		Use:   "replay --policy DIR [--tenant T] [--since 24h] [--redis URL | --data DIR]",
		Short: "Re-evaluate recorded decisions against a candidate policy and print what would change",
		Long: `Replay reads the decision records of the tenant audit streams
("passport:{t:<tenant>}:audit"), rebuilds each call's policy input from the record,
evaluates the candidate policy directory exactly as the proxy would, and prints the
calls whose outcome would change: now denied and now allowed, grouped by tenant,
action and agent, with counts and the reasons. It only reads Redis.

Redis: --redis URL, else --data DIR (the redis_url of DIR/demo.json written by
passport up), else PASSPORT_REDIS_URL, else ` + redisx.DefaultURL + `.
Exit status: 0, or 3 with --fail-on-change when any decision would change.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if dir == "" {
				return errors.New("--policy DIR is required (the candidate policy directory)")
			}
			if since < 0 {
				return fmt.Errorf("--since %v: must not be negative", since)
			}
			url, err := a.policyRedisURL(redisURL, dataDir)
			if err != nil {
				return err
			}
			log, err := a.logger()
			if err != nil {
				return err
			}
			cand, err := policy.New(ctx, policy.Options{Name: "candidate", Dir: dir,
				Layout: policy.ParseDirLayout(configMap), Logger: log})
			if err != nil {
				return err
			}
			rc, err := redisx.New(a.redisConfig(url))
			if err != nil {
				return fmt.Errorf("redis %s: %w", redisx.Redact(url), err)
			}
			defer rc.Close()
			if err := redisx.Ping(ctx, rc); err != nil {
				return fmt.Errorf("redis %s: %w", redisx.Redact(url), err)
			}
			rep, err := replay.Run(ctx, replay.Options{
				Client: rc, Candidate: cand, Tenants: tenants, Since: since, Limit: limit, Archive: archive,
			})
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(a.stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(rep); err != nil {
					return err
				}
			} else if err := rep.WriteText(a.stdout); err != nil {
				return err
			}
			if failOnChange && len(rep.NowDenied)+len(rep.NowAllowed) > 0 {
				return &exitError{3, fmt.Errorf("candidate %s changes %d decisions", dir,
					replay.Total(rep.NowDenied)+replay.Total(rep.NowAllowed))}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "policy", "", "candidate policy directory (required)")
	f.StringSliceVar(&tenants, "tenant", nil, "tenant to replay (repeatable; default every tenant with an audit stream)")
	f.DurationVar(&since, "since", 24*time.Hour, "replay records of this last period (0: the whole stream)")
	f.StringVar(&redisURL, "redis", "", "Redis URL (default: --data, then PASSPORT_REDIS_URL, then "+redisx.DefaultURL+")")
	f.StringVar(&dataDir, "data", "", "directory of a running passport up (reads its demo.json)")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	f.IntVar(&limit, "limit", 0, "stop after this many decision records (0: no limit)")
	f.BoolVar(&failOnChange, "fail-on-change", false, "exit 3 when any decision would change (for CI)")
	f.StringVar(&archive, "archive", "", "audit archive directory (audit.archive.dir): replay its segments, then Redis, as one history")
	f.BoolVar(&configMap, "kubernetes-configmap", false, configMapFlagHelp)
	return cmd
}

// configMapFlagHelp is the help of --kubernetes-configmap, the proxy's
// policy.kubernetes_configmap.
const configMapFlagHelp = "the directory is a Kubernetes ConfigMap volume: follow its links (NAME -> ..data/NAME) and no other"

// policyRedisURL picks the Redis URL: explicit flags first, then the
// environment, then the default.
func (a *app) policyRedisURL(flagURL, dataDir string) (string, error) {
	if flagURL != "" {
		return flagURL, nil
	}
	if dataDir != "" {
		b, err := os.ReadFile(filepath.Join(dataDir, "demo.json"))
		if err != nil {
			return "", fmt.Errorf("--data: %w", err)
		}
		var demo struct {
			RedisURL   string   `json:"redis_url"`
			RedisAddrs []string `json:"redis_addrs"`
		}
		if err := json.Unmarshal(b, &demo); err != nil {
			return "", fmt.Errorf("--data %s: demo.json: %w", dataDir, err)
		}
		if demo.RedisURL == "" && len(demo.RedisAddrs) == 0 {
			return "", fmt.Errorf("--data %s: demo.json has no redis_url", dataDir)
		}
		return demo.RedisURL, nil
	}
	if u := a.getenv("PASSPORT_REDIS_URL"); u != "" {
		return u, nil
	}
	return redisx.DefaultURL, nil
}
