package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
)

// GrantTypeJWTBearer is the RFC 7523 §2.1 grant type with which a
// workload trades the identity token it already holds (a Kubernetes
// service-account token, a GitHub Actions OIDC token, a SPIFFE JWT-SVID)
// for a passport. See docs/enrollment.md.
const GrantTypeJWTBearer = "urn:ietf:params:oauth:grant-type:jwt-bearer"

// AssertionSource returns the workload's current identity token. It is
// called for every token request, so it may return a fresh token each
// time (needed when the authority accepts each token once).
type AssertionSource func(ctx context.Context) (string, error)

// maxTokenFileBytes bounds a token file.
const maxTokenFileBytes = 64 << 10

// TokenFile reads the identity token from path on every call: a
// Kubernetes projected service-account token, which the kubelet replaces
// before it expires, or any file another process keeps fresh.
func TokenFile(path string) AssertionSource {
	return func(context.Context) (string, error) {
		f, err := os.Open(path)
		if err != nil {
			return "", fmt.Errorf("identity token: %w", err)
		}
		defer f.Close()
		b, err := io.ReadAll(io.LimitReader(f, maxTokenFileBytes+1))
		if err != nil {
			return "", fmt.Errorf("identity token: %w", err)
		}
		if len(b) > maxTokenFileBytes {
			return "", fmt.Errorf("identity token %s: larger than %d bytes", path, maxTokenFileBytes)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return "", fmt.Errorf("identity token %s: empty", path)
		}
		return tok, nil
	}
}

// NewWorkload returns a client for a workload that enrolls with its
// external identity: Token uses the JWT-bearer grant with the token from
// source; Exchange sends it as client_assertion. The authority maps the
// identity to an agent by its trusted_issuers rules. opts.PrivateKey must
// not be set (the identity token is the credential); opts.DPoPKey may be.
func NewWorkload(authorityURL string, source AssertionSource, opts Options) (*Client, error) {
	if source == nil {
		return nil, errors.New("workload client: an assertion source is required")
	}
	if opts.PrivateKey != nil {
		return nil, errors.New("workload client: the identity token is the credential; set no private key")
	}
	u, err := url.Parse(authorityURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("authority url %q: want http(s)://host:port", authorityURL)
	}
	c, err := New(authorityURL, "workload", "unused", opts)
	if err != nil {
		return nil, err
	}
	c.clientID, c.secret, c.source = "", "", source
	return c, nil
}
