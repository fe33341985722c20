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
)

// healthcheckCmd probes a health endpoint, for container healthchecks: the
// image is distroless, with no shell or curl to run one.
func (a *app) healthcheckCmd() *cobra.Command {
	timeout := 2 * time.Second
	cmd := &cobra.Command{
		Use:   "healthcheck URL",
		Short: "Exit 0 when URL answers 2xx (for Docker healthchecks)",
		Long: `healthcheck sends GET URL and exits 0 when the answer is 2xx, 1 otherwise,
printing why. Point it at a component's /healthz (alive) or /readyz (ready to
serve: the proxy's policy loaded, keys fetched and Redis reachable):

  passport healthcheck http://127.0.0.1:9080/readyz`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if timeout <= 0 {
				return errors.New("--timeout must be positive")
			}
			return a.healthcheck(cmd.Context(), args[0], timeout)
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", timeout, "give up after this long")
	return cmd
}

func (a *app) healthcheck(ctx context.Context, target string, timeout time.Duration) error {
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
	// No redirects: a health endpoint that redirects is misconfigured.
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
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
