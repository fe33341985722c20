// Command bench is the proxy's load harness (`make bench`). In one run on
// this machine it measures, with keep-alive connections on loopback:
//
//   - the upstream alone,
//   - a bare httputil.ReverseProxy with a BufferPool (no checks),
//   - the full path: valid passport, Rego allow, decision record
//     acknowledged by Redis before forwarding, outcome record after,
//   - the deny path: valid passport, Rego deny, 403,
//   - the full path over TLS (-tls, on by default): the same proxy
//     configuration serving TLS, keep-alive connections (tls.go),
//   - nginx + auth_request + OPA: what a user would otherwise assemble,
//     nginx asking an OPA server that checks the passport in Rego
//     (nginx.go; skipped when nginx or opa cannot be had),
//
// and prints requests/s, p50 and p99 for each and the ratios of the full
// path to the bare proxy and to nginx + auth_request + OPA; then the bare
// and full paths at fixed rates (p99 side by side, errors); then the cost
// per call of the allow, deny and 401 paths, of the allowed call with a
// DPoP-bound passport and a fresh proof per call (dpop.go), and of the
// allowed call over TLS (cpu.go; tls.go): the proxy process's CPU, redis-server's CPU and
// the audit streams' bytes per call on warm keep-alive connections, with
// the other paths' CPU as a ratio of the allowed call's. It starts its
// own redis-server (from PATH, AOF with appendfsync always, as production
// audit wants) unless -redis-url names one, and uses the policy library
// built into the binary.
//
//	go run ./internal/bench -duration 3s -conns 100 -rates 1000,3000
package main

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/passport"
	"github.com/agentpassport/passport/policies"
	"github.com/agentpassport/passport/proxy"
)

func main() {
	if os.Getenv(childEnv) != "" {
		if err := runChild(); err != nil {
			fmt.Fprintln(os.Stderr, "bench proxy:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type options struct {
	duration time.Duration
	warmup   time.Duration
	conns    int
	rates    []int
	redisURL string
	fsync    string
	profile  string
	// costProfile is a CPU profile of the proxy process of the cost cases.
	costProfile string
	only        string
	noAudit     bool
	rounds      int
	tls         bool
}

func run() error {
	var o options
	var rates string
	flag.DurationVar(&o.duration, "duration", 3*time.Second, "measuring time per case")
	flag.DurationVar(&o.warmup, "warmup", 500*time.Millisecond, "unmeasured warm-up per case")
	flag.IntVar(&o.conns, "conns", 100, "concurrent keep-alive connections")
	flag.StringVar(&rates, "rates", "1000,3000", "fixed request rates for the latency comparison (empty: skip)")
	flag.StringVar(&o.redisURL, "redis-url", "", "use this Redis instead of starting a private redis-server")
	flag.StringVar(&o.fsync, "fsync", "always", "appendfsync of the private redis-server: always, everysec or no")
	flag.StringVar(&o.profile, "cpuprofile", "", "write a CPU profile of the full-path case to this file")
	flag.StringVar(&o.costProfile, "cost-cpuprofile", "", "write a CPU profile of the proxy process of the cost-per-call cases to this file")
	flag.StringVar(&o.only, "only", "", "run only the cases whose name contains this text (\"cost\": only the cost per call; \"cost per call/allow (200)\": only its cases that contain \"allow (200)\")")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds of the throughput cases, interleaved; each row is the round with the median req/s")
	flag.BoolVar(&o.noAudit, "no-audit", false, "analysis only: replace the audit stream by a sink that stores nothing (not the product path)")
	flag.BoolVar(&o.tls, "tls", true, "also measure the full path over TLS (keep-alive HTTP/1.1 connections, as the plain cases)")
	flag.Parse()
	if o.rounds < 1 {
		return fmt.Errorf("-rounds %d: want at least 1", o.rounds)
	}
	for _, r := range strings.Split(rates, ",") {
		if r = strings.TrimSpace(r); r != "" {
			n, err := strconv.Atoi(r)
			if err != nil || n <= 0 {
				return fmt.Errorf("-rates: %q is not a positive number", r)
			}
			o.rates = append(o.rates, n)
		}
	}

	// Ctrl-C ends the run early, and still stops what it started and
	// removes its temporary directories.
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	// Redis.
	diskDir := os.TempDir() // with -redis-url, the local disk stands in for the server's
	if o.redisURL == "" {
		url, dir, stop, err := startRedis(o.fsync)
		if err != nil {
			return err
		}
		defer stop()
		o.redisURL, diskDir = url, dir
	}
	ropts, err := redis.ParseURL(o.redisURL)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(ropts)
	defer rdb.Close()

	// Upstream: a small JSON answer, as a control API would give (and a
	// tools/call result, as an MCP server would, at /mcp).
	upstream, upURL, err := serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path == "/mcp" {
			_, _ = w.Write([]byte(mcpResult))
			return
		}
		_, _ = w.Write([]byte(`{"name":"checkout","status":"healthy","replicas":3}`))
	}))
	if err != nil {
		return err
	}
	defer upstream.Close()

	// Bare reverse proxy with a buffer pool.
	target, _ := url.Parse(upURL)
	bare := &httputil.ReverseProxy{
		Rewrite:    func(pr *httputil.ProxyRequest) { pr.SetURL(target); pr.SetXForwarded() },
		Transport:  &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 1024, IdleConnTimeout: 90 * time.Second},
		BufferPool: bufPool{},
	}
	bareSrv, bareURL, err := serve(bare)
	if err != nil {
		return err
	}
	defer bareSrv.Close()

	// Keys and JWKS, as the authority would serve them.
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	jwks := fmt.Sprintf(`{"keys":[{"kty":"OKP","crv":"Ed25519","x":%q,"kid":"bench-1","alg":"EdDSA","use":"sig"}]}`,
		base64.RawURLEncoding.EncodeToString(pub))
	jwksSrv, jwksURL, err := serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(jwks))
	}))
	if err != nil {
		return err
	}
	defer jwksSrv.Close()

	// The full proxy on the real policy library and the real audit stream.
	reg := prometheus.NewRegistry()
	stream, err := audit.NewStream(rdb, audit.StreamConfig{}, log, reg)
	if err != nil {
		return fmt.Errorf("audit stream: %w", err)
	}
	defer stream.Close()
	actx, stopAudit := context.WithCancel(ctx)
	auditDone := make(chan struct{})
	go func() { _ = stream.Run(actx); close(auditDone) }()
	defer func() { stopAudit(); <-auditDone }()

	cfg := benchConfig(upURL, jwksURL+"/.well-known/jwks.json", o.redisURL)
	var sink audit.Sink = stream
	if o.noAudit {
		sink = nopSink{}
	}
	lib, err := budgetedLibrary()
	if err != nil {
		return err
	}
	p, err := proxy.New(cfg, proxy.Deps{Redis: rdb, Audit: sink, Logger: log, Registry: reg, Policies: lib})
	if err != nil {
		return err
	}
	pln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	aln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	pctx, stopProxy := context.WithCancel(ctx)
	proxyDone := make(chan error, 1)
	go func() { proxyDone <- p.Serve(pctx, pln, aln) }()
	defer func() { stopProxy(); <-proxyDone }()
	proxyURL := "http://" + pln.Addr().String()
	deadline := time.Now().Add(10 * time.Second)
	for !p.Ready(ctx) {
		if time.Now().After(deadline) {
			return errors.New("proxy not ready after 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}

	var tf *tlsFiles // the TLS cases' certificate, with -tls
	var tlsURL string
	if o.tls {
		if tf, err = setupTLS(); err != nil {
			return err
		}
		defer tf.remove()
	}
	if tf != nil && selected(o.only, tlsCaseName) {
		url, stop, err := startTLSProxy(ctx, cfg, proxy.Deps{Redis: rdb, Audit: sink, Logger: log, Policies: policies.FS}, tf)
		if err != nil {
			return err
		}
		defer stop()
		tlsURL = url
	}

	// Agents: a HIGH healer (allowed to restart checkout) and a LOW
	// observer (denied), both registered as the authority would.
	now := time.Now()
	for _, id := range []string{"healer-1", "healer-2", "observer-1"} {
		if err := rdb.HSet(ctx, passport.AgentKey("acme", id), passport.FieldReputation, 90,
			passport.FieldReputationBaseline, 90, passport.FieldReputationAt, now.UnixMilli()).Err(); err != nil {
			return err
		}
	}
	healer := sign(priv, cfg, "healer-1", "healer", passport.TrustHigh, now, "service.list", "service.get", "service.restart")
	observer := sign(priv, cfg, "observer-1", "observer", passport.TrustLow, now, "service.get")
	// healer-2 holds a DPoP-bound passport (the DPoP cost row).
	boundKey, jkt := newDPoPKey()
	bound := signBound(priv, cfg, "healer-2", "healer", passport.TrustHigh, now, jkt, "service.get", "service.restart")
	dpopKeys.Store(bound, boundKey)

	// The comparison point, checked to refuse before it is measured.
	var ar *authRequest
	var cmpErr error
	if selected(o.only, authRequestName) {
		ar, cmpErr = startAuthRequest(ctx, authRequestConfig{upstream: upURL, jwks: jwks,
			issuer: cfg.Issuer, audience: cfg.Audience, conns: o.conns})
		if cmpErr == nil {
			defer ar.Close()
			cmpErr = ar.check("/services/checkout/restart", healer, observer)
		}
	}

	type benchCase struct {
		name, url, method, token string
		want                     int
	}
	cases := []benchCase{
		{"upstream direct", upURL + "/services/checkout/restart", "POST", "", 200},
		{"bare reverse proxy", bareURL + "/services/checkout/restart", "POST", "", 200},
		{"full path (allow)", proxyURL + "/services/checkout/restart", "POST", healer, 200},
		{"deny path (403)", proxyURL + "/services/checkout/restart", "POST", observer, 403},
		// A budget's cost: a GET that no budget counts, and one that the
		// bench budget counts (a reservation script per call).
		{unbudgetedName, proxyURL + "/services", "GET", healer, 200},
		{budgetedName, proxyURL + "/services/checkout", "GET", healer, 200},
		{mcpCaseName, proxyURL + "/mcp", mcpMethod, healer, 200},
	}
	if tlsURL != "" {
		cases = append(cases, benchCase{tlsCaseName, tlsURL + "/services/checkout/restart", "POST", healer, 200})
	}
	// Each case must answer as expected before it is measured.
	for _, c := range cases {
		if st, err := once(c.method, c.url, c.token); err != nil || st != c.want {
			return fmt.Errorf("%s: status %d (%v), want %d", c.name, st, err, c.want)
		}
	}
	fmt.Printf("proxy benchmark: %d keep-alive connections, %s per case (+%s warm-up), %d interleaved rounds (median shown), GOMAXPROCS=%s, redis appendfsync=%s\n\n",
		o.conns, o.duration, o.warmup, o.rounds, gomaxprocs(), o.fsync)

	// The throughput cases run in rounds, one case after the other in each
	// round, so that a slower stretch of a shared machine hits every case
	// alike; each row is the case's median round, and each ratio the median
	// of the rounds' own ratios.
	type measured struct {
		name string
		run  func() result
	}
	var todo []measured
	for _, c := range cases {
		if selected(o.only, c.name) {
			todo = append(todo, measured{c.name, func() result {
				return load(ctx, c.method, c.url, c.token, c.want, o.conns, o.warmup, o.duration, 0)
			}})
		}
	}
	var skip skipped
	var cmpNote string // printed under the table when the comparison cannot run
	switch {
	case !selected(o.only, authRequestName):
	case errors.As(cmpErr, &skip):
		cmpNote = fmt.Sprintf("%-26s skipped: %s", authRequestName, skip)
	case cmpErr != nil:
		cmpNote = fmt.Sprintf("%-26s FAILED: %v", authRequestName, cmpErr)
	default:
		todo = append(todo, measured{authRequestName, func() result {
			return load(ctx, "POST", ar.url+"/services/checkout/restart", healer, 200, o.conns, o.warmup, o.duration, 0)
		}})
	}
	rounds := map[string][]result{}
	for r := range o.rounds {
		fmt.Fprintf(os.Stderr, "\rround %d/%d ", r+1, o.rounds)
		for _, m := range todo {
			if ctx.Err() != nil {
				return errors.New("interrupted")
			}
			if o.profile != "" && r == 0 && strings.HasPrefix(m.name, "full") {
				f, err := os.Create(o.profile)
				if err != nil {
					return err
				}
				_ = pprof.StartCPUProfile(f)
				rounds[m.name] = append(rounds[m.name], m.run())
				pprof.StopCPUProfile()
				f.Close()
				continue
			}
			rounds[m.name] = append(rounds[m.name], m.run())
		}
	}
	fmt.Fprintf(os.Stderr, "\r%20s\r", "")
	fmt.Printf("%-26s %12s %10s %10s %8s\n", "case", "req/s", "p50", "p99", "errors")
	for _, m := range todo {
		printRow(m.name, median(rounds[m.name]))
	}
	if cmpNote != "" {
		fmt.Println(cmpNote)
	}
	full := rounds["full path (allow)"]
	ratio := func(other []result) (float64, bool) {
		if len(full) == 0 || len(other) != len(full) {
			return 0, false
		}
		rs := make([]float64, len(full))
		for i := range full {
			if other[i].rps <= 0 {
				return 0, false
			}
			rs[i] = full[i].rps / other[i].rps
		}
		slices.Sort(rs)
		return rs[len(rs)/2], true
	}
	if b, u := rounds[budgetedName], rounds[unbudgetedName]; len(b) > 0 && len(b) == len(u) {
		rs := make([]float64, len(b))
		for i := range b {
			rs[i] = b[i].rps / max(u[i].rps, 1)
		}
		slices.Sort(rs)
		fmt.Printf("\nbudgeted GET / unbudgeted GET: %.2f (one budget reserved per call)\n", rs[len(rs)/2])
	}
	bareRatio, okBare := ratio(rounds["bare reverse proxy"])
	cmpRatio, okCmp := ratio(rounds[authRequestName])
	if okBare || okCmp {
		fmt.Println()
	}
	if okBare {
		fmt.Printf("full path / bare proxy: %.2f (target >= 0.5)\n", bareRatio)
	}
	if okCmp {
		fmt.Printf("full path / nginx+auth_request+OPA: %.2f (target >= 3)\n", cmpRatio)
	}

	if len(o.rates) > 0 {
		disk, err := probeFsync(diskDir, 500, 256)
		if err != nil {
			return err
		}
		fmt.Printf("\ndisk flush (fdatasync of a 256-byte append, %d times, in redis-server's data directory): p50 %s, p99 %s\n",
			disk.n, fmtDur(disk.p50), fmtDur(disk.p99))
		fmt.Printf("%-10s %-22s %10s %10s %10s %8s %8s\n", "rate", "case", "achieved", "p50", "p99", "errors", "missed")
		for _, rate := range o.rates {
			if ctx.Err() != nil {
				return errors.New("interrupted")
			}
			var p99s [2]time.Duration
			for i, c := range cases[1:3] {
				res := load(ctx, c.method, c.url, c.token, c.want, o.conns, o.warmup, o.duration, rate)
				p99s[i] = res.p99
				fmt.Printf("%-10s %-22s %10.0f %10s %10s %8d %8d\n", strconv.Itoa(rate)+"/s", c.name, res.rps, fmtDur(res.p50), fmtDur(res.p99), res.errors, res.missed)
			}
			fmt.Printf("%-10s %-22s %10s %10s %10s   %s\n", "", "p99 full - bare", "", "", fmtDur(p99s[1]-p99s[0]),
				latencyTarget(o.fsync, rate, disk))
		}
	}
	costCases, costSel := "", selected(o.only, costName)
	if rest, ok := strings.CutPrefix(o.only, costName+"/"); ok {
		costCases, costSel = rest, true
	}
	if costSel {
		restart := "/services/checkout/restart"
		cases := []cpuCase{
			{name: "allow (200)", url: restart, method: "POST", token: healer, want: 200},
			{name: "deny (403)", url: restart, method: "POST", token: observer, want: 403, target: 1.2},
			{name: "no passport (401)", url: restart, method: "POST", want: 401, target: 1.2},
			// One proof per call: a signature check and a SET NX more
			// than the bearer path (issue 19).
			{name: "allow with DPoP (200)", url: restart, method: "POST", token: bound, want: 200, target: 1.3},
			{name: "MCP tools/call allow (200)", url: "/mcp", method: mcpMethod, token: healer, want: 200, target: 1.2},
		}
		if tf != nil {
			cases = append(cases, cpuCase{name: "allow over TLS (200)", url: restart, method: "POST", token: healer, want: 200,
				tls: true, target: 1.15})
		}
		cases = slices.DeleteFunc(cases, func(c cpuCase) bool { return !strings.Contains(c.name, costCases) })
		if len(cases) == 0 {
			return fmt.Errorf("-only %q: no cost case's name contains %q", o.only, costCases)
		}
		if err := runCostCases(ctx, o, rdb, upURL, cfg.JWKSURL, tf, cases); err != nil {
			return err
		}
	}
	if cmpErr != nil && !errors.As(cmpErr, &skip) {
		return fmt.Errorf("%s: %w", authRequestName, cmpErr)
	}
	return nil
}

// latencyTarget says what issue 16 asks of the full path's p99 above the
// bare proxy's at a fixed rate.
func latencyTarget(fsync string, rate int, disk fsyncProbe) string {
	switch {
	case fsync == "always" && rate <= 1000:
		return "(target <= disk flush p99 + 0.5 ms = " + fmtDur(disk.p99+500*time.Microsecond) + ")"
	case fsync == "everysec" && rate <= 1000:
		return "(target <= 1 ms)"
	case fsync == "everysec" && rate <= 3000:
		return "(target <= 2 ms)"
	}
	return ""
}

// costName selects the cost-per-call cases with -only.
const costName = "cost per call"

// selected reports whether -only lets the case named name run.
func selected(only, name string) bool {
	return only == "" || strings.Contains(name, only)
}

func printRow(name string, res result) {
	fmt.Printf("%-26s %12.0f %10s %10s %8d\n", name, res.rps, fmtDur(res.p50), fmtDur(res.p99), res.errors)
}

// median is the result with the median req/s.
func median(rs []result) result {
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b result) int { return cmp.Compare(a.rps, b.rps) })
	return s[len(s)/2]
}

type result struct {
	rps      float64
	p50, p99 time.Duration
	errors   int64 // answers with another status, or transport errors
	missed   int64 // fixed rate only: slots not sent because every connection was busy
}

// load runs conns workers against url for warmup+d. With rate 0 each
// worker sends back to back (closed loop); with a rate, requests are
// started on a fixed schedule shared by the workers (open loop).
func load(ctx context.Context, method, url, token string, want, conns int, warmup, d time.Duration, rate int) result {
	tr := loadTransport(conns)
	defer tr.CloseIdleConnections()
	return loadWith(ctx, tr, method, url, token, want, conns, warmup, d, rate)
}

// loadTransport keeps conns keep-alive connections (trusting benchTLS).
func loadTransport(conns int) *http.Transport {
	return &http.Transport{MaxIdleConns: conns, MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns, IdleConnTimeout: time.Minute,
		TLSClientConfig: benchTLS}
}

// loadWith is load on the connections of tr, which a caller may keep warm
// from one load to the next.
func loadWith(ctx context.Context, tr *http.Transport, method, url, token string, want, conns int, warmup, d time.Duration, rate int) result {
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	var ticks chan struct{}
	stop := make(chan struct{})
	if rate > 0 {
		ticks = make(chan struct{}, conns)
		go func() {
			interval := time.Second / time.Duration(rate)
			next := time.Now()
			for {
				next = next.Add(interval)
				if wait := time.Until(next); wait > 0 {
					time.Sleep(wait)
				}
				select {
				case ticks <- struct{}{}:
				case <-stop:
					return
				case <-ctx.Done():
					return
				default: // all workers busy: counted as an error below
					missed.Add(1)
				}
			}
		}()
	}
	missed.Store(0)
	start := time.Now()
	measureFrom := start.Add(warmup)
	end := measureFrom.Add(d)
	lat := make([][]time.Duration, conns)
	var errs atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			samples := make([]time.Duration, 0, 1<<14)
			for {
				if ticks != nil {
					select {
					case <-ticks:
					case <-time.After(time.Until(end)):
						lat[i] = samples
						return
					case <-ctx.Done():
						lat[i] = samples
						return
					}
				}
				t0 := time.Now()
				if t0.After(end) || ctx.Err() != nil {
					lat[i] = samples
					return
				}
				req := newLoadRequest(method, url, token)
				resp, err := client.Do(req)
				ok := err == nil && resp.StatusCode == want
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				if t0.After(measureFrom) {
					if !ok {
						errs.Add(1)
					}
					samples = append(samples, time.Since(t0))
				}
			}
		}(i)
	}
	wg.Wait()
	close(stop)
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	slices.Sort(all)
	r := result{errors: errs.Load(), missed: missed.Load()}
	if n := len(all); n > 0 {
		r.rps = float64(n) / d.Seconds()
		r.p50 = all[n/2]
		r.p99 = all[n*99/100]
	}
	return r
}

var missed atomic.Int64

func once(method, url, token string) (int, error) {
	req := newLoadRequest(method, url, token)
	tr := &http.Transport{TLSClientConfig: benchTLS}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

func sign(key ed25519.PrivateKey, cfg proxy.Config, id, typ string, trust passport.TrustLevel, now time.Time, actions ...string) string {
	return signBound(key, cfg, id, typ, trust, now, "", actions...)
}

// signBound is sign for a passport bound to the key with thumbprint jkt
// (none when empty).
func signBound(key ed25519.PrivateKey, cfg proxy.Config, id, typ string, trust passport.TrustLevel, now time.Time, jkt string, actions ...string) string {
	c := &passport.Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer: cfg.Issuer, Subject: "client-" + id, Audience: jwt.ClaimStrings{cfg.Audience},
			ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour)), IssuedAt: jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now), ID: "bench-" + id,
		},
		ClientID: "client-" + id, Tenant: "acme", Scope: strings.Join(actions, " "),
		Agent: passport.Agent{ID: id, Name: id, Type: typ, TrustLevel: trust, Reputation: 90},
		AuthorizationDetails: []passport.AuthorizationDetail{{Type: passport.AuthorizationDetailType, Actions: actions,
			Locations: []string{cfg.Audience}}},
	}
	if jkt != "" {
		c.Cnf = &passport.Confirmation{JKT: jkt}
	}
	t := jwt.NewWithClaims(jwt.SigningMethodEdDSA, c)
	t.Header["typ"] = passport.TokenType
	t.Header["kid"] = "bench-1"
	s, err := t.SignedString(key)
	if err != nil {
		panic(err)
	}
	return s
}

func serve(h http.Handler) (*http.Server, string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return srv, "http://" + ln.Addr().String(), nil
}

// startRedis starts a private redis-server on a free port.
// It returns the server's URL and data directory.
func startRedis(fsync string) (string, string, func(), error) {
	bin := os.Getenv("PASSPORT_REDIS_SERVER")
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("redis-server"); err != nil {
			return "", "", nil, errors.New("redis-server not found: run `make deps`, or pass -redis-url")
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", "", nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	dir, err := os.MkdirTemp("", "passport-bench-redis")
	if err != nil {
		return "", "", nil, err
	}
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir, "--save", "",
		"--appendonly", "yes", "--appendfsync", fsync, "--logfile", filepath.Join(dir, "redis.log"))
	if err := cmd.Start(); err != nil {
		return "", "", nil, fmt.Errorf("start redis-server: %w", err)
	}
	stop := func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
		_ = os.RemoveAll(dir)
	}
	url := fmt.Sprintf("redis://127.0.0.1:%d/0", port)
	c := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port)})
	defer c.Close()
	for i := 0; ; i++ {
		if c.Ping(context.Background()).Err() == nil {
			return url, dir, stop, nil
		}
		if i > 200 {
			stop()
			return "", "", nil, errors.New("redis-server did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// nopSink acknowledges without storing: for measuring the audit's share.
type nopSink struct{}

func (nopSink) Append(_ context.Context, rec *audit.Record) (audit.Receipt, error) {
	return audit.ReceiptForTest("0-0", rec), nil
}
func (nopSink) Enqueue(*audit.Record) {}

type bufPool struct{}

var pool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufPool) Get() []byte  { return *(pool.Get().(*[]byte)) }
func (bufPool) Put(b []byte) { pool.Put(&b) }

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%dµs", d.Microseconds())
	}
}

func gomaxprocs() string {
	if v := os.Getenv("GOMAXPROCS"); v != "" {
		return v
	}
	return strconv.Itoa(runtime.GOMAXPROCS(0))
}
