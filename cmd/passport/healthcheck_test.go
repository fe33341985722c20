package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHealthcheck(t *testing.T) {
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/healthz":
			_, _ = w.Write([]byte("ok\n"))
		case "/readyz":
			http.Error(w, "not ready: redis\r\nunreachable", http.StatusServiceUnavailable)
		case "/moved":
			http.Redirect(w, r, "/healthz", http.StatusFound)
		case "/slow":
			<-block
		}
	}))
	defer srv.Close()
	defer close(block) // before srv.Close: the slow handler must return

	cases := []struct {
		name   string
		args   []string
		code   int
		out    string // in stdout (code 0) or stderr
		notOut string
	}{
		{"healthy", []string{srv.URL + "/healthz"}, 0, "healthy: " + srv.URL + "/healthz answered 200 OK", ""},
		{"not ready", []string{srv.URL + "/readyz"}, 1, "answered 503 Service Unavailable: not ready: redis  unreachable", "\r"},
		{"redirect is not health", []string{srv.URL + "/moved"}, 1, "answered 302 Found", ""},
		{"timeout", []string{"--timeout", "100ms", srv.URL + "/slow"}, 1, "unhealthy:", ""},
		{"nothing listening", []string{"http://127.0.0.1:1/healthz"}, 1, "unhealthy:", ""},
		{"not a URL", []string{"127.0.0.1:9080/readyz"}, 1, "is not an http(s) URL", ""},
		{"other scheme", []string{"file:///etc/passwd"}, 1, "is not an http(s) URL", ""},
		{"credentials hidden", []string{"http://user:secret@127.0.0.1:1/healthz"}, 1, "unhealthy:", "secret"},
		{"no URL", nil, 1, "accepts 1 arg", ""},
		{"bad timeout", []string{"--timeout", "0s", srv.URL + "/healthz"}, 1, "--timeout must be positive", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(append([]string{"healthcheck"}, tc.args...), func(string) string { return "" }, &stdout, &stderr)
			out := stdout.String()
			if code != 0 {
				out = stderr.String()
			}
			if code != tc.code || !strings.Contains(out, tc.out) || (tc.notOut != "" && strings.Contains(out, tc.notOut)) {
				t.Fatalf("code %d (want %d)\nstdout %q\nstderr %q", code, tc.code, stdout.String(), stderr.String())
			}
		})
	}
}
