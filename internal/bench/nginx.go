package main

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"text/template"
	"time"
)

// authRequestName is the comparison case: nginx auth_request to an OPA
// server that checks the passport in Rego, what a user would otherwise
// assemble. `-only nginx` selects it.
const authRequestName = "nginx + auth_request + OPA"

// authRequestPolicy is the Rego the OPA server runs (authrequest.rego).
//
//go:embed authrequest.rego
var authRequestPolicy []byte

// opaModule is the module whose version the bench's opa must have: the one
// this module embeds, so both sides evaluate Rego with the same engine.
const opaModule = "github.com/open-policy-agent/opa"

// skipped says why a comparison case cannot run on this machine: a missing
// tool is a skipped row, not a failed bench.
type skipped string

func (s skipped) Error() string { return string(s) }

// authRequestConfig is what the comparison stack fronts and trusts.
type authRequestConfig struct {
	upstream         string // URL of the upstream
	jwks             string // the authority's JWKS document
	issuer, audience string
	conns            int // idle keep-alive connections nginx keeps to the upstream and to OPA, per worker
}

// authRequest is nginx on a free loopback port in front of the upstream,
// asking an OPA server about every request through auth_request. Both are
// child processes; Close stops them and removes their directory.
type authRequest struct {
	url   string
	dir   string
	procs []*child
}

// startAuthRequest starts OPA and nginx with configurations written into a
// temporary directory. A missing nginx or opa is a skipped error.
func startAuthRequest(ctx context.Context, c authRequestConfig) (_ *authRequest, err error) {
	nginx, err := nginxBinary()
	if err != nil {
		return nil, err
	}
	opa, err := opaBinary(ctx)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "passport-bench-nginx")
	if err != nil {
		return nil, err
	}
	a := &authRequest{dir: dir}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	// When the bench runs as root, nginx's workers run as nobody and must
	// still reach the temporary directories nginx creates in here.
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}

	opaAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	if err := writeOPAFiles(dir, c); err != nil {
		return nil, err
	}
	o, err := startChild(filepath.Join(dir, "opa.log"), opa, "run", "--server", "--addr", opaAddr,
		"--log-level", "error", "--skip-version-check", "--config-file", filepath.Join(dir, "opa.yaml"),
		filepath.Join(dir, "policy"))
	if err != nil {
		return nil, err
	}
	a.procs = append(a.procs, o)
	if err := o.waitHTTP(ctx, "http://"+opaAddr+"/health", http.StatusOK); err != nil {
		return nil, err
	}

	listen, err := freeAddr()
	if err != nil {
		return nil, err
	}
	conf, err := writeNginxConf(dir, c, opaAddr, listen)
	if err != nil {
		return nil, err
	}
	n, err := startChild(filepath.Join(dir, "nginx.log"), nginx, "-p", dir, "-c", conf,
		"-e", filepath.Join(dir, "error.log"))
	if err != nil {
		return nil, err
	}
	a.procs = append(a.procs, n)
	a.url = "http://" + listen
	if err := n.waitHTTP(ctx, a.url+"/", 0); err != nil {
		return nil, err
	}
	return a, nil
}

// Close stops nginx, then OPA, and removes the directory.
func (a *authRequest) Close() {
	for i := len(a.procs) - 1; i >= 0; i-- {
		a.procs[i].stop()
	}
	a.procs = nil
	_ = os.RemoveAll(a.dir)
}

// check refuses to measure a comparison point that allows everything: a
// valid passport granting the action must pass, and no passport, a
// tampered one and a valid one without the action must get a 403.
func (a *authRequest) check(path, allowed, notGranted string) error {
	for _, c := range []struct {
		name, token string
		want        int
	}{
		{"valid passport", allowed, http.StatusOK},
		{"no passport", "", http.StatusForbidden},
		{"tampered passport", tamper(allowed, notGranted), http.StatusForbidden},
		{"passport without the action", notGranted, http.StatusForbidden},
	} {
		st, err := once("POST", a.url+path, c.token)
		if err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
		if st != c.want {
			return fmt.Errorf("%s: status %d, want %d", c.name, st, c.want)
		}
	}
	return nil
}

// tamper returns the header and claims of token with the signature of
// other: the claims one passport carries, under a signature that is not
// theirs.
func tamper(token, other string) string {
	i, j := strings.LastIndexByte(token, '.'), strings.LastIndexByte(other, '.')
	return token[:i] + other[j:]
}

// writeOPAFiles writes the policy directory (the Rego and the authority's
// keys as data.passport) and opa.yaml beside it: OPA loads every JSON and
// YAML file in the policy directory as data.
func writeOPAFiles(dir string, c authRequestConfig) error {
	policy := filepath.Join(dir, "policy")
	if err := os.Mkdir(policy, 0o755); err != nil {
		return err
	}
	data, err := json.Marshal(map[string]any{"passport": map[string]string{
		"jwks": c.jwks, "issuer": c.issuer, "audience": c.audience,
	}})
	if err != nil {
		return err
	}
	// The proxy keeps verified passports in a cache (VerifyCacheSize);
	// OPA's io.jwt cache, off by default, is its counterpart, so the
	// comparison gets it too.
	const config = `{"caching": {"inter_query_builtin_value_cache": {"named": {"io_jwt": {"max_num_entries": 10000}}}}}`
	return errors.Join(
		os.WriteFile(filepath.Join(policy, "authz.rego"), authRequestPolicy, 0o644),
		os.WriteFile(filepath.Join(policy, "data.json"), data, 0o644),
		os.WriteFile(filepath.Join(dir, "opa.yaml"), []byte(config), 0o644),
	)
}

// nginxConf is the comparison's nginx.conf: one worker per GOMAXPROCS,
// keep-alive pools to the upstream and to OPA, no access log.
//
// nginx cannot return a connection to OPA to its pool: auth_request reads
// only the headers of the answer, and nginx keeps an upstream connection
// only once the body has been read or when there is none, while OPA always
// answers with a body. Every request therefore opens a connection to OPA.
// That is a cost of this stack as users assemble it (ingress-nginx moved
// its auth requests to Lua for this reason), so the bench leaves it in.
var nginxConf = template.Must(template.New("nginx.conf").Parse(`daemon off;
worker_processes {{.Workers}};
pid {{.Dir}}/nginx.pid;
error_log {{.Dir}}/error.log warn;

events {
    worker_connections 4096;
}

http {
    access_log off;
    # As the Go servers: no limit on requests per keep-alive connection.
    keepalive_requests 1000000;

    # Only values that need no escaping in a JSON string reach OPA's input:
    # nginx cannot escape JSON in proxy_set_body, and a quote in a header or
    # the URI must not add fields to the input. Anything else becomes "",
    # which the policy refuses.
    map $http_authorization $opa_authorization {
        "~^Bearer [A-Za-z0-9._-]+$" $http_authorization;
        default "";
    }
    map $request_uri $opa_path {
        "~^(?<path>/[A-Za-z0-9/._~%-]*)(\?.*)?$" $path;
        default "";
    }

    upstream app {
        server {{.Upstream}};
        keepalive {{.Conns}};
        keepalive_requests 1000000;
    }
    # Configured as a user would; see above for why it stays unused.
    upstream opa {
        server {{.OPA}};
        keepalive {{.Conns}};
        keepalive_requests 1000000;
    }

    server {
        listen {{.Listen}};

        location / {
            auth_request /_opa;
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }

        # OPA's default decision: 200 allows; 404 (data.system.main
        # undefined) is a deny, answered 403; anything else, OPA down
        # included, makes auth_request answer 500.
        location = /_opa {
            internal;
            proxy_pass http://opa/;
            proxy_method POST;
            proxy_http_version 1.1;
            proxy_pass_request_headers off;
            proxy_set_header Connection "";
            proxy_set_header Content-Type application/json;
            proxy_set_body '{"method":"$request_method","path":"$opa_path","authorization":"$opa_authorization"}';
            proxy_intercept_errors on;
            error_page 404 =403 @denied;
        }

        location @denied {
            return 403;
        }
    }
}
`))

// writeNginxConf writes nginx.conf into dir and returns its path.
func writeNginxConf(dir string, c authRequestConfig, opaAddr, listen string) (string, error) {
	up, err := url.Parse(c.upstream)
	if err != nil {
		return "", fmt.Errorf("upstream: %w", err)
	}
	var b bytes.Buffer
	if err := nginxConf.Execute(&b, map[string]any{
		"Workers": runtime.GOMAXPROCS(0), "Dir": dir, "Conns": c.conns,
		"Upstream": up.Host, "OPA": opaAddr, "Listen": listen,
	}); err != nil {
		return "", err
	}
	path := filepath.Join(dir, "nginx.conf")
	return path, os.WriteFile(path, b.Bytes(), 0o644)
}

// nginxBinary finds nginx on PATH, or where Debian's package puts it
// (/usr/sbin is often not on a user's PATH).
func nginxBinary() (string, error) {
	if p, err := exec.LookPath("nginx"); err == nil {
		return p, nil
	}
	if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
		return "/usr/sbin/nginx", nil
	}
	return "", skipped("nginx not installed (scripts/deps.sh nginx)")
}

// opaBinary returns an opa of the version this module embeds: from PATH if
// `opa version` says so, else built once with `go install` into the user's
// cache directory and reused by later runs.
func opaBinary(ctx context.Context) (string, error) {
	version, err := embeddedOPAVersion()
	if err != nil {
		return "", err
	}
	if p, err := exec.LookPath("opa"); err == nil && opaVersion(ctx, p) == strings.TrimPrefix(version, "v") {
		return p, nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", skipped("opa not on PATH and no cache directory to build it in: " + err.Error())
	}
	dir := filepath.Join(cache, "passport-bench", "opa-"+version)
	bin := filepath.Join(dir, "opa")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", skipped("opa not on PATH and no go to build it")
	}
	fmt.Fprintf(os.Stderr, "bench: building opa %s into %s (once)\n", version, dir)
	cmd := exec.CommandContext(ctx, goBin, "install", opaModule+"@"+version)
	cmd.Env = append(os.Environ(), "GOBIN="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", skipped(fmt.Sprintf("opa %s could not be built (%v): %s", version, err, lastLine(out)))
	}
	return bin, nil
}

// embeddedOPAVersion is the version of OPA this binary was built with.
func embeddedOPAVersion() (string, error) {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "", skipped("no build information to tell the OPA version")
	}
	for _, m := range info.Deps {
		if m.Path != opaModule {
			continue
		}
		if m.Replace != nil {
			if m.Replace.Version == "" {
				return "", skipped("OPA is replaced by a local directory; put an opa of that code on PATH")
			}
			return m.Replace.Version, nil
		}
		return m.Version, nil
	}
	return "", skipped("this binary does not embed OPA")
}

// opaVersion is the version `opa version` reports, or "".
func opaVersion(ctx context.Context, bin string) string {
	out, err := exec.CommandContext(ctx, bin, "version").Output()
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "Version: "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// child is a process the bench started and must stop.
type child struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed once the process has exited
}

// startChild starts bin with its output in the file logPath.
func startChild(logPath, bin string, args ...string) (*child, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	name := filepath.Base(bin)
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(c.done)
	}()
	return c, nil
}

// stop asks the process to exit (SIGTERM: a fast shutdown for nginx and
// OPA alike) and kills it if it has not within five seconds.
func (c *child) stop() {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// waitHTTP polls url until it answers with status want (any status if
// want is 0). It gives up after ten seconds or when the process exits,
// with the end of the process's log.
func (c *child) waitHTTP(ctx context.Context, url string, want int) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(10 * time.Second)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if want == 0 || resp.StatusCode == want {
				return nil
			}
		}
		select {
		case <-c.done:
			return fmt.Errorf("%s exited: %s", c.name, c.logTail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not answering %s after 10s: %s", c.name, url, c.logTail())
		}
	}
}

// logTail is the last line of the process's log, and of nginx's error
// log beside it.
func (c *child) logTail() string {
	var tail []string
	for _, p := range []string{c.log, filepath.Join(filepath.Dir(c.log), "error.log")} {
		if b, err := os.ReadFile(p); err == nil && len(bytes.TrimSpace(b)) > 0 {
			tail = append(tail, lastLine(b))
		}
	}
	if len(tail) == 0 {
		return "no output"
	}
	return strings.Join(tail, "; ")
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

// freeAddr returns a loopback address with a port free a moment ago, for a
// child process to listen on.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
