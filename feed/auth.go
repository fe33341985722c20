package feed

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/passport"
)

// Sentinel errors of authentication.
var (
	// ErrUnauthorized: the credential is unknown, malformed or expired.
	ErrUnauthorized = errors.New("invalid credential")
	// ErrRevoked: the credential was valid and has been revoked; open
	// connections made with it are closed.
	ErrRevoked = errors.New("credential revoked")
)

// Principal is who a credential belongs to: a stable, non-secret id (for
// logs and for closing connections on revocation) and the tenants it may
// watch.
type Principal struct {
	// ID identifies the credential without revealing it (for example a
	// hash prefix of an operator token). Never the token itself.
	ID string `json:"id"`
	// AllTenants is true for a global admin credential.
	AllTenants bool `json:"all_tenants,omitempty"`
	// Tenants lists the tenants a tenant-scoped credential may watch.
	Tenants []string `json:"tenants,omitempty"`
}

// CanRead reports whether p may watch tenant.
func (p Principal) CanRead(tenant string) bool {
	return tenant != "" && (p.AllTenants || slices.Contains(p.Tenants, tenant))
}

// Auth maps operator credentials to principals. The dashboard and the feed
// only ever see a credential in an Authorization header.
type Auth interface {
	// Authenticate returns the principal of token, or an error wrapping
	// ErrUnauthorized or ErrRevoked.
	Authenticate(ctx context.Context, token string) (Principal, error)
	// Check reports whether p's credential is still valid. Open feed
	// connections call it every Config.RecheckInterval and are closed
	// (1008) when it returns an error wrapping ErrRevoked or
	// ErrUnauthorized; other errors (the store is down) keep the
	// connection until the next check.
	Check(ctx context.Context, p Principal) error
}

// Token is one operator token that StaticAuth accepts.
type Token struct {
	Secret passport.Secret
	// Tenants it may watch; empty means every tenant (a global admin token).
	Tenants []string
}

// StaticAuth is an Auth over a fixed set of operator tokens (the global
// PASSPORT_ADMIN_TOKEN and the tenant-scoped tokens of the config). Set
// replaces the set at run time; a token that disappears is revoked, and
// its open connections close at their next check.
type StaticAuth struct {
	tokens atomic.Pointer[map[[32]byte]Principal]
}

// NewStaticAuth returns a StaticAuth holding tokens.
func NewStaticAuth(tokens ...Token) *StaticAuth {
	a := &StaticAuth{}
	a.Set(tokens...)
	return a
}

// Set replaces the accepted tokens. Empty secrets are ignored.
func (a *StaticAuth) Set(tokens ...Token) {
	m := make(map[[32]byte]Principal, len(tokens))
	for _, t := range tokens {
		if t.Secret == "" {
			continue
		}
		sum := sha256.Sum256([]byte(t.Secret.Reveal()))
		m[sum] = Principal{ID: Fingerprint(t.Secret), AllTenants: len(t.Tenants) == 0, Tenants: slices.Clone(t.Tenants)}
	}
	a.tokens.Store(&m)
}

// Authenticate implements Auth. Tokens are looked up by their SHA-256, so
// the comparison time does not depend on how much of a guess is right.
func (a *StaticAuth) Authenticate(_ context.Context, token string) (Principal, error) {
	if token == "" {
		return Principal{}, ErrUnauthorized
	}
	p, ok := (*a.tokens.Load())[sha256.Sum256([]byte(token))]
	if !ok {
		return Principal{}, ErrUnauthorized
	}
	return p, nil
}

// Check implements Auth: p is valid while a token with its id and scope is
// still configured.
func (a *StaticAuth) Check(_ context.Context, p Principal) error {
	for _, q := range *a.tokens.Load() {
		if q.ID == p.ID && q.AllTenants == p.AllTenants && slices.Equal(q.Tenants, p.Tenants) {
			return nil
		}
	}
	return ErrRevoked
}

// Fingerprint is a non-secret id of a token: "tok-" and the first 12 hex
// digits of its SHA-256. Safe to log; useless to an attacker.
func Fingerprint(s passport.Secret) string {
	sum := sha256.Sum256([]byte(s.Reveal()))
	return "tok-" + hex.EncodeToString(sum[:6])
}

// Tickets.
//
// Browsers cannot set an Authorization header on a WebSocket handshake. The
// choices are a query parameter, the Sec-WebSocket-Protocol header, or a
// cookie. A long-lived operator token in the query string ends up in access
// logs and proxies; smuggled in Sec-WebSocket-Protocol it is still a
// long-lived secret in a header that intermediaries log and that the
// server must echo a value of; a cookie brings CSRF and cross-site
// WebSocket hijacking with it. So the page trades its token, in an
// Authorization header on a plain POST, for a ticket: 256 random bits,
// valid for one tenant, for TicketTTL (30 s), once. A ticket that leaks
// through a log afterwards is worthless. Tickets live in Redis (only their
// SHA-256 as the key) so that any feed instance behind a load balancer can
// redeem them, and GETDEL makes redemption atomic: single use even when two
// instances race.

// ticketKey is the Redis key of a ticket; the ticket itself is not stored.
func ticketKey(ticket string) string {
	sum := sha256.Sum256([]byte(ticket))
	return "passport:feed:ticket:" + hex.EncodeToString(sum[:])
}

type ticketValue struct {
	Principal Principal `json:"principal"`
	Tenant    string    `json:"tenant"`
}

// issueTicket stores a new ticket for p and tenant.
func issueTicket(ctx context.Context, rdb redis.UniversalClient, p Principal, tenant string, ttl time.Duration) (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("make ticket: %w", err)
	}
	ticket := base64.RawURLEncoding.EncodeToString(b[:])
	val, err := json.Marshal(ticketValue{Principal: p, Tenant: tenant})
	if err != nil {
		return "", fmt.Errorf("encode ticket: %w", err)
	}
	if err := rdb.Set(ctx, ticketKey(ticket), val, ttl).Err(); err != nil {
		return "", fmt.Errorf("store ticket: %w", err)
	}
	return ticket, nil
}

// redeemTicket consumes a ticket.
func redeemTicket(ctx context.Context, rdb redis.UniversalClient, ticket string) (ticketValue, error) {
	if len(ticket) != 43 {
		return ticketValue{}, ErrUnauthorized
	}
	raw, err := rdb.GetDel(ctx, ticketKey(ticket)).Bytes()
	if errors.Is(err, redis.Nil) {
		return ticketValue{}, ErrUnauthorized
	}
	if err != nil {
		return ticketValue{}, fmt.Errorf("redeem ticket: %w", err)
	}
	var v ticketValue
	if err := json.Unmarshal(raw, &v); err != nil {
		return ticketValue{}, fmt.Errorf("decode ticket: %w", err)
	}
	return v, nil
}

var _ Auth = (*StaticAuth)(nil)
