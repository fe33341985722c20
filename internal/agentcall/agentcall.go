// Package agentcall is what the project's own agents (chaos, the healer,
// the rogue example) share to act like any other agent: get a passport,
// call the control API through the proxy with it, and read the proxy's
// answer (allow, 401, 403 with reasons).
//
// It knows nothing about the authority: passports come from a Passports
// implementation (the authority client in production, a fake in tests),
// so these agents hold no signing keys and cannot mint their own.
package agentcall

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/agentpassport/passport/passport"
)

// Passports hands out passports. task binds the passport to one piece of
// work (nil for none); scope narrows the granted actions (nil for the
// agent's default). An error means no passport: the agent must not act.
type Passports interface {
	Passport(ctx context.Context, task *passport.Task, scope []string) (string, error)
}

// PassportsFunc adapts a function to Passports.
type PassportsFunc func(ctx context.Context, task *passport.Task, scope []string) (string, error)

// Passport implements Passports.
func (f PassportsFunc) Passport(ctx context.Context, task *passport.Task, scope []string) (string, error) {
	return f(ctx, task, scope)
}

// Sentinel errors for the proxy's answers.
var (
	ErrUnauthorized = errors.New("passport refused by the proxy (401)")
	ErrDenied       = errors.New("denied by policy (403)")
	ErrConflict     = errors.New("conflict (409)")
	ErrNotFound     = errors.New("not found (404)")
	ErrUpstream     = errors.New("upstream or proxy error")
)

// Response is the answer to one call.
type Response struct {
	Status    int
	Body      []byte
	RequestID string
	// Code and Reasons are the proxy's problem code (e.g. policy_denied)
	// and the policy's reasons on a 401, 403 or 429, when the body has
	// them.
	Code    string
	Reasons []string
	// ApprovalID names the pending approval of an approval_required
	// answer: a person must approve the call.
	ApprovalID string
}

// Error is returned for a non-2xx answer; it wraps one of the sentinels.
type Error struct {
	Resp *Response
	kind error
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("%s: status %d", e.kind, e.Resp.Status)
	if len(e.Resp.Reasons) > 0 {
		msg += " reasons " + strings.Join(e.Resp.Reasons, ",")
	}
	return msg
}

func (e *Error) Unwrap() error { return e.kind }

// Client calls the control API through the proxy.
type Client struct {
	// BaseURL is the proxy's URL, e.g. http://127.0.0.1:8080.
	BaseURL string
	// HTTP is the client to use; nil means a client with a 5s timeout
	// (never http.DefaultClient, which has none).
	HTTP *http.Client
	// UserAgent identifies the agent to the proxy's logs.
	UserAgent string
	// Proofs, when set, makes a DPoP proof (RFC 9449) for each call; a
	// passport with a proof is sent as "Authorization: DPoP". Nil, or
	// an empty proof: a Bearer passport.
	Proofs Prover
}

// Prover makes DPoP proofs of calls: the method, the full URL and the
// passport the call carries. An empty proof means the passport is not
// bound.
type Prover interface {
	Proof(method, target, token string) (string, error)
}

// defaultTimeout bounds a call when the caller gave no client.
const defaultTimeout = 5 * time.Second

var defaultClient = &http.Client{Timeout: defaultTimeout}

// HTTPClient is a client for Client.HTTP with timeout that verifies an
// https proxy with tc (its CA bundle, see internal/tlsx); nil tc means the
// system's roots.
func HTTPClient(timeout time.Duration, tc *tls.Config) *http.Client {
	c := &http.Client{Timeout: timeout}
	if tc != nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		// A copy: net/http's HTTP/2 setup adds h2 to the config's
		// NextProtos, and a caller's config shared with an HTTP/1.1-only
		// transport (the healer's probes) would then offer h2 there and
		// speak HTTP/1.1 to a server that answers in HTTP/2.
		tr.TLSClientConfig = tc.Clone()
		c.Transport = tr
	}
	return c
}

// Do sends method path with the passport as a Bearer token and a JSON
// body (nil for none). A 2xx answer returns the response and nil; any
// other answer returns the response and an *Error.
func (c *Client) Do(ctx context.Context, token, method, path string, body any) (*Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("encode body: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	u, err := url.JoinPath(c.BaseURL, path)
	if err != nil {
		return nil, fmt.Errorf("build url: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	scheme := "Bearer "
	if c.Proofs != nil {
		proof, err := c.Proofs.Proof(method, u, token)
		if err != nil {
			return nil, fmt.Errorf("dpop proof: %w", err)
		}
		if proof != "" {
			scheme = passport.TokenTypeDPoP + " "
			req.Header.Set(passport.DPoPHeader, proof)
		}
	}
	req.Header.Set("Authorization", scheme+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.UserAgent != "" {
		req.Header.Set("User-Agent", c.UserAgent)
	}
	hc := c.HTTP
	if hc == nil {
		hc = defaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	r := &Response{Status: resp.StatusCode, Body: data, RequestID: resp.Header.Get("X-Request-Id")}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return r, nil
	}
	var kind error
	switch resp.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusTooManyRequests:
		// 429: a budget ran out (budget_exhausted) — a refusal too.
		kind = ErrDenied
		if resp.StatusCode == http.StatusUnauthorized {
			kind = ErrUnauthorized
		}
		var p struct {
			Code       string   `json:"code"`
			Reasons    []string `json:"reasons"`
			ApprovalID string   `json:"approval_id"`
		}
		if json.Unmarshal(data, &p) == nil {
			r.Code, r.Reasons, r.ApprovalID = p.Code, p.Reasons, p.ApprovalID
		}
	case http.StatusConflict:
		kind = ErrConflict
	case http.StatusNotFound:
		kind = ErrNotFound
	default:
		kind = ErrUpstream
	}
	return r, &Error{Resp: r, kind: kind}
}

// Identity is what an agent may read from its own passport to label its
// records. It is read WITHOUT verifying the signature, which is fine only
// because the agent received the passport straight from its authority and
// uses the result for labels, never for an access decision.
type Identity struct {
	JTI     string
	Tenant  string
	AgentID string
	Name    string
	Type    string
	Trust   string
}

// PeekIdentity reads the identity claims of a passport (see Identity).
func PeekIdentity(token string) (Identity, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return Identity{}, false
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return Identity{}, false
	}
	var c passport.Claims
	if err := json.Unmarshal(raw, &c); err != nil {
		return Identity{}, false
	}
	return Identity{JTI: c.ID, Tenant: c.Tenant, AgentID: c.Agent.ID, Name: c.Agent.Name, Type: c.Agent.Type, Trust: string(c.Agent.TrustLevel)}, true
}
