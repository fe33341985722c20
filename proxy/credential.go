package proxy

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/agentpassport/passport/audit"
)

// Credential is what the proxy adds to an upstream request after the
// policy allowed the call and its decision record is acknowledged, so that
// agents hold only their passport. It never appears in logs, audit
// records, the feed or answers.
type Credential struct {
	// Type is one of:
	//   bearer      Authorization: Bearer <the file's content>
	//   kubernetes  the same, from a projected service-account token file
	//   basic       Authorization: Basic, the file holding user:password
	//   header      Header: Template, with {secret} replaced by the file's content
	//   oauth2      an OAuth 2.0 client-credentials token from TokenURL,
	//               cached until shortly before it expires
	Type string `yaml:"type"`
	// File holds the secret. It is re-read when it changes (checked at
	// most once a second), as Kubernetes and Vault agents rotate files.
	File string `yaml:"file"`
	// Header is the header the credential goes in. Default Authorization.
	Header string `yaml:"header"`
	// Template is the header value for type header. Default "{secret}".
	Template string `yaml:"template"`

	// oauth2: the upstream's own authorization server.
	TokenURL         string   `yaml:"token_url"`
	ClientID         string   `yaml:"client_id"`
	ClientSecretFile string   `yaml:"client_secret_file"`
	Scopes           []string `yaml:"scopes"`
	Audience         string   `yaml:"audience"`
}

func (c *Credential) validate() error {
	switch c.Type {
	case "bearer", "kubernetes", "basic", "header":
		if c.File == "" {
			return fmt.Errorf("credential type %s needs file", c.Type)
		}
		if c.Type == "header" && c.Template != "" && strings.Count(c.Template, "{secret}") != 1 {
			return errors.New("credential template must hold {secret} once")
		}
	case "oauth2":
		if c.TokenURL == "" || c.ClientID == "" || c.ClientSecretFile == "" {
			return errors.New("credential type oauth2 needs token_url, client_id and client_secret_file")
		}
	default:
		return fmt.Errorf("credential type %q: want bearer, kubernetes, basic, header or oauth2", c.Type)
	}
	if c.Header != "" && !validHeaderName(c.Header) {
		return fmt.Errorf("credential header %q is not a header name", c.Header)
	}
	return nil
}

// credentialSource produces the header of a credential for one call.
type credentialSource struct {
	header string // canonical header name
	value  func(ctx context.Context) (string, error)
}

// errCredential is every failure to produce a credential; its text never
// holds the secret.
var errCredential = errors.New("upstream credential unavailable")

func newCredentialSource(c Credential) (*credentialSource, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	header := http.CanonicalHeaderKey(c.Header)
	if header == "" {
		header = "Authorization"
	}
	cs := &credentialSource{header: header}
	switch c.Type {
	case "bearer", "kubernetes":
		f := &secretFile{path: c.File}
		cs.value = func(context.Context) (string, error) {
			s, err := f.get()
			return "Bearer " + s, err
		}
	case "basic":
		f := &secretFile{path: c.File}
		cs.value = func(context.Context) (string, error) {
			s, err := f.get()
			if err == nil && !strings.Contains(s, ":") {
				err = fmt.Errorf("%w: %s does not hold user:password", errCredential, c.File)
			}
			return "Basic " + base64.StdEncoding.EncodeToString([]byte(s)), err
		}
	case "header":
		f := &secretFile{path: c.File}
		tpl := c.Template
		if tpl == "" {
			tpl = "{secret}"
		}
		cs.value = func(context.Context) (string, error) {
			s, err := f.get()
			return strings.Replace(tpl, "{secret}", s, 1), err
		}
	case "oauth2":
		ts := &tokenSource{cfg: c, secret: &secretFile{path: c.ClientSecretFile}}
		cs.value = ts.get
	}
	return cs, nil
}

// secretFile is a secret kept in a file, re-read when its size or
// modification time changes (at most one stat a second).
type secretFile struct {
	path string

	mu      sync.Mutex
	checked time.Time
	mod     time.Time
	size    int64
	val     string
	err     error
}

const secretCheckEvery = time.Second

func (f *secretFile) get() (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	if !f.checked.IsZero() && now.Sub(f.checked) < secretCheckEvery {
		return f.val, f.err
	}
	f.checked = now
	st, err := os.Stat(f.path)
	if err != nil {
		f.val, f.err = "", fmt.Errorf("%w: %s: %w", errCredential, f.path, errors.Unwrap(err))
		return f.val, f.err
	}
	if f.err == nil && f.val != "" && st.ModTime().Equal(f.mod) && st.Size() == f.size {
		return f.val, nil
	}
	b, err := os.ReadFile(f.path)
	switch {
	case err != nil:
		f.val, f.err = "", fmt.Errorf("%w: cannot read %s", errCredential, f.path)
	case len(bytes.TrimSpace(b)) == 0:
		f.val, f.err = "", fmt.Errorf("%w: %s is empty", errCredential, f.path)
	case bytes.ContainsAny(bytes.TrimSpace(b), "\r\n\x00"):
		f.val, f.err = "", fmt.Errorf("%w: %s holds more than one line", errCredential, f.path)
	default:
		f.val, f.err = string(bytes.TrimSpace(b)), nil
	}
	f.mod, f.size = st.ModTime(), st.Size()
	return f.val, f.err
}

// tokenSource fetches client-credentials tokens and keeps one until
// shortly before it expires. One fetch at a time; a fetch is bounded by
// its own timeout, not by the call that started it.
type tokenSource struct {
	cfg    Credential
	secret *secretFile

	mu  sync.Mutex
	tok *oauth2.Token
}

const tokenFetchTimeout = 5 * time.Second

func (t *tokenSource) get(ctx context.Context) (string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tok != nil && t.tok.AccessToken != "" && time.Until(t.tok.Expiry) > 10*time.Second {
		return "Bearer " + t.tok.AccessToken, nil
	}
	secret, err := t.secret.get()
	if err != nil {
		return "", err
	}
	cc := clientcredentials.Config{ClientID: t.cfg.ClientID, ClientSecret: secret, TokenURL: t.cfg.TokenURL, Scopes: t.cfg.Scopes}
	if t.cfg.Audience != "" {
		cc.EndpointParams = map[string][]string{"audience": {t.cfg.Audience}}
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), tokenFetchTimeout)
	defer cancel()
	fctx = context.WithValue(fctx, oauth2.HTTPClient, &http.Client{Timeout: tokenFetchTimeout})
	tok, err := cc.Token(fctx)
	if err != nil {
		// The token endpoint's answer may be in err; it holds no secret of
		// ours, but keep the answer out of logs anyway: say what failed.
		var re *oauth2.RetrieveError
		if errors.As(err, &re) && re.Response != nil {
			return "", fmt.Errorf("%w: token endpoint answered %d", errCredential, re.Response.StatusCode)
		}
		return "", fmt.Errorf("%w: token endpoint unreachable", errCredential)
	}
	if tok.Expiry.IsZero() {
		tok.Expiry = time.Now().Add(time.Minute) // no expires_in: ask again soon
	}
	t.tok = tok
	return "Bearer " + tok.AccessToken, nil
}

// refuseCredential answers a call whose upstream credential could not be
// produced: allowed and recorded, not forwarded; its outcome says why.
var refuseCredential = &refusal{status: http.StatusBadGateway, code: "upstream_credential_unavailable",
	detail: "the proxy could not obtain the upstream's credential, so nothing is forwarded",
	record: recordOutcome, decision: audit.DecisionError}

// setCredential puts the credential in h, after removing every header an
// upstream might read as the same name (case, "_" and "." for "-"), so
// that an agent's own copy cannot ride along.
func setCredential(h http.Header, name, value string) {
	for k := range h {
		if sameHeaderName(k, name) {
			delete(h, k)
		}
	}
	h[name] = []string{value}
}

func sameHeaderName(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if normByte(a[i]) != normByte(b[i]) { // headers.go: case, "_" and "." as "-"
			return false
		}
	}
	return true
}
