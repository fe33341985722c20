package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/spf13/cobra"

	"github.com/agentpassport/passport/internal/tlsx"
)

// healthcheckCmd probes a health endpoint, for container healthchecks: the
// image is distroless, with no shell or curl to run one.
func (a *app) healthcheckCmd() *cobra.Command {
	timeout := 2 * time.Second
	var serverName string
	cmd := &cobra.Command{
		Use:   "healthcheck URL",
		Short: "Exit 0 when URL answers 2xx (for Docker healthchecks)",
		Long: `healthcheck sends GET URL and exits 0 when the answer is 2xx, 1 otherwise,
printing why. Point it at a component's /healthz (alive) or /readyz (ready to
serve: the proxy's policy loaded, keys fetched and Redis reachable):

  passport healthcheck http://127.0.0.1:9080/readyz

A component that serves TLS is checked over https with --ca-file (PASSPORT_CA_FILE);
--server-name names the host its certificate is for when the URL is a loopback address:

  passport healthcheck https://127.0.0.1:9080/readyz --server-name proxy.internal`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if timeout <= 0 {
				return errors.New("--timeout must be positive")
			}
			return a.healthcheck(cmd.Context(), args[0], timeout, serverName)
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", timeout, "give up after this long")
	cmd.Flags().StringVar(&serverName, "server-name", "", "for https: the name the server's certificate must carry (default: the URL's host)")
	return cmd
}

func (a *app) healthcheck(ctx context.Context, target string, timeout time.Duration, serverName string) error {
	u, err := url.Parse(target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("healthcheck: %q is not an http(s) URL", target)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	tr, err := tlsx.Client{CAFile: a.caFile(), ServerName: serverName}.Transport(tlsx.Options{})
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer tr.CloseIdleConnections()
	tr.Proxy = nil // a health check talks to the container itself
	// No redirects: a health endpoint that redirects is misconfigured.
	c := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("unhealthy: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("unhealthy: %s answered %s: %s", u.Redacted(), resp.Status, oneLine(body))
	}
	fmt.Fprintf(a.stdout, "healthy: %s answered %s\n", u.Redacted(), resp.Status)
	return nil
}

// oneLine makes a short response body printable on one line.
func oneLine(b []byte) string {
	out := make([]rune, 0, len(b))
	for _, r := range string(b) {
		if r < 0x20 || r == 0x7f {
			r = ' '
		}
		out = append(out, r)
	}
	return string(out)
}
