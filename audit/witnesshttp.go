package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// HTTPWitness talks to a `passport witness` server: it posts statements and
// reads writers' logs back for verification.
//
// The server's API: POST /v1/statements (a statement; 201 stored, 200 the
// same statement again, 4xx problem+json with a refusal code), GET
// /v1/writers ({"writers": [...]}), GET /v1/writers/{writer}/log (the
// stored lines, JSON lines). With a token, every request carries it as a
// bearer token.
type HTTPWitness struct {
	base   *url.URL
	token  string
	client *http.Client
}

// NewHTTPWitness returns a client of the witness at rawURL (http or
// https, with an optional path prefix). token may be empty; client may be
// nil (a client with a 10 s timeout; each call's context bounds it too).
func NewHTTPWitness(rawURL, token string, client *http.Client) (*HTTPWitness, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("witness url %q: want http(s)://host[:port][/prefix]", rawURL)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("witness url %q: no user info, query or fragment (the token goes in PASSPORT_WITNESS_TOKEN)", rawURL)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	return &HTTPWitness{base: u, token: token, client: client}, nil
}

// Name is the witness's URL.
func (h *HTTPWitness) Name() string { return h.base.String() }

func (h *HTTPWitness) url(path string) string { return h.base.String() + path }

func (h *HTTPWitness) do(req *http.Request) (*http.Response, error) {
	if h.token != "" {
		req.Header.Set("Authorization", "Bearer "+h.token)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("witness %s: %w", h.Name(), err)
	}
	return resp, nil
}

// Witness posts a statement. A 4xx answer is a *WitnessRefusal; anything
// else that is not 2xx, or no answer, is an error worth retrying.
func (h *HTTPWitness) Witness(ctx context.Context, raw []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.url("/v1/statements"), bytes.NewReader(raw))
	if err != nil {
		return fmt.Errorf("witness %s: %w", h.Name(), err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := h.do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return nil
	case resp.StatusCode >= 400 && resp.StatusCode < 500:
		var p struct {
			Code   string `json:"code"`
			Detail string `json:"detail"`
		}
		_ = json.Unmarshal(body, &p)
		if p.Code == "" {
			p.Code = RefusedInvalid
			if resp.StatusCode == http.StatusUnauthorized {
				p.Code = RefusedUnauthorized
			}
		}
		if p.Detail == "" {
			p.Detail = resp.Status
		}
		return &WitnessRefusal{Code: p.Code, Detail: p.Detail}
	}
	return fmt.Errorf("witness %s: %s", h.Name(), resp.Status)
}

// Writers lists the writers the witness holds.
func (h *HTTPWitness) Writers(ctx context.Context) ([]string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.url("/v1/writers"), nil)
	if err != nil {
		return nil, fmt.Errorf("witness %s: %w", h.Name(), err)
	}
	resp, err := h.do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("witness %s: list writers: %s", h.Name(), resp.Status)
	}
	var out struct {
		Writers []string `json:"writers"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&out); err != nil {
		return nil, fmt.Errorf("witness %s: list writers: %w", h.Name(), err)
	}
	return out.Writers, nil
}

// ReadLog streams writer's stored lines.
func (h *HTTPWitness) ReadLog(ctx context.Context, writer string, fn func(line []byte) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.url("/v1/writers/"+url.PathEscape(writer)+"/log"), nil)
	if err != nil {
		return fmt.Errorf("witness %s: %w", h.Name(), err)
	}
	// A log can be long: the call's context bounds it, not the client's
	// overall timeout.
	c := *h.client
	c.Timeout = 0
	resp, err := (&HTTPWitness{base: h.base, token: h.token, client: &c}).do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("witness %s: log of %s: %s", h.Name(), writer, resp.Status)
	}
	_, partial, err := scanLines(resp.Body, fn)
	if err != nil {
		return fmt.Errorf("witness %s: log of %s: %w", h.Name(), writer, err)
	}
	if partial {
		return fmt.Errorf("witness %s: log of %s: cut short", h.Name(), writer)
	}
	return nil
}

// Interface guard.
var _ Witness = (*HTTPWitness)(nil)
