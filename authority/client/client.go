// Package client is the Go client of the passport authority, for agents and
// tools.
//
// An agent exchanges its credentials for passports and reuses each one
// until shortly before it expires:
//
//	c, err := client.New("https://authority.internal:8081", clientID, passport.Secret(secret),
//		client.Options{CAFile: "/etc/passport/ca.pem"})
//	tok, err := c.Token(ctx, client.TokenRequest{Scope: []string{"service.restart"},
//		Task: &passport.Task{ID: "inc-42", Target: "checkout"}})
//	req.Header.Set("Authorization", "Bearer "+tok.Raw)
//
// or wraps an http.Client with Transport so that every request carries a
// fresh passport. Admin tools use Admin to register, inspect, block and
// unblock agents and to report outcomes that move an agent's reputation.
//
// With Options.DPoPKey every passport is bound to that key (RFC 9449):
// the client sends a DPoP proof with each token request, follows the
// authority's DPoP-Nonce, and Transport sends "Authorization: DPoP" with a
// fresh proof on every call. Exchange trades another agent's passport for
// a delegated one (RFC 8693 token exchange).
//
// The package imports nothing from the authority itself, so an agent binary
// does not carry the issuer.
package client

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/agentpassport/passport/approval"
	"github.com/agentpassport/passport/internal/tlsx"
	"github.com/agentpassport/passport/passport"
	"github.com/golang-jwt/jwt/v5"
)

// Sentinel errors; match with errors.Is on the *Error a call returns.
var (
	// ErrInvalidClient: wrong credentials or unknown client (401).
	ErrInvalidClient = errors.New("invalid client credentials")
	// ErrBlocked: the agent is blocked (unauthorized_client).
	ErrBlocked = errors.New("agent is blocked")
	// ErrInvalidScope: asked for more than the agent is registered for.
	ErrInvalidScope = errors.New("scope not granted")
	// ErrRateLimited: too many failed authentications (429).
	ErrRateLimited = errors.New("rate limited")
	// ErrNotFound: no such agent (404).
	ErrNotFound = errors.New("not found")
	// ErrForbidden: the admin token may not act on this tenant (403).
	ErrForbidden = errors.New("forbidden")
	// ErrUnauthenticated: the admin token is missing or wrong (401).
	ErrUnauthenticated = errors.New("unauthenticated")
)

// Error is an error answer of the authority: an RFC 6749 error from the
// token endpoint (Code is e.g. "invalid_client") or an RFC 9457 problem
// from the admin API (Code is the problem's code).
type Error struct {
	Status      int
	Code        string
	Description string
}

func (e *Error) Error() string {
	if e.Description != "" {
		return fmt.Sprintf("authority: %d %s: %s", e.Status, e.Code, e.Description)
	}
	return fmt.Sprintf("authority: %d %s", e.Status, e.Code)
}

// Is matches the package's sentinel errors.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrInvalidClient:
		return e.Code == "invalid_client" && e.Status != http.StatusTooManyRequests
	case ErrBlocked:
		return e.Code == "unauthorized_client"
	case ErrInvalidScope:
		return e.Code == "invalid_scope" || e.Code == "invalid_authorization_details"
	case ErrRateLimited:
		return e.Status == http.StatusTooManyRequests
	case ErrNotFound:
		return e.Status == http.StatusNotFound
	case ErrForbidden:
		return e.Status == http.StatusForbidden
	case ErrUnauthenticated:
		return e.Status == http.StatusUnauthorized
	}
	return false
}

// Options tune a Client or an Admin. The zero value is ready to use.
type Options struct {
	// HTTPClient makes the requests. Default: a client with a 10s timeout
	// (that trusts CAFile when set).
	HTTPClient *http.Client
	// CAFile, when HTTPClient is nil, is a PEM bundle of the only CAs
	// trusted for an https authority (a private CA). Read by New and
	// NewAdmin. Default: the system's roots.
	CAFile string
	// RefreshBefore is how long before expiry a cached passport is
	// replaced. Default 30s, or a fifth of the lifetime if that is less.
	RefreshBefore time.Duration
	// Clock is the time source. Default time.Now.
	Clock func() time.Time
	// PrivateKey, when set, authenticates with private_key_jwt (RFC 7523)
	// instead of the client secret: an Ed25519 key (EdDSA) or an ECDSA
	// P-256 key (ES256) whose public half was registered.
	PrivateKey crypto.Signer
	// DPoPKey, when set, binds every passport to this key (RFC 9449): an
	// Ed25519 or P-256 private key, which may be PrivateKey itself or a
	// key of its own. Token requests carry a proof, and the passports
	// must then be presented with one (Transport, DPoPProof).
	DPoPKey crypto.Signer
	// ClientCertificate, when set, is shown on every connection to the
	// authority: with no secret and no PrivateKey it authenticates the
	// agent (tls_client_auth or self_signed_tls_client_auth, RFC 8705),
	// and its passports are bound to it. Ignored when HTTPClient is set
	// (give that client the certificate instead).
	ClientCertificate *tls.Certificate
}

// withCA builds HTTPClient from CAFile when only CAFile is set.
func (o Options) withCA() (Options, error) {
	if o.HTTPClient != nil || o.CAFile == "" && o.ClientCertificate == nil {
		return o, nil
	}
	if o.ClientCertificate == nil {
		hc, err := tlsx.HTTPClient(o.CAFile, 10*time.Second)
		if err != nil {
			return o, fmt.Errorf("authority client: %w", err)
		}
		o.HTTPClient = hc
		return o, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.CAFile != "" {
		roots, err := tlsx.LoadCAFile(o.CAFile)
		if err != nil {
			return o, fmt.Errorf("authority client: %w", err)
		}
		cfg.RootCAs = roots
	}
	if o.ClientCertificate != nil {
		cfg.Certificates = []tls.Certificate{*o.ClientCertificate}
	}
	o.HTTPClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Proxy: http.ProxyFromEnvironment, TLSClientConfig: cfg, ForceAttemptHTTP2: true,
		MaxIdleConnsPerHost: 4, IdleConnTimeout: 90 * time.Second, TLSHandshakeTimeout: 10 * time.Second,
	}}
	return o, nil
}

func (o Options) httpClient() *http.Client {
	if o.HTTPClient != nil {
		return o.HTTPClient
	}
	return &http.Client{Timeout: 10 * time.Second}
}

func (o Options) now() time.Time {
	if o.Clock != nil {
		return o.Clock()
	}
	return time.Now()
}

// TokenRequest is what an agent asks for. Every field narrows the passport;
// none can widen it beyond the agent's registration.
type TokenRequest struct {
	// Scope lists actions; empty means every registered capability.
	Scope []string
	// Task binds the passport to one piece of work.
	Task *passport.Task
	// Audience picks the resource server; empty means the default.
	Audience string
	// AuthorizationDetails (RFC 9396) narrow further, e.g. per resource.
	AuthorizationDetails []passport.AuthorizationDetail
}

func (r TokenRequest) cacheKey() string {
	s := slices.Clone(r.Scope)
	slices.Sort(s)
	b, _ := json.Marshal(struct {
		S []string
		T *passport.Task
		A string
		D []passport.AuthorizationDetail
	}{s, r.Task, r.Audience, r.AuthorizationDetails})
	return string(b)
}

// Token is an issued passport.
type Token struct {
	// Raw is the compact JWS: put it in "Authorization: Bearer <Raw>".
	Raw string
	// ExpiresAt is when the passport expires.
	ExpiresAt time.Time
	// Scope is the granted scope.
	Scope string
	// Type is the token_type: "Bearer", or "DPoP" for a passport bound to
	// the client's DPoP key, sent as "Authorization: DPoP <Raw>" with a
	// proof (DPoPProof) on every call.
	Type string

	refreshAt time.Time
}

// Bound reports whether the passport is bound to a DPoP key.
func (t Token) Bound() bool { return strings.EqualFold(t.Type, passport.TokenTypeDPoP) }

// LogValue keeps the passport itself out of logs.
func (t Token) LogValue() slog.Value {
	return slog.GroupValue(slog.String("raw", "REDACTED"), slog.Time("expires_at", t.ExpiresAt), slog.String("scope", t.Scope))
}

// Client fetches passports for one agent. It is safe for concurrent use.
type Client struct {
	base     string
	clientID string
	secret   passport.Secret
	opts     Options
	// source, for a workload client (NewWorkload), gives the identity
	// token that replaces client credentials.
	source AssertionSource

	mu     sync.Mutex
	cache  map[string]Token
	nonces nonces
}

// New returns a client for the authority at authorityURL (such as
// http://127.0.0.1:8081) that authenticates as clientID with secret
// (client_secret_basic), or with opts.PrivateKey (private_key_jwt).
func New(authorityURL, clientID string, secret passport.Secret, opts Options) (*Client, error) {
	u, err := url.Parse(authorityURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("authority url %q: want http(s)://host:port", authorityURL)
	}
	if clientID == "" {
		return nil, errors.New("client id is required")
	}
	if secret == "" && opts.PrivateKey == nil && opts.ClientCertificate == nil {
		return nil, errors.New("a client secret, a private key or a client certificate is required")
	}
	for name, k := range map[string]crypto.Signer{"private key": opts.PrivateKey, "dpop key": opts.DPoPKey} {
		if k == nil {
			continue
		}
		switch k.(type) {
		case ed25519.PrivateKey, *ecdsa.PrivateKey:
		default:
			return nil, fmt.Errorf("%s %T: want ed25519.PrivateKey or *ecdsa.PrivateKey (P-256)", name, k)
		}
		if _, err := passport.PublicJWK(k.Public()); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	opts, err = opts.withCA()
	if err != nil {
		return nil, err
	}
	return &Client{base: strings.TrimRight(authorityURL, "/"), clientID: clientID, secret: secret, opts: opts, cache: map[string]Token{}}, nil
}

// ClientID is the agent's client id; empty for a workload client (NewWorkload),
// whose agent is the sub of its passports.
func (c *Client) ClientID() string { return c.clientID }

// Token returns a passport for req: the cached one when an identical
// request got one that is still fresh, else a new one.
func (c *Client) Token(ctx context.Context, req TokenRequest) (Token, error) {
	key := req.cacheKey()
	c.mu.Lock()
	defer c.mu.Unlock() // held across the fetch: concurrent callers share one request
	if t, ok := c.cache[key]; ok && c.fresh(t) {
		return t, nil
	}
	t, err := c.fetch(ctx, req)
	if err != nil {
		delete(c.cache, key)
		return Token{}, err
	}
	if len(c.cache) > 256 {
		clear(c.cache)
	}
	c.cache[key] = t
	return t, nil
}

// Invalidate drops every cached passport (for example after a proxy
// answered 401 because the passport was revoked).
func (c *Client) Invalidate() {
	c.mu.Lock()
	clear(c.cache)
	c.mu.Unlock()
}

func (c *Client) fresh(t Token) bool { return c.opts.now().Before(t.refreshAt) }

func (c *Client) fetch(ctx context.Context, req TokenRequest) (Token, error) {
	form := url.Values{"grant_type": {"client_credentials"}}
	if c.source != nil {
		a, err := c.source(ctx)
		if err != nil {
			return Token{}, err
		}
		form = url.Values{"grant_type": {GrantTypeJWTBearer}, "assertion": {a}}
	}
	if err := req.fill(form); err != nil {
		return Token{}, err
	}
	return c.request(ctx, form)
}

// ExchangeRequest asks for a delegated passport (RFC 8693 token exchange):
// the client's agent acts on behalf of the agent whose passport
// SubjectToken is. The embedded TokenRequest narrows further; empty, the
// new passport keeps what the subject passport grants and this agent is
// registered for.
type ExchangeRequest struct {
	// SubjectToken is the other agent's passport. Required.
	SubjectToken string
	// ActorToken, when set, is this agent's own passport, sent as
	// actor_token next to the client's credentials.
	ActorToken string
	TokenRequest
}

// Exchange trades another agent's passport for a delegated one whose sub
// is this client's agent and whose act and delegation claims name the
// chain. The subject agent must list this agent in may_delegate_to. With
// a DPoP key the new passport is bound to it (required when the subject
// passport is bound). Exchanged passports are not cached.
func (c *Client) Exchange(ctx context.Context, req ExchangeRequest) (Token, error) {
	if req.SubjectToken == "" {
		return Token{}, errors.New("exchange: a subject token is required")
	}
	form := url.Values{
		"grant_type":         {passport.GrantTypeTokenExchange},
		"subject_token":      {req.SubjectToken},
		"subject_token_type": {passport.TokenTypeAccessToken},
	}
	if req.ActorToken != "" {
		form.Set("actor_token", req.ActorToken)
		form.Set("actor_token_type", passport.TokenTypeAccessToken)
	}
	if err := req.fill(form); err != nil {
		return Token{}, err
	}
	return c.request(ctx, form)
}

// fill adds the narrowing parameters to a token request.
func (r TokenRequest) fill(form url.Values) error {
	if len(r.Scope) > 0 {
		form.Set("scope", strings.Join(r.Scope, " "))
	}
	if r.Task != nil {
		b, err := json.Marshal(r.Task)
		if err != nil {
			return fmt.Errorf("encode task: %w", err)
		}
		form.Set("task", string(b))
	}
	if r.Audience != "" {
		form.Set("audience", r.Audience)
	}
	if len(r.AuthorizationDetails) > 0 {
		b, err := json.Marshal(r.AuthorizationDetails)
		if err != nil {
			return fmt.Errorf("encode authorization details: %w", err)
		}
		form.Set("authorization_details", string(b))
	}
	return nil
}

// request posts a token request. With a DPoP key it carries a proof with
// the authority's latest nonce, and a use_dpop_nonce answer (RFC 9449 §8)
// is retried once with the nonce that came with it.
func (c *Client) request(ctx context.Context, form url.Values) (Token, error) {
	tokenURL := c.base + "/oauth2/token"
	u, _ := url.Parse(tokenURL)
	for attempt := 0; ; attempt++ {
		tok, resp, err := c.post(ctx, tokenURL, origin(u), form)
		if err == nil {
			return tok, nil
		}
		var ae *Error
		if attempt == 0 && c.opts.DPoPKey != nil && errors.As(err, &ae) && ae.Code == "use_dpop_nonce" &&
			resp != nil && resp.Header.Get(passport.DPoPNonceHeader) != "" {
			continue // post learnt the nonce
		}
		return Token{}, err
	}
}

func (c *Client) post(ctx context.Context, tokenURL, orig string, form url.Values) (Token, *http.Response, error) {
	if c.opts.PrivateKey != nil {
		// A fresh assertion per attempt: the authority spends its jti.
		a, err := c.assertion(tokenURL)
		if err != nil {
			return Token{}, nil, err
		}
		form.Set("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
		form.Set("client_assertion", a)
	}
	if c.source != nil && form.Get("grant_type") != GrantTypeJWTBearer {
		// A workload authenticates other grants with its identity token.
		a, err := c.source(ctx)
		if err != nil {
			return Token{}, nil, err
		}
		form.Set("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
		form.Set("client_assertion", a)
	}
	certAuth := c.opts.PrivateKey == nil && c.source == nil && c.secret == "" && c.opts.ClientCertificate != nil
	if certAuth {
		// RFC 8705 §2: the connection's certificate is the credential.
		form.Set("client_id", c.clientID)
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, tokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return Token{}, nil, fmt.Errorf("token request: %w", err)
	}
	hr.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	hr.Header.Set("Accept", "application/json")
	if c.opts.PrivateKey == nil && c.source == nil && !certAuth {
		// RFC 6749 §2.3.1: form-encode both before Basic.
		hr.SetBasicAuth(url.QueryEscape(c.clientID), url.QueryEscape(c.secret.Reveal()))
	}
	if c.opts.DPoPKey != nil {
		p, err := NewDPoPProof(c.opts.DPoPKey, http.MethodPost, tokenURL, "", c.nonces.get(orig), c.opts.now())
		if err != nil {
			return Token{}, nil, err
		}
		hr.Header.Set(passport.DPoPHeader, p)
	}
	start := c.opts.now()
	resp, err := c.opts.httpClient().Do(hr)
	if err != nil {
		return Token{}, nil, fmt.Errorf("token request: %w", err)
	}
	defer resp.Body.Close()
	c.nonces.learn(orig, resp.Header)
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return Token{}, resp, fmt.Errorf("read token response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var oe OAuthError
		_ = json.Unmarshal(body, &oe)
		if oe.Code == "" {
			oe.Code = "http_" + fmt.Sprint(resp.StatusCode)
		}
		return Token{}, resp, &Error{Status: resp.StatusCode, Code: oe.Code, Description: oe.Description}
	}
	var tr TokenResponse
	if err := json.Unmarshal(body, &tr); err != nil || tr.AccessToken == "" {
		return Token{}, resp, errors.New("token response: no access_token")
	}
	if c.opts.DPoPKey != nil && !strings.EqualFold(tr.TokenType, passport.TokenTypeDPoP) {
		// RFC 9449 §5: a client that asked for a bound token must not
		// use an unbound one as if it were bound.
		return Token{}, resp, fmt.Errorf("token response: token_type %q, want DPoP", tr.TokenType)
	}
	exp := start.Add(time.Duration(tr.ExpiresIn) * time.Second)
	// Prefer the passport's own exp when readable; the signature is for
	// the proxy to check, the client only schedules its refresh.
	var rc jwt.RegisteredClaims
	if _, _, err := jwt.NewParser().ParseUnverified(tr.AccessToken, &rc); err == nil && rc.ExpiresAt != nil {
		exp = rc.ExpiresAt.Time
	}
	before := c.opts.RefreshBefore
	if lifetime := exp.Sub(start); before == 0 {
		before = min(30*time.Second, lifetime/5)
	}
	return Token{Raw: tr.AccessToken, ExpiresAt: exp, Scope: tr.Scope, Type: tr.TokenType, refreshAt: exp.Add(-before)}, resp, nil
}

// assertion builds an RFC 7523 client assertion: iss = sub = client id,
// aud = token endpoint, one-minute life, fresh jti.
func (c *Client) assertion(aud string) (string, error) {
	now := c.opts.now()
	claims := jwt.RegisteredClaims{
		Issuer: c.clientID, Subject: c.clientID, Audience: jwt.ClaimStrings{aud},
		IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(time.Minute)),
		ID: randomJTI(),
	}
	var m jwt.SigningMethod = jwt.SigningMethodEdDSA
	if _, ok := c.opts.PrivateKey.(*ecdsa.PrivateKey); ok {
		m = jwt.SigningMethodES256
	}
	s, err := jwt.NewWithClaims(m, claims).SignedString(c.opts.PrivateKey)
	if err != nil {
		return "", fmt.Errorf("sign client assertion: %w", err)
	}
	return s, nil
}

// Transport returns a RoundTripper that adds "Authorization: Bearer
// <passport>" for req to every request (base nil means
// http.DefaultTransport), or, for a DPoP-bound passport, "Authorization:
// DPoP <passport>" and a fresh DPoP proof for the request's URL, retrying
// once with the server's nonce when it answers use_dpop_nonce (if the
// body can be sent again). On any other 401 it drops the cached passport
// so the next request fetches a new one.
func (c *Client) Transport(base http.RoundTripper, req TokenRequest) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return &transport{c: c, base: base, req: req}
}

type transport struct {
	c    *Client
	base http.RoundTripper
	req  TokenRequest
}

func (t *transport) RoundTrip(r *http.Request) (*http.Response, error) {
	tok, err := t.c.Token(r.Context(), t.req)
	if err != nil {
		return nil, err
	}
	if !tok.Bound() {
		r2 := r.Clone(r.Context())
		r2.Header.Set("Authorization", "Bearer "+tok.Raw)
		resp, err := t.base.RoundTrip(r2)
		if err == nil && resp.StatusCode == http.StatusUnauthorized {
			t.c.Invalidate()
		}
		return resp, err
	}
	orig := origin(r.URL)
	// A retry must send the body again: possible without one, or with
	// GetBody (set by http.NewRequest for in-memory bodies).
	replayable := r.Body == nil || r.Body == http.NoBody || r.GetBody != nil
	for attempt := 0; ; attempt++ {
		r2 := r.Clone(r.Context())
		if attempt > 0 && r.GetBody != nil {
			if r2.Body, err = r.GetBody(); err != nil {
				return nil, fmt.Errorf("dpop retry: %w", err)
			}
		}
		proof, err := NewDPoPProof(t.c.opts.DPoPKey, r.Method, r.URL.String(), tok.Raw, t.c.nonces.get(orig), t.c.opts.now())
		if err != nil {
			return nil, err
		}
		r2.Header.Set("Authorization", passport.TokenTypeDPoP+" "+tok.Raw)
		r2.Header.Set(passport.DPoPHeader, proof)
		resp, err := t.base.RoundTrip(r2)
		if err != nil {
			return nil, err
		}
		learnt := t.c.nonces.learn(orig, resp.Header)
		if attempt == 0 && learnt && replayable && useDPoPNonce(resp) {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			continue
		}
		if resp.StatusCode == http.StatusUnauthorized && !useDPoPNonce(resp) {
			t.c.Invalidate()
		}
		return resp, nil
	}
}

// Admin calls the authority's admin API with an admin token (global or
// tenant-scoped), or its approvals API with an admin or approver token. It
// is safe for concurrent use.
type Admin struct {
	base  string
	token passport.Secret
	opts  Options
}

// NewAdmin returns an admin client for the authority at authorityURL.
func NewAdmin(authorityURL string, adminToken passport.Secret, opts Options) (*Admin, error) {
	u, err := url.Parse(authorityURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("authority url %q: want http(s)://host:port", authorityURL)
	}
	if adminToken == "" {
		return nil, errors.New("an admin token is required (PASSPORT_ADMIN_TOKEN)")
	}
	opts, err = opts.withCA()
	if err != nil {
		return nil, err
	}
	return &Admin{base: strings.TrimRight(authorityURL, "/"), token: adminToken, opts: opts}, nil
}

func agentsPath(tenant string) string { return "/v1/tenants/" + url.PathEscape(tenant) + "/agents" }

func agentPath(tenant, id string) string { return agentsPath(tenant) + "/" + url.PathEscape(id) }

// RegisterAgent registers an agent in tenant. The answer holds the client
// secret, which the authority never shows again.
func (a *Admin) RegisterAgent(ctx context.Context, tenant string, spec AgentSpec) (Registration, error) {
	var out Registration
	err := a.do(ctx, http.MethodPost, agentsPath(tenant), spec, &out)
	return out, err
}

// GetAgent returns one agent with its live reputation and block state.
func (a *Admin) GetAgent(ctx context.Context, tenant, id string) (Agent, error) {
	var out Agent
	err := a.do(ctx, http.MethodGet, agentPath(tenant, id), nil, &out)
	return out, err
}

// ListAgents returns a tenant's agents.
func (a *Admin) ListAgents(ctx context.Context, tenant string) ([]Agent, error) {
	var out AgentList
	err := a.do(ctx, http.MethodGet, agentsPath(tenant), nil, &out)
	return out.Agents, err
}

// DeleteAgent deletes an agent and revokes its passports.
func (a *Admin) DeleteAgent(ctx context.Context, tenant, id string) error {
	return a.do(ctx, http.MethodDelete, agentPath(tenant, id), nil, nil)
}

// Block blocks an agent: its passports are revoked and new ones refused.
func (a *Admin) Block(ctx context.Context, tenant, id, reason string) (Agent, error) {
	var out Agent
	err := a.do(ctx, http.MethodPost, agentPath(tenant, id)+"/block", BlockRequest{Reason: reason}, &out)
	return out, err
}

// Unblock lifts a block and resets the agent's reputation to its baseline.
func (a *Admin) Unblock(ctx context.Context, tenant, id string) (Agent, error) {
	var out Agent
	err := a.do(ctx, http.MethodPost, agentPath(tenant, id)+"/unblock", nil, &out)
	return out, err
}

// ReportOutcome reports one outcome (OutcomeSuccess, OutcomeFailure or
// OutcomeDenied) of an agent's call; it moves the agent's reputation and
// may block it.
func (a *Admin) ReportOutcome(ctx context.Context, tenant, id, outcome string) (OutcomeResult, error) {
	var out OutcomeResult
	err := a.do(ctx, http.MethodPost, agentPath(tenant, id)+"/outcomes", OutcomeRequest{Outcome: outcome}, &out)
	return out, err
}

// RotateKeys rotates the signing keys now (global admin token only).
func (a *Admin) RotateKeys(ctx context.Context) (RotateResult, error) {
	var out RotateResult
	err := a.do(ctx, http.MethodPost, "/v1/keys/rotate", nil, &out)
	return out, err
}

func approvalsPath(tenant string) string {
	return "/v1/tenants/" + url.PathEscape(tenant) + "/approvals"
}

// ListApprovals lists a tenant's approvals in state (every state when
// ""), newest first. An approver token may call the approval methods as
// well as an admin token.
func (a *Admin) ListApprovals(ctx context.Context, tenant string, state approval.State) ([]approval.Approval, error) {
	p := approvalsPath(tenant)
	if state != "" {
		p += "?state=" + url.QueryEscape(string(state))
	}
	var out approval.List
	err := a.do(ctx, http.MethodGet, p, nil, &out)
	return out.Approvals, err
}

// GetApproval returns one approval.
func (a *Admin) GetApproval(ctx context.Context, tenant, id string) (approval.Approval, error) {
	var out approval.Approval
	err := a.do(ctx, http.MethodGet, approvalsPath(tenant)+"/"+url.PathEscape(id), nil, &out)
	return out, err
}

// Approve approves the call an approval holds; the answer is the approval
// after the decision (granted once enough distinct approvers approved).
func (a *Admin) Approve(ctx context.Context, tenant, id string, req approval.DecisionRequest) (approval.Approval, error) {
	var out approval.Approval
	err := a.do(ctx, http.MethodPost, approvalsPath(tenant)+"/"+url.PathEscape(id)+"/approve", req, &out)
	return out, err
}

// Deny denies the call an approval holds.
func (a *Admin) Deny(ctx context.Context, tenant, id string, req approval.DecisionRequest) (approval.Approval, error) {
	var out approval.Approval
	err := a.do(ctx, http.MethodPost, approvalsPath(tenant)+"/"+url.PathEscape(id)+"/deny", req, &out)
	return out, err
}

func (a *Admin) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	req.Header.Set("Authorization", "Bearer "+a.token.Reveal())
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.opts.httpClient().Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		var p Problem
		_ = json.Unmarshal(b, &p)
		code := p.Code
		if code == "" { // an authority before problem codes: the type's last part
			code = strings.TrimPrefix(p.Type, "urn:passport:problem:")
		}
		if code == "" {
			code = "http_" + fmt.Sprint(resp.StatusCode)
		}
		return &Error{Status: resp.StatusCode, Code: code, Description: p.Detail}
	}
	if out == nil || len(b) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

func randomJTI() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails since Go 1.24
	return base64.RawURLEncoding.EncodeToString(b)
}
