package fleet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"

	"github.com/agentpassport/passport/internal/tlsx"
)

// CallerConfig makes the control API check who called, the way an
// upstream behind Agent Passport should: the API key that only the proxy
// holds (it injects it after the policy allowed the call), and the
// proxy's signed assertion, bound to this exact request. A call that
// bypasses the proxy has neither. Zero: no check (the API then relies on
// network isolation).
type CallerConfig struct {
	// APIKeyFile holds the API key callers must send in APIKeyHeader.
	APIKeyFile string `yaml:"api_key_file"`
	// APIKeyHeader carries the key. Default X-Api-Key.
	APIKeyHeader string `yaml:"api_key_header"`
	// AssertionJWKSURL is the proxy's assertion key set (its admin port's
	// /.well-known/assertion-jwks.json). Set: every control call must
	// carry a valid assertion.
	AssertionJWKSURL string `yaml:"assertion_jwks_url"`
	// AssertionAudience is the aud the assertion must name.
	AssertionAudience string `yaml:"assertion_audience"`
	// AssertionIssuer, when set, is the iss it must name.
	AssertionIssuer string `yaml:"assertion_issuer"`
	// AssertionHeader carries it. Default Passport-Assertion.
	AssertionHeader string `yaml:"assertion_header"`
	// CAFile, when set, is the only CA trusted for an https://
	// AssertionJWKSURL (the proxy's admin port with TLS). Default: the
	// system's roots.
	CAFile string `yaml:"ca_file"`
}

func (c CallerConfig) enabled() bool { return c.APIKeyFile != "" || c.AssertionJWKSURL != "" }

// caller checks the callers of the control API.
type caller struct {
	cfg    CallerConfig
	key    []byte
	client *http.Client

	mu      sync.Mutex
	keys    jose.JSONWebKeySet
	fetched time.Time
	seen    map[string]time.Time // assertion ids used, until they expire
}

func newCaller(cfg CallerConfig) (*caller, error) {
	if cfg.APIKeyHeader == "" {
		cfg.APIKeyHeader = "X-Api-Key"
	}
	if cfg.AssertionHeader == "" {
		cfg.AssertionHeader = "Passport-Assertion"
	}
	hc, err := tlsx.HTTPClient(cfg.CAFile, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("caller ca_file: %w", err)
	}
	c := &caller{cfg: cfg, client: hc, seen: map[string]time.Time{}}
	if cfg.APIKeyFile != "" {
		b, err := os.ReadFile(cfg.APIKeyFile)
		if err != nil {
			return nil, fmt.Errorf("caller api key: %w", err)
		}
		if c.key = bytes.TrimSpace(b); len(c.key) == 0 {
			return nil, errors.New("caller api key file is empty")
		}
	}
	if cfg.AssertionJWKSURL != "" && cfg.AssertionAudience == "" {
		return nil, errors.New("caller: assertion_audience is required with assertion_jwks_url")
	}
	return c, nil
}

// guard wraps a control route.
func (c *caller) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := c.check(r); err != nil {
			w.Header().Set("WWW-Authenticate", `Passport-Assertion realm="fleet"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "unauthenticated: " + err.Error()})
			return
		}
		next.ServeHTTP(w, r)
	})
}

var errCaller = errors.New("caller not verified")

func (c *caller) check(r *http.Request) error {
	if c.key != nil {
		got := []byte(r.Header.Get(c.cfg.APIKeyHeader))
		if subtle.ConstantTimeCompare(got, c.key) != 1 {
			return fmt.Errorf("%w: no valid API key", errCaller)
		}
	}
	if c.cfg.AssertionJWKSURL == "" {
		return nil
	}
	raw := r.Header.Get(c.cfg.AssertionHeader)
	if raw == "" {
		return fmt.Errorf("%w: no assertion", errCaller)
	}
	tok, err := josejwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil || len(tok.Headers) != 1 {
		return fmt.Errorf("%w: malformed assertion", errCaller)
	}
	keys, err := c.keySet(r.Context(), tok.Headers[0].KeyID)
	if err != nil {
		return err
	}
	var cl struct {
		josejwt.Claims
		Tctx struct {
			Method string `json:"method"`
			Path   string `json:"path"`
			Query  string `json:"query"`
			Body   string `json:"body_sha256"`
		} `json:"tctx"`
	}
	if err := tok.Claims(keys, &cl); err != nil {
		return fmt.Errorf("%w: bad assertion signature", errCaller)
	}
	now := time.Now()
	exp := josejwt.Expected{AnyAudience: []string{c.cfg.AssertionAudience}, Issuer: c.cfg.AssertionIssuer, Time: now}
	if err := cl.ValidateWithLeeway(exp, 5*time.Second); err != nil || cl.Expiry == nil || cl.ID == "" {
		return fmt.Errorf("%w: assertion not valid here or now", errCaller)
	}
	if cl.Expiry.Time().Sub(now) > 65*time.Second {
		return fmt.Errorf("%w: assertion lives too long", errCaller)
	}
	// Bound to this request: method, path, query and body.
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10+1))
	if err != nil {
		return fmt.Errorf("%w: body unreadable", errCaller)
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	sum := sha256.Sum256(body)
	if cl.Tctx.Method != r.Method || cl.Tctx.Path != r.URL.EscapedPath() && cl.Tctx.Path != r.URL.Path ||
		cl.Tctx.Query != r.URL.RawQuery || cl.Tctx.Body != base64.RawURLEncoding.EncodeToString(sum[:]) {
		return fmt.Errorf("%w: the assertion is for another request", errCaller)
	}
	if !c.firstUse(cl.ID, cl.Expiry.Time(), now) {
		return fmt.Errorf("%w: assertion replayed", errCaller)
	}
	return nil
}

// firstUse records an assertion id until it expires.
func (c *caller) firstUse(id string, exp, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.seen) > 10000 {
		for k, e := range c.seen {
			if now.After(e) {
				delete(c.seen, k)
			}
		}
	}
	if _, ok := c.seen[id]; ok {
		return false
	}
	c.seen[id] = exp.Add(5 * time.Second)
	return true
}

// keySet returns the proxy's keys, fetched again when kid is unknown (at
// most every 10 s) and every 5 minutes.
func (c *caller) keySet(ctx context.Context, kid string) (jose.JSONWebKeySet, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fresh := time.Since(c.fetched) < 5*time.Minute
	if fresh && (len(c.keys.Key(kid)) > 0 || time.Since(c.fetched) < 10*time.Second) {
		return c.keys, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.cfg.AssertionJWKSURL, nil)
	if err != nil {
		return c.keys, err
	}
	res, err := c.client.Do(req)
	if err != nil {
		return c.keys, fmt.Errorf("%w: the proxy's keys are unreachable", errCaller)
	}
	defer res.Body.Close()
	var set jose.JSONWebKeySet
	if res.StatusCode != http.StatusOK || json.NewDecoder(io.LimitReader(res.Body, 1<<20)).Decode(&set) != nil {
		return c.keys, fmt.Errorf("%w: the proxy's keys are unreadable", errCaller)
	}
	c.keys, c.fetched = set, time.Now()
	return c.keys, nil
}
