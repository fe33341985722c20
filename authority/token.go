package authority

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/passport"
	"github.com/golang-jwt/jwt/v5"
	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/bcrypt"
)

// Client authentication methods (RFC 6749 §2.3, RFC 7523).
const (
	authBasic         = "client_secret_basic"
	authPost          = "client_secret_post"
	authPrivateKeyJWT = "private_key_jwt"
	// authActorToken: a token exchange whose actor shows its own passport
	// (actor_token) instead of client credentials.
	authActorToken = "actor_token"

	assertionTypeJWT = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
)

// oauthError is an RFC 6749 §5.2 error with its HTTP status.
type oauthError struct {
	status int
	code   string
	desc   string
	// retryAfter, when set, is sent as Retry-After (429 and 503).
	retryAfter time.Duration
}

func (e *oauthError) Error() string { return e.code + ": " + e.desc }

func errInvalidRequest(desc string) *oauthError {
	return &oauthError{http.StatusBadRequest, "invalid_request", desc, 0}
}

// errInvalidClient is deliberately the same for an unknown client, a wrong
// secret and a bad assertion, so that the answer does not tell an attacker
// which client ids exist.
var errInvalidClient = &oauthError{http.StatusUnauthorized, "invalid_client", "client authentication failed", 0}

// tokenForm is the parsed token request.
type tokenForm struct {
	GrantType     string
	ClientID      string
	ClientSecret  string
	AssertionType string
	Assertion     string
	Scope         string
	HasScope      bool
	AuthzDetails  string
	Audience      string
	Task          string
	Tenant        string
	// Token exchange (RFC 8693 §2.1).
	SubjectToken       string
	SubjectTokenType   string
	ActorToken         string
	ActorTokenType     string
	RequestedTokenType string
	// GrantAssertion is the JWT-bearer grant's assertion (RFC 7523 §2.1).
	GrantAssertion string
	method         string
	// cert is the client certificate of the connection, and whether the
	// TLS layer chained it to the client CA (mtls.go).
	cert         *x509.Certificate
	certVerified bool
	// external is set when a trusted issuer's token authenticated the
	// client: its caps apply to the passport (enroll.go).
	external *extGrant
}

// maxParam bounds each form value; the body limit bounds the total.
const maxParam = 8192

// parseTokenForm parses and checks the token request body and the Basic
// header. Each parameter may appear at most once (RFC 6749 §3.2).
func parseTokenForm(contentType string, body []byte, basicUser, basicPass string, hasBasic, hasCert bool) (*tokenForm, error) {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil || mt != "application/x-www-form-urlencoded" {
		return nil, errInvalidRequest("content type must be application/x-www-form-urlencoded")
	}
	vals, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, errInvalidRequest("malformed form body")
	}
	f := &tokenForm{}
	for k, v := range vals {
		if len(v) != 1 {
			return nil, errInvalidRequest("parameter " + safeParam(k) + " given more than once")
		}
		if len(v[0]) > maxParam {
			return nil, errInvalidRequest("parameter " + safeParam(k) + " too long")
		}
	}
	get := vals.Get
	f.GrantType = get("grant_type")
	f.ClientID = get("client_id")
	f.ClientSecret = get("client_secret")
	f.AssertionType = get("client_assertion_type")
	f.Assertion = get("client_assertion")
	f.Scope = get("scope")
	_, f.HasScope = vals["scope"]
	f.AuthzDetails = get("authorization_details")
	f.Task = get("task")
	f.Tenant = get("tenant")
	f.SubjectToken = get("subject_token")
	f.SubjectTokenType = get("subject_token_type")
	f.ActorToken = get("actor_token")
	f.ActorTokenType = get("actor_token_type")
	f.RequestedTokenType = get("requested_token_type")
	f.GrantAssertion = get("assertion")
	res, aud := get("resource"), get("audience")
	if res != "" && aud != "" && res != aud {
		return nil, errInvalidRequest("resource and audience disagree")
	}
	f.Audience = res + aud
	if res != "" && aud != "" {
		f.Audience = res
	}
	if f.GrantType == "" {
		return nil, errInvalidRequest("grant_type is required")
	}

	// Exactly one client authentication method (RFC 6749 §2.3).
	methods := 0
	if hasBasic {
		methods++
		f.method = authBasic
		if f.ClientID != "" && f.ClientID != basicUser {
			return nil, errInvalidRequest("client_id in the body differs from the Authorization header")
		}
		f.ClientID, f.ClientSecret = basicUser, basicPass
		if get("client_secret") != "" {
			methods++
		}
	} else if f.ClientSecret != "" {
		methods++
		f.method = authPost
	}
	if f.Assertion != "" || f.AssertionType != "" {
		methods++
		f.method = authPrivateKeyJWT
		if f.AssertionType != assertionTypeJWT {
			return nil, errInvalidRequest("client_assertion_type must be " + assertionTypeJWT)
		}
		if f.Assertion == "" {
			return nil, errInvalidRequest("client_assertion is required")
		}
	}
	if methods > 1 {
		return nil, errInvalidRequest("use exactly one client authentication method")
	}
	if f.GrantType == GrantTypeJWTBearer {
		// RFC 7523 §3.1 makes client authentication optional; here the
		// assertion is the whole credential, and a second one could only
		// name another agent.
		if methods > 0 {
			return nil, errInvalidRequest("the jwt-bearer grant takes its assertion as the only credential")
		}
		f.method = authJWTBearer
		return f, nil
	}
	if methods == 0 && f.GrantType == passport.GrantTypeTokenExchange && f.ActorToken != "" {
		// RFC 8693: the actor may show its own passport instead.
		f.method = authActorToken
		return f, nil
	}
	if methods == 0 && hasCert && f.ClientID != "" {
		// RFC 8705 §2: the connection's certificate is the credential.
		f.method = authTLS
		return f, nil
	}
	if methods == 0 {
		return nil, errInvalidClient
	}
	if f.method != authPrivateKeyJWT && f.ClientID == "" {
		return nil, errInvalidClient
	}
	return f, nil
}

// safeParam keeps an attacker-chosen parameter name out of answers unless
// it is short and plain.
func safeParam(k string) string {
	if len(k) > 40 {
		return "(name too long)"
	}
	for _, c := range k {
		if !(c >= 'a' && c <= 'z' || c == '_') {
			return "(unprintable name)"
		}
	}
	return k
}

func (a *Authority) handleToken(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	a.setNonce(ctx, w)
	tok, method, err := a.token(ctx, r)
	if err != nil {
		var oe *oauthError
		if !errors.As(err, &oe) {
			a.logFailure(ctx, "token request failed", "err", err)
			oe = &oauthError{http.StatusServiceUnavailable, "temporarily_unavailable", "the authority cannot issue passports right now", 0}
		}
		a.m.refused.WithLabelValues(oe.code).Inc()
		writeOAuthErr(w, oe)
		return
	}
	a.m.issued.WithLabelValues(string(tok.trust), method).Inc()
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	writeJSON(w, http.StatusOK, client.TokenResponse{
		AccessToken: tok.raw, TokenType: tok.tokenType, ExpiresIn: tok.expiresIn, Scope: tok.scope, IssuedTokenType: tok.issuedType,
	})
}

type issued struct {
	raw   string
	scope string
	trust passport.TrustLevel
	// tokenType is "Bearer" or "DPoP"; expiresIn the seconds left, which
	// an exchange may cut short; issuedType is set by an exchange.
	tokenType  string
	expiresIn  int64
	issuedType string
}

func (a *Authority) token(ctx context.Context, r *http.Request) (*issued, string, error) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, "", &oauthError{http.StatusRequestEntityTooLarge, "invalid_request", "request body too large", 0}
		}
		return nil, "", errInvalidRequest("cannot read request body")
	}
	user, pass, hasBasic := basicAuth(r)
	cert := clientCert(r)
	f, err := parseTokenForm(r.Header.Get("Content-Type"), body, user, pass, hasBasic, cert != nil)
	if err != nil {
		if errors.Is(err, errInvalidClient) {
			a.m.authFailures.WithLabelValues("none", "no_credentials").Inc()
		}
		return nil, "", err
	}
	f.cert, f.certVerified = cert, verifiedChain(r)
	switch f.GrantType {
	case "client_credentials":
	case passport.GrantTypeTokenExchange:
		if a.cfg.Delegation.MaxDepth == 0 {
			return nil, f.method, &oauthError{http.StatusBadRequest, "unsupported_grant_type", "token exchange is turned off on this authority", 0}
		}
		tok, err := a.exchange(ctx, r, f)
		return tok, f.method, err
	case GrantTypeJWTBearer:
		tok, err := a.enrollGrant(ctx, r, f)
		return tok, f.method, err
	default:
		return nil, f.method, &oauthError{http.StatusBadRequest, "unsupported_grant_type",
			"supported grant types: client_credentials, " + passport.GrantTypeTokenExchange + ", " + GrantTypeJWTBearer, 0}
	}
	if err := a.Init(ctx); err != nil {
		return nil, f.method, err
	}
	agent, err := a.authenticate(ctx, f, sourceOf(r, a.trusted))
	if err != nil {
		return nil, f.method, err
	}
	if f.Tenant != "" && f.Tenant != agent.Tenant {
		// An agent belongs to exactly one tenant; asking for another is
		// refused rather than silently ignored.
		return nil, f.method, &oauthError{http.StatusBadRequest, "invalid_target", "this client may not obtain passports for tenant " + safeTenant(f.Tenant), 0}
	}
	if agent.Blocked {
		return nil, f.method, &oauthError{http.StatusBadRequest, "unauthorized_client", "agent is blocked: " + blockedDesc(agent), 0}
	}
	grant, err := a.narrow(agent, f)
	if err != nil {
		return nil, f.method, err
	}
	if f.external != nil {
		f.external.capGrant(grant)
	}
	if grant.jkt, err = a.checkDPoP(ctx, r, dpopNeed{required: agent.RequireDPoP, why: "this agent is registered with require_dpop"}); err != nil {
		return nil, f.method, err
	}
	if f.method == authTLS && grant.jkt == "" {
		// RFC 8705 §3: a client that authenticated with its certificate
		// gets a passport bound to it (unless it asked for DPoP).
		grant.x5t = passport.CertThumbprint(f.cert.Raw)
	}
	if err := a.takeIssuance(ctx, agent); err != nil {
		return nil, f.method, err
	}
	tok, err := a.issue(ctx, agent, grant)
	if err != nil {
		return nil, f.method, err
	}
	return tok, f.method, nil
}

func safeTenant(t string) string {
	if ValidTenant(t) {
		return t
	}
	return "(invalid)"
}

func blockedDesc(r *agentRecord) string {
	if r.BlockedReason == "" {
		return "blocked by an administrator"
	}
	return r.BlockedReason
}

// basicAuth decodes client_secret_basic. RFC 6749 §2.3.1 form-encodes the
// client id and secret before base64, so both are unescaped here.
func basicAuth(r *http.Request) (user, pass string, ok bool) {
	u, p, ok := r.BasicAuth()
	if !ok {
		return "", "", false
	}
	if uu, err := url.QueryUnescape(u); err == nil {
		u = uu
	}
	if pp, err := url.QueryUnescape(p); err == nil {
		p = pp
	}
	return u, p, true
}

// authenticate checks the client's credentials, presented from src.
// Attempts are counted per source address and per client id at that
// address (throttle.go), in Redis so every replica shares the counts, and
// over either limit the client is refused with 429 before its credentials
// are even checked. Nothing is counted per client id alone: the id is
// public, and a stranger's failures must never lock its owner out.
func (a *Authority) authenticate(ctx context.Context, f *tokenForm, src netip.Addr) (*agentRecord, error) {
	clientID := f.ClientID
	var claims *jwt.RegisteredClaims
	if f.method == authPrivateKeyJWT && a.isExternal(f.Assertion) {
		// A trusted issuer's token, not the agent's own assertion.
		f.method = authWorkloadJWT
		return a.authenticateExternal(ctx, f)
	}
	if f.method == authPrivateKeyJWT {
		var err error
		claims, clientID, err = peekAssertion(f.Assertion, f.ClientID)
		if err != nil {
			a.m.authFailures.WithLabelValues(f.method, "malformed_assertion").Inc()
			return nil, errInvalidClient
		}
	}
	if !validAgentID(clientID) {
		// The id format is public, so there is no timing to hide here and
		// no bcrypt to spend.
		a.m.authFailures.WithLabelValues(f.method, "unknown_client").Inc()
		return nil, errInvalidClient
	}
	// A secret verified moments ago needs no hash, so no place in the
	// limits either: an agent asking often, or many times at once, is
	// never refused for its own concurrency. Only the right secret hits.
	if (f.method == authBasic || f.method == authPost) && a.secrets.known(clientID, f.ClientSecret) {
		agent, err := a.lookupClient(ctx, clientID)
		switch {
		case err == nil && a.secrets.hit(clientID, f.ClientSecret, agent.SecretHash):
			return agent, nil
		case err != nil && !errors.Is(err, ErrAgentNotFound):
			return nil, err
		}
		// Secret changed or agent deleted since: the full check below.
	}
	at, err := a.reserve(ctx, src, clientID, f.method)
	if err != nil {
		return nil, err
	}
	agent, reason, err := a.checkCredentials(ctx, f, clientID, claims)
	switch {
	case reason != "":
		// A failure keeps its reservation: it is what the limits count.
		return nil, a.authFailed(ctx, clientID, src, f.method, reason)
	case err != nil:
		a.release(ctx, at) // not the client's failure (Redis, busy)
		return nil, err
	}
	a.release(ctx, at)
	return agent, nil
}

// checkCredentials returns the agent, or the reason its credentials
// failed, or an error that is nobody's failure.
func (a *Authority) checkCredentials(ctx context.Context, f *tokenForm, clientID string, claims *jwt.RegisteredClaims) (*agentRecord, string, error) {
	agent, err := a.lookupClient(ctx, clientID)
	if errors.Is(err, ErrAgentNotFound) {
		// As long as a real comparison, so an unknown id is not told apart
		// from a wrong secret by timing.
		if _, err := a.compareSecret(ctx, a.dummyHash(), "x"); err != nil {
			return nil, "", err
		}
		return nil, "unknown_client", nil
	}
	if err != nil {
		return nil, "", err
	}
	switch f.method {
	case authBasic, authPost:
		ok, err := a.compareSecret(ctx, agent.SecretHash, f.ClientSecret)
		if err != nil {
			return nil, "", err
		}
		if !ok {
			return nil, "wrong_secret", nil
		}
		a.secrets.put(agent.ID, f.ClientSecret, agent.SecretHash)
		return agent, "", nil
	case authTLS:
		if reason := checkClientCert(agent, f.cert, f.certVerified); reason != "" {
			return nil, reason, nil
		}
		return agent, "", nil
	case authPrivateKeyJWT:
		if agent.PublicKey == nil {
			return nil, "no_public_key", nil
		}
		if err := a.verifyAssertion(ctx, agent, f.Assertion, claims); err != nil {
			a.log.InfoContext(ctx, "client assertion refused", "client_id", agent.ID, "err", err)
			return nil, "bad_assertion", nil
		}
		return agent, "", nil
	}
	return nil, "unknown_method", nil
}

func (a *Authority) dummyHash() []byte {
	a.dummyOnce.Do(func() {
		a.dummy, _ = bcrypt.GenerateFromPassword([]byte(randomID(16)), a.cfg.Clients.BcryptCost)
	})
	return a.dummy
}

// authFailed counts and logs a failed authentication. The log is bounded
// by the limits: a source gets at most SourceFailureLimit failures per
// window.
func (a *Authority) authFailed(ctx context.Context, clientID string, src netip.Addr, method, reason string) error {
	a.m.authFailures.WithLabelValues(method, reason).Inc()
	a.log.InfoContext(ctx, "client authentication failed", "client_id", clientID, "source", sourceKey(src), "method", method, "reason", reason)
	return errInvalidClient
}

// peekAssertion reads iss/sub of an unverified client assertion to find
// the client; nothing from it is trusted until verifyAssertion checked the
// signature with the client's registered key.
func peekAssertion(raw, formClientID string) (*jwt.RegisteredClaims, string, error) {
	var c jwt.RegisteredClaims
	if _, _, err := jwt.NewParser().ParseUnverified(raw, &c); err != nil {
		return nil, "", err
	}
	if c.Issuer == "" || c.Issuer != c.Subject {
		return nil, "", errors.New("assertion iss and sub must both be the client id")
	}
	if formClientID != "" && formClientID != c.Issuer {
		return nil, "", errors.New("assertion issuer differs from client_id")
	}
	return &c, c.Issuer, nil
}

// verifyAssertion checks an RFC 7523 client assertion: signed by the
// client's registered key with EdDSA or ES256, iss = sub = client id, aud
// naming this authority's token endpoint or issuer, exp present and
// bounded, and a jti never seen before (single use, remembered in Redis
// until the assertion expires, across replicas).
func (a *Authority) verifyAssertion(ctx context.Context, agent *agentRecord, raw string, _ *jwt.RegisteredClaims) error {
	var c jwt.RegisteredClaims
	tokenURL := strings.TrimRight(a.cfg.Issuer, "/") + "/oauth2/token"
	_, err := jwt.ParseWithClaims(raw, &c, func(t *jwt.Token) (any, error) {
		switch agent.PublicKey.(type) {
		case ed25519.PublicKey:
			if t.Method.Alg() != passport.AlgEdDSA {
				return nil, errors.New("algorithm does not match the registered key")
			}
		case *ecdsa.PublicKey:
			if t.Method.Alg() != passport.AlgES256 {
				return nil, errors.New("algorithm does not match the registered key")
			}
		}
		return agent.PublicKey, nil
	},
		jwt.WithValidMethods(passport.Algorithms),
		jwt.WithIssuer(agent.ID), jwt.WithSubject(agent.ID),
		jwt.WithExpirationRequired(), jwt.WithIssuedAt(),
		jwt.WithLeeway(a.cfg.Passport.Leeway), jwt.WithTimeFunc(a.now),
	)
	if err != nil {
		return fmt.Errorf("verify assertion: %w", err)
	}
	audOK := false
	for _, aud := range c.Audience {
		if aud == tokenURL || aud == a.cfg.Issuer || aud == strings.TrimRight(a.cfg.Issuer, "/") {
			audOK = true
		}
	}
	if !audOK {
		return errors.New("assertion audience is not this authority")
	}
	now := a.now()
	if c.ExpiresAt.Sub(now) > a.cfg.Clients.AssertionMaxLifetime {
		return errors.New("assertion lives too long")
	}
	if c.ID == "" || len(c.ID) > 256 {
		return errors.New("assertion needs a jti")
	}
	ttl := c.ExpiresAt.Sub(now) + a.cfg.Passport.Leeway
	if ttl < time.Second {
		ttl = time.Second
	}
	fresh, err := a.rdb.SetNX(ctx, passport.TenantKey(agent.Tenant, "assertion", agent.ID, c.ID), "1", ttl).Result()
	if err != nil {
		return fmt.Errorf("record assertion jti: %w", err)
	}
	if !fresh {
		return errors.New("assertion jti already used")
	}
	return nil
}

// grant is what a passport will carry after narrowing.
type grant struct {
	audience string
	actions  []string
	details  []passport.AuthorizationDetail
	task     *passport.Task
	// jkt binds the passport to a DPoP key (cnf.jkt) when set.
	jkt string
	// x5t binds the passport to a client certificate (cnf.x5t#S256) when set.
	x5t string
	// A token exchange sets the rest: the chain, and the caps the subject
	// passport puts on exp and on the trust level.
	act        *passport.Actor
	delegation *passport.Delegation
	maxExp     time.Time
	maxTrust   passport.TrustLevel
}

// narrow turns the request into a grant that never exceeds the agent's
// registration: scope, authorization_details and the task each can only
// take actions away.
func (a *Authority) narrow(agent *agentRecord, f *tokenForm) (*grant, error) {
	g := &grant{audience: a.cfg.Audiences[0]}
	if f.Audience != "" {
		if !slices.Contains(a.cfg.Audiences, f.Audience) {
			return nil, &oauthError{http.StatusBadRequest, "invalid_target", "unknown resource/audience", 0}
		}
		g.audience = f.Audience
	}
	allowed := slices.Clone(agent.Capabilities)
	if f.HasScope {
		req := strings.Fields(f.Scope)
		if len(req) == 0 {
			return nil, &oauthError{http.StatusBadRequest, "invalid_scope", "scope is empty", 0}
		}
		for _, s := range req {
			if !slices.Contains(agent.Capabilities, s) {
				return nil, &oauthError{http.StatusBadRequest, "invalid_scope", "scope " + safeAction(s) + " is not registered for this agent", 0}
			}
		}
		slices.Sort(req)
		allowed = slices.Compact(req)
	}
	if f.Task != "" {
		t, err := parseTask(f.Task)
		if err != nil {
			return nil, err
		}
		for _, act := range t.Actions {
			if !slices.Contains(allowed, act) {
				return nil, &oauthError{http.StatusBadRequest, "invalid_scope", "task action " + safeAction(act) + " is not granted to this agent", 0}
			}
		}
		if len(t.Actions) > 0 {
			acts := slices.Clone(t.Actions)
			slices.Sort(acts)
			allowed = slices.Compact(acts)
			t.Actions = allowed
		}
		g.task = t
	}
	if f.AuthzDetails != "" {
		ds, err := parseDetails(f.AuthzDetails)
		if err != nil {
			return nil, err
		}
		var union []string
		for i := range ds {
			d := &ds[i]
			for _, act := range d.Actions {
				if !slices.Contains(allowed, act) {
					return nil, &oauthError{http.StatusBadRequest, "invalid_authorization_details", "action " + safeAction(act) + " is not granted to this agent", 0}
				}
			}
			for _, loc := range d.Locations {
				if loc != g.audience {
					return nil, &oauthError{http.StatusBadRequest, "invalid_authorization_details", "locations must name the passport's audience", 0}
				}
			}
			if len(d.Locations) == 0 {
				d.Locations = []string{g.audience}
			}
			if g.task != nil && g.task.Target != "" && d.Identifier != "" && d.Identifier != g.task.Target {
				return nil, &oauthError{http.StatusBadRequest, "invalid_authorization_details", "identifier differs from the task target", 0}
			}
			if g.task != nil && g.task.Target != "" && d.Identifier == "" {
				d.Identifier = g.task.Target
			}
			union = append(union, d.Actions...)
		}
		slices.Sort(union)
		allowed = slices.Compact(union)
		g.details = ds
	} else {
		d := passport.AuthorizationDetail{Type: passport.AuthorizationDetailType, Actions: allowed, Locations: []string{g.audience}}
		if g.task != nil && g.task.Target != "" {
			d.Identifier = g.task.Target
		}
		g.details = []passport.AuthorizationDetail{d}
	}
	if len(allowed) == 0 {
		return nil, &oauthError{http.StatusBadRequest, "invalid_scope", "this agent has no capabilities to grant", 0}
	}
	g.actions = allowed
	return g, nil
}

// parseTask reads the task parameter: a JSON object {id, purpose,
// target, actions}, strictly.
func parseTask(s string) (*passport.Task, error) {
	var t passport.Task
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&t); err != nil || dec.More() {
		return nil, errInvalidRequest("task must be a JSON object {id, purpose, target, actions}")
	}
	if t.ID == "" || len(t.ID) > 128 || len(t.Purpose) > 512 || len(t.Target) > 128 {
		return nil, errInvalidRequest("task needs an id (at most 128 characters); purpose at most 512, target at most 128")
	}
	return &t, nil
}

// parseDetails reads the authorization_details parameter (RFC 9396): a
// JSON array of 1-32 agent_action entries, each with actions.
func parseDetails(s string) ([]passport.AuthorizationDetail, error) {
	var ds []passport.AuthorizationDetail
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ds); err != nil || dec.More() || len(ds) == 0 || len(ds) > 32 {
		return nil, &oauthError{http.StatusBadRequest, "invalid_authorization_details", "authorization_details must be a JSON array of 1-32 agent_action entries", 0}
	}
	for _, d := range ds {
		if d.Type != passport.AuthorizationDetailType {
			return nil, &oauthError{http.StatusBadRequest, "invalid_authorization_details", "unsupported authorization_details type; want " + passport.AuthorizationDetailType, 0}
		}
		if len(d.Actions) == 0 {
			return nil, &oauthError{http.StatusBadRequest, "invalid_authorization_details", "each entry needs actions", 0}
		}
	}
	return ds, nil
}

func safeAction(s string) string {
	if passport.ValidAction(s) && len(s) <= 64 {
		return strconv.Quote(s)
	}
	return "(malformed)"
}

// issue signs a passport for agent and records its jti.
func (a *Authority) issue(ctx context.Context, agent *agentRecord, g *grant) (*issued, error) {
	now := a.now().Truncate(time.Second)
	score := agent.Reputation.At(now)
	trust := agent.Trust.Min(a.cfg.Reputation.allowed(score))
	if g.maxTrust.Valid() {
		trust = trust.Min(g.maxTrust)
	}
	exp := now.Add(a.cfg.Passport.Lifetime)
	if !g.maxExp.IsZero() && g.maxExp.Before(exp) {
		exp = g.maxExp // never outlive the passport it was exchanged for
	}
	if !exp.After(now) {
		return nil, errInvalidRequest("subject_token expires too soon to be exchanged")
	}
	claims := &passport.Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer: a.cfg.Issuer, Subject: agent.ID, Audience: jwt.ClaimStrings{g.audience},
			ExpiresAt: jwt.NewNumericDate(exp), IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now),
			ID: randomID(16),
		},
		ClientID: agent.ID,
		Tenant:   agent.Tenant,
		Scope:    strings.Join(g.actions, " "),
		Agent: passport.Agent{
			ID: agent.ID, Name: agent.Name, Type: agent.Type, TrustLevel: trust, Reputation: int(score + 0.5),
		},
		AuthorizationDetails: g.details,
		Task:                 g.task,
		Act:                  g.act,
		Delegation:           g.delegation,
	}
	if agent.Owner != "" {
		claims.Oversight = &passport.Oversight{Owner: agent.Owner}
	}
	tokenType := "Bearer"
	switch {
	case g.jkt != "":
		claims.Cnf = &passport.Confirmation{JKT: g.jkt}
		tokenType = passport.TokenTypeDPoP
	case g.x5t != "":
		claims.Cnf = &passport.Confirmation{X5T: g.x5t} // a Bearer token, over that certificate only
	}
	raw, err := a.sign(ctx, claims)
	if err != nil {
		return nil, err
	}
	// Record the jti, so that an unblock or a delete can revoke the
	// passports still alive, and re-check the block flag in the same
	// transaction: either the block came first and this passport is never
	// handed out, or the jti is recorded before the block and an unblock
	// will find it.
	key := issuedKey(agent.Tenant, agent.ID)
	pipe := a.rdb.TxPipeline()
	pipe.ZAdd(ctx, key, redis.Z{Score: float64(exp.Unix()), Member: claims.ID})
	pipe.ZRemRangeByScore(ctx, key, "-inf", strconv.FormatInt(now.Add(-passport.MaxLeeway).Unix(), 10))
	// A relative TTL, not EXPIREAT: Redis's clock and ours may differ.
	pipe.Expire(ctx, key, a.cfg.Passport.Lifetime+passport.MaxLeeway+time.Minute)
	blocked := pipe.HGet(ctx, passport.AgentKey(agent.Tenant, agent.ID), passport.FieldBlocked)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("record passport %s: %w", claims.ID, err)
	}
	if v, _ := blocked.Result(); v != "0" {
		// Blocked (or deleted) meanwhile: this passport never leaves.
		_ = a.rdb.ZRem(ctx, key, claims.ID).Err()
		return nil, &oauthError{http.StatusBadRequest, "unauthorized_client", "agent is blocked", 0}
	}
	args := []any{"tenant", agent.Tenant, "agent_id", agent.ID, "jti", claims.ID, "trust_level", trust, "scope", claims.Scope,
		"exp", exp, "token_type", tokenType}
	if g.delegation != nil {
		args = append(args, "on_behalf_of", g.act.Sub, "root", g.delegation.Root, "depth", g.delegation.Depth)
	}
	a.log.InfoContext(ctx, "passport issued", args...)
	return &issued{raw: raw, scope: claims.Scope, trust: trust, tokenType: tokenType, expiresIn: int64(exp.Sub(now) / time.Second)}, nil
}

// sign signs claims with the current key and verifies the result with the
// published key before handing it out (as SPIRE does): a passport that
// its own verifiers would refuse is never issued.
func (a *Authority) sign(ctx context.Context, claims *passport.Claims) (string, error) {
	k, err := a.keys.signer()
	if err != nil {
		return "", err
	}
	var m jwt.SigningMethod = jwt.SigningMethodEdDSA
	if k.stored.Alg == passport.AlgES256 {
		m = jwt.SigningMethodES256
	}
	t := jwt.NewWithClaims(m, claims)
	t.Header["typ"] = passport.TokenType
	t.Header["kid"] = k.stored.KID
	raw, err := t.SignedString(k.priv)
	if err != nil {
		return "", fmt.Errorf("sign passport for %s: %w", claims.Subject, err)
	}
	if _, err := a.verify(ctx, raw); err != nil {
		return "", fmt.Errorf("verify fresh passport for %s: %w", claims.Subject, err)
	}
	return raw, nil
}

// passportKey is the shared verifier's key source: a key this authority
// publishes (current, next or retired), pinned to its algorithm.
func (a *Authority) passportKey(_ context.Context, kid string) (passport.VerifyKey, error) {
	k, ok := a.keys.lookup(kid)
	if !ok {
		return passport.VerifyKey{}, passport.ErrUnknownKey
	}
	return passport.VerifyKey{Key: k.pub, Alg: k.stored.Alg}, nil
}

// verify checks a passport with the shared strict verifier
// (passport.Verifier), the same code the proxy runs: introspection,
// revocation and the check after signing can never call a passport valid
// that a proxy refuses, or the other way round.
func (a *Authority) verify(ctx context.Context, raw string) (*passport.Claims, error) {
	vp, err := a.verifier.Verify(ctx, raw)
	if err != nil {
		return nil, err
	}
	return vp.Claims, nil
}
