package authority

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/passport"
)

// dpopNonceKey holds the secret every replica makes DPoP nonces with. It
// is created once (SET NX) and never expires. Whoever reads Redis can
// forge nonces, which only lets proofs be made ahead of time again: the
// proofs themselves still need the agent's key.
const dpopNonceKey = "passport:authority:dpop_nonce_secret"

// tokenURL is the token endpoint's URL as the issuer names it: the htu a
// proof at the token endpoint must carry. It is never taken from the
// request's Host header, which the client chooses.
func (a *Authority) tokenURL() string { return strings.TrimRight(a.cfg.Issuer, "/") + "/oauth2/token" }

// dpopReplay records a proof's use in Redis: one key per proof, SET NX
// with an expiry, so the first replica to see a proof wins on a single
// Redis and on a Cluster alike.
func (a *Authority) dpopReplay(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	fresh, err := a.rdb.SetNX(ctx, key, "1", ttl).Result()
	if err != nil {
		return false, fmt.Errorf("record dpop proof: %w", err)
	}
	return fresh, nil
}

// dpopNonces returns the nonce source, loading (or creating) the shared
// secret from Redis the first time.
func (a *Authority) dpopNonces(ctx context.Context) (*passport.DPoPNonces, error) {
	if n := a.nonces.Load(); n != nil {
		return n, nil
	}
	return a.loadNonces(ctx)
}

// loadNonces reads the nonce secret from Redis, creating it if absent. The
// key loop calls it again on every tick, so a replica follows when the
// secret is replaced (Redis lost its data and another replica made one).
func (a *Authority) loadNonces(ctx context.Context) (*passport.DPoPNonces, error) {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	if err := a.rdb.SetNX(ctx, dpopNonceKey, base64.RawStdEncoding.EncodeToString(b), 0).Err(); err != nil {
		return nil, fmt.Errorf("create dpop nonce secret: %w", err)
	}
	v, err := a.rdb.Get(ctx, dpopNonceKey).Result()
	if err != nil {
		return nil, fmt.Errorf("load dpop nonce secret: %w", err)
	}
	secret, err := base64.RawStdEncoding.DecodeString(v)
	if err != nil {
		return nil, fmt.Errorf("load dpop nonce secret: %w", err)
	}
	n, err := passport.NewDPoPNonces(secret, a.cfg.DPoP.NonceLifetime, a.now)
	if err != nil {
		return nil, fmt.Errorf("load dpop nonce secret: %w", err)
	}
	a.nonces.Store(n)
	return n, nil
}

// dpopNeed says whether a token request must carry a DPoP proof and, if
// so, which key it must be signed with (for an actor token that is
// itself bound), and why, for the error description.
type dpopNeed struct {
	required bool
	why      string
	jkt      string
}

// checkDPoP verifies the request's DPoP proof, if any, for the token
// endpoint (RFC 9449 §4.3, no ath) and returns its key's thumbprint: the
// passport will be bound to it. Without a proof it returns "" unless one
// is required. A refusal is an oauthError (400 invalid_dpop_proof or
// use_dpop_nonce); a Redis failure is a plain error (503).
func (a *Authority) checkDPoP(ctx context.Context, r *http.Request, need dpopNeed) (string, error) {
	vals := r.Header.Values(passport.DPoPHeader)
	switch {
	case len(vals) == 0 && !need.required:
		return "", nil
	case len(vals) == 0:
		a.m.dpop.WithLabelValues(passport.ErrDPoPMissing.Reason).Inc()
		return "", &oauthError{http.StatusBadRequest, "invalid_dpop_proof", need.why + ": send a DPoP proof (RFC 9449)", 0}
	case len(vals) > 1:
		// Two proofs: which one would a second reader take? Neither.
		a.m.dpop.WithLabelValues(passport.ErrDPoPMalformed.Reason).Inc()
		return "", &oauthError{http.StatusBadRequest, "invalid_dpop_proof", "send exactly one DPoP header", 0}
	}
	req := passport.DPoPRequest{Method: http.MethodPost, URL: a.tokenURL(), JKT: need.jkt}
	if a.cfg.DPoP.RequireNonce {
		n, err := a.dpopNonces(ctx)
		if err != nil {
			return "", err
		}
		req.Nonce = n.Valid
	}
	p, err := a.dpop.Verify(ctx, vals[0], req)
	if err != nil {
		var ae *passport.AuthError
		if !errors.As(err, &ae) {
			return "", err
		}
		a.m.dpop.WithLabelValues(ae.Reason).Inc()
		return "", &oauthError{http.StatusBadRequest, ae.Code, ae.Description, 0}
	}
	a.m.dpop.WithLabelValues("accepted").Inc()
	return p.JKT, nil
}

// setNonce sends the current DPoP nonce on a token endpoint answer when
// nonces are required (RFC 9449 §8): with use_dpop_nonce, and on every
// other answer so the client has the next one ready.
func (a *Authority) setNonce(ctx context.Context, w http.ResponseWriter) {
	if !a.cfg.DPoP.RequireNonce {
		return
	}
	n, err := a.dpopNonces(ctx)
	if err != nil {
		return // the request itself fails closed if it needs one
	}
	w.Header().Set(passport.DPoPNonceHeader, n.Current())
}

// redisNil reports whether err is only "no such key".
func redisNil(err error) bool { return err == nil || errors.Is(err, redis.Nil) }
