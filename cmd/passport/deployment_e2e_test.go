package main

import (
	"bufio"
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/internal/stack"
	"github.com/agentpassport/passport/internal/tlsx"
	"github.com/agentpassport/passport/passport"
)

// TestDeploymentEndToEnd runs the built binary as separate processes
// configured as docker-compose.yml configures them (its commands, its
// config files, its environment), with loopback addresses instead of
// container names and an audit: section with a key made by `passport
// audit keygen` in every writing component: two authorities sharing one
// issuer, two proxies (each asking another authority), the fleet, the
// healer and the dashboard, on one real Redis. It blocks an agent through
// one authority and finds the agent_blocked record in the stream (written
// by that authority's writer) and on the dashboard's feed; sees the block
// enforced by the other proxy; fires chaos twice from the CLI and finds one
// writer for both runs; reads every /metrics; stops everything with
// SIGTERM; and verifies the whole trail with every writer's key pinned.
func TestDeploymentEndToEnd(t *testing.T) {
	bin := passportBinary(t)
	root := repoRoot(t)
	tmp := t.TempDir()
	rs := redistest.Start(t, redistest.Options{AOF: true})
	project := mustLoadCompose(t)
	witness := filepath.Join(tmp, "witness")

	d := &deployment{t: t, bin: bin, tmp: tmp, root: root, project: project, redisURL: rs.URL(), witness: witness,
		hosts: map[string]string{}}
	// Loopback addresses for every compose host:port.
	auth1, auth2 := "http://"+freeAddr(t), "http://"+freeAddr(t)
	proxy1, proxy2 := "http://"+freeAddr(t), "http://"+freeAddr(t)
	fleetURL := "http://" + freeAddr(t)
	for _, p := range []string{"9101", "9102", "9103", "9104"} {
		addr := freeAddr(t)
		d.hosts["fleet:"+p] = addr
		d.hosts["0.0.0.0:"+p] = addr
	}
	d.hosts["http://fleet:9000"] = fleetURL

	d.start("fleet", "fleet", map[string]string{"listen": hostOf(fleetURL)}, nil, "")
	// Two replicas of the authority: one issuer, keys shared in Redis.
	d.start("authority", "authority-1", map[string]string{"listen": hostOf(auth1)}, map[string]string{"http://authority:8081": auth1}, "authority-1")
	d.start("authority", "authority-2", map[string]string{"listen": hostOf(auth2)}, map[string]string{"http://authority:8081": auth1}, "authority-2")
	d.waitOK(fleetURL+"/healthz", auth1+"/readyz", auth2+"/readyz")

	admin1, admin2 := freeAddr(t), freeAddr(t)
	// Each proxy fetches keys from another replica; both trust the one issuer.
	d.start("proxy", "proxy-1", map[string]string{"listen": hostOf(proxy1), "admin-listen": admin1},
		map[string]string{"authority_url: http://authority:8081": "authority_url: " + auth1, "http://authority:8081": auth1, "http://proxy:8080": proxy1}, "proxy-1")
	d.start("proxy", "proxy-2", map[string]string{"listen": hostOf(proxy2), "admin-listen": admin2},
		map[string]string{"authority_url: http://authority:8081": "authority_url: " + auth2, "http://authority:8081": auth1, "http://proxy:8080": proxy2}, "proxy-2")
	d.waitOK("http://"+admin1+"/readyz", "http://"+admin2+"/readyz")

	healerAddr, dashAddr := freeAddr(t), freeAddr(t)
	agentHosts := map[string]string{"http://authority:8081": auth1, "http://proxy:8080": proxy1}
	d.start("healer", "healer", map[string]string{"listen": healerAddr}, agentHosts, "healer-acme")
	d.start("dashboard", "dashboard", map[string]string{"listen": dashAddr}, agentHosts, "chaos-dashboard-acme")
	d.waitOK("http://"+healerAddr+"/healthz", "http://"+dashAddr+"/healthz")

	// An agent calls through proxy 2 with a passport from authority 1.
	ctx := context.Background()
	adm, err := client.NewAdmin(auth2, passport.Secret(testAdminToken), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := adm.RegisterAgent(ctx, "acme", client.AgentSpec{Name: "e2e-healer", Type: passport.TypeHealer, TrustLevel: passport.TrustHigh})
	if err != nil {
		t.Fatal(err)
	}
	ag, err := client.New(auth1, reg.ClientID, passport.Secret(reg.ClientSecret), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := ag.Token(ctx, client.TokenRequest{Scope: []string{"service.list"}})
	if err != nil {
		t.Fatal(err)
	}
	if code := getWith(t, proxy2+"/services", tok.Raw); code != http.StatusOK {
		t.Fatalf("GET /services through proxy 2 = %d, want 200", code)
	}

	// Block it through authority 2: the record is in the stream, by
	// authority 2's writer, and on the dashboard's feed.
	if _, err := adm.Block(ctx, "acme", reg.ID, "e2e"); err != nil {
		t.Fatal(err)
	}
	rec := findRecord(t, rs.Client().XRange(ctx, audit.StreamKey("acme"), "-", "+").Val(), audit.KindAgentBlocked, reg.ID)
	if rec == nil || rec.Writer != "authority-2" {
		t.Fatalf("agent_blocked record of %s: %+v, want one written by authority-2", reg.ID, rec)
	}
	d.feedShows(dashAddr, "agent_blocked", reg.ID)
	// Proxy 1 refuses the passport issued before the block (401: a block
	// revokes the agent's passports).
	if code := getWith(t, proxy1+"/services", tok.Raw); code != http.StatusUnauthorized && code != http.StatusForbidden {
		t.Fatalf("GET /services through proxy 1 after the block = %d, want 401 or 403", code)
	}

	// Two one-shot chaos runs share one writer.
	cliDir := filepath.Join(tmp, "cli")
	chaosCfg := d.rewrite("chaos", "/etc/passport/chaos.yaml", "cli", agentHosts, "")
	for _, target := range []string{"checkout", "payments"} {
		d.runCLI("chaos", "fire", "cache_miss", "--target", target, "--config", chaosCfg, "--authority", auth1,
			"--credentials", filepath.Join(cliDir, "chaos.json"))
	}
	var cliWriters []string
	for w := range rs.Client().HGetAll(ctx, audit.WritersKey).Val() {
		if strings.HasPrefix(w, "chaos-cli-acme-") {
			cliWriters = append(cliWriters, w)
		}
	}
	if len(cliWriters) != 1 {
		t.Fatalf("chaos fire registered writers %v, want one for both runs", cliWriters)
	}
	key, err := audit.LoadSigningKey(filepath.Join(cliDir, "audit-keys", "chaos-cli-acme.key"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(key.Public().(ed25519.PublicKey))
	if want := "chaos-cli-acme-" + hex.EncodeToString(sum[:4]); cliWriters[0] != want {
		t.Fatalf("chaos fire writer %s, want %s (named by its kept key)", cliWriters[0], want)
	}
	d.trusted = append(d.trusted, audit.TrustedKeyLine(cliWriters[0], key.Public().(ed25519.PublicKey)))

	// Every component's /metrics: its own names, the audit writer's where
	// it writes, and the Go and process collectors.
	deployed := map[string]map[string]bool{} // component: the metric names it serves
	for _, m := range []struct {
		name, url string
		want      []string
	}{
		{"authority", auth1 + "/metrics", []string{"passport_authority_passports_issued_total", "passport_audit_durability_status", "passport_audit_batches_total"}},
		{"proxy", "http://" + admin2 + "/metrics", []string{"passport_proxy_requests_total", "passport_proxy_revocation_subscription_up", "passport_audit_batches_total"}},
		{"fleet", fleetURL + "/metrics", nil},
		{"healer", "http://" + healerAddr + "/metrics", []string{"passport_healer_checks_total", "passport_healer_announcements_connected", "passport_audit_batches_total"}},
		{"dashboard", "http://" + dashAddr + "/metrics", []string{"passport_feed_clients", "passport_feed_events_sent_total", "passport_audit_batches_total"}},
	} {
		body := getBody(t, m.url)
		deployed[m.name] = metricNames(body)
		for _, want := range append(m.want, "go_goroutines", "process_cpu_seconds_total", `passport_panics_total{part="`+m.name+`"} 0`) {
			if !strings.Contains(body, want) {
				t.Errorf("%s /metrics lacks %s", m.name, want)
			}
		}
	}

	// SIGTERM: every process drains and exits 0; then the trail verifies
	// with every writer's key pinned.
	d.stopAll()
	trusted := filepath.Join(tmp, "trusted-keys")
	if err := os.WriteFile(trusted, []byte(strings.Join(d.trusted, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := d.runCLI("audit", "verify", "--trusted-keys", trusted, "--witness", witness)
	t.Logf("audit verify:\n%s", out)

	upServesWhatADeploymentServes(t, deployed)
}

// upServesWhatADeploymentServes runs `passport up` and waits until each of
// its services serves, on the same path, every metric name the standalone
// deployment's service served (names of vectors appear with their first
// child, so the demo's own traffic has to reach them).
func upServesWhatADeploymentServes(t *testing.T, deployed map[string]map[string]bool) {
	dir := filepath.Join(t.TempDir(), "up")
	up := startUp(t, dir)
	defer up.stop()
	demo, err := stack.ReadDemo(dir)
	if err != nil {
		t.Fatal(err)
	}
	hc := demoHTTPClient(t, demo) // up serves TLS with its own CA
	paths := map[string]string{
		"authority": demo.URLs.Authority + "/metrics",
		"proxy":     demo.URLs.ProxyAdmin + "/metrics",
		"fleet":     demo.URLs.Fleet + "/metrics",
		"healer":    demo.HealerAPIs["acme"] + "/metrics",
		"dashboard": demo.URLs.Dashboard + "/metrics",
	}
	for name, want := range deployed {
		waitFor(t, "passport up's "+name+" serving every metric of the deployment's", func() (bool, string) {
			got := metricNames(getBodyWith(t, hc, paths[name]))
			var missing []string
			for m := range want {
				if !got[m] {
					missing = append(missing, m)
				}
			}
			slices.Sort(missing)
			return len(missing) == 0, "missing " + strings.Join(missing, " ")
		})
	}
}

// metricNames is the set of metric families of a Prometheus text
// exposition, by their TYPE lines.
func metricNames(exposition string) map[string]bool {
	out := map[string]bool{}
	for _, line := range strings.Split(exposition, "\n") {
		if f := strings.Fields(line); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			out[f[2]] = true
		}
	}
	return out
}

// passportBinary builds the binary once for the test (or takes
// PASSPORT_E2E_BINARY).
func passportBinary(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("PASSPORT_E2E_BINARY"); b != "" {
		return b
	}
	out := filepath.Join(t.TempDir(), "passport")
	cmd := exec.Command("go", "build", "-o", out, ".")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("go build: %v", err)
	}
	return out
}

// deployment is the processes of one test, configured from the compose file.
type deployment struct {
	t                                 *testing.T
	bin, tmp, root, redisURL, witness string
	project                           *types.Project
	// hosts maps compose host:port (and bind addresses) to loopback ones.
	hosts   map[string]string
	procs   []*proc
	trusted []string // trusted-keys lines
	// secrets maps where a compose secret is mounted to a local file; an
	// environment variable of a service naming a mounted secret is set to
	// the local file (TLS overlay).
	secrets map[string]string
	// client is for waitOK (default http.DefaultClient).
	client *http.Client
}

type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan error
}

func (d *deployment) env() []string {
	return []string{"PATH=" + os.Getenv("PATH"), "HOME=" + d.tmp, "XDG_CONFIG_HOME=" + filepath.Join(d.tmp, "config"),
		"PASSPORT_REDIS_URL=" + d.redisURL, "PASSPORT_ADMIN_TOKEN=" + testAdminToken, "PASSPORT_WITNESS=" + d.witness}
}

// serviceEnv is the part of service's compose environment that names its
// mounted secrets, pointed at their local files.
func (d *deployment) serviceEnv(s types.ServiceConfig) []string {
	var out []string
	for k, v := range s.Environment {
		if v != nil && d.secrets[*v] != "" {
			out = append(out, k+"="+d.secrets[*v])
		}
	}
	return out
}

// rewrite copies the config file mounted at target in service's container
// into the instance's directory, with loopback addresses (d.hosts, then
// extra) and mounted paths, and, when writer is set, an audit: section
// with a key made by `passport audit keygen`.
func (d *deployment) rewrite(service, target, instance string, extra map[string]string, writer string) string {
	d.t.Helper()
	s, err := d.project.GetService(service)
	if err != nil {
		d.t.Fatal(err)
	}
	var src string
	mounts := map[string]string{}
	for _, v := range s.Volumes {
		if v.Type == types.VolumeTypeBind {
			mounts[v.Target] = v.Source
		}
		if v.Target == target {
			src = v.Source
		}
	}
	if src == "" {
		d.t.Fatalf("%s mounts nothing at %s", service, target)
	}
	b, err := os.ReadFile(src)
	if err != nil {
		d.t.Fatal(err)
	}
	text := string(b)
	for _, m := range []map[string]string{extra, d.hosts} {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		// Longest first, so that "authority_url: http://..." wins over its URL.
		slices.SortFunc(keys, func(a, b string) int { return len(b) - len(a) })
		for _, k := range keys {
			text = strings.ReplaceAll(text, k, m[k])
		}
	}
	for tgt, src := range mounts {
		if tgt != target {
			text = strings.ReplaceAll(text, tgt, src)
		}
	}
	dir := filepath.Join(d.tmp, instance)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		d.t.Fatal(err)
	}
	if writer != "" {
		keyFile := filepath.Join(d.tmp, "keys", writer+".key")
		if err := os.MkdirAll(filepath.Dir(keyFile), 0o700); err != nil {
			d.t.Fatal(err)
		}
		line := strings.TrimSpace(d.runCLI("audit", "keygen", "--writer", writer, "--out", keyFile))
		d.trusted = append(d.trusted, line)
		text += fmt.Sprintf("\naudit:\n  writer_id: %s\n  signing_key_file: %s\n  checkpoint_interval: 200ms\n", writer, keyFile)
	}
	out := filepath.Join(dir, filepath.Base(target))
	if err := os.WriteFile(out, []byte(text), 0o600); err != nil {
		d.t.Fatal(err)
	}
	return out
}

// start runs service's compose command as instance: listen flags from
// listens, config files rewritten (see rewrite; the writer's audit
// section goes into --config, or --chaos-config for the dashboard),
// --credentials in the instance's directory, --authority mapped through
// extra.
func (d *deployment) start(service, instance string, listens, extra map[string]string, writer string) {
	d.t.Helper()
	s, err := d.project.GetService(service)
	if err != nil {
		d.t.Fatal(err)
	}
	args := slices.Clone([]string(s.Command))
	for i := 0; i < len(args)-1; i++ {
		flag, isFlag := strings.CutPrefix(args[i], "--")
		val := args[i+1]
		switch {
		case !isFlag:
		case listens[flag] != "":
			args[i+1] = listens[flag]
		case flag == "config" || flag == "chaos-config":
			w := ""
			if (flag == "config") == (service != "dashboard") {
				w = writer
			}
			args[i+1] = d.rewrite(service, val, instance, extra, w)
		case flag == "credentials":
			args[i+1] = filepath.Join(d.tmp, instance, "credentials", filepath.Base(val))
			_ = os.MkdirAll(filepath.Dir(args[i+1]), 0o700)
		case flag == "authority":
			if v, ok := extra[val]; ok {
				args[i+1] = v
			} else if v, ok := extra["http://authority:8081"]; ok {
				args[i+1] = v
			}
		}
	}
	logFile := filepath.Join(d.tmp, instance+".log")
	f, err := os.Create(logFile)
	if err != nil {
		d.t.Fatal(err)
	}
	cmd := exec.Command(d.bin, args...)
	cmd.Env, cmd.Stdout, cmd.Stderr = append(d.env(), d.serviceEnv(s)...), f, f
	if err := cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	p := &proc{name: instance, cmd: cmd, log: logFile, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait(); f.Close() }()
	d.procs = append(d.procs, p)
	d.t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
}

// waitOK waits until every URL answers 200, and fails with the logs of
// a process that exited meanwhile.
func (d *deployment) waitOK(urls ...string) {
	d.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	hc := cmp.Or(d.client, http.DefaultClient)
	for _, u := range urls {
		for {
			resp, err := hc.Get(u)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			for _, p := range d.procs {
				select {
				case err := <-p.done:
					p.done <- err
					d.t.Fatalf("%s exited (%v) before %s answered:\n%s", p.name, err, u, readFile(p.log))
				default:
				}
			}
			if time.Now().After(deadline) {
				d.t.Fatalf("%s not ready within 20s; logs:\n%s", u, d.logs())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func (d *deployment) logs() string {
	var b strings.Builder
	for _, p := range d.procs {
		fmt.Fprintf(&b, "--- %s\n%s\n", p.name, readFile(p.log))
	}
	return b.String()
}

// stopAll sends SIGTERM to every process, newest first, and requires each
// to exit 0 within the drain bound.
func (d *deployment) stopAll() {
	d.t.Helper()
	for i := len(d.procs) - 1; i >= 0; i-- {
		p := d.procs[i]
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-p.done:
			if err != nil {
				d.t.Errorf("%s exited with %v after SIGTERM:\n%s", p.name, err, readFile(p.log))
			}
		case <-time.After(20 * time.Second):
			d.t.Errorf("%s did not stop within 20s of SIGTERM", p.name)
		}
	}
}

// runCLI runs a one-shot command and requires exit 0.
func (d *deployment) runCLI(args ...string) string {
	d.t.Helper()
	cmd := exec.Command(d.bin, args...)
	cmd.Env = d.env()
	out, err := cmd.CombinedOutput()
	if err != nil {
		d.t.Fatalf("passport %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// feedShows reads the dashboard's feed of acme from its tail until an
// event of typ about agentID arrives.
func (d *deployment) feedShows(addr, typ, agentID string) {
	d.t.Helper()
	q := url.Values{"tenant": {"acme"}, "tail": {"100"}, "types": {typ}}
	h := http.Header{"Authorization": {"Bearer " + testAdminToken}}
	conn, resp, err := websocket.DefaultDialer.Dial("ws://"+addr+"/v1/feed?"+q.Encode(), h)
	if err != nil {
		d.t.Fatalf("feed: %v (%v)", err, resp)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, msg, err := conn.ReadMessage()
		if err != nil {
			d.t.Fatalf("feed ended before a %s event of %s: %v", typ, agentID, err)
		}
		// A frame holds one event or several (a JSON array).
		var evs []struct {
			Type    string `json:"type"`
			AgentID string `json:"agent_id"`
		}
		if json.Unmarshal(msg, &evs) != nil {
			evs = evs[:0]
			var one struct {
				Type    string `json:"type"`
				AgentID string `json:"agent_id"`
			}
			if json.Unmarshal(msg, &one) == nil {
				evs = append(evs, one)
			}
		}
		for _, ev := range evs {
			if ev.Type == typ && ev.AgentID == agentID {
				return
			}
		}
	}
}

func findRecord(t *testing.T, msgs []redis.XMessage, kind audit.Kind, agentID string) *audit.Record {
	t.Helper()
	for _, m := range msgs {
		rec, _, err := audit.ParseMessage(m)
		if err == nil && rec.Kind == kind && rec.AgentID == agentID {
			return rec
		}
	}
	return nil
}

func getWith(t *testing.T, u, tok string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func getBody(t *testing.T, u string) string {
	t.Helper()
	return getBodyWith(t, http.DefaultClient, u)
}

func getBodyWith(t *testing.T, hc *http.Client, u string) string {
	t.Helper()
	resp, err := hc.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		b.WriteString(sc.Text())
		b.WriteByte('\n')
	}
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET %s = %d", u, resp.StatusCode)
	}
	return b.String()
}

func hostOf(u string) string { return strings.TrimPrefix(u, "http://") }

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

// TestDeploymentTLSEndToEnd runs the built binary as docker-compose.yml with
// docker-compose.tls.yml configures it: the certificates made by
// scripts/dev-certs.sh where the compose secrets point, the overlay's
// environment and configs, loopback addresses for container names. Every
// service's own healthcheck command passes over https (and the same URL
// over http does not: the port serves TLS only), an agent gets a passport
// and calls through the proxy, and the healer watches the fleet's https
// health ports and its announcement stream.
func TestDeploymentTLSEndToEnd(t *testing.T) {
	bin := passportBinary(t)
	root := repoRoot(t)
	tmp := t.TempDir()
	rs := redistest.Start(t, redistest.Options{AOF: true})
	project := mustLoadComposeTLS(t)

	certs := filepath.Join(tmp, "tls")
	if out, err := exec.Command("sh", filepath.Join(root, "scripts", "dev-certs.sh"), certs).CombinedOutput(); err != nil {
		t.Fatalf("scripts/dev-certs.sh: %v\n%s", err, out)
	}
	secrets := map[string]string{}
	for _, s := range project.Services {
		for _, sec := range s.Secrets {
			secrets[sec.Target] = filepath.Join(certs, filepath.Base(project.Secrets[sec.Source].File))
		}
	}
	ca := secrets[tlsCAPath]
	hc, err := tlsx.HTTPClient(ca, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	d := &deployment{t: t, bin: bin, tmp: tmp, root: root, project: project, redisURL: rs.URL(),
		witness: filepath.Join(tmp, "witness"), hosts: map[string]string{}, secrets: secrets, client: hc}

	local := map[string]string{} // compose port -> loopback host:port
	for _, p := range []string{"8081", "8080", "9080", "9000", "9100", "8090", "9101", "9102", "9103", "9104"} {
		local[p] = freeAddr(t)
	}
	for _, p := range []string{"9101", "9102", "9103", "9104"} {
		d.hosts["fleet:"+p] = local[p]
		d.hosts["0.0.0.0:"+p] = local[p]
	}
	auth, proxyURL := "https://"+local["8081"], "https://"+local["8080"]
	d.hosts["https://fleet:9000"] = "https://" + local["9000"]
	// The CA path in the proxy config: the local file.
	d.hosts[tlsCAPath] = ca

	d.start("fleet", "fleet", map[string]string{"listen": local["9000"]}, nil, "")
	d.start("authority", "authority", map[string]string{"listen": local["8081"]}, map[string]string{"https://authority:8081": auth}, "authority")
	d.waitOK("https://"+local["9000"]+"/healthz", auth+"/readyz")
	agentHosts := map[string]string{"https://authority:8081": auth, "https://proxy:8080": proxyURL}
	d.start("proxy", "proxy", map[string]string{"listen": local["8080"], "admin-listen": local["9080"]}, agentHosts, "proxy")
	d.waitOK("https://" + local["9080"] + "/readyz")
	d.start("healer", "healer", map[string]string{"listen": local["9100"]}, agentHosts, "healer-acme")
	d.start("dashboard", "dashboard", map[string]string{"listen": local["8090"]}, agentHosts, "chaos-dashboard-acme")
	d.waitOK("https://"+local["9100"]+"/healthz", "https://"+local["8090"]+"/healthz")

	// Each service's own healthcheck, as Docker runs it in the container.
	for _, name := range []string{"authority", "proxy", "fleet", "healer", "dashboard"} {
		s, err := project.GetService(name)
		if err != nil {
			t.Fatal(err)
		}
		args := slices.Clone(s.HealthCheck.Test[2:])
		i := slices.IndexFunc(args, func(a string) bool { return strings.HasPrefix(a, "https://127.0.0.1:") })
		if i < 0 {
			t.Fatalf("%s healthcheck %q has no https://127.0.0.1 URL", name, s.HealthCheck.Test)
		}
		u, _ := url.Parse(args[i])
		u.Host = local[u.Port()]
		for _, scheme := range []string{"https", "http"} {
			u.Scheme = scheme
			args[i] = u.String()
			cmd := exec.Command(bin, args...)
			cmd.Env = append(d.env(), d.serviceEnv(s)...)
			out, err := cmd.CombinedOutput()
			if ok := err == nil; ok != (scheme == "https") {
				t.Errorf("%s healthcheck %q: err = %v, want success only over https\n%s", name, args, err, out)
			}
		}
	}

	// An agent over TLS end to end: passport from the authority, call through the proxy.
	ctx := context.Background()
	opts := client.Options{CAFile: ca}
	adm, err := client.NewAdmin(auth, passport.Secret(testAdminToken), opts)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := adm.RegisterAgent(ctx, "acme", client.AgentSpec{Name: "tls-e2e", Type: passport.TypeHealer, TrustLevel: passport.TrustHigh})
	if err != nil {
		t.Fatal(err)
	}
	ag, err := client.New(auth, reg.ClientID, passport.Secret(reg.ClientSecret), opts)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := ag.Token(ctx, client.TokenRequest{Scope: []string{"service.list"}})
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, proxyURL+"/services", nil)
	req.Header.Set("Authorization", "Bearer "+tok.Raw)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /services through the proxy over TLS = %d, want 200", resp.StatusCode)
	}

	// The healer reaches the fleet's health ports and announcements over https.
	waitFor(t, "the healer passing https health checks and connected to the announcements", func() (bool, string) {
		body := getBodyWith(t, hc, "https://"+local["9100"]+"/metrics")
		ok := strings.Contains(body, `passport_healer_checks_total{result="pass"`) &&
			strings.Contains(body, "passport_healer_announcements_connected 1")
		return ok, body
	})
	d.stopAll()
}
