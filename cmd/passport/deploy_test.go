package main

// Tests for the deployment files: docker-compose.yml, the Dockerfile,
// examples/prometheus.yml and examples/kubernetes/. No Docker engine or
// cluster runs here, so these tests prove what can be proved without one:
// the compose file loads with the compose-spec loader (the one docker compose
// itself uses), every container command parses against the binary's real
// cobra flags, every --listen port is the port that is exposed, published,
// probed and scraped, the mounted configs exist and decode strictly with
// their component's own config type, and the Kubernetes manifests parse and
// keep the sidecar's security properties.

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"

	"github.com/agentpassport/passport/authority"
	"github.com/agentpassport/passport/chaos"
	"github.com/agentpassport/passport/examples/fleet"
	"github.com/agentpassport/passport/healer"
	"github.com/agentpassport/passport/internal/config"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/internal/redisx"
	"github.com/agentpassport/passport/proxy"
	"github.com/agentpassport/passport/proxy/policy"
)

var updateKube = flag.Bool("update", false, "regenerate examples/kubernetes/policies-configmap.yaml from policies/")

// repoRoot is the module root, two levels above this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found at %s: %v", root, err)
	}
	return root
}

// ---------------------------------------------------------------------------
// The binary's real flags.

// checkedCommand is a container command parsed against the real root command.
type checkedCommand struct {
	path    string            // "passport proxy", "passport chaos run"
	listens map[string]string // flag name ("listen", "admin-listen") -> host:port
	config  string            // value of --config, "" if not given
	creds   string            // value of --credentials, "" if not given
}

// parseCommand resolves args (without the leading "passport", which is the
// image's ENTRYPOINT) to a subcommand of the real binary and parses its
// flags. It fails the test when the subcommand does not exist, is still a
// stub, or does not accept the flags.
func parseCommand(t *testing.T, args []string) checkedCommand {
	t.Helper()
	if len(args) == 0 {
		t.Fatal("empty command")
	}
	if args[0] == "passport" || strings.HasSuffix(args[0], "/passport") {
		t.Fatalf("command %q repeats the binary: the image's ENTRYPOINT is already /usr/local/bin/passport", args)
	}
	// A fresh root per command: cobra keeps parsed flag values.
	root := (&app{getenv: func(string) string { return "" }, stdout: io.Discard, stderr: io.Discard}).rootCmd()
	cmd, rest, err := root.Find(args)
	if err != nil {
		t.Fatalf("command %q: %v", args, err)
	}
	if cmd == root {
		t.Fatalf("command %q names no subcommand of passport", args)
	}
	if strings.Contains(cmd.Short, "not yet built") {
		t.Errorf("command %q: %q is still a stub (%q)", args, cmd.CommandPath(), cmd.Short)
	}
	if err := cmd.ParseFlags(rest); err != nil {
		t.Fatalf("command %q: flags do not parse for %q: %v", args, cmd.CommandPath(), err)
	}
	if err := cmd.ValidateArgs(cmd.Flags().Args()); err != nil {
		t.Errorf("command %q: arguments refused by %q: %v", args, cmd.CommandPath(), err)
	}
	cc := checkedCommand{path: cmd.CommandPath(), listens: map[string]string{}}
	cmd.Flags().Visit(func(f *pflag.Flag) {
		switch {
		case f.Name == "listen" || strings.HasSuffix(f.Name, "-listen"):
			cc.listens[f.Name] = f.Value.String()
		case f.Name == "config":
			cc.config = f.Value.String()
		case f.Name == "credentials":
			cc.creds = f.Value.String()
		}
	})
	return cc
}

// listenPort splits a --listen value, failing on a bad address.
func listenPort(t *testing.T, flagName, addr string) (host string, port uint32) {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("--%s %q: %v", flagName, addr, err)
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 {
		t.Fatalf("--%s %q: want a fixed port, got %q", flagName, addr, p)
	}
	return h, uint32(n)
}

// configCheckers decode a config file with the component's own config type,
// strictly (unknown keys are errors), and validate it. Keyed by command path.
var configCheckers = map[string]func(path string) error{
	"passport authority": func(p string) error {
		cfg := authority.DefaultConfig()
		if err := config.Load(p, &cfg); err != nil {
			return err
		}
		// What the environment supplies in the deployments.
		cfg.ApplyEnv(func(k string) string {
			return map[string]string{
				"PASSPORT_REDIS_URL":   "redis://redis:6379/0",
				"PASSPORT_ADMIN_TOKEN": "a-test-admin-token-long-enough",
			}[k]
		})
		return cfg.Validate()
	},
	"passport proxy": func(p string) error {
		cfg, err := loadProxyConfig(p)
		if err != nil {
			return err
		}
		return cfg.Validate()
	},
	"passport chaos run": func(p string) error {
		var cfg chaos.Config
		if err := config.Load(p, &cfg); err != nil {
			return err
		}
		return cfg.Validate()
	},
	"passport healer": func(p string) error {
		cfg := healer.Default()
		if err := config.Load(p, &cfg); err != nil {
			return err
		}
		return cfg.Validate()
	},
	"passport fleet": func(p string) error {
		cfg := fleet.Default()
		cfg.Services = nil
		if err := config.Load(p, &cfg); err != nil {
			return err
		}
		return cfg.Validate()
	},
}

// loadProxyConfig loads a proxy config with the proxy's own strict loader,
// with the Redis URL the deployments supply through the environment, and
// requires what a deployment must not leave to loopback defaults.
func loadProxyConfig(p string) (proxy.Config, error) {
	cfg, err := proxy.LoadConfig(p)
	if err != nil {
		return cfg, err
	}
	if cfg.Redis.URL == "" {
		cfg.Redis.URL = "redis://redis:6379/0"
	}
	if err := cfg.Validate(); err != nil { // also fills derived defaults
		return cfg, err
	}
	if cfg.Policy.Dir == "" {
		return cfg, fmt.Errorf("proxy config %s: policy.dir must name the mounted policies", p)
	}
	return cfg, nil
}

// checkConfigFile decodes a mounted config with its component's loader, or at
// least as YAML when no checker is known for the command.
func checkConfigFile(t *testing.T, cmdPath, file string) {
	t.Helper()
	if check, ok := configCheckers[cmdPath]; ok {
		if err := check(file); err != nil {
			t.Errorf("%s config %s: %v", cmdPath, file, err)
		}
		return
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := yaml.Unmarshal(data, &v); err != nil {
		t.Errorf("%s config %s: %v", cmdPath, file, err)
	}
}

// ---------------------------------------------------------------------------
// docker-compose.yml

const testAdminToken = "compose-test-admin-token-0123456789"

func loadCompose(t *testing.T, env map[string]string) (*types.Project, error) {
	t.Helper()
	return loadComposeFiles(t, env, "docker-compose.yml")
}

// loadComposeFiles loads compose files of the repository root in order,
// each merged over the ones before, as `docker compose -f A -f B` does.
func loadComposeFiles(t *testing.T, env map[string]string, names ...string) (*types.Project, error) {
	t.Helper()
	root := repoRoot(t)
	var files []types.ConfigFile
	for _, name := range names {
		file := filepath.Join(root, name)
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, types.ConfigFile{Filename: file, Content: data})
	}
	details := types.ConfigDetails{
		WorkingDir:  root,
		ConfigFiles: files,
		Environment: types.Mapping(env),
	}
	return loader.LoadWithContext(context.Background(), details, func(o *loader.Options) {
		o.SetProjectName("agent-passport", true)
		o.ResolvePaths = true
	})
}

func mustLoadCompose(t *testing.T) *types.Project {
	t.Helper()
	p, err := loadCompose(t, map[string]string{"PASSPORT_ADMIN_TOKEN": testAdminToken})
	if err != nil {
		t.Fatalf("docker-compose.yml does not load: %v", err)
	}
	return p
}

// composePassportServices are the compose services that run the passport
// image, with the flag whose port Prometheus scrapes (/metrics).
var composePassportServices = []struct {
	service     string
	command     string // command path of the subcommand
	metricsFlag string
	published   bool // reachable from the host
	readyz      bool // probed at /readyz (else /healthz)
}{
	{service: "authority", command: "passport authority", metricsFlag: "listen", published: true, readyz: true},
	{service: "proxy", command: "passport proxy", metricsFlag: "admin-listen", published: true, readyz: true},
	{service: "fleet", command: "passport fleet", metricsFlag: "listen"},
	{service: "healer", command: "passport healer", metricsFlag: "listen"},
	{service: "chaos", command: "passport chaos run", metricsFlag: "listen"},
	{service: "dashboard", command: "passport dashboard", metricsFlag: "listen", published: true},
}

func TestComposeFileLoads(t *testing.T) {
	p := mustLoadCompose(t)
	want := []string{"redis", "prometheus"}
	for _, s := range composePassportServices {
		want = append(want, s.service)
	}
	got := p.ServiceNames()
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("services = %v, want %v", got, want)
	}
}

// An optional reporter token reaches the authority (which accepts it) and
// the proxy (which reports denials with it), and nothing else.
func TestComposeReporterToken(t *testing.T) {
	const rep = "compose-test-reporter-token-0123456789"
	p, err := loadCompose(t, map[string]string{"PASSPORT_ADMIN_TOKEN": testAdminToken, "PASSPORT_REPORTER_TOKEN": rep})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range composePassportServices {
		s, err := p.GetService(tc.service)
		if err != nil {
			t.Fatal(err)
		}
		v := s.Environment["PASSPORT_REPORTER_TOKEN"]
		want := tc.service == "authority" || tc.service == "proxy"
		if got := v != nil && *v == rep; got != want {
			t.Errorf("%s: PASSPORT_REPORTER_TOKEN set = %v, want %v", tc.service, got, want)
		}
		if r := s.Environment["PASSPORT_REDIS_URL"]; r == nil || *r == "" {
			t.Errorf("%s: lost PASSPORT_REDIS_URL", tc.service)
		}
	}
}

// The agents keep their identity across restarts: each writes its own
// --credentials file into a named volume (writable, unlike the root
// filesystem), which the image creates owned by its nonroot user.
func TestComposeAgentCredentials(t *testing.T) {
	p := mustLoadCompose(t)
	seen := map[string]string{}
	for _, name := range []string{"healer", "chaos", "dashboard"} {
		s, err := p.GetService(name)
		if err != nil {
			t.Fatal(err)
		}
		cc := parseCommand(t, s.Command)
		if cc.creds == "" {
			t.Errorf("%s: no --credentials: it would register a new agent at every start", name)
			continue
		}
		if other, dup := seen[cc.creds]; dup {
			t.Errorf("%s and %s share --credentials %s", name, other, cc.creds)
		}
		seen[cc.creds] = name
		mounted := false
		for _, v := range s.Volumes {
			if v.Type == types.VolumeTypeVolume && !v.ReadOnly && filepath.Dir(cc.creds) == v.Target {
				if _, ok := p.Volumes[v.Source]; !ok {
					t.Errorf("%s: volume %s is not declared", name, v.Source)
				}
				mounted = v.Target == "/var/lib/passport"
			}
		}
		if !mounted {
			t.Errorf("%s: --credentials %s is not in a writable named volume at /var/lib/passport", name, cc.creds)
		}
	}
	df, err := os.ReadFile(filepath.Join(repoRoot(t), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^COPY --from=build --chown=65532:65532 \S+ /var/lib/passport$`).Match(df) {
		t.Error("the Dockerfile does not create /var/lib/passport owned by 65532: a new volume there would not be writable")
	}
}

func TestComposeRequiresAdminToken(t *testing.T) {
	// No default admin token: loading without one must fail, naming it.
	_, err := loadCompose(t, map[string]string{})
	if err == nil || !strings.Contains(err.Error(), "PASSPORT_ADMIN_TOKEN") {
		t.Fatalf("load without PASSPORT_ADMIN_TOKEN: err = %v, want a required-variable error naming it", err)
	}
}

func TestComposeRedis(t *testing.T) {
	p := mustLoadCompose(t)
	r, err := p.GetService("redis")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(r.Image, "redis:7") {
		t.Errorf("redis image = %q, want redis:7", r.Image)
	}
	cmd := strings.Join(r.Command, " ")
	if !strings.Contains(cmd, "--appendonly yes") {
		t.Errorf("redis command %q: AOF is not on", cmd)
	}
	if !regexp.MustCompile(`--appendfsync (always|everysec)\b`).MatchString(cmd) {
		t.Errorf("redis command %q: appendfsync not set to always or everysec", cmd)
	}
	if r.HealthCheck == nil || len(r.HealthCheck.Test) == 0 || r.HealthCheck.Disable {
		t.Error("redis has no healthcheck; the passport services wait for service_healthy")
	}
	if !slices.ContainsFunc(r.Volumes, func(v types.ServiceVolumeConfig) bool {
		return v.Type == types.VolumeTypeVolume && v.Target == "/data"
	}) {
		t.Error("redis /data is not on a named volume: the AOF would not survive the container")
	}
	if len(r.Ports) != 0 {
		t.Errorf("redis publishes %v: it holds the audit streams and must stay on the compose network", r.Ports)
	}
}

func TestComposePassportServices(t *testing.T) {
	p := mustLoadCompose(t)
	root := repoRoot(t)
	targets := prometheusTargets(t)
	for _, tc := range composePassportServices {
		t.Run(tc.service, func(t *testing.T) {
			s, err := p.GetService(tc.service)
			if err != nil {
				t.Fatal(err)
			}
			// One image, built from the Dockerfile, ENTRYPOINT from the image.
			if s.Build == nil || filepath.Clean(s.Build.Context) != root {
				t.Errorf("build context = %+v, want the repository root", s.Build)
			}
			if !strings.HasPrefix(s.Image, "agentpassport/passport:") {
				t.Errorf("image = %q, want agentpassport/passport:<tag>", s.Image)
			}
			if len(s.Entrypoint) != 0 {
				t.Errorf("entrypoint %q overrides the image's; keep ENTRYPOINT and command consistent", s.Entrypoint)
			}

			// Environment every component reads.
			env := func(k string) string {
				if v := s.Environment[k]; v != nil {
					return *v
				}
				return ""
			}
			if got := env("PASSPORT_REDIS_URL"); got != "redis://redis:6379/0" {
				t.Errorf("PASSPORT_REDIS_URL = %q", got)
			}
			if got := env("PASSPORT_ADMIN_TOKEN"); got != testAdminToken {
				t.Errorf("PASSPORT_ADMIN_TOKEN = %q, want it from the environment", got)
			}
			if d, ok := s.DependsOn["redis"]; !ok || d.Condition != types.ServiceConditionHealthy {
				t.Errorf("depends_on redis = %+v, want condition service_healthy", d)
			}
			for name, d := range s.DependsOn {
				if _, err := p.GetService(name); err != nil {
					t.Errorf("depends_on %s: %v", name, err)
				}
				if dep, err := p.GetService(name); err == nil && d.Condition == types.ServiceConditionHealthy &&
					(dep.HealthCheck == nil || dep.HealthCheck.Disable) {
					t.Errorf("depends_on %s: service_healthy, but %s has no healthcheck", name, name)
				}
			}
			if !s.ReadOnly || !slices.Contains(s.CapDrop, "ALL") {
				t.Errorf("read_only=%v cap_drop=%v, want a read-only root and every capability dropped", s.ReadOnly, s.CapDrop)
			}

			// The command against the binary's real flags.
			cc := parseCommand(t, s.Command)
			if cc.path != tc.command {
				t.Fatalf("command %q runs %q, want %q", s.Command, cc.path, tc.command)
			}
			if _, ok := cc.listens["listen"]; !ok {
				t.Fatalf("command %q has no --listen: the default is loopback, unreachable from other containers", s.Command)
			}
			exposed := map[uint32]bool{}
			for _, e := range s.Expose {
				n, err := strconv.ParseUint(e, 10, 16)
				if err != nil {
					t.Fatalf("expose %q: %v", e, err)
				}
				exposed[uint32(n)] = true
			}
			published := map[uint32]types.ServicePortConfig{}
			for _, pc := range s.Ports {
				published[pc.Target] = pc
				if pc.HostIP != "127.0.0.1" {
					t.Errorf("port %d published on %q; publish on 127.0.0.1 only", pc.Target, pc.HostIP)
				}
				if pc.Published != strconv.Itoa(int(pc.Target)) {
					t.Errorf("port %d published as %q; keep the same port number on the host", pc.Target, pc.Published)
				}
			}
			ports := map[uint32]bool{}
			for name, addr := range cc.listens {
				host, port := listenPort(t, name, addr)
				if host != "0.0.0.0" {
					t.Errorf("--%s %s: inside a container bind 0.0.0.0, or the other containers cannot connect", name, addr)
				}
				ports[port] = true
				_, pub := published[port]
				if !pub && !exposed[port] {
					t.Errorf("--%s port %d is neither published nor exposed", name, port)
				}
				if tc.published && !pub {
					t.Errorf("--%s port %d is not published to the host", name, port)
				}
			}
			for port := range published {
				if !ports[port] {
					t.Errorf("published port %d is no --listen port of %s", port, cc.path)
				}
			}

			// The healthcheck probes this container's own listener with the
			// binary itself (distroless: no shell, no curl).
			checkHealthcheck(t, s, cc, tc.readyz)

			// Prometheus scrapes the metrics listener.
			addr, ok := cc.listens[tc.metricsFlag]
			if !ok {
				t.Fatalf("command %q has no --%s (the /metrics listener)", s.Command, tc.metricsFlag)
			}
			_, port := listenPort(t, tc.metricsFlag, addr)
			want := net.JoinHostPort(tc.service, strconv.Itoa(int(port)))
			if !slices.Contains(targets, want) {
				t.Errorf("prometheus does not scrape %s (targets %v)", want, targets)
			}

			// --config names a read-only bind mount of a file in the
			// repository that the component's own loader accepts.
			if cc.config == "" {
				return
			}
			var src string
			for _, v := range s.Volumes {
				if v.Type == types.VolumeTypeBind && v.Target == cc.config {
					src = v.Source
					if !v.ReadOnly {
						t.Errorf("config mount %s is writable; mount it :ro", v.Target)
					}
				}
			}
			if src == "" {
				t.Fatalf("--config %s is not bind-mounted into the container", cc.config)
			}
			if !strings.HasPrefix(src, root+string(filepath.Separator)) {
				t.Fatalf("--config source %s is outside the repository", src)
			}
			checkConfigFile(t, cc.path, src)
		})
	}
}

// checkHealthcheck requires the service's healthcheck to run `passport
// healthcheck` (the image's binary, flags as the binary parses them) on
// one of the service's own --listen ports over loopback, at /readyz when
// readyz is set, else /healthz.
func checkHealthcheck(t *testing.T, s types.ServiceConfig, cc checkedCommand, readyz bool) {
	t.Helper()
	checkHealthcheckScheme(t, s, cc, readyz, "http", "")
}

// checkHealthcheckScheme is checkHealthcheck for a URL of the given scheme
// and, when serverName is set, a --server-name of that value (the name the
// certificate must carry, checked against a loopback URL).
func checkHealthcheckScheme(t *testing.T, s types.ServiceConfig, cc checkedCommand, readyz bool, scheme, serverName string) {
	t.Helper()
	hc := s.HealthCheck
	if hc == nil || hc.Disable || len(hc.Test) < 2 || hc.Test[0] != "CMD" {
		t.Errorf("healthcheck = %+v, want [CMD /usr/local/bin/passport healthcheck URL]", hc)
		return
	}
	if hc.Test[1] != "/usr/local/bin/passport" {
		t.Errorf("healthcheck runs %q, want the image's /usr/local/bin/passport", hc.Test[1])
		return
	}
	root := (&app{getenv: func(string) string { return "" }, stdout: io.Discard, stderr: io.Discard}).rootCmd()
	cmd, rest, err := root.Find(hc.Test[2:])
	if err != nil || cmd.CommandPath() != "passport healthcheck" {
		t.Errorf("healthcheck %q: not `passport healthcheck` (%v)", hc.Test, err)
		return
	}
	if err := cmd.ParseFlags(rest); err != nil {
		t.Errorf("healthcheck %q: %v", hc.Test, err)
		return
	}
	if err := cmd.ValidateArgs(cmd.Flags().Args()); err != nil {
		t.Errorf("healthcheck %q: %v", hc.Test, err)
		return
	}
	u, err := url.Parse(cmd.Flags().Arg(0))
	if err != nil || u.Scheme != scheme || u.Hostname() != "127.0.0.1" {
		t.Errorf("healthcheck URL %q: want %s://127.0.0.1:<port>/...", cmd.Flags().Arg(0), scheme)
		return
	}
	if got := cmd.Flags().Lookup("server-name").Value.String(); got != serverName {
		t.Errorf("healthcheck %q: --server-name %q, want %q", hc.Test, got, serverName)
	}
	own := false
	for name, addr := range cc.listens {
		if _, port := listenPort(t, name, addr); u.Port() == strconv.Itoa(int(port)) {
			own = true
		}
	}
	if !own {
		t.Errorf("healthcheck probes port %s, which is no --listen port of %s", u.Port(), cc.path)
	}
	want := "/healthz"
	if readyz {
		want = "/readyz"
	}
	if u.Path != want {
		t.Errorf("healthcheck probes %s, want %s", u.Path, want)
	}
	if hc.Timeout == nil || hc.Interval == nil || *hc.Timeout >= *hc.Interval {
		t.Errorf("healthcheck timeout %v, interval %v: want a timeout shorter than the interval", hc.Timeout, hc.Interval)
	}
}

func TestComposeBindMountsExist(t *testing.T) {
	p := mustLoadCompose(t)
	for _, s := range p.Services {
		for _, v := range s.Volumes {
			if v.Type != types.VolumeTypeBind {
				continue
			}
			if _, err := os.Stat(v.Source); err != nil {
				t.Errorf("%s mounts %s: %v", s.Name, v.Source, err)
			}
		}
	}
}

// prometheusTargets lists every static target of examples/prometheus.yml.
func prometheusTargets(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(t), "examples", "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			MetricsPath   string `yaml:"metrics_path"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&cfg); err != nil {
		t.Fatalf("examples/prometheus.yml: %v", err)
	}
	var targets []string
	for _, sc := range cfg.ScrapeConfigs {
		if sc.MetricsPath != "" && sc.MetricsPath != "/metrics" {
			t.Errorf("job %s scrapes %s, want /metrics", sc.JobName, sc.MetricsPath)
		}
		for _, st := range sc.StaticConfigs {
			targets = append(targets, st.Targets...)
		}
	}
	return targets
}

func TestComposePrometheus(t *testing.T) {
	p := mustLoadCompose(t)
	root := repoRoot(t)
	prom, err := p.GetService("prometheus")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(prom.Volumes, func(v types.ServiceVolumeConfig) bool {
		return v.Type == types.VolumeTypeBind && v.Target == "/etc/prometheus/prometheus.yml" &&
			v.Source == filepath.Join(root, "examples", "prometheus.yml")
	}) {
		t.Error("prometheus does not mount examples/prometheus.yml at /etc/prometheus/prometheus.yml")
	}
	// Every target is a compose service (or Prometheus itself), and every
	// passport service is scraped (checked per service above).
	for _, target := range prometheusTargets(t) {
		host, _, err := net.SplitHostPort(target)
		if err != nil {
			t.Errorf("target %q: %v", target, err)
			continue
		}
		if host == "localhost" {
			continue
		}
		if _, err := p.GetService(host); err != nil {
			t.Errorf("target %q: no such compose service", target)
		}
	}
	for _, s := range composePassportServices {
		if _, ok := prom.DependsOn[s.service]; !ok {
			t.Errorf("prometheus does not depend on %s", s.service)
		}
	}
}

// TestComposeWiring checks that the mounted configs agree with each other
// and with the compose network: issuer, audience, upstream, policy folder.
func TestComposeWiring(t *testing.T) {
	p := mustLoadCompose(t)
	root := repoRoot(t)
	mount := func(service, target string) string {
		s, err := p.GetService(service)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range s.Volumes {
			if v.Type == types.VolumeTypeBind && v.Target == target {
				return v.Source
			}
		}
		t.Fatalf("%s: nothing mounted at %s", service, target)
		return ""
	}
	listenOf := func(service string) string {
		s, err := p.GetService(service)
		if err != nil {
			t.Fatal(err)
		}
		return listenFlagsOf(s.Command)["listen"]
	}
	flagOf := func(service, name string) string {
		s, err := p.GetService(service)
		if err != nil {
			t.Fatal(err)
		}
		for i, a := range s.Command {
			if a == "--"+name && i+1 < len(s.Command) {
				return s.Command[i+1]
			}
		}
		t.Fatalf("%s has no --%s", service, name)
		return ""
	}

	acfg := authority.DefaultConfig()
	if err := config.Load(mount("authority", flagOf("authority", "config")), &acfg); err != nil {
		t.Fatal(err)
	}
	pcfg, err := loadProxyConfig(mount("proxy", flagOf("proxy", "config")))
	if err != nil {
		t.Fatal(err)
	}
	_, authPort, _ := net.SplitHostPort(listenOf("authority"))
	if want := "http://authority:" + authPort; acfg.Issuer != want {
		t.Errorf("authority issuer %q, want %q (its name on the compose network)", acfg.Issuer, want)
	}
	if pcfg.Issuer != acfg.Issuer {
		t.Errorf("proxy issuer %q != authority issuer %q", pcfg.Issuer, acfg.Issuer)
	}
	if !slices.Contains(acfg.Audiences, pcfg.Audience) {
		t.Errorf("proxy audience %q not among the authority's %v", pcfg.Audience, acfg.Audiences)
	}
	for _, u := range []string{pcfg.JWKSURL, pcfg.AuthorityURL} {
		if !strings.HasPrefix(u, acfg.Issuer+"/") && u != acfg.Issuer {
			t.Errorf("proxy URL %s does not reach the authority at %s", u, acfg.Issuer)
		}
	}
	_, fleetPort, _ := net.SplitHostPort(listenOf("fleet"))
	if len(pcfg.Upstreams) != 1 {
		t.Errorf("proxy upstreams %v, want the fleet only", pcfg.Upstreams)
	}
	for name, u := range pcfg.Upstreams {
		if u.URL != "http://fleet:"+fleetPort {
			t.Errorf("proxy upstream %s = %s, want http://fleet:%s", name, u.URL, fleetPort)
		}
	}
	if src := mount("proxy", pcfg.Policy.Dir); src != filepath.Join(root, "policies") {
		t.Errorf("proxy policy.dir %s is %s on the host, want ./policies", pcfg.Policy.Dir, src)
	}
	// The proxy fronts the control API at the same paths, with the routes
	// `passport up` runs.
	checkFleetRoutes(t, pcfg)
	_, proxyListenPort, _ := net.SplitHostPort(listenOf("proxy"))
	if want := "http://proxy:" + proxyListenPort; pcfg.ResourceURL != want {
		t.Errorf("proxy resource_url %q, want %q (its name on the compose network)", pcfg.ResourceURL, want)
	}

	var ccfg chaos.Config
	if err := config.Load(mount("chaos", flagOf("chaos", "config")), &ccfg); err != nil {
		t.Fatal(err)
	}
	_, proxyPort, _ := net.SplitHostPort(listenOf("proxy"))
	if ccfg.ProxyURL != "http://proxy:"+proxyPort {
		t.Errorf("chaos proxy_url %q, want http://proxy:%s: chaos acts through the proxy", ccfg.ProxyURL, proxyPort)
	}

	// The agents reach the authority by its compose name.
	for _, svc := range []string{"healer", "chaos", "dashboard"} {
		if got := flagOf(svc, "authority"); got != acfg.Issuer {
			t.Errorf("%s --authority %s, want %s", svc, got, acfg.Issuer)
		}
	}

	// The healer repairs through the proxy and watches the fleet services'
	// health ports, which the fleet config fixes and the compose file exposes.
	fcfg := fleet.Default()
	fcfg.Services = nil
	if err := config.Load(mount("fleet", flagOf("fleet", "config")), &fcfg); err != nil {
		t.Fatal(err)
	}
	fleetSvc, err := p.GetService("fleet")
	if err != nil {
		t.Fatal(err)
	}
	healthPorts := map[string]string{} // fleet service name -> port
	for _, fs := range fcfg.Services {
		host, port, err := net.SplitHostPort(fs.Listen)
		if err != nil || host != "0.0.0.0" || port == "0" {
			t.Errorf("fleet service %s listens on %q; want 0.0.0.0 and a fixed port so the healer can reach it", fs.Name, fs.Listen)
			continue
		}
		if !slices.Contains(fleetSvc.Expose, port) {
			t.Errorf("fleet service %s port %s is not exposed", fs.Name, port)
		}
		healthPorts[fs.Name] = port
	}
	// The dashboard's chaos buttons fire through the proxy, at services of
	// the chaos agent's own tenant.
	var dcfg chaos.Config
	if err := config.Load(mount("dashboard", flagOf("dashboard", "chaos-config")), &dcfg); err != nil {
		t.Fatal(err)
	}
	if err := dcfg.Validate(); err != nil {
		t.Errorf("dashboard chaos config: %v", err)
	}
	if dcfg.ProxyURL != "http://proxy:"+proxyPort {
		t.Errorf("dashboard chaos proxy_url %q, want http://proxy:%s: chaos acts through the proxy", dcfg.ProxyURL, proxyPort)
	}
	if len(dcfg.Targets) == 0 {
		t.Error("dashboard chaos config lists no targets: `passport dashboard` refuses it")
	}
	for _, target := range dcfg.Targets {
		if !slices.ContainsFunc(fcfg.Services, func(s fleet.ServiceConfig) bool { return s.Name == target && s.Tenant == dcfg.Tenant }) {
			t.Errorf("dashboard chaos target %s is not a fleet service of tenant %s", target, dcfg.Tenant)
		}
	}

	hcfg := healer.Default()
	if err := config.Load(mount("healer", flagOf("healer", "config")), &hcfg); err != nil {
		t.Fatal(err)
	}
	if hcfg.ProxyURL != "http://proxy:"+proxyPort {
		t.Errorf("healer proxy_url %q, want http://proxy:%s: the healer repairs through the proxy", hcfg.ProxyURL, proxyPort)
	}
	if len(hcfg.Checks) == 0 {
		t.Error("healer has no checks")
	}
	for _, c := range hcfg.Checks {
		if want := "http://fleet:" + healthPorts[c.Target] + "/healthz"; c.URL != want {
			t.Errorf("healer check %s = %s, want %s", c.Target, c.URL, want)
		}
	}
}

// checkFleetRoutes compares a deployment's proxy routes with the fleet
// routes the proxy itself defines (proxy.FleetRoutes, what `passport up` runs).
func checkFleetRoutes(t *testing.T, cfg proxy.Config) {
	t.Helper()
	type routeKey struct {
		match, action, resource string
		policyBody, production  bool
	}
	key := func(r proxy.Route) routeKey {
		prod := r.Production == nil || *r.Production
		return routeKey{r.Match, r.Action, r.Resource, r.PolicyBody, prod}
	}
	var got, want []routeKey
	for _, r := range cfg.Routes {
		got = append(got, key(r))
	}
	for _, r := range proxy.FleetRoutes() {
		want = append(want, key(r))
	}
	cmp := func(a, b routeKey) int { return strings.Compare(a.match, b.match) }
	slices.SortFunc(got, cmp)
	slices.SortFunc(want, cmp)
	if !slices.Equal(got, want) {
		t.Errorf("proxy routes differ from proxy.FleetRoutes():\n got %+v\nwant %+v", got, want)
	}
}

// ---------------------------------------------------------------------------
// Dockerfile and .dockerignore

func TestDeployDockerfile(t *testing.T) {
	root := repoRoot(t)
	data, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	// Join continuation lines, drop comments.
	var lines []string
	for _, l := range strings.Split(strings.ReplaceAll(string(data), "\\\n", " "), "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	var froms []string
	var entrypoint, user string
	expose := map[uint32]bool{}
	var build string
	for _, l := range lines {
		instr, rest, _ := strings.Cut(l, " ")
		switch strings.ToUpper(instr) {
		case "FROM":
			froms = append(froms, rest)
		case "ENTRYPOINT":
			entrypoint = strings.TrimSpace(rest)
		case "USER":
			user = strings.TrimSpace(rest)
		case "EXPOSE":
			for _, f := range strings.Fields(rest) {
				n, err := strconv.ParseUint(strings.TrimSuffix(f, "/tcp"), 10, 16)
				if err != nil {
					t.Errorf("EXPOSE %q: %v", f, err)
				}
				expose[uint32(n)] = true
			}
		case "RUN":
			if strings.Contains(rest, "go build") {
				build = rest
			}
		}
	}
	if len(froms) < 2 {
		t.Fatalf("FROM %v: want a multi-stage build", froms)
	}
	if !strings.Contains(froms[0], "golang:1.26") {
		t.Errorf("builder = %q, want golang:1.26", froms[0])
	}
	final := froms[len(froms)-1]
	if !strings.HasPrefix(final, "gcr.io/distroless/static") && final != "scratch" {
		t.Errorf("final stage = %q, want distroless static or scratch", final)
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", `-ldflags "-s -w`, "./cmd/passport"} {
		if !strings.Contains(build, want) {
			t.Errorf("go build %q lacks %s", build, want)
		}
	}
	if entrypoint != `["/usr/local/bin/passport"]` {
		t.Errorf("ENTRYPOINT = %s, want [\"/usr/local/bin/passport\"]", entrypoint)
	}
	if u, _, _ := strings.Cut(user, ":"); u == "" || u == "0" || u == "root" {
		t.Errorf("USER = %q, want a non-root user such as 65532", user)
	}
	// Every container port the deployments use is documented by EXPOSE.
	p := mustLoadCompose(t)
	for _, tc := range composePassportServices {
		s, err := p.GetService(tc.service)
		if err != nil {
			t.Fatal(err)
		}
		for name, addr := range listenFlagsOf(s.Command) {
			_, port := listenPort(t, name, addr)
			if !expose[port] {
				t.Errorf("%s --%s port %d is not in the Dockerfile's EXPOSE", tc.service, name, port)
			}
		}
	}
}

// listenFlagsOf reads --*listen values from a command without the binary
// (TestComposePassportServices checks them against the binary).
func listenFlagsOf(args []string) map[string]string {
	out := map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "--") {
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if name != "listen" && !strings.HasSuffix(name, "-listen") {
			continue
		}
		if !hasVal && i+1 < len(args) {
			i++
			val = args[i]
		}
		out[name] = val
	}
	return out
}

func TestDeployDockerignore(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repoRoot(t), ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	var patterns []string
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "#") {
			patterns = append(patterns, l)
		}
	}
	if !slices.Contains(patterns, ".git") {
		t.Error(".dockerignore does not exclude .git")
	}
	// What the build needs must stay in the context.
	for _, need := range []string{"go.mod", "go.sum", "cmd/passport/main.go", "policies/authz.rego"} {
		for _, pat := range patterns {
			if strings.HasPrefix(pat, "!") {
				continue
			}
			if ok, _ := path.Match(pat, need); ok || strings.HasPrefix(need, strings.TrimSuffix(pat, "/")+"/") {
				t.Errorf(".dockerignore pattern %q excludes %s, which the build needs", pat, need)
			}
		}
	}
}

// ---------------------------------------------------------------------------
// examples/kubernetes/

type kubeDoc struct {
	file string
	obj  map[string]any
}

func (d kubeDoc) kind() string { s, _ := d.obj["kind"].(string); return s }
func (d kubeDoc) name() string { s, _ := dig(d.obj, "metadata", "name").(string); return s }

// dig walks nested maps (string keys) and lists (int keys).
func dig(v any, keys ...any) any {
	for _, k := range keys {
		switch k := k.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func str(v any, keys ...any) string { s, _ := dig(v, keys...).(string); return s }
func list(v any, keys ...any) []any { l, _ := dig(v, keys...).([]any); return l }

// loadKube parses every YAML document of every file under examples/kubernetes.
func loadKube(t *testing.T) []kubeDoc {
	t.Helper()
	return loadKubeDir(t, filepath.Join(repoRoot(t), "examples", "kubernetes"))
}

// loadKubeDir parses every YAML document of every file in dir.
func loadKubeDir(t *testing.T, dir string) []kubeDoc {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	more, _ := filepath.Glob(filepath.Join(dir, "*.yml"))
	files = append(files, more...)
	if len(files) == 0 {
		t.Fatalf("no manifests in %s", dir)
	}
	var docs []kubeDoc
	for _, f := range files {
		docs = append(docs, loadKubeFile(t, f)...)
	}
	return docs
}

// loadKubeFile parses every YAML document of one file.
func loadKubeFile(t *testing.T, f string) []kubeDoc {
	t.Helper()
	data, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	var docs []kubeDoc
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for i := 0; ; i++ {
		var obj map[string]any
		err := dec.Decode(&obj)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s document %d: %v", filepath.Base(f), i, err)
		}
		if obj == nil {
			continue // empty document between ---
		}
		docs = append(docs, kubeDoc{file: filepath.Base(f), obj: obj})
	}
	return docs
}

func findKube(t *testing.T, docs []kubeDoc, kind, name string) kubeDoc {
	t.Helper()
	for _, d := range docs {
		if d.kind() == kind && d.name() == name {
			return d
		}
	}
	t.Fatalf("no %s %q in examples/kubernetes", kind, name)
	return kubeDoc{}
}

func TestKubeManifestsParse(t *testing.T) {
	docs := loadKube(t)
	seen := map[string]string{}
	for _, d := range docs {
		api, _ := d.obj["apiVersion"].(string)
		if api == "" || d.kind() == "" {
			t.Errorf("%s: document without apiVersion or kind: %v", d.file, d.obj)
			continue
		}
		if d.kind() == "Kustomization" {
			continue // metadata is optional there
		}
		if d.name() == "" {
			t.Errorf("%s: %s without metadata.name", d.file, d.kind())
		}
		key := d.kind() + "/" + d.name()
		if prev, dup := seen[key]; dup {
			t.Errorf("%s: %s already defined in %s", d.file, key, prev)
		}
		seen[key] = d.file
	}
}

func TestKubeKustomization(t *testing.T) {
	docs := loadKube(t)
	var k kubeDoc
	for _, d := range docs {
		if d.kind() == "Kustomization" {
			k = d
		}
	}
	if k.obj == nil {
		t.Fatal("no kustomization.yaml")
	}
	if k.file != "kustomization.yaml" {
		t.Errorf("Kustomization lives in %s, want kustomization.yaml", k.file)
	}
	listed := map[string]bool{}
	for _, r := range list(k.obj, "resources") {
		f, _ := r.(string)
		if _, err := os.Stat(filepath.Join(repoRoot(t), "examples", "kubernetes", f)); err != nil {
			t.Errorf("resource %q: %v", f, err)
		}
		listed[f] = true
	}
	// Every manifest is applied, except the Secret example: secrets are
	// created out of band so that no real token sits in a repository.
	for _, d := range docs {
		if d.file == "kustomization.yaml" || strings.HasSuffix(d.file, ".example.yaml") {
			continue
		}
		if !listed[d.file] {
			t.Errorf("%s is not listed in kustomization.yaml resources", d.file)
		}
		if d.kind() == "Secret" {
			t.Errorf("%s: a Secret is applied by the kustomization; create it out of band", d.file)
		}
	}
}

// container is one container of a pod template.
type container map[string]any

func podContainers(d kubeDoc) []container {
	var out []container
	for _, c := range list(d.obj, "spec", "template", "spec", "containers") {
		m, _ := c.(map[string]any)
		out = append(out, m)
	}
	return out
}

func containerNamed(t *testing.T, d kubeDoc, name string) container {
	t.Helper()
	for _, c := range podContainers(d) {
		if str(map[string]any(c), "name") == name {
			return c
		}
	}
	t.Fatalf("%s %s has no container %q", d.kind(), d.name(), name)
	return nil
}

func stringList(v []any) []string {
	var out []string
	for _, x := range v {
		switch x := x.(type) {
		case string:
			out = append(out, x)
		default:
			out = append(out, fmt.Sprint(x))
		}
	}
	return out
}

// containerPorts maps port names to numbers.
func containerPorts(c container) map[string]int {
	out := map[string]int{}
	for _, p := range list(map[string]any(c), "ports") {
		n, _ := dig(p, "containerPort").(int)
		out[str(p, "name")] = n
	}
	return out
}

// probePort resolves a probe's httpGet port (a name or a number).
func probePort(c container, probe string) (string, int) {
	m := map[string]any(c)
	p := str(m, probe, "httpGet", "path")
	switch port := dig(m, probe, "httpGet", "port").(type) {
	case int:
		return p, port
	case string:
		return p, containerPorts(c)[port]
	}
	return p, 0
}

// checkPassportContainer checks what every passport container must have and
// returns its parsed command.
func checkPassportContainer(t *testing.T, d kubeDoc, c container) checkedCommand {
	t.Helper()
	m := map[string]any(c)
	name := str(m, "name")
	if dig(m, "command") != nil {
		t.Errorf("%s/%s sets command; the image's ENTRYPOINT is the binary, use args", d.name(), name)
	}
	cc := parseCommand(t, stringList(list(m, "args")))
	if sc := dig(m, "securityContext"); sc == nil {
		t.Errorf("%s/%s has no securityContext", d.name(), name)
	} else {
		if dig(sc, "readOnlyRootFilesystem") != true {
			t.Errorf("%s/%s: readOnlyRootFilesystem is not true", d.name(), name)
		}
		if dig(sc, "allowPrivilegeEscalation") != false {
			t.Errorf("%s/%s: allowPrivilegeEscalation is not false", d.name(), name)
		}
		if !slices.Contains(stringList(list(sc, "capabilities", "drop")), "ALL") {
			t.Errorf("%s/%s: capabilities are not all dropped", d.name(), name)
		}
	}
	if dig(m, "resources", "requests", "cpu") == nil || dig(m, "resources", "requests", "memory") == nil {
		t.Errorf("%s/%s: no cpu and memory requests", d.name(), name)
	}
	// Ports declared for each listener.
	declared := map[int]bool{}
	for _, n := range containerPorts(c) {
		declared[n] = true
	}
	for flagName, addr := range cc.listens {
		_, port := listenPort(t, flagName, addr)
		if !declared[int(port)] && !strings.HasPrefix(addr, "127.0.0.1:") {
			t.Errorf("%s/%s --%s %s: port not declared in containerPorts", d.name(), name, flagName, addr)
		}
	}
	return cc
}

func checkPodSecurity(t *testing.T, d kubeDoc) {
	t.Helper()
	psc := dig(d.obj, "spec", "template", "spec", "securityContext")
	if dig(psc, "runAsNonRoot") != true {
		t.Errorf("%s %s: pod securityContext.runAsNonRoot is not true", d.kind(), d.name())
	}
	if dig(d.obj, "spec", "template", "spec", "automountServiceAccountToken") != false {
		t.Errorf("%s %s: automountServiceAccountToken is not false (nothing here talks to the Kubernetes API)", d.kind(), d.name())
	}
}

// secretEnv says which env vars come from a Secret.
func secretEnv(c container) map[string]string {
	out := map[string]string{}
	for _, e := range list(map[string]any(c), "env") {
		if ref := dig(e, "valueFrom", "secretKeyRef"); ref != nil {
			out[str(e, "name")] = str(ref, "name") + "/" + str(ref, "key")
		}
	}
	return out
}

// mountedFile finds the ConfigMap key mounted at file in container c.
func mountedFile(t *testing.T, docs []kubeDoc, d kubeDoc, c container, file string) (cm kubeDoc, key string) {
	t.Helper()
	for _, vm := range list(map[string]any(c), "volumeMounts") {
		mp := str(vm, "mountPath")
		if !strings.HasPrefix(file, strings.TrimSuffix(mp, "/")+"/") {
			continue
		}
		if dig(vm, "readOnly") != true {
			t.Errorf("%s: volume %s mounted writable", d.name(), mp)
		}
		key = strings.TrimPrefix(file, strings.TrimSuffix(mp, "/")+"/")
		if sub := str(vm, "subPath"); sub != "" {
			t.Errorf("%s: %s mounted with subPath, which never sees ConfigMap updates", d.name(), mp)
		}
		for _, v := range list(d.obj, "spec", "template", "spec", "volumes") {
			if str(v, "name") == str(vm, "name") {
				cmName := str(v, "configMap", "name")
				if cmName == "" {
					t.Fatalf("%s: %s is not a ConfigMap volume", d.name(), mp)
				}
				return findKube(t, docs, "ConfigMap", cmName), key
			}
		}
	}
	t.Fatalf("%s: nothing mounted at %s", d.name(), file)
	return kubeDoc{}, ""
}

// serviceFor finds the Service whose selector matches the pod labels.
func serviceFor(t *testing.T, docs []kubeDoc, d kubeDoc) kubeDoc {
	t.Helper()
	labels, _ := dig(d.obj, "spec", "template", "metadata", "labels").(map[string]any)
	for _, s := range docs {
		if s.kind() != "Service" {
			continue
		}
		sel, _ := dig(s.obj, "spec", "selector").(map[string]any)
		if len(sel) == 0 {
			continue
		}
		match := true
		for k, v := range sel {
			if labels[k] != v {
				match = false
			}
		}
		if match {
			return s
		}
	}
	t.Fatalf("no Service selects the pods of %s %s", d.kind(), d.name())
	return kubeDoc{}
}

func TestKubeSidecarPod(t *testing.T) {
	docs := loadKube(t)
	d := findKube(t, docs, "Deployment", "fleet")
	cs := podContainers(d)
	if len(cs) != 2 {
		t.Fatalf("fleet pod has %d containers, want 2 (the API and the proxy sidecar)", len(cs))
	}
	checkPodSecurity(t, d)
	api := containerNamed(t, d, "fleet")
	proxy := containerNamed(t, d, "proxy")

	// The API listens on loopback only: inside the pod, so the only way in
	// from outside is through the proxy.
	acc := checkPassportContainer(t, d, api)
	if acc.path != "passport fleet" {
		t.Errorf("api container runs %q, want passport fleet", acc.path)
	}
	apiHost, apiPort := listenPort(t, "listen", acc.listens["listen"])
	if apiHost != "127.0.0.1" {
		t.Errorf("api --listen %s: bind 127.0.0.1 so that nothing outside the pod bypasses the proxy", acc.listens["listen"])
	}
	if len(containerPorts(api)) != 0 {
		t.Errorf("api container declares ports %v; it must be reachable only through the proxy", containerPorts(api))
	}

	pcc := checkPassportContainer(t, d, proxy)
	if pcc.path != "passport proxy" {
		t.Fatalf("proxy container runs %q, want passport proxy", pcc.path)
	}
	_, httpPort := listenPort(t, "listen", pcc.listens["listen"])
	adminAddr, ok := pcc.listens["admin-listen"]
	if !ok {
		t.Fatal("proxy has no --admin-listen: the probes and /metrics need the admin listener")
	}
	_, adminPort := listenPort(t, "admin-listen", adminAddr)
	for probe, want := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
		p, port := probePort(proxy, probe)
		if p != want || port != int(adminPort) {
			t.Errorf("proxy %s = %s on %d, want %s on the admin port %d", probe, p, port, want, adminPort)
		}
	}
	se := secretEnv(proxy)
	for _, k := range []string{"PASSPORT_REPORTER_TOKEN", "PASSPORT_REDIS_URL"} {
		if se[k] == "" {
			t.Errorf("proxy env %s does not come from a Secret", k)
		}
	}
	// Least privilege: the sidecar in the application's pod reports
	// denials with a reporter token and never holds the admin token.
	if _, ok := se["PASSPORT_ADMIN_TOKEN"]; ok {
		t.Error("the proxy sidecar gets PASSPORT_ADMIN_TOKEN; give it PASSPORT_REPORTER_TOKEN")
	}

	// The proxy config comes from a ConfigMap and points at the policies
	// ConfigMap's mount and at the API on loopback.
	if pcc.config == "" {
		t.Fatal("proxy has no --config")
	}
	cm, key := mountedFile(t, docs, d, proxy, pcc.config)
	raw := str(cm.obj, "data", key)
	if raw == "" {
		t.Fatalf("ConfigMap %s has no key %q", cm.name(), key)
	}
	tmp := filepath.Join(t.TempDir(), key)
	if err := os.WriteFile(tmp, []byte(raw), 0o600); err != nil {
		t.Fatal(err)
	}
	checkConfigFile(t, pcc.path, tmp)
	pcfg, err := loadProxyConfig(tmp)
	if err != nil {
		t.Fatal(err)
	}
	checkFleetRoutes(t, pcfg)
	for name, u := range pcfg.Upstreams {
		if u.URL != "http://127.0.0.1:"+strconv.Itoa(int(apiPort)) {
			t.Errorf("proxy upstream %s = %s, want the API container on http://127.0.0.1:%d", name, u.URL, apiPort)
		}
	}
	if policyDir := kubePolicyMount(t, docs, d, proxy); pcfg.Policy.Dir != policyDir {
		t.Errorf("proxy policy.dir = %q, want the passport-policies mount %s", pcfg.Policy.Dir, policyDir)
	}
	checkKubePolicyLoads(t, findKube(t, docs, "ConfigMap", "passport-policies"), pcfg)
	// The issuer the proxy accepts is the authority's, reached through its Service.
	acfg := kubeAuthorityConfig(t, docs)
	if pcfg.Issuer != acfg.Issuer {
		t.Errorf("proxy issuer %q != authority issuer %q", pcfg.Issuer, acfg.Issuer)
	}
	if !slices.Contains(acfg.Audiences, pcfg.Audience) {
		t.Errorf("proxy audience %q is not among the authority's audiences %v", pcfg.Audience, acfg.Audiences)
	}
	asvc := findKube(t, docs, "Service", "passport-authority")
	for _, u := range []string{pcfg.Issuer, pcfg.JWKSURL, pcfg.AuthorityURL} {
		want := "http://" + asvc.name() + ":" + fmt.Sprint(dig(asvc.obj, "spec", "ports", 0, "port"))
		if !strings.HasPrefix(u, want) {
			t.Errorf("proxy URL %s does not reach the authority Service at %s", u, want)
		}
	}

	// The Service exposes only the proxy's agent port.
	svc := serviceFor(t, docs, d)
	if want := fmt.Sprintf("http://%s:%v", svc.name(), dig(svc.obj, "spec", "ports", 0, "port")); pcfg.ResourceURL != want {
		t.Errorf("proxy resource_url %q, want %q (the Service in front of it)", pcfg.ResourceURL, want)
	}
	ports := list(svc.obj, "spec", "ports")
	if len(ports) != 1 {
		t.Fatalf("Service %s exposes %d ports, want only the proxy's", svc.name(), len(ports))
	}
	tp := dig(ports[0], "targetPort")
	if name, ok := tp.(string); ok {
		tp = containerPorts(proxy)[name]
	}
	if tp != int(httpPort) {
		t.Errorf("Service %s targets %v, want the proxy port %d", svc.name(), tp, httpPort)
	}
}

// checkKubePolicyLoads lays the policies ConfigMap out as the kubelet
// mounts it (each file a link NAME -> ..data/NAME, ..data a link to a
// hidden version directory) and loads it with the proxy's policy settings:
// the proxy refuses every symbolic link unless policy.kubernetes_configmap
// is set, so without it the sidecar would not start.
func checkKubePolicyLoads(t *testing.T, cm kubeDoc, pcfg proxy.Config) {
	t.Helper()
	dir := t.TempDir()
	version := filepath.Join(dir, "..2026_11_25_10_00_00.000000001")
	if err := os.Mkdir(version, 0o755); err != nil {
		t.Fatal(err)
	}
	data, _ := dig(cm.obj, "data").(map[string]any)
	for name, v := range data {
		if err := os.WriteFile(filepath.Join(version, name), []byte(v.(string)), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("..data/"+name, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Base(version), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	_, err := policy.New(context.Background(), policy.Options{Dir: dir, Layout: policy.ParseDirLayout(pcfg.Policy.KubernetesConfigMap),
		Evaluator: policy.Evaluator(pcfg.Policy.Engine), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Errorf("the proxy does not load the mounted passport-policies ConfigMap (policy.kubernetes_configmap: %v): %v",
			pcfg.Policy.KubernetesConfigMap, err)
	}
}

// kubeAuthorityConfig loads the authority config from its ConfigMap.
func kubeAuthorityConfig(t *testing.T, docs []kubeDoc) authority.Config {
	t.Helper()
	cm := findKube(t, docs, "ConfigMap", "passport-authority-config")
	cfg := authority.DefaultConfig()
	if err := config.Decode("authority.yaml", []byte(str(cm.obj, "data", "authority.yaml")), &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// kubePolicyMount returns where the policies ConfigMap is mounted in c.
func kubePolicyMount(t *testing.T, docs []kubeDoc, d kubeDoc, c container) string {
	t.Helper()
	for _, vm := range list(map[string]any(c), "volumeMounts") {
		for _, v := range list(d.obj, "spec", "template", "spec", "volumes") {
			if str(v, "name") == str(vm, "name") && str(v, "configMap", "name") == "passport-policies" {
				if dig(vm, "readOnly") != true {
					t.Errorf("policies mounted writable")
				}
				return str(vm, "mountPath")
			}
		}
	}
	t.Fatal("the passport-policies ConfigMap is not mounted into the proxy")
	return ""
}

func TestKubeAuthority(t *testing.T) {
	docs := loadKube(t)
	d := findKube(t, docs, "Deployment", "passport-authority")
	checkPodSecurity(t, d)
	cs := podContainers(d)
	if len(cs) != 1 {
		t.Fatalf("authority pod has %d containers, want 1", len(cs))
	}
	c := cs[0]
	cc := checkPassportContainer(t, d, c)
	if cc.path != "passport authority" {
		t.Fatalf("authority container runs %q", cc.path)
	}
	host, port := listenPort(t, "listen", cc.listens["listen"])
	if host != "0.0.0.0" {
		t.Errorf("authority --listen %s: bind 0.0.0.0 so the Service reaches it", cc.listens["listen"])
	}
	for probe, want := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
		p, pp := probePort(c, probe)
		if p != want || pp != int(port) {
			t.Errorf("authority %s = %s on %d, want %s on %d", probe, p, pp, want, port)
		}
	}
	se := secretEnv(c)
	for _, k := range []string{"PASSPORT_ADMIN_TOKEN", "PASSPORT_REPORTER_TOKEN", "PASSPORT_REDIS_URL"} {
		if se[k] == "" {
			t.Errorf("authority env %s does not come from a Secret", k)
		}
	}
	if cc.config != "" {
		cm, key := mountedFile(t, docs, d, c, cc.config)
		tmp := filepath.Join(t.TempDir(), key)
		if err := os.WriteFile(tmp, []byte(str(cm.obj, "data", key)), 0o600); err != nil {
			t.Fatal(err)
		}
		checkConfigFile(t, cc.path, tmp)
	}
	svc := serviceFor(t, docs, d)
	ports := list(svc.obj, "spec", "ports")
	if len(ports) != 1 {
		t.Fatalf("Service %s exposes %d ports, want 1", svc.name(), len(ports))
	}
	tp := dig(ports[0], "targetPort")
	if name, ok := tp.(string); ok {
		tp = containerPorts(c)[name]
	}
	if tp != int(port) {
		t.Errorf("Service %s targets %v, want %d", svc.name(), tp, port)
	}
}

// policyFiles are the files of policies/ that a proxy loads: the Rego
// modules (not their tests) and the data documents.
func policyFiles(t *testing.T) map[string]string {
	t.Helper()
	dir := filepath.Join(repoRoot(t), "policies")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range entries {
		n := e.Name()
		if e.IsDir() || strings.HasSuffix(n, "_test.rego") {
			continue
		}
		switch filepath.Ext(n) {
		case ".rego", ".json":
		case ".yaml", ".yml":
		default:
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		out[n] = string(data)
	}
	return out
}

const policiesConfigMapFile = "policies-configmap.yaml"

// renderPoliciesConfigMap writes the policies ConfigMap for files.
func renderPoliciesConfigMap(files map[string]string) ([]byte, error) {
	keys := make([]string, 0, len(files))
	for k := range files {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	data := &yaml.Node{Kind: yaml.MappingNode}
	for _, k := range keys {
		data.Content = append(data.Content,
			&yaml.Node{Kind: yaml.ScalarNode, Value: k},
			&yaml.Node{Kind: yaml.ScalarNode, Value: files[k], Style: yaml.LiteralStyle})
	}
	doc := &yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{
		{Kind: yaml.ScalarNode, Value: "apiVersion"}, {Kind: yaml.ScalarNode, Value: "v1"},
		{Kind: yaml.ScalarNode, Value: "kind"}, {Kind: yaml.ScalarNode, Value: "ConfigMap"},
		{Kind: yaml.ScalarNode, Value: "metadata"}, {Kind: yaml.MappingNode, Content: []*yaml.Node{
			{Kind: yaml.ScalarNode, Value: "name"}, {Kind: yaml.ScalarNode, Value: "passport-policies"},
			{Kind: yaml.ScalarNode, Value: "labels"}, {Kind: yaml.MappingNode, Content: []*yaml.Node{
				{Kind: yaml.ScalarNode, Value: "app.kubernetes.io/part-of"}, {Kind: yaml.ScalarNode, Value: "agent-passport"},
			}},
		}},
		{Kind: yaml.ScalarNode, Value: "data"}, data,
	}}
	var buf bytes.Buffer
	buf.WriteString("# The policy library (policies/*.rego without tests, and its data) for the\n")
	buf.WriteString("# proxy sidecar, mounted read-only at the proxy's policy directory.\n")
	buf.WriteString("# Generated from policies/ by: go test ./cmd/passport -run TestKubePoliciesConfigMap -update\n")
	buf.WriteString("# (or create it from the folder: kubectl create configmap passport-policies --from-file=policies/).\n")
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func TestKubePoliciesConfigMap(t *testing.T) {
	files := policyFiles(t)
	if len(files) == 0 {
		t.Fatal("no policy files in policies/")
	}
	path := filepath.Join(repoRoot(t), "examples", "kubernetes", policiesConfigMapFile)
	if *updateKube {
		out, err := renderPoliciesConfigMap(files)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, out, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cm := findKube(t, loadKube(t), "ConfigMap", "passport-policies")
	if cm.file != policiesConfigMapFile {
		t.Errorf("passport-policies lives in %s, want %s", cm.file, policiesConfigMapFile)
	}
	data, _ := dig(cm.obj, "data").(map[string]any)
	for name, want := range files {
		got, ok := data[name].(string)
		switch {
		case !ok:
			t.Errorf("ConfigMap passport-policies lacks %s", name)
		case got != want:
			t.Errorf("ConfigMap passport-policies %s differs from policies/%s", name, name)
		}
	}
	for name := range data {
		if _, ok := files[name]; !ok {
			t.Errorf("ConfigMap passport-policies has %s, which is not in policies/", name)
		}
	}
	if t.Failed() {
		t.Log("regenerate with: go test ./cmd/passport -run TestKubePoliciesConfigMap -update")
	}
}

// TestKubeAllPassportContainers checks every container running the passport
// image anywhere in the manifests against the binary's real flags.
func TestKubeAllPassportContainers(t *testing.T) {
	for _, d := range loadKube(t) {
		if d.kind() != "Deployment" {
			continue
		}
		checkPodSecurity(t, d)
		for _, c := range podContainers(d) {
			m := map[string]any(c)
			if !strings.Contains(str(m, "image"), "agentpassport/passport") {
				t.Errorf("%s/%s runs image %q, want the passport image", d.name(), str(m, "name"), str(m, "image"))
				continue
			}
			t.Run(d.name()+"/"+str(m, "name"), func(t *testing.T) {
				checkPassportContainer(t, d, c)
			})
		}
	}
}

func TestKubeDashboard(t *testing.T) {
	docs := loadKube(t)
	d := findKube(t, docs, "Deployment", "passport-dashboard")
	c := containerNamed(t, d, "dashboard")
	cc := checkPassportContainer(t, d, c)
	if cc.path != "passport dashboard" {
		t.Fatalf("dashboard container runs %q", cc.path)
	}
	host, port := listenPort(t, "listen", cc.listens["listen"])
	if host != "0.0.0.0" {
		t.Errorf("dashboard --listen %s: bind 0.0.0.0 so the Service reaches it", cc.listens["listen"])
	}
	for _, probe := range []string{"livenessProbe", "readinessProbe"} {
		if p, pp := probePort(c, probe); p != "/healthz" || pp != int(port) {
			t.Errorf("dashboard %s = %s on %d, want /healthz on %d", probe, p, pp, port)
		}
	}
	se := secretEnv(c)
	for _, k := range []string{"PASSPORT_ADMIN_TOKEN", "PASSPORT_REDIS_URL"} {
		if se[k] == "" {
			t.Errorf("dashboard env %s does not come from a Secret", k)
		}
	}
	// Block and Unblock reach the authority through its Service.
	args := stringList(list(map[string]any(c), "args"))
	asvc := findKube(t, docs, "Service", "passport-authority")
	want := fmt.Sprintf("http://%s:%v", asvc.name(), dig(asvc.obj, "spec", "ports", 0, "port"))
	if i := slices.Index(args, "--authority"); i < 0 || i+1 >= len(args) || args[i+1] != want {
		t.Errorf("dashboard args %q: want --authority %s", args, want)
	}
	svc := serviceFor(t, docs, d)
	tp := dig(svc.obj, "spec", "ports", 0, "targetPort")
	if name, ok := tp.(string); ok {
		tp = containerPorts(c)[name]
	}
	if tp != int(port) {
		t.Errorf("Service %s targets %v, want %d", svc.name(), tp, port)
	}
}

// ---------------------------------------------------------------------------
// docker-compose.tls.yml: the TLS overlay on docker-compose.yml

// Where the overlay mounts the key material: cert-manager's file names, so
// that the same paths serve in Kubernetes (examples/kubernetes-tls/).
const (
	tlsCertPath = "/etc/passport/tls/tls.crt"
	tlsKeyPath  = "/etc/passport/tls/tls.key"
	tlsCAPath   = "/etc/passport/ca/ca.crt"
)

func mustLoadComposeTLS(t *testing.T) *types.Project {
	t.Helper()
	p, err := loadComposeFiles(t, map[string]string{"PASSPORT_ADMIN_TOKEN": testAdminToken}, "docker-compose.yml", "docker-compose.tls.yml")
	if err != nil {
		t.Fatalf("docker-compose.yml with docker-compose.tls.yml does not load: %v", err)
	}
	return p
}

// servesTLS says whether a compose service's subcommand can serve TLS: it
// takes --tls-cert. `chaos run` does not (its /metrics listener is plain);
// when it does, the overlay must turn it on.
func servesTLS(t *testing.T, command []string) bool {
	t.Helper()
	root := (&app{getenv: func(string) string { return "" }, stdout: io.Discard, stderr: io.Discard}).rootCmd()
	cmd, _, err := root.Find(command)
	if err != nil {
		t.Fatalf("command %q: %v", command, err)
	}
	return cmd.Flags().Lookup("tls-cert") != nil
}

// secretMounts maps each mounted secret's target to the file it comes from.
func secretMounts(t *testing.T, p *types.Project, s types.ServiceConfig) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, sec := range s.Secrets {
		def, ok := p.Secrets[sec.Source]
		if !ok {
			t.Errorf("%s: secret %s is not declared", s.Name, sec.Source)
			continue
		}
		if def.File == "" {
			t.Errorf("%s: secret %s is not file-based", s.Name, sec.Source)
		}
		out[sec.Target] = def.File
	}
	return out
}

// The overlay merges with the base: the same services, and what the base
// sets that the overlay does not touch (the Redis URL, the admin token, the
// hardening) stays.
func TestComposeTLSOverlayLoads(t *testing.T) {
	base, tlsp := mustLoadCompose(t), mustLoadComposeTLS(t)
	got, want := tlsp.ServiceNames(), base.ServiceNames()
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("services with the overlay = %v, want the base's %v", got, want)
	}
	root := repoRoot(t)
	for name, def := range tlsp.Secrets {
		if filepath.Dir(def.File) != filepath.Join(root, "deploy", "tls") {
			t.Errorf("secret %s comes from %s, want a file in deploy/tls/ (scripts/dev-certs.sh writes there)", name, def.File)
		}
		if filepath.Base(def.File) == "ca.key" {
			t.Errorf("secret %s is the CA's private key: no service needs it", name)
		}
	}
	ignore, err := os.ReadFile(filepath.Join(root, ".gitignore"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(strings.Fields(string(ignore)), "/deploy/tls/") {
		t.Error(".gitignore does not ignore /deploy/tls/: generated keys could be committed")
	}
	for _, tc := range composePassportServices {
		s, err := tlsp.GetService(tc.service)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := base.GetService(tc.service)
		for _, k := range []string{"PASSPORT_REDIS_URL", "PASSPORT_ADMIN_TOKEN"} {
			if got, want := s.Environment[k], b.Environment[k]; got == nil || want == nil || *got != *want {
				t.Errorf("%s: %s lost in the merge", tc.service, k)
			}
		}
		if !s.ReadOnly || !slices.Contains(s.CapDrop, "ALL") || len(s.Volumes) != len(b.Volumes) {
			t.Errorf("%s: the overlay changed the hardening or added mounts (read_only=%v cap_drop=%v, %d volumes, base %d)",
				tc.service, s.ReadOnly, s.CapDrop, len(s.Volumes), len(b.Volumes))
		}
	}
}

// Every passport service that can serve TLS has the certificate, the key
// and the CA mounted from the secrets at the cert-manager paths and named by
// the environment, and its healthcheck speaks https to the name in the
// certificate; chaos (a client only) gets the CA and nothing else.
func TestComposeTLSServices(t *testing.T) {
	p := mustLoadComposeTLS(t)
	base := mustLoadCompose(t)
	for _, tc := range composePassportServices {
		t.Run(tc.service, func(t *testing.T) {
			s, err := p.GetService(tc.service)
			if err != nil {
				t.Fatal(err)
			}
			cc := parseCommand(t, s.Command)
			if cc.path != tc.command {
				t.Fatalf("command %q runs %q, want %q", s.Command, cc.path, tc.command)
			}
			b, _ := base.GetService(tc.service)
			if bl := listenFlagsOf(b.Command); !maps.Equal(cc.listens, bl) {
				t.Errorf("listeners %v, want the base's %v (ports are published, exposed and scraped as they are)", cc.listens, bl)
			}
			env := func(k string) string {
				if v := s.Environment[k]; v != nil {
					return *v
				}
				return ""
			}
			mounts := secretMounts(t, p, s)
			want := map[string]string{"PASSPORT_CA_FILE": tlsCAPath}
			serves := servesTLS(t, s.Command)
			if serves {
				want["PASSPORT_TLS_CERT_FILE"], want["PASSPORT_TLS_KEY_FILE"] = tlsCertPath, tlsKeyPath
			} else if tc.service != "chaos" {
				t.Errorf("%s cannot serve TLS (no --tls-cert)", cc.path)
			}
			files := map[string]string{tlsCAPath: "ca.crt", tlsCertPath: "tls.crt", tlsKeyPath: "tls.key"}
			for k, path := range want {
				if got := env(k); got != path {
					t.Errorf("%s = %q, want %q", k, got, path)
				}
				if src, ok := mounts[path]; !ok {
					t.Errorf("no secret mounted at %s (%s)", path, k)
				} else if filepath.Base(src) != files[path] {
					t.Errorf("%s comes from %s, want deploy/tls/%s", path, src, files[path])
				}
			}
			if !serves {
				for _, k := range []string{"PASSPORT_TLS_CERT_FILE", "PASSPORT_TLS_KEY_FILE"} {
					if env(k) != "" {
						t.Errorf("%s is set, but %s serves no TLS", k, cc.path)
					}
				}
				if _, ok := mounts[tlsKeyPath]; ok {
					t.Errorf("the key is mounted, but %s serves no TLS: a client gets the CA only", cc.path)
				}
			}
			for target := range mounts {
				if !slices.Contains([]string{tlsCAPath, tlsCertPath, tlsKeyPath}, target) {
					t.Errorf("secret mounted at %s, not at a cert-manager path", target)
				}
			}
			if serves {
				checkHealthcheckScheme(t, s, cc, tc.readyz, "https", tc.service)
			} else {
				checkHealthcheck(t, s, cc, tc.readyz)
			}
			if cc.config != "" {
				checkTLSConfigFile(t, s, cc)
			}
		})
	}
}

// checkTLSConfigFile loads the service's mounted config (from
// examples/compose/tls/ where the plain one names http URLs) with its component's strict loader and the TLS
// settings its environment gives it, so that a setting TLS refuses (an
// http:// issuer on a TLS authority) fails here.
func checkTLSConfigFile(t *testing.T, s types.ServiceConfig, cc checkedCommand) {
	t.Helper()
	var src string
	for _, v := range s.Volumes {
		if v.Type == types.VolumeTypeBind && v.Target == cc.config {
			src = v.Source
		}
	}
	if src == "" {
		t.Fatalf("--config %s is not bind-mounted", cc.config)
	}
	env := func(k string) string {
		if v := s.Environment[k]; v != nil {
			return *v
		}
		return ""
	}
	switch cc.path {
	case "passport authority":
		cfg := authority.DefaultConfig()
		if err := config.Load(src, &cfg); err != nil {
			t.Fatal(err)
		}
		cfg.ApplyEnv(env)
		cfg.TLS.CertFile, cfg.TLS.KeyFile = env("PASSPORT_TLS_CERT_FILE"), env("PASSPORT_TLS_KEY_FILE")
		if err := cfg.Validate(); err != nil {
			t.Errorf("authority config %s with TLS on: %v", src, err)
		}
	case "passport proxy":
		cfg, err := proxy.LoadConfig(src)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Redis.URL = env("PASSPORT_REDIS_URL")
		cfg.TLS.CertFile, cfg.TLS.KeyFile = env("PASSPORT_TLS_CERT_FILE"), env("PASSPORT_TLS_KEY_FILE")
		if err := cfg.Validate(); err != nil {
			t.Errorf("proxy config %s with TLS on: %v", src, err)
		}
	default:
		checkConfigFile(t, cc.path, src)
	}
}

// httpURL finds an http:// URL in text.
var httpURL = regexp.MustCompile(`http://[^\s"']+`)

// No passport service calls another, or names itself, over plain http:
// not in a command, the environment or a mounted config. Then the https
// URLs agree with each other as the plain ones do (TestComposeWiring), and
// every client that verifies a passport server trusts the mounted CA.
func TestComposeTLSWiring(t *testing.T) {
	p := mustLoadComposeTLS(t)
	svc := func(name string) types.ServiceConfig {
		s, err := p.GetService(name)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	mount := func(service, target string) string {
		for _, v := range svc(service).Volumes {
			if v.Type == types.VolumeTypeBind && v.Target == target {
				return v.Source
			}
		}
		t.Fatalf("%s: nothing mounted at %s", service, target)
		return ""
	}
	flagOf := func(service, name string) string {
		cmd := svc(service).Command
		for i, a := range cmd {
			if a == "--"+name && i+1 < len(cmd) {
				return cmd[i+1]
			}
		}
		t.Fatalf("%s has no --%s", service, name)
		return ""
	}
	portOf := func(service, flagName string) string {
		_, port, _ := net.SplitHostPort(listenFlagsOf(svc(service).Command)[flagName])
		return port
	}

	for _, tc := range composePassportServices {
		s := svc(tc.service)
		texts := map[string]string{"command": strings.Join(s.Command, " ")}
		for k, v := range s.Environment {
			if v != nil {
				texts["environment "+k] = *v
			}
		}
		if s.HealthCheck != nil && servesTLS(t, s.Command) {
			texts["healthcheck"] = strings.Join(s.HealthCheck.Test, " ")
		}
		for _, v := range s.Volumes {
			if v.Type != types.VolumeTypeBind || filepath.Ext(v.Source) != ".yaml" {
				continue
			}
			data, err := os.ReadFile(v.Source)
			if err != nil {
				t.Fatal(err)
			}
			texts[v.Source] = string(data)
		}
		for where, text := range texts {
			// Comments may say http://; the settings may not.
			for _, line := range strings.Split(text, "\n") {
				line, _, _ = strings.Cut(line, " #")
				if strings.HasPrefix(strings.TrimSpace(line), "#") {
					continue
				}
				for _, u := range httpURL.FindAllString(line, -1) {
					t.Errorf("%s %s: %s is plain http", tc.service, where, u)
				}
			}
		}
	}

	acfg := authority.DefaultConfig()
	if err := config.Load(mount("authority", flagOf("authority", "config")), &acfg); err != nil {
		t.Fatal(err)
	}
	if want := "https://authority:" + portOf("authority", "listen"); acfg.Issuer != want {
		t.Errorf("authority issuer %q, want %q", acfg.Issuer, want)
	}
	pcfg, err := proxy.LoadConfig(mount("proxy", flagOf("proxy", "config")))
	if err != nil {
		t.Fatal(err)
	}
	if pcfg.Issuer != acfg.Issuer || pcfg.AuthorityURL != acfg.Issuer {
		t.Errorf("proxy issuer %q, authority_url %q: want the authority's issuer %q", pcfg.Issuer, pcfg.AuthorityURL, acfg.Issuer)
	}
	if pcfg.JWKSURL != "" && !strings.HasPrefix(pcfg.JWKSURL, acfg.Issuer+"/") {
		t.Errorf("proxy jwks_url %q is not at the authority %s", pcfg.JWKSURL, acfg.Issuer)
	}
	if pcfg.AuthorityTLS.CAFile != tlsCAPath {
		t.Errorf("proxy authority_tls.ca_file %q, want the mounted CA %s", pcfg.AuthorityTLS.CAFile, tlsCAPath)
	}
	proxyURL := "https://proxy:" + portOf("proxy", "listen")
	if pcfg.ResourceURL != proxyURL {
		t.Errorf("proxy resource_url %q, want %q", pcfg.ResourceURL, proxyURL)
	}
	fleetPort := portOf("fleet", "listen")
	if len(pcfg.Upstreams) != 1 {
		t.Errorf("proxy upstreams %v, want the fleet only", pcfg.Upstreams)
	}
	for name, u := range pcfg.Upstreams {
		if u.URL != "https://fleet:"+fleetPort || u.TLS.CAFile != tlsCAPath {
			t.Errorf("proxy upstream %s = %s (ca_file %q), want https://fleet:%s verified with %s", name, u.URL, u.TLS.CAFile, fleetPort, tlsCAPath)
		}
	}
	checkFleetRoutes(t, pcfg)

	for _, name := range []string{"healer", "chaos", "dashboard"} {
		if got := flagOf(name, "authority"); got != acfg.Issuer {
			t.Errorf("%s --authority %s, want %s", name, got, acfg.Issuer)
		}
	}
	if got, want := flagOf("dashboard", "public-authority-url"), "https://127.0.0.1:"+portOf("authority", "listen"); got != want {
		t.Errorf("dashboard --public-authority-url %s, want %s (the published port)", got, want)
	}
	for _, c := range []struct{ service, flag string }{{"chaos", "config"}, {"dashboard", "chaos-config"}} {
		var ccfg chaos.Config
		if err := config.Load(mount(c.service, flagOf(c.service, c.flag)), &ccfg); err != nil {
			t.Fatal(err)
		}
		if ccfg.ProxyURL != proxyURL {
			t.Errorf("%s chaos proxy_url %q, want %q", c.service, ccfg.ProxyURL, proxyURL)
		}
	}
	hcfg := healer.Default()
	if err := config.Load(mount("healer", flagOf("healer", "config")), &hcfg); err != nil {
		t.Fatal(err)
	}
	if hcfg.ProxyURL != proxyURL {
		t.Errorf("healer proxy_url %q, want %q", hcfg.ProxyURL, proxyURL)
	}
	if want := "https://fleet:" + fleetPort + "/events?tenant=" + hcfg.Tenant; hcfg.Announcements.URL != want {
		t.Errorf("healer announcements %q, want %q", hcfg.Announcements.URL, want)
	}
	fcfg := fleet.Default()
	fcfg.Services = nil
	if err := config.Load(mount("fleet", flagOf("fleet", "config")), &fcfg); err != nil {
		t.Fatal(err)
	}
	if len(hcfg.Checks) == 0 {
		t.Error("healer has no checks")
	}
	for _, c := range hcfg.Checks {
		i := slices.IndexFunc(fcfg.Services, func(s fleet.ServiceConfig) bool { return s.Name == c.Target })
		if i < 0 {
			t.Errorf("healer check %s: no such fleet service", c.Target)
			continue
		}
		_, port, _ := net.SplitHostPort(fcfg.Services[i].Listen)
		if want := "https://fleet:" + port + "/healthz"; c.URL != want {
			t.Errorf("healer check %s = %s, want %s", c.Target, c.URL, want)
		}
	}
}

// Prometheus scrapes every passport service that serves TLS over https,
// verified with the mounted CA.
func TestComposeTLSPrometheus(t *testing.T) {
	p := mustLoadComposeTLS(t)
	prom, err := p.GetService("prometheus")
	if err != nil {
		t.Fatal(err)
	}
	var cfgFile string
	for _, v := range prom.Volumes {
		if v.Type == types.VolumeTypeBind && v.Target == "/etc/prometheus/prometheus.yml" {
			cfgFile = v.Source
		}
	}
	if cfgFile != filepath.Join(repoRoot(t), "examples", "compose", "tls", "prometheus.yml") {
		t.Fatalf("prometheus config is %s, want examples/compose/tls/prometheus.yml", cfgFile)
	}
	mounts := secretMounts(t, p, prom)
	data, err := os.ReadFile(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		ScrapeConfigs []struct {
			JobName   string `yaml:"job_name"`
			Scheme    string `yaml:"scheme"`
			TLSConfig struct {
				CAFile string `yaml:"ca_file"`
			} `yaml:"tls_config"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	scheme := map[string]string{} // target -> scheme
	for _, sc := range cfg.ScrapeConfigs {
		if sc.Scheme == "https" {
			if src, ok := mounts[sc.TLSConfig.CAFile]; !ok || filepath.Base(src) != "ca.crt" {
				t.Errorf("job %s verifies with %q, which is not the mounted CA", sc.JobName, sc.TLSConfig.CAFile)
			}
		}
		for _, st := range sc.StaticConfigs {
			for _, target := range st.Targets {
				scheme[target] = cmp.Or(sc.Scheme, "http")
			}
		}
	}
	for _, tc := range composePassportServices {
		s, _ := p.GetService(tc.service)
		_, port, _ := net.SplitHostPort(listenFlagsOf(s.Command)[tc.metricsFlag])
		target := net.JoinHostPort(tc.service, port)
		want := "http"
		if servesTLS(t, s.Command) {
			want = "https"
		}
		if got, ok := scheme[target]; !ok || got != want {
			t.Errorf("prometheus scrapes %s over %q, want %s", target, got, want)
		}
	}
}

// scripts/dev-certs.sh makes what the overlay mounts: a CA, and a
// certificate with its key (0600) that every name a client checks chains
// to the CA for.
func TestComposeTLSDevCerts(t *testing.T) {
	script := filepath.Join(repoRoot(t), "scripts", "dev-certs.sh")
	if out, err := exec.Command("sh", "-n", script).CombinedOutput(); err != nil {
		t.Fatalf("sh -n %s: %v\n%s", script, err, out)
	}
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatalf("openssl is needed to run %s: %v", script, err)
	}
	dir := filepath.Join(t.TempDir(), "tls")
	// -o with this process's own ids: the chown path runs without root.
	cmd := exec.Command("sh", script, "-d", "3", "-o", fmt.Sprintf("%d:%d", os.Getuid(), os.Getgid()), dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}

	// The files the overlay's secrets name, and nothing readable that should not be.
	p := mustLoadComposeTLS(t)
	for name, def := range p.Secrets {
		if _, err := os.Stat(filepath.Join(dir, filepath.Base(def.File))); err != nil {
			t.Errorf("secret %s: the script does not write %s: %v", name, filepath.Base(def.File), err)
		}
	}
	for file, want := range map[string]os.FileMode{"ca.crt": 0o644, "tls.crt": 0o644, "tls.key": 0o600, "ca.key": 0o600} {
		fi, err := os.Stat(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %o, want %o", file, fi.Mode().Perm(), want)
		}
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"))
	if err != nil {
		t.Fatalf("tls.crt and tls.key: %v", err)
	}
	leaf := pair.Leaf
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.crt holds no certificate")
	}
	if leaf.IsCA {
		t.Error("the server certificate is a CA")
	}
	if ttl := time.Until(leaf.NotAfter); ttl > 4*24*time.Hour || ttl < 2*24*time.Hour {
		t.Errorf("-d 3 gave a certificate valid until %v", leaf.NotAfter)
	}

	// Every name a client checks: each https URL's host and each
	// --server-name of the overlay, and the loopback names.
	names := map[string]bool{"localhost": true, "127.0.0.1": true}
	for _, tc := range composePassportServices {
		s, _ := p.GetService(tc.service)
		args := slices.Clone(s.Command)
		if s.HealthCheck != nil {
			args = append(args, s.HealthCheck.Test...)
		}
		for i, a := range args {
			if a == "--server-name" && i+1 < len(args) {
				names[args[i+1]] = true
			}
			if u, err := url.Parse(a); err == nil && u.Scheme == "https" {
				names[u.Hostname()] = true
			}
		}
	}
	for _, s := range p.Services {
		if s.Image != "" && strings.HasPrefix(s.Image, "agentpassport/passport:") {
			names[s.Name] = true
		}
	}
	for name := range names {
		_, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		if err != nil {
			t.Errorf("the certificate does not verify for %s: %v", name, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "redis", Roots: roots}); err == nil {
		t.Error("the certificate verifies for redis, a name not in the script's list: the test checks nothing")
	}
}

// ---------------------------------------------------------------------------
// examples/kubernetes-tls/: the TLS overlay on examples/kubernetes

// loadKubeTLS builds examples/kubernetes-tls (loadKubeOverlay).
func loadKubeTLS(t *testing.T) []kubeDoc {
	t.Helper()
	return loadKubeOverlay(t, "kubernetes-tls")
}

// loadKubeOverlay builds examples/<name> as `kubectl kustomize` does, for
// what the overlays use: its resources (the base, as the base's
// kustomization lists it, and its own files), each patch merged into the
// object of the same kind and name with strategic-merge rules (containers,
// env and volumes merged by name, volumeMounts by mountPath, ports by port
// number, maps key by key, other lists replaced), and its namespace. No
// kustomize runs in the tests; the rules here are the ones these patches
// rely on, and a patch that matches no object fails.
func loadKubeOverlay(t *testing.T, name string) []kubeDoc {
	t.Helper()
	dir := filepath.Join(repoRoot(t), "examples", name)
	ks := loadKubeFile(t, filepath.Join(dir, "kustomization.yaml"))
	if len(ks) != 1 || ks[0].kind() != "Kustomization" {
		t.Fatalf("examples/%s/kustomization.yaml holds no Kustomization", name)
	}
	k := ks[0].obj
	var docs []kubeDoc
	for _, r := range stringList(list(k, "resources")) {
		path := filepath.Join(dir, r)
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatalf("resource %s: %v", r, err)
		}
		if !fi.IsDir() {
			docs = append(docs, loadKubeFile(t, path)...)
			continue
		}
		// A base: the files its own kustomization lists, with its namespace.
		base := loadKubeDir(t, path)
		var bk map[string]any
		for _, d := range base {
			if d.kind() == "Kustomization" {
				bk = d.obj
			}
		}
		if bk == nil {
			t.Fatalf("resource %s: no kustomization.yaml", r)
		}
		if str(bk, "namespace") != str(k, "namespace") {
			t.Errorf("namespace %q differs from the base's %q", str(k, "namespace"), str(bk, "namespace"))
		}
		listed := stringList(list(bk, "resources"))
		for _, d := range base {
			if slices.Contains(listed, d.file) {
				docs = append(docs, d)
			}
		}
	}
	for _, p := range list(k, "patches") {
		file := str(p, "path")
		if file == "" {
			t.Fatalf("patch %v: only path patches are read here", p)
		}
		for _, patch := range loadKubeFile(t, filepath.Join(dir, file)) {
			i := slices.IndexFunc(docs, func(d kubeDoc) bool { return d.kind() == patch.kind() && d.name() == patch.name() })
			if i < 0 {
				t.Fatalf("patch %s: no %s %q to patch", file, patch.kind(), patch.name())
			}
			docs[i].obj = smpMerge(docs[i].obj, patch.obj).(map[string]any)
		}
	}
	return docs
}

// smpMerge merges patch into dst as a strategic merge patch does, without
// changing dst.
func smpMerge(dst, patch any) any {
	pm, ok := patch.(map[string]any)
	dm, ok2 := dst.(map[string]any)
	if !ok || !ok2 {
		return patch
	}
	out := maps.Clone(dm)
	for k, pv := range pm {
		dv, exists := out[k]
		if !exists {
			out[k] = pv
			continue
		}
		pl, pok := pv.([]any)
		dl, dok := dv.([]any)
		if key := smpListKey(k, pl); pok && dok && key != "" {
			out[k] = smpMergeList(dl, pl, key)
			continue
		}
		out[k] = smpMerge(dv, pv)
	}
	return out
}

// smpListKey is the merge key of a list field of a pod or a Service, "" for
// lists that a patch replaces.
func smpListKey(field string, l []any) string {
	switch field {
	case "containers", "initContainers", "env", "volumes":
		return "name"
	case "volumeMounts":
		return "mountPath"
	case "ports":
		if len(l) > 0 && dig(l[0], "containerPort") != nil {
			return "containerPort"
		}
		return "port"
	}
	return ""
}

func smpMergeList(dst, patch []any, key string) []any {
	out := slices.Clone(dst)
	for _, pe := range patch {
		i := slices.IndexFunc(out, func(de any) bool { return dig(de, key) == dig(pe, key) })
		if i < 0 {
			out = append(out, pe)
			continue
		}
		out[i] = smpMerge(out[i], pe)
	}
	return out
}

// The overlay builds to valid, distinct objects, and the Deployments keep
// what the base's tests check: security, commands the binary parses.
func TestKubeTLSManifestsParse(t *testing.T) {
	docs := loadKubeTLS(t)
	checkDistinctObjects(t, docs)
	certs := 0
	for _, d := range docs {
		switch d.kind() {
		case "Secret":
			t.Errorf("%s: a Secret is applied by the overlay; cert-manager writes them", d.file)
		case "Certificate":
			certs++
		case "Deployment":
			checkPodSecurity(t, d)
			for _, c := range podContainers(d) {
				checkPassportContainer(t, d, c)
			}
		}
	}
	if certs == 0 {
		t.Error("the overlay has no Certificate")
	}
	// The merge did something: the overlay is not the base.
	base := loadKube(t)
	if sameYAML(t, findKube(t, base, "Deployment", "fleet").obj, findKube(t, docs, "Deployment", "fleet").obj) {
		t.Error("the fleet Deployment is the same with the overlay: the patches were not applied")
	}
}

// sameYAML compares two decoded YAML objects.
func sameYAML(t *testing.T, a, b any) bool {
	t.Helper()
	ya, err := yaml.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	yb, err := yaml.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(ya, yb)
}

// kubeVolume finds the pod volume a mount of c at path comes from.
func kubeVolume(t *testing.T, d kubeDoc, c container, path string) (mount, volume map[string]any) {
	t.Helper()
	for _, vm := range list(map[string]any(c), "volumeMounts") {
		if str(vm, "mountPath") != path {
			continue
		}
		for _, v := range list(d.obj, "spec", "template", "spec", "volumes") {
			if str(v, "name") == str(vm, "name") {
				return vm.(map[string]any), v.(map[string]any)
			}
		}
		t.Fatalf("%s: volume %s mounted at %s is not in the pod", d.name(), str(vm, "name"), path)
	}
	return nil, nil
}

// Every passport container that listens beyond its pod's loopback serves
// TLS: the environment names the cert-manager paths, the Secret of a
// Certificate for its Service's names is mounted there read-only (0400, a
// group the pod user is in), the CA beside it, and every probe speaks HTTPS.
// A container on loopback only (the API behind the sidecar) stays plain:
// nothing outside the pod reaches it.
func TestKubeTLSContainers(t *testing.T) {
	docs := loadKubeTLS(t)
	certs := map[string]kubeDoc{} // secretName -> Certificate
	for _, d := range docs {
		if d.kind() == "Certificate" {
			certs[str(d.obj, "spec", "secretName")] = d
		}
	}
	ns := str(findKube(t, docs, "Namespace", "agent-passport").obj, "metadata", "name")
	mounted := map[string]bool{}
	served := 0
	for _, d := range docs {
		if d.kind() != "Deployment" {
			continue
		}
		for _, c := range podContainers(d) {
			m := map[string]any(c)
			t.Run(d.name()+"/"+str(m, "name"), func(t *testing.T) {
				cc := checkPassportContainer(t, d, c)
				public := false
				for name, addr := range cc.listens {
					if host, _ := listenPort(t, name, addr); host != "127.0.0.1" {
						public = true
					}
				}
				if !public {
					if _, v := kubeVolume(t, d, c, "/etc/passport/tls"); v != nil {
						t.Error("a loopback-only container mounts the TLS key")
					}
					return
				}
				served++
				env := map[string]string{}
				for _, e := range list(m, "env") {
					env[str(e, "name")] = str(e, "value")
				}
				for k, want := range map[string]string{"PASSPORT_TLS_CERT_FILE": tlsCertPath, "PASSPORT_TLS_KEY_FILE": tlsKeyPath, "PASSPORT_CA_FILE": tlsCAPath} {
					if env[k] != want {
						t.Errorf("env %s = %q, want %q", k, env[k], want)
					}
				}
				vm, v := kubeVolume(t, d, c, filepath.Dir(tlsCertPath))
				if v == nil {
					t.Fatalf("nothing mounted at %s", filepath.Dir(tlsCertPath))
				}
				if vm["readOnly"] != true {
					t.Error("the TLS Secret is mounted writable")
				}
				secret := str(v, "secret", "secretName")
				if secret == "" {
					t.Fatalf("%s is not a Secret volume", filepath.Dir(tlsCertPath))
				}
				mounted[secret] = true
				if mode := dig(v, "secret", "defaultMode"); mode != 0o400 {
					t.Errorf("Secret %s defaultMode %v, want 0400", secret, mode)
				}
				if items := list(v, "secret", "items"); items != nil {
					t.Errorf("Secret %s mounted with items %v: tls.crt and tls.key are expected whole", secret, items)
				}
				// Secret files are root's; the kubelet gives them the pod's
				// fsGroup, which is what lets uid 65532 read a 0400 key.
				psc := dig(d.obj, "spec", "template", "spec", "securityContext")
				if fg := dig(psc, "fsGroup"); fg == nil || fg != dig(psc, "runAsGroup") {
					t.Errorf("pod fsGroup %v, want the pod's group %v: the key would be unreadable", fg, dig(psc, "runAsGroup"))
				}
				cm, cv := kubeVolume(t, d, c, filepath.Dir(tlsCAPath))
				if cv == nil {
					t.Fatalf("nothing mounted at %s", filepath.Dir(tlsCAPath))
				}
				if cm["readOnly"] != true {
					t.Error("the CA is mounted writable")
				}
				if str(cv, "secret", "secretName") != secret || !slices.ContainsFunc(list(cv, "secret", "items"), func(it any) bool {
					return str(it, "key") == "ca.crt" && str(it, "path") == filepath.Base(tlsCAPath)
				}) {
					t.Errorf("%s is not ca.crt of Secret %s: %v", tlsCAPath, secret, cv)
				}

				// The Certificate writing the Secret names the Service.
				cert, ok := certs[secret]
				if !ok {
					t.Fatalf("no Certificate writes Secret %s", secret)
				}
				svc := serviceFor(t, docs, d).name()
				names := stringList(list(cert.obj, "spec", "dnsNames"))
				for _, want := range []string{svc, svc + "." + ns + ".svc", svc + "." + ns + ".svc.cluster.local"} {
					if !slices.Contains(names, want) {
						t.Errorf("Certificate %s dnsNames %v lack %s", cert.name(), names, want)
					}
				}

				probes := 0
				for _, probe := range []string{"livenessProbe", "readinessProbe", "startupProbe"} {
					if dig(m, probe) == nil {
						continue
					}
					probes++
					if got := str(m, probe, "httpGet", "scheme"); got != "HTTPS" {
						t.Errorf("%s scheme %q, want HTTPS", probe, got)
					}
				}
				if probes == 0 {
					t.Error("no probes")
				}
				if ann := dig(d.obj, "spec", "template", "metadata", "annotations"); str(ann, "prometheus.io/scrape") == "true" &&
					str(ann, "prometheus.io/scheme") != "https" {
					t.Error("prometheus.io/scheme is not https: Prometheus would scrape plain http")
				}
			})
		}
	}
	if served == 0 {
		t.Fatal("no container serves beyond loopback: the test checked nothing")
	}
	for secret, cert := range certs {
		if !mounted[secret] {
			t.Errorf("Certificate %s writes Secret %s, which no pod mounts", cert.name(), secret)
		}
	}
}

// Every Certificate is issued by the documented prerequisite, internal-ca,
// for server authentication.
func TestKubeTLSCertificates(t *testing.T) {
	n := 0
	for _, d := range loadKubeTLS(t) {
		if d.kind() != "Certificate" {
			continue
		}
		n++
		if api := str(d.obj, "apiVersion"); api != "cert-manager.io/v1" {
			t.Errorf("Certificate %s apiVersion %q, want cert-manager.io/v1", d.name(), api)
		}
		ref := dig(d.obj, "spec", "issuerRef")
		if str(ref, "name") != "internal-ca" || !slices.Contains([]string{"ClusterIssuer", "Issuer"}, str(ref, "kind")) {
			t.Errorf("Certificate %s issuerRef %v, want the internal-ca (Cluster)Issuer", d.name(), ref)
		}
		if u := stringList(list(d.obj, "spec", "usages")); !slices.Contains(u, "server auth") {
			t.Errorf("Certificate %s usages %v lack server auth", d.name(), u)
		}
		if str(d.obj, "spec", "secretName") == "" || len(list(d.obj, "spec", "dnsNames")) == 0 {
			t.Errorf("Certificate %s has no secretName or no dnsNames", d.name())
		}
	}
	if n == 0 {
		t.Fatal("no Certificate in examples/kubernetes-tls")
	}
}

// The components reach each other over https, the configs load with TLS
// on, and no plain http URL leaves a pod.
func TestKubeTLSWiring(t *testing.T) {
	docs := loadKubeTLS(t)
	for _, d := range docs {
		var texts []string
		switch d.kind() {
		case "ConfigMap":
			if d.name() == "passport-policies" {
				continue
			}
			data, _ := dig(d.obj, "data").(map[string]any)
			for _, v := range data {
				s, _ := v.(string)
				texts = append(texts, s)
			}
		case "Deployment":
			for _, c := range podContainers(d) {
				texts = append(texts, stringList(list(map[string]any(c), "args"))...)
				for _, e := range list(map[string]any(c), "env") {
					texts = append(texts, str(e, "value"))
				}
			}
		}
		for _, text := range texts {
			for _, line := range strings.Split(text, "\n") {
				if strings.HasPrefix(strings.TrimSpace(line), "#") {
					continue
				}
				for _, raw := range httpURL.FindAllString(line, -1) {
					if u, err := url.Parse(raw); err != nil || u.Hostname() != "127.0.0.1" {
						t.Errorf("%s %s: %s is plain http beyond the pod", d.kind(), d.name(), raw)
					}
				}
			}
		}
	}

	// The authority's config loads with TLS on (an http issuer would not).
	ad := findKube(t, docs, "Deployment", "passport-authority")
	ac := containerNamed(t, ad, "authority")
	acfg := kubeAuthorityConfig(t, docs)
	acfg.ApplyEnv(func(k string) string {
		return map[string]string{"PASSPORT_REDIS_URL": "redis://redis:6379/0", "PASSPORT_ADMIN_TOKEN": "a-test-admin-token-long-enough"}[k]
	})
	acfg.TLS.CertFile, acfg.TLS.KeyFile = tlsCertPath, tlsKeyPath
	if err := acfg.Validate(); err != nil {
		t.Errorf("authority config with TLS on: %v", err)
	}
	asvc := serviceFor(t, docs, ad)
	_, aport := listenPort(t, "listen", parseCommand(t, stringList(list(map[string]any(ac), "args"))).listens["listen"])
	authorityURL := fmt.Sprintf("https://%s:%d", asvc.name(), aport)
	if acfg.Issuer != authorityURL {
		t.Errorf("authority issuer %q, want %q (its Service, over https)", acfg.Issuer, authorityURL)
	}

	// The proxy trusts that issuer and reaches it over verified TLS.
	fd := findKube(t, docs, "Deployment", "fleet")
	pc := containerNamed(t, fd, "proxy")
	pcc := parseCommand(t, stringList(list(map[string]any(pc), "args")))
	cm, key := mountedFile(t, docs, fd, pc, pcc.config)
	tmp := filepath.Join(t.TempDir(), key)
	if err := os.WriteFile(tmp, []byte(str(cm.obj, "data", key)), 0o600); err != nil {
		t.Fatal(err)
	}
	pcfg, err := proxy.LoadConfig(tmp)
	if err != nil {
		t.Fatal(err)
	}
	pcfg.Redis.URL = "redis://redis:6379/0"
	pcfg.TLS.CertFile, pcfg.TLS.KeyFile = tlsCertPath, tlsKeyPath
	if err := pcfg.Validate(); err != nil {
		t.Errorf("proxy config with TLS on: %v", err)
	}
	checkFleetRoutes(t, pcfg)
	if pcfg.Issuer != acfg.Issuer {
		t.Errorf("proxy issuer %q != authority issuer %q", pcfg.Issuer, acfg.Issuer)
	}
	for _, u := range []string{pcfg.JWKSURL, pcfg.AuthorityURL} {
		if !strings.HasPrefix(u, authorityURL) {
			t.Errorf("proxy URL %s does not reach the authority at %s", u, authorityURL)
		}
	}
	if pcfg.AuthorityTLS.CAFile != tlsCAPath {
		t.Errorf("proxy authority_tls.ca_file %q, want the mounted CA %s", pcfg.AuthorityTLS.CAFile, tlsCAPath)
	}
	fsvc := serviceFor(t, docs, fd)
	if want := fmt.Sprintf("https://%s:%v", fsvc.name(), dig(fsvc.obj, "spec", "ports", 0, "port")); pcfg.ResourceURL != want {
		t.Errorf("proxy resource_url %q, want %q", pcfg.ResourceURL, want)
	}

	// The dashboard's Block and Unblock go to the authority over https.
	dc := containerNamed(t, findKube(t, docs, "Deployment", "passport-dashboard"), "dashboard")
	args := stringList(list(map[string]any(dc), "args"))
	if i := slices.Index(args, "--authority"); i < 0 || i+1 >= len(args) || args[i+1] != authorityURL {
		t.Errorf("dashboard args %q: want --authority %s", args, authorityURL)
	}

	// Each Service port named for what it carries.
	for _, d := range docs {
		if d.kind() != "Service" {
			continue
		}
		for _, p := range list(d.obj, "spec", "ports") {
			if str(p, "name") != "https" {
				t.Errorf("Service %s port %v is named %q, want https", d.name(), dig(p, "port"), str(p, "name"))
			}
		}
	}
}

// ---------------------------------------------------------------------------
// docker-compose.sentinel.yml and examples/kubernetes-sentinel: Redis with
// Sentinel (one primary, two replicas, three sentinels).

// sentinelServices are the compose services the Sentinel overlay adds.
var (
	composeRedisNodes = []string{"redis-primary", "redis-replica-1", "redis-replica-2"}
	composeSentinels  = []string{"sentinel-1", "sentinel-2", "sentinel-3"}
)

func mustLoadComposeSentinel(t *testing.T) *types.Project {
	t.Helper()
	p, err := loadComposeFiles(t, map[string]string{"PASSPORT_ADMIN_TOKEN": testAdminToken}, "docker-compose.yml", "docker-compose.sentinel.yml")
	if err != nil {
		t.Fatalf("docker-compose.yml with docker-compose.sentinel.yml does not load: %v", err)
	}
	return p
}

// sentinelConf is what the tests read of a sentinel.conf.
type sentinelConf struct {
	port             string
	master           string // the monitored primary's name
	host, hostPort   string // where the primary is at first
	quorum           int
	downAfter        time.Duration
	resolveHostnames bool
}

// parseSentinelConf reads the directives of a sentinel.conf that the tests
// check, failing on a "sentinel" directive it does not know (a typo would
// make redis-sentinel refuse to start).
func parseSentinelConf(t *testing.T, text string) sentinelConf {
	t.Helper()
	var c sentinelConf
	known := []string{"monitor", "down-after-milliseconds", "failover-timeout", "parallel-syncs", "resolve-hostnames", "announce-hostnames"}
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		switch {
		case f[0] == "port" && len(f) == 2:
			c.port = f[1]
		case f[0] == "dir" && len(f) == 2:
		case f[0] == "sentinel" && len(f) >= 3:
			if !slices.Contains(known, f[1]) {
				t.Errorf("sentinel.conf: unknown directive %q", line)
			}
			switch f[1] {
			case "monitor":
				if len(f) != 6 {
					t.Fatalf("sentinel.conf: %q: want sentinel monitor <name> <host> <port> <quorum>", line)
				}
				c.master, c.host, c.hostPort = f[2], f[3], f[4]
				q, err := strconv.Atoi(f[5])
				if err != nil {
					t.Fatalf("sentinel.conf: quorum %q: %v", f[5], err)
				}
				c.quorum = q
			case "down-after-milliseconds":
				if len(f) != 4 || f[2] != c.master {
					t.Errorf("sentinel.conf: %q: want it after monitor, for %q", line, c.master)
					continue
				}
				ms, err := strconv.Atoi(f[3])
				if err != nil {
					t.Fatalf("sentinel.conf: %q: %v", line, err)
				}
				c.downAfter = time.Duration(ms) * time.Millisecond
			case "resolve-hostnames":
				// Sentinel must resolve a host name before monitor reads it.
				c.resolveHostnames = f[2] == "yes" && c.master == ""
			}
		default:
			t.Errorf("sentinel.conf: unexpected line %q", line)
		}
	}
	return c
}

// checkSentinelConf requires a monitor of primaryHost:6379 with quorum 2 of
// the three sentinels and a failover within a few seconds.
func checkSentinelConf(t *testing.T, c sentinelConf, primaryHost string) {
	t.Helper()
	if c.port != "26379" {
		t.Errorf("sentinel port %q, want 26379", c.port)
	}
	if c.master == "" || c.host != primaryHost || c.hostPort != "6379" {
		t.Errorf("sentinel monitors %q at %s:%s, want the primary %s:6379", c.master, c.host, c.hostPort, primaryHost)
	}
	if c.quorum != 2 {
		t.Errorf("sentinel quorum %d, want 2 of 3", c.quorum)
	}
	if c.downAfter <= 0 || c.downAfter > 5*time.Second {
		t.Errorf("down-after-milliseconds %v, want a short one (at most 5s)", c.downAfter)
	}
	if net.ParseIP(primaryHost) == nil && !c.resolveHostnames {
		t.Error("the primary is a host name, but resolve-hostnames yes does not come before monitor")
	}
}

// redisArgs reads a redis-server command line's --options.
func redisArgs(t *testing.T, name string, args []string) map[string][]string {
	t.Helper()
	if len(args) == 0 || args[0] != "redis-server" {
		t.Fatalf("%s runs %q, want redis-server", name, args)
	}
	out := map[string][]string{}
	key := ""
	for _, a := range args[1:] {
		if strings.HasPrefix(a, "--") {
			key = strings.TrimPrefix(a, "--")
			out[key] = []string{}
			continue
		}
		if key == "" {
			t.Fatalf("%s: argument %q before any --option", name, a)
		}
		out[key] = append(out[key], a)
	}
	return out
}

// checkRedisNodeArgs requires what every node, the primary and the replicas
// that may become it, must run with: AOF fsynced, and writes refused
// without a live replica.
func checkRedisNodeArgs(t *testing.T, name string, o map[string][]string) {
	t.Helper()
	if !slices.Equal(o["appendonly"], []string{"yes"}) {
		t.Errorf("%s: appendonly %v, want yes", name, o["appendonly"])
	}
	if fs := o["appendfsync"]; len(fs) != 1 || (fs[0] != "always" && fs[0] != "everysec") {
		t.Errorf("%s: appendfsync %v, want always or everysec", name, fs)
	}
	if n, err := strconv.Atoi(strings.Join(o["min-replicas-to-write"], "")); err != nil || n < 1 {
		t.Errorf("%s: min-replicas-to-write %v, want at least 1", name, o["min-replicas-to-write"])
	}
	if n, err := strconv.Atoi(strings.Join(o["min-replicas-max-lag"], "")); err != nil || n < 1 || n > 10 {
		t.Errorf("%s: min-replicas-max-lag %v, want 1 to 10 seconds", name, o["min-replicas-max-lag"])
	}
}

// sentinelRedisConfig is the Redis configuration a passport command builds
// from env: the real redisEnv, as every component and CLI command runs it.
func sentinelRedisConfig(env map[string]string) redisx.Config {
	a := &app{getenv: func(k string) string { return env[k] }, stdout: io.Discard, stderr: io.Discard}
	rc := redisx.Config{URL: env["PASSPORT_REDIS_URL"]}
	a.redisEnv(&rc)
	return rc
}

// auditWaitReplicas loads a mounted config with its component's own type
// and returns its audit.wait_replicas ("passport dashboard" takes a chaos
// config for its buttons).
func auditWaitReplicas(t *testing.T, cmdPath, file string) int {
	t.Helper()
	switch cmdPath {
	case "passport authority":
		cfg := authority.DefaultConfig()
		if err := config.Load(file, &cfg); err != nil {
			t.Fatal(err)
		}
		return cfg.Audit.WaitReplicas
	case "passport proxy":
		cfg, err := loadProxyConfig(file)
		if err != nil {
			t.Fatal(err)
		}
		return cfg.Audit.WaitReplicas
	case "passport healer":
		cfg := healer.Default()
		if err := config.Load(file, &cfg); err != nil {
			t.Fatal(err)
		}
		return cfg.Audit.WaitReplicas
	case "passport chaos run", "passport dashboard":
		var cfg chaos.Config
		if err := config.Load(file, &cfg); err != nil {
			t.Fatal(err)
		}
		if err := cfg.Validate(); err != nil {
			t.Errorf("%s: %v", file, err)
		}
		return cfg.Audit.WaitReplicas
	}
	t.Fatalf("no audit config known for %s", cmdPath)
	return 0
}

// The overlay merges into the base: the single Redis is gone and nothing
// depends on it, the Sentinel set is there, and the mounted files exist.
func TestComposeSentinelOverlayLoads(t *testing.T) {
	p := mustLoadComposeSentinel(t)
	want := []string{"prometheus"}
	for _, s := range composePassportServices {
		want = append(want, s.service)
	}
	want = append(want, composeRedisNodes...)
	want = append(want, composeSentinels...)
	got := p.ServiceNames()
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("services = %v, want %v", got, want)
	}
	for _, s := range p.Services {
		if _, ok := s.DependsOn["redis"]; ok {
			t.Errorf("%s still depends on the single redis", s.Name)
		}
		for name := range s.DependsOn {
			if _, err := p.GetService(name); err != nil {
				t.Errorf("%s depends on %s: %v", s.Name, name, err)
			}
		}
		for _, v := range s.Volumes {
			if v.Type == types.VolumeTypeBind {
				if _, err := os.Stat(v.Source); err != nil {
					t.Errorf("%s mounts %s: %v", s.Name, v.Source, err)
				}
			}
			if v.Type == types.VolumeTypeVolume {
				if _, ok := p.Volumes[v.Source]; !ok {
					t.Errorf("%s: volume %s is not declared", s.Name, v.Source)
				}
			}
		}
	}
}

// The Redis nodes: AOF and min-replicas-to-write on each (a replica may
// become the primary), the replicas replicate the primary, data on named
// volumes, nothing published.
func TestComposeSentinelRedis(t *testing.T) {
	p := mustLoadComposeSentinel(t)
	primary := composeRedisNodes[0]
	for _, name := range composeRedisNodes {
		s, err := p.GetService(name)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(s.Image, "redis:7") {
			t.Errorf("%s image %q, want redis:7", name, s.Image)
		}
		o := redisArgs(t, name, s.Command)
		checkRedisNodeArgs(t, name, o)
		if name == primary {
			if _, ok := o["replicaof"]; ok {
				t.Errorf("%s: the primary replicates %v", name, o["replicaof"])
			}
		} else {
			if !slices.Equal(o["replicaof"], []string{primary, "6379"}) {
				t.Errorf("%s: replicaof %v, want %s 6379", name, o["replicaof"], primary)
			}
			if d, ok := s.DependsOn[primary]; !ok || d.Condition != types.ServiceConditionHealthy {
				t.Errorf("%s: depends_on %s = %+v, want service_healthy", name, primary, d)
			}
		}
		if s.HealthCheck == nil || len(s.HealthCheck.Test) == 0 || s.HealthCheck.Disable {
			t.Errorf("%s has no healthcheck", name)
		}
		if !slices.ContainsFunc(s.Volumes, func(v types.ServiceVolumeConfig) bool {
			return v.Type == types.VolumeTypeVolume && v.Target == "/data"
		}) {
			t.Errorf("%s: /data is not on a named volume: the AOF would not survive the container", name)
		}
		if len(s.Ports) != 0 {
			t.Errorf("%s publishes %v: Redis must stay on the compose network", name, s.Ports)
		}
	}
}

// Three sentinels, each on its own writable copy of the mounted
// sentinel.conf, monitoring the primary with quorum 2, healthy only once
// they could fail it over.
func TestComposeSentinelSentinels(t *testing.T) {
	p := mustLoadComposeSentinel(t)
	for _, name := range composeSentinels {
		s, err := p.GetService(name)
		if err != nil {
			t.Fatal(err)
		}
		var conf string
		for _, v := range s.Volumes {
			if v.Type == types.VolumeTypeBind && strings.HasSuffix(v.Target, ".conf") {
				conf = v.Source
				if !v.ReadOnly {
					t.Errorf("%s: %s mounted writable", name, v.Target)
				}
				cmd := strings.Join(s.Command, " ")
				if !strings.Contains(cmd, "cp "+v.Target+" ") || !strings.Contains(cmd, "exec redis-sentinel ") {
					t.Errorf("%s command %q: want a writable copy of %s run by redis-sentinel (Sentinel rewrites its config)", name, cmd, v.Target)
				}
			}
		}
		if conf == "" {
			t.Fatalf("%s mounts no sentinel config", name)
		}
		data, err := os.ReadFile(conf)
		if err != nil {
			t.Fatal(err)
		}
		checkSentinelConf(t, parseSentinelConf(t, string(data)), composeRedisNodes[0])
		hc := strings.Join(s.HealthCheck.Test, " ")
		if !strings.Contains(hc, "ckquorum") {
			t.Errorf("%s healthcheck %q: want sentinel ckquorum (healthy once it could fail over)", name, hc)
		}
		if len(s.Ports) != 0 {
			t.Errorf("%s publishes %v", name, s.Ports)
		}
	}
}

// Every passport service finds the primary through all three sentinels,
// none keeps the single Redis URL, each waits for the sentinels, and every
// audit writer's mounted config loads with wait_replicas 1.
func TestComposeSentinelPassportServices(t *testing.T) {
	p := mustLoadComposeSentinel(t)
	base := mustLoadCompose(t)
	root := repoRoot(t)
	var wantAddrs []string
	for _, name := range composeSentinels {
		wantAddrs = append(wantAddrs, name+":26379")
	}
	data, err := os.ReadFile(filepath.Join(root, "examples", "compose", "sentinel", "sentinel.conf"))
	if err != nil {
		t.Fatal(err)
	}
	master := parseSentinelConf(t, string(data)).master
	writers := 0
	for _, tc := range composePassportServices {
		t.Run(tc.service, func(t *testing.T) {
			s, err := p.GetService(tc.service)
			if err != nil {
				t.Fatal(err)
			}
			env := map[string]string{}
			for k, v := range s.Environment {
				if v != nil {
					env[k] = *v
				}
				if v != nil && strings.Contains(*v, "redis://redis:") {
					t.Errorf("%s=%s still names the single Redis", k, *v)
				}
			}
			if _, ok := s.Environment["PASSPORT_REDIS_URL"]; ok {
				t.Errorf("PASSPORT_REDIS_URL is still set (%v)", env["PASSPORT_REDIS_URL"])
			}
			rc := sentinelRedisConfig(env)
			if !slices.Equal(rc.Addrs, wantAddrs) || rc.MasterName != master || rc.Cluster {
				t.Errorf("Redis from the environment: addrs %v master %q cluster %v, want addrs %v master %q (Sentinel)", rc.Addrs, rc.MasterName, rc.Cluster, wantAddrs, master)
			}
			if err := rc.Validate(); err != nil {
				t.Error(err)
			}
			for _, name := range composeSentinels {
				if d, ok := s.DependsOn[name]; !ok || d.Condition != types.ServiceConditionHealthy {
					t.Errorf("depends_on %s = %+v, want service_healthy", name, d)
				}
			}
			// The base's other dependencies stay (the overlay restates them).
			bs, err := base.GetService(tc.service)
			if err != nil {
				t.Fatal(err)
			}
			for name, bd := range bs.DependsOn {
				if d, ok := s.DependsOn[name]; name != "redis" && (!ok || d.Condition != bd.Condition) {
					t.Errorf("depends_on %s = %+v, want the base's %+v", name, d, bd)
				}
			}

			// The audit writers' configs: mounted from the overlay's folder,
			// loaded with the component's own type, wait_replicas 1.
			cc := parseCommand(t, s.Command)
			cfgFlag := cc.config
			if cc.path == "passport dashboard" {
				for i, a := range s.Command {
					if a == "--chaos-config" && i+1 < len(s.Command) {
						cfgFlag = s.Command[i+1]
					}
				}
			}
			if cfgFlag == "" || cc.path == "passport fleet" {
				return // the fleet writes no audit records
			}
			var src string
			for _, v := range s.Volumes {
				if v.Type == types.VolumeTypeBind && v.Target == cfgFlag {
					src = v.Source
				}
			}
			if want := filepath.Join(root, "examples", "compose", "sentinel") + string(filepath.Separator); !strings.HasPrefix(src, want) {
				t.Fatalf("%s is mounted from %q, want a file in examples/compose/sentinel/", cfgFlag, src)
			}
			if cc.path != "passport dashboard" {
				checkConfigFile(t, cc.path, src)
			}
			if n := auditWaitReplicas(t, cc.path, src); n != 1 {
				t.Errorf("%s: audit.wait_replicas %d, want 1", src, n)
			}
			writers++
		})
	}
	if writers != 5 {
		t.Errorf("%d audit writers checked, want 5 (authority, proxy, healer, chaos, dashboard)", writers)
	}
}

func loadKubeSentinel(t *testing.T) []kubeDoc {
	t.Helper()
	return loadKubeOverlay(t, "kubernetes-sentinel")
}

// redisConf reads a redis.conf's directives (the last of a repeated one wins).
func redisConf(text string) map[string][]string {
	out := map[string][]string{}
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		out[f[0]] = f[1:]
	}
	return out
}

// The overlay builds to valid, distinct objects, the passport Deployments
// keep what the base's tests check, and the Redis objects are there.
func TestKubeSentinelManifestsParse(t *testing.T) {
	docs := loadKubeSentinel(t)
	seen := checkDistinctObjects(t, docs)
	for _, d := range docs {
		switch d.kind() {
		case "Secret":
			t.Errorf("%s: a Secret is applied by the overlay; create it out of band", d.file)
		case "Deployment":
			checkPodSecurity(t, d)
			for _, c := range podContainers(d) {
				checkPassportContainer(t, d, c)
			}
		}
	}
	for _, want := range []string{"StatefulSet/redis", "Service/redis", "PodDisruptionBudget/redis", "ConfigMap/redis-config"} {
		if !seen[want] {
			t.Errorf("the overlay has no %s", want)
		}
	}
	base := loadKube(t)
	for _, name := range []string{"fleet", "passport-authority", "passport-dashboard"} {
		if sameYAML(t, findKube(t, base, "Deployment", name).obj, findKube(t, docs, "Deployment", name).obj) {
			t.Errorf("the %s Deployment is the same with the overlay: the patches were not applied", name)
		}
	}
}

// The Redis StatefulSet: three pods, each a node and a sentinel; AOF and
// min-replicas-to-write on every node, the sentinels monitoring pod 0 with
// quorum 2, data on a volume claim, spread by host, a disruption budget
// that keeps the quorum.
func TestKubeSentinelRedis(t *testing.T) {
	docs := loadKubeSentinel(t)
	sts := findKube(t, docs, "StatefulSet", "redis")
	if n := dig(sts.obj, "spec", "replicas"); n != 3 {
		t.Errorf("StatefulSet replicas %v, want 3 (a primary and two replicas, three sentinels)", n)
	}
	svcName := str(sts.obj, "spec", "serviceName")
	svc := findKube(t, docs, "Service", svcName)
	if str(svc.obj, "spec", "clusterIP") != "None" || dig(svc.obj, "spec", "publishNotReadyAddresses") != true {
		t.Errorf("Service %s: want headless (clusterIP None) with publishNotReadyAddresses: the pods find each other by name before they are ready", svcName)
	}
	podLabels, _ := dig(sts.obj, "spec", "template", "metadata", "labels").(map[string]any)
	selects := func(sel map[string]any) bool {
		for k, v := range sel {
			if podLabels[k] != v {
				return false
			}
		}
		return len(sel) > 0
	}
	if sel, _ := dig(svc.obj, "spec", "selector").(map[string]any); !selects(sel) {
		t.Errorf("Service %s selector %v does not select the pods %v", svcName, sel, podLabels)
	}

	cm := findKube(t, docs, "ConfigMap", "redis-config")
	rc := redisConf(str(cm.obj, "data", "redis.conf"))
	if !slices.Equal(rc["appendonly"], []string{"yes"}) {
		t.Errorf("redis.conf appendonly %v, want yes", rc["appendonly"])
	}
	if fs := rc["appendfsync"]; len(fs) != 1 || (fs[0] != "always" && fs[0] != "everysec") {
		t.Errorf("redis.conf appendfsync %v, want always or everysec", fs)
	}
	if n, err := strconv.Atoi(strings.Join(rc["min-replicas-to-write"], "")); err != nil || n < 1 {
		t.Errorf("redis.conf min-replicas-to-write %v, want at least 1", rc["min-replicas-to-write"])
	}
	if n, err := strconv.Atoi(strings.Join(rc["min-replicas-max-lag"], "")); err != nil || n < 1 || n > 10 {
		t.Errorf("redis.conf min-replicas-max-lag %v, want 1 to 10 seconds", rc["min-replicas-max-lag"])
	}
	primary := str(sts.obj, "metadata", "name") + "-0." + svcName
	sc := parseSentinelConf(t, str(cm.obj, "data", "sentinel.conf"))
	checkSentinelConf(t, sc, primary)
	// The init script makes the others replicas of pod 0 (or of whatever
	// the sentinels now say) and announces the stable names.
	initSh := str(cm.obj, "data", "init.sh")
	for _, want := range []string{"primary=" + primary, "replicaof $primary 6379", "replica-announce-ip $me", "sentinel get-master-addr-by-name " + sc.master} {
		if !strings.Contains(initSh, want) {
			t.Errorf("init.sh lacks %q", want)
		}
	}

	// Each pod: the init container writes /data/conf, the node and the
	// sentinel run from it, /data is the pod's volume claim.
	pod := dig(sts.obj, "spec", "template", "spec")
	claims := map[string]bool{}
	for _, vc := range list(sts.obj, "spec", "volumeClaimTemplates") {
		claims[str(vc, "metadata", "name")] = true
	}
	containers := map[string]container{}
	for _, c := range append(list(pod, "initContainers"), list(pod, "containers")...) {
		m, _ := c.(map[string]any)
		containers[str(m, "name")] = m
		dataOnClaim := slices.ContainsFunc(list(m, "volumeMounts"), func(vm any) bool {
			return str(vm, "mountPath") == "/data" && claims[str(vm, "name")]
		})
		if !dataOnClaim {
			t.Errorf("container %s: /data is not on a volume claim: the AOF and Sentinel's state would not survive the pod", str(m, "name"))
		}
		// The namespace enforces Pod Security "restricted".
		if dig(m, "securityContext", "allowPrivilegeEscalation") != false || dig(m, "securityContext", "readOnlyRootFilesystem") != true ||
			!slices.Contains(stringList(list(m, "securityContext", "capabilities", "drop")), "ALL") {
			t.Errorf("container %s: want allowPrivilegeEscalation false, a read-only root and every capability dropped", str(m, "name"))
		}
	}
	for name, want := range map[string]string{"config": "sh /config/init.sh", "redis": "redis-server /data/conf/redis.conf", "sentinel": "redis-sentinel /data/conf/sentinel.conf"} {
		c, ok := containers[name]
		if !ok {
			t.Errorf("the Redis pod has no container %s", name)
			continue
		}
		if got := strings.Join(stringList(list(map[string]any(c), "command")), " "); got != want {
			t.Errorf("container %s runs %q, want %q", name, got, want)
		}
		if dig(map[string]any(c), "readinessProbe") == nil && name != "config" {
			t.Errorf("container %s has no readiness probe", name)
		}
	}
	if ports := containerPorts(containers["sentinel"]); ports["sentinel"] != 26379 {
		t.Errorf("sentinel container ports %v, want sentinel 26379", ports)
	}
	checkPodSecurity(t, sts)
	if str(pod, "securityContext", "seccompProfile", "type") != "RuntimeDefault" {
		t.Error("the Redis pod has no RuntimeDefault seccomp profile (Pod Security restricted)")
	}

	// Spread by host (preferred), and at most one pod down by choice.
	aff := list(pod, "affinity", "podAntiAffinity", "preferredDuringSchedulingIgnoredDuringExecution")
	if !slices.ContainsFunc(aff, func(a any) bool {
		term := dig(a, "podAffinityTerm")
		sel, _ := dig(term, "labelSelector", "matchLabels").(map[string]any)
		return str(term, "topologyKey") == "kubernetes.io/hostname" && selects(sel)
	}) {
		t.Errorf("no preferred pod anti-affinity by kubernetes.io/hostname on the Redis pods: %v", aff)
	}
	pdb := findKube(t, docs, "PodDisruptionBudget", "redis")
	if ma := dig(pdb.obj, "spec", "minAvailable"); ma != 2 && dig(pdb.obj, "spec", "maxUnavailable") != 1 {
		t.Errorf("PodDisruptionBudget minAvailable %v: want 2 (quorum 2, a replica for min-replicas-to-write)", ma)
	}
	if sel, _ := dig(pdb.obj, "spec", "selector", "matchLabels").(map[string]any); !selects(sel) {
		t.Errorf("PodDisruptionBudget selector %v does not select the Redis pods", sel)
	}
}

// Every passport container that reads Redis finds the primary through all
// three sentinels, and the audit writers' configs load with wait_replicas 1.
func TestKubeSentinelPassportPods(t *testing.T) {
	docs := loadKubeSentinel(t)
	sts := findKube(t, docs, "StatefulSet", "redis")
	svc := str(sts.obj, "spec", "serviceName")
	var wantAddrs []string
	for i := 0; i < 3; i++ {
		wantAddrs = append(wantAddrs, fmt.Sprintf("%s-%d.%s:26379", sts.name(), i, svc))
	}
	master := parseSentinelConf(t, str(findKube(t, docs, "ConfigMap", "redis-config").obj, "data", "sentinel.conf")).master
	// The Secret's redis-url, as secret.example.yaml has it: its host is
	// replaced by the sentinels.
	var secretURL string
	for _, d := range loadKube(t) {
		if d.kind() == "Secret" {
			secretURL = str(d.obj, "stringData", "redis-url")
		}
	}
	if secretURL == "" {
		t.Fatal("no redis-url in secret.example.yaml")
	}
	checked := 0
	for _, d := range docs {
		if d.kind() != "Deployment" {
			continue
		}
		for _, c := range podContainers(d) {
			m := map[string]any(c)
			if _, ok := secretEnv(c)["PASSPORT_REDIS_URL"]; !ok {
				continue // no Redis here (the API behind the sidecar)
			}
			checked++
			env := map[string]string{"PASSPORT_REDIS_URL": secretURL}
			for _, e := range list(m, "env") {
				if v := str(e, "value"); v != "" {
					env[str(e, "name")] = v
				}
			}
			rc := sentinelRedisConfig(env)
			if !slices.Equal(rc.Addrs, wantAddrs) || rc.MasterName != master || rc.Cluster {
				t.Errorf("%s/%s: Redis from the environment: addrs %v master %q cluster %v, want addrs %v master %q (Sentinel)",
					d.name(), str(m, "name"), rc.Addrs, rc.MasterName, rc.Cluster, wantAddrs, master)
			}
			if err := rc.Validate(); err != nil {
				t.Errorf("%s/%s: %v", d.name(), str(m, "name"), err)
			}
		}
	}
	if checked != 3 {
		t.Errorf("%d containers read Redis, want 3 (authority, proxy, dashboard)", checked)
	}

	// The audit writers: the authority and the proxy.
	if n := kubeAuthorityConfig(t, docs).Audit.WaitReplicas; n != 1 {
		t.Errorf("authority audit.wait_replicas %d, want 1", n)
	}
	fd := findKube(t, docs, "Deployment", "fleet")
	pc := containerNamed(t, fd, "proxy")
	cm, key := mountedFile(t, docs, fd, pc, parseCommand(t, stringList(list(map[string]any(pc), "args"))).config)
	tmp := filepath.Join(t.TempDir(), key)
	if err := os.WriteFile(tmp, []byte(str(cm.obj, "data", key)), 0o600); err != nil {
		t.Fatal(err)
	}
	pcfg, err := loadProxyConfig(tmp)
	if err != nil {
		t.Fatal(err)
	}
	if pcfg.Audit.WaitReplicas != 1 {
		t.Errorf("proxy audit.wait_replicas %d, want 1", pcfg.Audit.WaitReplicas)
	}
	checkFleetRoutes(t, pcfg)
}

// The nodes' settings as a real redis-server takes them, from the compose
// overlay's command line and the Kubernetes redis.conf: AOF on with the
// chosen fsync, and a primary without a replica refuses writes.
func TestComposeSentinelNodesOnRealRedis(t *testing.T) {
	p := mustLoadComposeSentinel(t)
	s, err := p.GetService(composeRedisNodes[0])
	if err != nil {
		t.Fatal(err)
	}
	composeArgs := s.Command[1:]
	var kubeArgs []string
	cm := findKube(t, loadKubeSentinel(t), "ConfigMap", "redis-config")
	for k, v := range redisConf(str(cm.obj, "data", "redis.conf")) {
		if k == "port" || k == "dir" { // the test server's own
			continue
		}
		kubeArgs = append(kubeArgs, append([]string{"--" + k}, v...)...)
	}
	for name, args := range map[string][]string{"compose": composeArgs, "kubernetes": kubeArgs} {
		t.Run(name, func(t *testing.T) {
			o := redisArgs(t, name, append([]string{"redis-server"}, args...))
			srv := redistest.Start(t, redistest.Options{Args: args})
			rdb := srv.Client()
			ctx := context.Background()
			for _, k := range []string{"appendonly", "appendfsync", "min-replicas-to-write", "min-replicas-max-lag"} {
				got, err := rdb.ConfigGet(ctx, k).Result()
				if err != nil {
					t.Fatal(err)
				}
				if want := strings.Join(o[k], " "); got[k] != want {
					t.Errorf("CONFIG GET %s = %q, want %q", k, got[k], want)
				}
			}
			if err := rdb.Set(ctx, "k", "v", 0).Err(); err == nil || !strings.HasPrefix(err.Error(), "NOREPLICAS") {
				t.Errorf("a write to a primary without replicas: err = %v, want NOREPLICAS", err)
			}
		})
	}
}

// checkDistinctObjects: every document of a built overlay has an
// apiVersion, a kind and a name, and no kind/name is defined twice. It
// returns the kind/name pairs seen.
func checkDistinctObjects(t *testing.T, docs []kubeDoc) map[string]bool {
	t.Helper()
	seen := map[string]bool{}
	for _, d := range docs {
		if api, _ := d.obj["apiVersion"].(string); api == "" || d.kind() == "" || d.name() == "" {
			t.Errorf("%s: document without apiVersion, kind or name: %v", d.file, d.obj)
		}
		key := d.kind() + "/" + d.name()
		if seen[key] {
			t.Errorf("%s defined twice", key)
		}
		seen[key] = true
	}
	return seen
}
