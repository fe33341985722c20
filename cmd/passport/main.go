// Command passport is the one binary of Agent Passport: the authority, the
// proxy, the healer, the chaos simulator, the demo stack and the tools.
//
// main only wires packages together: flags, then the environment, then the
// YAML file, then defaults, then Run. It holds no logic of its own.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() { os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr)) }

// app is what every subcommand shares: the environment, the output streams
// and the global logging flags.
type app struct {
	getenv    func(string) string
	stdout    io.Writer
	stderr    io.Writer
	logLevel  string
	logFormat string
	// caFileFlag is --ca-file (see caFile).
	caFileFlag string
	// redisAddrs and redisMaster are --redis-addrs and --redis-master
	// (see redisEnv).
	redisAddrs, redisMaster string
	// dataDir is the --data DIR of a command that talks to a running
	// `passport up` (beforeCommand), whose demo.json names the CA to trust.
	dataDir string
	// oneShot is set for commands that are not servers (beforeCommand):
	// they log warnings and errors only unless --log-level is given.
	oneShot bool
}

// exitError carries a specific exit code (e.g. audit verify found a break).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	a := &app{getenv: getenv, stdout: stdout, stderr: stderr}
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "passport: %v\n", err)
		var ee *exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		return 1
	}
	return 0
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "passport",
		Short: "Agent Passport: signed, short-lived passports for AI agents, enforced by a sidecar proxy",
		Long: `Agent Passport makes every AI agent show a passport before it touches production.

The authority issues short-lived signed JWT passports; the proxy stands in front of an
infrastructure control API, verifies the passport, evaluates Rego, and records every
decision in an append-only audit stream in Redis before anything is forwarded.`,
		SilenceUsage:      true,
		SilenceErrors:     true,
		PersistentPreRunE: a.beforeCommand,
	}
	root.PersistentFlags().StringVar(&a.logLevel, "log-level", "", "log level: debug, info, warn, error (default info for servers, warn for one-shot commands)")
	root.PersistentFlags().StringVar(&a.logFormat, "log-format", "text", "log format: text or json")
	root.PersistentFlags().StringVar(&a.redisAddrs, "redis-addrs", "", "Redis Cluster or Sentinel seeds host:port,host:port, replacing the Redis URL's address (default: demo.json's redis_addrs with --data, else $PASSPORT_REDIS_ADDRS)")
	root.PersistentFlags().StringVar(&a.redisMaster, "redis-master", "", "the Sentinel primary's name: --redis-addrs are then sentinels (default $PASSPORT_REDIS_MASTER)")
	root.PersistentFlags().StringVar(&a.caFileFlag, "ca-file", "", "PEM CA bundle trusted for the TLS services this command calls (default $PASSPORT_CA_FILE, else the system's roots)")
	root.AddCommand(
		a.upCmd(),
		a.authorityCmd(),
		a.proxyCmd(),
		a.fleetCmd(),
		a.healerCmd(),
		a.chaosCmd(),
		a.dashboardCmd(),
		a.agentCmd(),
		a.approvalCmd(),
		a.tokenCmd(),
		a.auditCmd(),
		a.witnessCmd(),
		a.policyCmd(),
		a.incidentsCmd(),
		a.healthcheckCmd(),
		a.versionCmd(),
	)
	return root
}
