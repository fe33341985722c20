package main

// The cost of a call, by path: what an allowed call, a denied call (403)
// and a call without a passport (401) cost the proxy's process in CPU, what
// they cost redis-server in CPU, and how many bytes they add to the audit
// streams. A flood of denials or of passport-less calls must cost no more
// than allowed calls (issue 13, item 9).
//
// The proxy runs here in a child process (this binary again, with
// childEnv set), so that its CPU time is its own: in the parent it would be
// mixed with the load generator's and the upstream's. Its CPU time comes
// from /proc/PID/stat, redis-server's from INFO (used_cpu_user and
// used_cpu_sys: its own getrusage), the bytes from MEMORY USAGE of each
// tenant's audit stream before and after.

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/tlsx"
	"github.com/agentpassport/passport/passport"
	"github.com/agentpassport/passport/policies"
	"github.com/agentpassport/passport/proxy"
)

// childEnv makes this binary run only a proxy (runChild); the parent
// passes the proxy's settings in the environment.
const (
	childEnv         = "PASSPORT_BENCH_CHILD"
	childUpstreamEnv = "PASSPORT_BENCH_UPSTREAM"
	childJWKSEnv     = "PASSPORT_BENCH_JWKS"
	childRedisEnv    = "PASSPORT_BENCH_REDIS"
	childNoAuditEnv  = "PASSPORT_BENCH_NO_AUDIT"
	childProfileEnv  = "PASSPORT_BENCH_PROFILE"
	childTLSCertEnv  = "PASSPORT_BENCH_TLS_CERT" // with childTLSKeyEnv: serve TLS
	childTLSKeyEnv   = "PASSPORT_BENCH_TLS_KEY"
)

// benchConfig is the proxy configuration of both the in-process proxy and
// the child.
func benchConfig(upstream, jwks, redisURL string) proxy.Config {
	cfg := proxy.FleetConfig(upstream)
	mcp := proxy.FleetMCPRoute()
	mcp.Upstream = "fleet" // the bench upstream answers /mcp too
	cfg.Routes = append(cfg.Routes, mcp)
	cfg.Issuer = "http://bench.authority"
	cfg.JWKSURL = jwks
	cfg.Redis.URL = redisURL
	cfg.ResourceURL = benchResourceURL // the htu of DPoP proofs (dpop.go)
	return cfg
}

// runChild is the child process: a proxy on a free port, printed on
// stdout, until stdin closes (the parent is done or gone) or a signal.
func runChild() error {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); cancel() }()
	if path := os.Getenv(childProfileEnv); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := benchConfig(os.Getenv(childUpstreamEnv), os.Getenv(childJWKSEnv), os.Getenv(childRedisEnv))
	cfg.TLS = tlsx.Server{CertFile: os.Getenv(childTLSCertEnv), KeyFile: os.Getenv(childTLSKeyEnv)}
	ropts, err := redis.ParseURL(cfg.Redis.URL)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(ropts)
	defer rdb.Close()
	reg := prometheus.NewRegistry()
	var sink audit.Sink = nopSink{}
	if os.Getenv(childNoAuditEnv) == "" {
		stream, err := audit.NewStream(rdb, audit.StreamConfig{}, log, reg)
		if err != nil {
			return err
		}
		defer stream.Close()
		sctx, stop := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = stream.Run(sctx); close(done) }()
		defer func() { stop(); <-done }()
		sink = stream
	}
	p, err := proxy.New(cfg, proxy.Deps{Redis: rdb, Audit: sink, Logger: log, Registry: reg, Policies: policies.FS})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	aln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr().String())
	return p.Serve(ctx, ln, aln)
}

// proxyChild is a proxy in a child process.
type proxyChild struct {
	cmd   *exec.Cmd
	stdin io.Closer
	url   string
}

// startProxyChild starts a proxy process; with tf it serves TLS.
func startProxyChild(upstream, jwks, redisURL string, noAudit bool, profile string, tf *tlsFiles) (*proxyChild, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), childEnv+"=proxy", childUpstreamEnv+"="+upstream, childJWKSEnv+"="+jwks,
		childRedisEnv+"="+redisURL)
	if noAudit {
		cmd.Env = append(cmd.Env, childNoAuditEnv+"=1")
	}
	if profile != "" {
		cmd.Env = append(cmd.Env, childProfileEnv+"="+profile)
	}
	scheme := "http://"
	if tf != nil {
		cmd.Env = append(cmd.Env, childTLSCertEnv+"="+tf.cert, childTLSKeyEnv+"="+tf.key)
		scheme = "https://"
	}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the proxy process: %w", err)
	}
	c := &proxyChild{cmd: cmd, stdin: stdin}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		c.stop()
		return nil, fmt.Errorf("the proxy process did not start: %w", err)
	}
	c.url = scheme + strings.TrimSpace(line)
	return c, nil
}

func (c *proxyChild) stop() {
	_ = c.stdin.Close()
	done := make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
	}
}

// userHZ is the unit of utime and stime in /proc/PID/stat: USER_HZ, 100
// on every Linux architecture Go runs on.
const userHZ = 100

// procCPU is the user+system CPU time of a process so far, from
// /proc/PID/stat (Linux only).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces and parentheses: fields start after
	// the last ")". utime and stime are fields 14 and 15 of the line.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, errors.New("short /proc stat line")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(ut+st) * time.Second / userHZ, nil
}

// redisCPU is redis-server's own user+system CPU time so far (INFO cpu).
func redisCPU(ctx context.Context, rdb *redis.Client) (time.Duration, error) {
	info, err := rdb.Info(ctx, "cpu").Result()
	if err != nil {
		return 0, err
	}
	var total float64
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (k == "used_cpu_user" || k == "used_cpu_sys") {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return 0, fmt.Errorf("INFO cpu %s: %w", k, err)
			}
			total += f
		}
	}
	return time.Duration(total * float64(time.Second)), nil
}

// streamBytes is the memory of the audit streams of tenants (MEMORY USAGE
// with every entry sampled), and how many entries they hold.
func streamBytes(ctx context.Context, rdb *redis.Client, tenants []string) (bytes, entries int64, err error) {
	for _, t := range tenants {
		key := passport.AuditStreamKey(t)
		n, err := rdb.MemoryUsage(ctx, key, 0).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return 0, 0, err
		}
		l, err := rdb.XLen(ctx, key).Result()
		if err != nil {
			return 0, 0, err
		}
		bytes += n
		entries += l
	}
	return bytes, entries, nil
}

// cost is what one window of calls on one path cost.
type cost struct {
	calls        float64
	proxyCPU     time.Duration // per call
	redisCPU     time.Duration // per call
	redisBytes   float64       // per call
	redisEntries float64       // per call
	errors       int64
}

// cpuCase is one path measured.
type cpuCase struct {
	name, url, method, token string
	want                     int
	// tls sends the calls to a proxy process serving TLS.
	tls bool
	// target is the most this path's proxy CPU per call may be, as a
	// multiple of the first case's; 0: none.
	target float64
}

// measureCost runs c against the child proxy for d (after a warm-up) and
// returns what the calls cost. The measured calls use the connections the
// warm-up opened: the cost of a call on a warm keep-alive connection, TLS
// handshakes left out.
func measureCost(ctx context.Context, o options, ch *proxyChild, rdb *redis.Client, c cpuCase) (cost, error) {
	tr := loadTransport(o.conns)
	defer tr.CloseIdleConnections()
	// DPoP: enough proofs for the warm-up and the run at a high rate,
	// made before either (dpop.go); more are signed as needed.
	prepareProofs(c.token, c.method, c.url, int(20000*(o.warmup+o.duration).Seconds()))
	loadWith(ctx, tr, c.method, ch.url+c.url, c.token, c.want, o.conns, 0, o.warmup, 0)
	tenants := []string{"acme", proxy.DefaultUnattributed}
	settle(ctx, rdb, tenants)
	p0, err := procCPU(ch.cmd.Process.Pid)
	if err != nil {
		return cost{}, err
	}
	r0, err := redisCPU(ctx, rdb)
	if err != nil {
		return cost{}, err
	}
	b0, e0, err := streamBytes(ctx, rdb, tenants)
	if err != nil {
		return cost{}, err
	}
	res := loadWith(ctx, tr, c.method, ch.url+c.url, c.token, c.want, o.conns, 0, o.duration, 0)
	// Records are written in batches, some after the answer: wait for the
	// streams to stop growing, so that each call's writes are counted.
	settle(ctx, rdb, tenants)
	p1, err := procCPU(ch.cmd.Process.Pid)
	if err != nil {
		return cost{}, err
	}
	r1, err := redisCPU(ctx, rdb)
	if err != nil {
		return cost{}, err
	}
	b1, e1, err := streamBytes(ctx, rdb, tenants)
	if err != nil {
		return cost{}, err
	}
	n := res.rps * o.duration.Seconds()
	if n <= 0 {
		return cost{}, fmt.Errorf("%s: no calls completed", c.name)
	}
	return cost{calls: n, proxyCPU: time.Duration(float64(p1-p0) / n), redisCPU: time.Duration(float64(r1-r0) / n),
		redisBytes: float64(b1-b0) / n, redisEntries: float64(e1-e0) / n, errors: res.errors}, nil
}

// settle waits until the streams' length stays the same for 1.1 s (at
// most 10 s): longer than a writer that aggregates refusals per second
// takes to flush.
func settle(ctx context.Context, rdb *redis.Client, tenants []string) {
	deadline := time.Now().Add(10 * time.Second)
	last, stable := int64(-1), time.Now()
	for time.Now().Before(deadline) && ctx.Err() == nil {
		_, n, err := streamBytes(ctx, rdb, tenants)
		if err != nil {
			return
		}
		if n != last {
			last, stable = n, time.Now()
		} else if time.Since(stable) >= 1100*time.Millisecond {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// runCostCases measures every case in interleaved rounds on a proxy in a
// child process (the TLS cases on a second one, serving TLS with tf) and
// prints the median round of each.
func runCostCases(ctx context.Context, o options, rdb *redis.Client, upstream, jwks string, tf *tlsFiles, cases []cpuCase) error {
	if _, err := procCPU(os.Getpid()); err != nil {
		fmt.Printf("\ncost per call: skipped (no /proc/PID/stat here: %v)\n", err)
		return nil
	}
	plain, err := startProxyChild(upstream, jwks, o.redisURL, o.noAudit, o.costProfile, nil)
	if err != nil {
		return err
	}
	defer plain.stop()
	children := map[bool]*proxyChild{false: plain}
	for _, c := range cases {
		if c.tls && children[true] == nil {
			tc, err := startProxyChild(upstream, jwks, o.redisURL, o.noAudit, "", tf)
			if err != nil {
				return err
			}
			defer tc.stop()
			children[true] = tc
		}
	}
	for _, c := range cases {
		ch := children[c.tls]
		if st, err := once(c.method, ch.url+c.url, c.token); err != nil || st != c.want {
			return fmt.Errorf("cost case %s: status %d (%v), want %d", c.name, st, err, c.want)
		}
	}
	rounds := map[string][]cost{}
	for r := range o.rounds {
		fmt.Fprintf(os.Stderr, "\rcost round %d/%d ", r+1, o.rounds)
		for _, c := range cases {
			if ctx.Err() != nil {
				return errors.New("interrupted")
			}
			k, err := measureCost(ctx, o, children[c.tls], rdb, c)
			if err != nil {
				return err
			}
			rounds[c.name] = append(rounds[c.name], k)
		}
	}
	fmt.Fprintf(os.Stderr, "\r%20s\r", "")
	fmt.Printf("\ncost per call: proxy in its own process, %d connections, %s per path, median of %d rounds (CPU time, not wall time)\n",
		o.conns, o.duration, o.rounds)
	fmt.Printf("%-22s %10s %12s %12s %12s %14s %8s\n", "path", "calls", "proxy CPU", "redis CPU", "redis bytes", "stream entries", "errors")
	med := map[string]cost{}
	for _, c := range cases {
		ks := slices.Clone(rounds[c.name])
		slices.SortFunc(ks, func(a, b cost) int { return cmp.Compare(a.proxyCPU, b.proxyCPU) })
		k := ks[len(ks)/2]
		med[c.name] = k
		fmt.Printf("%-22s %10.0f %12s %12s %12.0f %14.2f %8d\n", c.name, k.calls, fmtDur(k.proxyCPU), fmtDur(k.redisCPU),
			k.redisBytes, k.redisEntries, k.errors)
	}
	allow := med[cases[0].name] // the reference: it has no target of its own
	for _, c := range cases[1:] {
		if allow.proxyCPU > 0 && c.target > 0 && cases[0].target == 0 {
			fmt.Printf("%s / %s proxy CPU per call: %.2f (target <= %.2f)\n", c.name, cases[0].name,
				float64(med[c.name].proxyCPU)/float64(allow.proxyCPU), c.target)
		}
	}
	return nil
}
