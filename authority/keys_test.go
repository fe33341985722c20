package authority

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/passport"
	jose "github.com/go-jose/go-jose/v4"
)

func kids(set jose.JSONWebKeySet) []string {
	var out []string
	for _, k := range set.Keys {
		out = append(out, k.KeyID)
	}
	return out
}

func headerKID(t *testing.T, raw string) string {
	t.Helper()
	jws, err := jose.ParseSigned(raw, []jose.SignatureAlgorithm{jose.EdDSA, jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	return jws.Signatures[0].Header.KeyID
}

// Rotation: a passport signed before a rotation still verifies until it
// expires; the retired key leaves the JWKS afterwards.
func TestRotation(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	ag := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	set := e.fetchJWKS()
	if len(set.Keys) != 2 {
		t.Fatalf("want current and next in the JWKS, got %v", kids(set))
	}
	for _, k := range set.Keys {
		if !k.IsPublic() || k.Algorithm != passport.AlgEdDSA || k.Use != "sig" {
			t.Fatalf("JWK %+v: want a public EdDSA signing key", k)
		}
	}
	old := e.token(ag, nil)
	oldKID := headerKID(t, old)
	nextKID := ""
	for _, k := range kids(set) {
		if k != oldKID {
			nextKID = k
		}
	}

	// On-demand rotation through the admin API.
	res, err := e.admin.RotateKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.CurrentKID != nextKID {
		t.Fatalf("rotation made %s current, want the published next key %s", res.CurrentKID, nextKID)
	}
	fresh := e.token(ag, nil)
	if got := headerKID(t, fresh); got != nextKID {
		t.Fatalf("new passport signed with %s, want %s", got, nextKID)
	}
	set = e.fetchJWKS()
	if len(set.Keys) != 3 {
		t.Fatalf("after rotation want current, next and retired, got %v", kids(set))
	}
	if _, err := verifyGoJose(t, old, set); err != nil {
		t.Fatalf("pre-rotation passport no longer verifies: %v", err)
	}

	// Just before the old passport expires its key is still there...
	e.clock.Advance(passport.DefaultLifetime - time.Second)
	if _, err := verifyGoJose(t, old, e.fetchJWKS()); err != nil {
		t.Fatalf("retired key gone before its passports expired: %v", err)
	}
	// ...and once retention (lifetime + check interval + leeway) passed it
	// is gone.
	e.clock.Advance(e.a.keys.retention())
	set = e.fetchJWKS()
	if _, err := verifyGoJose(t, old, set); !errors.Is(err, errKeyNotInJWKS) {
		t.Fatalf("retired key still published after expiry: %v %v", err, kids(set))
	}
	if len(set.Keys) != 2 {
		t.Fatalf("want current and next, got %v", kids(set))
	}
	if _, err := verifyGoJose(t, fresh, set); err != nil {
		t.Fatalf("current passport: %v", err)
	}
	if n := counter(t, e.reg, "passport_authority_key_rotations_total", "trigger", "manual"); n != 1 {
		t.Fatalf("rotations metric %v", n)
	}
}

func TestScheduledRotationOnceAcrossReplicas(t *testing.T) {
	r1 := newEnv(t, func(c *Config) { c.Keys.RotationInterval = time.Hour }, nil, nil)
	r2 := newEnv(t, func(c *Config) { c.Keys.RotationInterval = time.Hour }, r1.rs, r1.clock)
	k1, _ := r1.a.keys.signer()
	k2, _ := r2.a.keys.signer()
	if k1.stored.KID != k2.stored.KID {
		t.Fatalf("replicas disagree on the current key: %s vs %s", k1.stored.KID, k2.stored.KID)
	}
	ctx := context.Background()
	r1.a.tick(ctx)
	if k, _ := r1.a.keys.signer(); k.stored.KID != k1.stored.KID {
		t.Fatal("rotated before the interval")
	}
	r1.clock.Advance(time.Hour)
	r1.a.tick(ctx)
	r2.a.tick(ctx) // due by its clock too, but must see r1's rotation and not rotate again
	a1, _ := r1.a.keys.signer()
	a2, _ := r2.a.keys.signer()
	if a1.stored.KID == k1.stored.KID || a1.stored.KID != a2.stored.KID {
		t.Fatalf("after scheduled rotation: r1 %s r2 %s (was %s)", a1.stored.KID, a2.stored.KID, k1.stored.KID)
	}
	stored, err := r1.a.keys.read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(stored) != 3 {
		t.Fatalf("want exactly one rotation (3 keys), got %d keys", len(stored))
	}
	rot := counter(t, r1.reg, "passport_authority_key_rotations_total") + counter(t, r2.reg, "passport_authority_key_rotations_total")
	if rot != 1 {
		t.Fatalf("rotations across replicas = %v, want 1", rot)
	}
	// The other replica hears about a manual rotation over pub/sub within a
	// Run; here Reload (what keyWatch calls) picks it up.
	if err := r1.a.RotateKeys(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r2.a.keys.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	b1, _ := r1.a.keys.signer()
	b2, _ := r2.a.keys.signer()
	if b1.stored.KID != b2.stored.KID {
		t.Fatal("replica did not pick up the manual rotation")
	}
}

func TestRotationLockHeld(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	ctx := context.Background()
	if err := e.rdb.Set(ctx, keysLockKey, "someone-else", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if err := e.a.RotateKeys(ctx); !errors.Is(err, ErrRotationInProgress) {
		t.Fatalf("rotate while locked: %v", err)
	}
	resp, body := e.post("/v1/keys/rotate", "application/json", "", func(r *http.Request) {
		r.Header.Set("Authorization", "Bearer "+testAdminToken)
	})
	if resp.StatusCode != http.StatusConflict {
		t.Fatalf("admin rotate while locked: %d %s", resp.StatusCode, body)
	}
	if v, _ := e.rdb.Get(ctx, keysLockKey).Result(); v != "someone-else" {
		t.Fatal("another replica's lock was released")
	}
}

func TestKeysPersistAndAreEncryptedAtRest(t *testing.T) {
	const kek = "test-encryption-key-with-plenty-of-entropy"
	e := newEnv(t, func(c *Config) { c.Keys.EncryptionKey = kek }, nil, nil)
	ag := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	raw := e.token(ag, nil)
	ctx := context.Background()

	stored, err := e.a.keys.read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range stored {
		if k.Enc != "A256GCM" {
			t.Fatalf("key %s stored with enc %q", k.KID, k.Enc)
		}
		if _, err := x509.ParsePKCS8PrivateKey(k.Private); err == nil {
			t.Fatalf("key %s: PKCS#8 readable in Redis", k.KID)
		}
		raw, _ := e.rdb.HGet(ctx, keysKey, k.KID).Result()
		if strings.Contains(raw, "PRIVATE KEY") {
			t.Fatalf("key %s: PEM in Redis", k.KID)
		}
	}

	// Restart: a new authority on the same Redis serves the same keys.
	e2 := newEnv(t, func(c *Config) { c.Keys.EncryptionKey = kek }, e.rs, e.clock)
	if _, err := verifyGoJose(t, raw, e2.fetchJWKS()); err != nil {
		t.Fatalf("passport from before the restart: %v", err)
	}
	k1, _ := e.a.keys.signer()
	k2, _ := e2.a.keys.signer()
	if k1.stored.KID != k2.stored.KID {
		t.Fatal("restart created new keys")
	}

	// A wrong or missing encryption key refuses to load rather than mint.
	for _, key := range []string{"", "the-wrong-encryption-key-entirely"} {
		cfg := testConfig()
		cfg.Keys.EncryptionKey = key
		a, err := New(cfg, Deps{Audit: audit.Discard, Redis: e.rdb, Logger: testLogger(t), Clock: e.clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Init(ctx); err == nil {
			t.Fatalf("loaded encrypted keys with encryption key %q", key)
		}
	}

	// No private material in the JWKS or the metadata.
	_, body := e.get("/.well-known/jwks.json", "")
	if strings.Contains(string(body), `"d"`) {
		t.Fatalf("private key in JWKS: %s", body)
	}
}

// Keys stored unencrypted (before an encryption key was configured) are
// sealed when an authority with an encryption key starts, keeping their
// kids, so passports signed before stay valid and no private key stays
// readable in Redis until the next rotation.
func TestUnencryptedKeysSealedAtStart(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	ag := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	raw := e.token(ag, nil)
	ctx := context.Background()
	before, _ := e.a.keys.read(ctx)
	for _, k := range before {
		if k.Enc != "none" {
			t.Fatalf("setup: key %s enc %q", k.KID, k.Enc)
		}
	}
	var logs strings.Builder
	cfg := testConfig()
	cfg.Issuer = e.a.cfg.Issuer
	cfg.Keys.EncryptionKey = "a-key-encryption-key-configured-later"
	a, err := New(cfg, Deps{Audit: audit.Discard, Redis: e.rdb, Logger: slog.New(slog.NewTextHandler(&logs, nil)), Clock: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Init(ctx); err != nil {
		t.Fatal(err)
	}
	after, _ := a.keys.read(ctx)
	if len(after) != len(before) {
		t.Fatalf("%d keys before, %d after", len(before), len(after))
	}
	for _, k := range after {
		if k.Enc != "A256GCM" {
			t.Fatalf("key %s still stored with enc %q", k.KID, k.Enc)
		}
		if _, err := x509.ParsePKCS8PrivateKey(k.Private); err == nil {
			t.Fatalf("key %s: PKCS#8 readable in Redis", k.KID)
		}
	}
	if _, err := a.verify(ctx, raw); err != nil {
		t.Fatalf("passport signed before the sealing: %v", err)
	}
	if strings.Contains(logs.String(), "level=WARN") {
		t.Fatalf("warnings at start:\n%s", logs.String())
	}
}

func TestMetadataAndHealth(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	resp, body := e.get("/.well-known/oauth-authorization-server", "")
	if resp.StatusCode != 200 {
		t.Fatalf("metadata: %d", resp.StatusCode)
	}
	var md Metadata
	if err := json.Unmarshal(body, &md); err != nil {
		t.Fatal(err)
	}
	base := e.a.cfg.Issuer
	if md.Issuer != base || md.TokenEndpoint != base+"/oauth2/token" || md.JWKSURI != base+"/.well-known/jwks.json" ||
		md.IntrospectionEndpoint != base+"/oauth2/introspect" || md.RevocationEndpoint != base+"/oauth2/revoke" ||
		!slices.Equal(md.GrantTypesSupported, []string{"client_credentials", passport.GrantTypeTokenExchange}) ||
		!slices.Equal(md.DPoPSigningAlgs, []string{"ES256", "EdDSA"}) ||
		len(md.TokenEndpointAuthMethods) != 3 || len(md.AccessTokenSigningAlgs) != 2 {
		t.Fatalf("metadata: %+v", md)
	}
	// The metadata as JSON names the RFC 9449 and RFC 8693 members.
	var raw map[string]any
	_ = json.Unmarshal(body, &raw)
	if _, ok := raw["dpop_signing_alg_values_supported"]; !ok {
		t.Fatalf("metadata lacks dpop_signing_alg_values_supported: %s", body)
	}
	// With token exchange off, the grant is not advertised.
	off := newEnv(t, func(c *Config) { c.Delegation.MaxDepth = 0 }, e.rs, nil)
	_, body = off.get("/.well-known/oauth-authorization-server", "")
	if strings.Contains(string(body), "token-exchange") {
		t.Fatalf("token exchange advertised while off: %s", body)
	}
	if resp, _ := e.get("/healthz", ""); resp.StatusCode != 200 {
		t.Fatalf("healthz %d", resp.StatusCode)
	}
	if resp, _ := e.get("/oauth2/token", ""); resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "POST" {
		t.Fatalf("GET /oauth2/token: %d", resp.StatusCode)
	}
	if resp, body := e.get("/nope", ""); resp.StatusCode != http.StatusNotFound || resp.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("unknown path: %d %s", resp.StatusCode, body)
	}
	if resp, body := e.get("/readyz", ""); resp.StatusCode != 200 {
		t.Fatalf("readyz %d %s", resp.StatusCode, body)
	}
	resp, body = e.get("/metrics", "")
	if resp.StatusCode != 200 {
		t.Fatalf("metrics %d", resp.StatusCode)
	}
	e.postForm("/oauth2/token", map[string][]string{"grant_type": {"client_credentials"}}, "agt_x", "y")
	_, body = e.get("/metrics", "")
	if !strings.Contains(string(body), `passport_authority_client_auth_failures_total{method="client_secret_basic",reason="unknown_client"} 1`) {
		t.Fatalf("metrics lack the auth failure:\n%s", body)
	}
	// Redis down: not ready.
	e.rs.Kill()
	if resp, _ := e.get("/readyz", ""); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("readyz with Redis down: %d", resp.StatusCode)
	}
	if resp, _ := e.get("/healthz", ""); resp.StatusCode != 200 {
		t.Fatalf("healthz with Redis down: %d", resp.StatusCode)
	}
	// Token endpoint fails closed with a 503, not a passport.
	ag := map[string][]string{"grant_type": {"client_credentials"}}
	resp, body = e.postForm("/oauth2/token", ag, "agt_abc", "x")
	if resp.StatusCode != http.StatusServiceUnavailable || strings.Contains(string(body), "access_token") {
		t.Fatalf("token with Redis down: %d %s", resp.StatusCode, body)
	}
}

// TestRotationLockWaitsForReplicas: with the audit section's
// wait_replicas, a rotation takes the lock only once a replica holds it
// (a lock lost in a failover could be taken by a second replica). With
// the replica frozen the rotation is refused, the keys stay, and the lock
// is given back.
func TestRotationLockWaitsForReplicas(t *testing.T) {
	primary, replica := redistest.Start(t), redistest.Start(t)
	ctx := context.Background()
	host, port, _ := net.SplitHostPort(primary.Addr)
	if err := replica.Client().ReplicaOf(ctx, host, port).Err(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, _ := replica.Client().Info(ctx, "replication").Result()
		if strings.Contains(info, "master_link_status:up") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replica did not link: %s", info)
		}
		time.Sleep(20 * time.Millisecond) // replication has no event to wait on here
	}
	e := newEnv(t, func(c *Config) { c.Audit.WaitReplicas, c.Audit.WaitTimeout = 1, 300*time.Millisecond }, primary, nil)
	if err := e.a.RotateKeys(ctx); err != nil {
		t.Fatalf("rotate with the replica up: %v", err)
	}
	before, _ := e.a.keys.signer()
	replica.Freeze()
	defer replica.Thaw()
	if err := e.a.RotateKeys(ctx); !errors.Is(err, ErrLockNotReplicated) {
		t.Fatalf("rotate with the replica frozen: %v, want ErrLockNotReplicated", err)
	}
	if after, _ := e.a.keys.signer(); after.stored.KID != before.stored.KID {
		t.Fatal("the keys rotated without a replicated lock")
	}
	if n, _ := e.rdb.Exists(ctx, keysLockKey).Result(); n != 0 {
		t.Fatal("the unreplicated lock was kept")
	}
}
