package authority

import (
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentpassport/passport/passport"
	"github.com/redis/go-redis/v9"
)

// Redis keys of the signing key set. They are global (not per tenant): one
// key set signs for every tenant.
const (
	// keysKey is a hash kid -> JSON storedKey.
	keysKey = "passport:authority:keys"
	// keysLockKey serialises rotations across replicas.
	keysLockKey = "passport:authority:keys:lock"
	// keysChannel announces a changed key set so replicas reload at once.
	keysChannel = "passport:authority:keys:changed"
)

// Key states.
const (
	stateNext    = "next"    // published in the JWKS, not yet signing
	stateCurrent = "current" // signing
	stateRetired = "retired" // published until every passport it signed expired
)

// ErrRotationInProgress is returned when another replica holds the rotation
// lock.
var ErrRotationInProgress = errors.New("key rotation already in progress")

// ErrNoSigningKey is returned before the key set has been loaded.
var ErrNoSigningKey = errors.New("no signing key loaded")

// storedKey is a key as kept in Redis.
type storedKey struct {
	KID         string    `json:"kid"`
	Alg         string    `json:"alg"`
	State       string    `json:"state"`
	CreatedAt   time.Time `json:"created_at"`
	ActivatedAt time.Time `json:"activated_at,omitzero"`
	// RetireUntil is when a retired key leaves the JWKS.
	RetireUntil time.Time `json:"retire_until,omitzero"`
	// Enc is "A256GCM" when Private is sealed, "none" otherwise.
	Enc string `json:"enc"`
	// Private is the PKCS#8 private key, sealed when Enc is A256GCM.
	Private []byte `json:"private"`
}

// signingKey is a loaded key.
type signingKey struct {
	stored storedKey
	priv   crypto.Signer
	pub    crypto.PublicKey
}

// keySet is an immutable snapshot of the loaded keys.
type keySet struct {
	current *signingKey
	byKID   map[string]*signingKey
	ordered []*signingKey // current, next, retired newest first
}

// keyManager loads, creates, rotates and serves signing keys. Keys live in
// Redis so that replicas share them and they survive restarts; each
// replica holds an immutable snapshot behind an atomic.Pointer.
type keyManager struct {
	rdb redis.UniversalClient
	cfg KeysConfig
	// waitReplicas, when > 0, is how many replicas must hold the rotation
	// lock before it counts (the audit section's wait_replicas): a lock
	// lost in a failover could otherwise be taken twice.
	waitReplicas int
	waitTimeout  time.Duration
	lifetime     time.Duration
	leeway       time.Duration
	now          func() time.Time
	log          *slog.Logger
	aead         cipher.AEAD // nil when keys are stored unencrypted
	set          atomic.Pointer[keySet]
	mu           sync.Mutex // serialises local load/rotate
}

func newKeyManager(rdb redis.UniversalClient, cfg Config, now func() time.Time, log *slog.Logger) (*keyManager, error) {
	km := &keyManager{rdb: rdb, cfg: cfg.Keys, lifetime: cfg.Passport.Lifetime, leeway: cfg.Passport.Leeway, now: now, log: log,
		waitReplicas: cfg.Audit.WaitReplicas, waitTimeout: cfg.Audit.WaitTimeout}
	if km.waitTimeout <= 0 {
		km.waitTimeout = time.Second
	}
	if cfg.Keys.EncryptionKey != "" {
		sum := sha256.Sum256([]byte(cfg.Keys.EncryptionKey))
		block, err := aes.NewCipher(sum[:])
		if err != nil {
			return nil, fmt.Errorf("key encryption: %w", err)
		}
		if km.aead, err = cipher.NewGCM(block); err != nil {
			return nil, fmt.Errorf("key encryption: %w", err)
		}
	}
	return km, nil
}

// retention is how long a retired key stays published: a passport signed
// just before rotation lives Lifetime; a replica that has not yet seen the
// rotation may sign with the old key for up to CheckInterval more; verifiers
// allow Leeway of skew.
func (km *keyManager) retention() time.Duration {
	return km.lifetime + km.cfg.CheckInterval + km.leeway
}

func (km *keyManager) loaded() bool { return km.set.Load() != nil }

// signer returns the current key.
func (km *keyManager) signer() (*signingKey, error) {
	s := km.set.Load()
	if s == nil || s.current == nil {
		return nil, ErrNoSigningKey
	}
	return s.current, nil
}

// lookup returns a published key by kid (current, next or retired still
// within its retention).
func (km *keyManager) lookup(kid string) (*signingKey, bool) {
	s := km.set.Load()
	if s == nil {
		return nil, false
	}
	k, ok := s.byKID[kid]
	if !ok || !km.published(k) {
		return nil, false
	}
	return k, true
}

func (km *keyManager) published(k *signingKey) bool {
	return k.stored.State != stateRetired || km.now().Before(k.stored.RetireUntil)
}

// Ensure loads the key set from Redis, creating the first current and next
// keys when there are none.
func (km *keyManager) Ensure(ctx context.Context) error {
	km.mu.Lock()
	defer km.mu.Unlock()
	keys, err := km.read(ctx)
	if err != nil {
		return err
	}
	if hasState(keys, stateCurrent) && hasState(keys, stateNext) && len(km.unsealed(keys)) == 0 {
		return km.install(keys)
	}
	// First start (or a damaged set): create what is missing under the
	// rotation lock so that replicas starting together agree on one set.
	// Keys stored unencrypted before an encryption key was configured are
	// sealed now, not at their rotation: their private halves must not
	// stay readable in Redis for another day.
	err = km.withLock(ctx, func() error {
		keys, err := km.read(ctx)
		if err != nil {
			return err
		}
		var add []storedKey
		now := km.now()
		if !hasState(keys, stateCurrent) {
			if n := find(keys, stateNext); n != nil {
				n.State, n.ActivatedAt = stateCurrent, now
				add = append(add, *n)
				for i := range keys {
					if keys[i].KID == n.KID {
						keys[i] = *n
					}
				}
			} else {
				k, err := km.generate(stateCurrent, now)
				if err != nil {
					return err
				}
				add = append(add, k)
				keys = append(keys, k)
			}
		}
		if !hasState(keys, stateNext) {
			k, err := km.generate(stateNext, now)
			if err != nil {
				return err
			}
			add = append(add, k)
		}
		created := len(add)
		for _, k := range km.unsealed(keys) {
			sealed, err := km.seal(k)
			if err != nil {
				return err
			}
			add = append(add, sealed)
		}
		if err := km.write(ctx, add, nil); err != nil {
			return err
		}
		km.log.InfoContext(ctx, "signing keys created", "count", created, "sealed", len(add)-created)
		return nil
	})
	if errors.Is(err, ErrRotationInProgress) {
		// Another replica is creating them; read what it wrote. If it has
		// not finished yet, the caller retries (readyz stays false).
		keys, rerr := km.read(ctx)
		if rerr != nil {
			return rerr
		}
		if !hasState(keys, stateCurrent) {
			return fmt.Errorf("load signing keys: %w", err)
		}
		return km.install(keys)
	}
	if err != nil {
		return err
	}
	keys, err = km.read(ctx)
	if err != nil {
		return err
	}
	return km.install(keys)
}

// Reload re-reads the key set from Redis (another replica may have rotated).
func (km *keyManager) Reload(ctx context.Context) error {
	km.mu.Lock()
	defer km.mu.Unlock()
	keys, err := km.read(ctx)
	if err != nil {
		return err
	}
	if !hasState(keys, stateCurrent) {
		return fmt.Errorf("reload signing keys: %w", ErrNoSigningKey)
	}
	return km.install(keys)
}

// Rotate makes the next key current, retires the current one and creates a
// new next key. With force false it rotates only when the current key is
// older than RotationInterval (the scheduled path); it reports whether it
// rotated.
func (km *keyManager) Rotate(ctx context.Context, force bool) (bool, error) {
	km.mu.Lock()
	defer km.mu.Unlock()
	rotated := false
	err := km.withLock(ctx, func() error {
		keys, err := km.read(ctx)
		if err != nil {
			return err
		}
		now := km.now()
		cur, next := find(keys, stateCurrent), find(keys, stateNext)
		if cur == nil || next == nil {
			return fmt.Errorf("rotate keys: %w", ErrNoSigningKey)
		}
		if !force && now.Sub(cur.ActivatedAt) < km.cfg.RotationInterval {
			return nil // not due, or another replica just rotated
		}
		cur.State, cur.RetireUntil = stateRetired, now.Add(km.retention())
		next.State, next.ActivatedAt = stateCurrent, now
		fresh, err := km.generate(stateNext, now)
		if err != nil {
			return err
		}
		var drop []string
		for _, k := range keys {
			if k.State == stateRetired && k.KID != cur.KID && !now.Before(k.RetireUntil) {
				drop = append(drop, k.KID)
			}
		}
		if err := km.write(ctx, []storedKey{*cur, *next, fresh}, drop); err != nil {
			return err
		}
		rotated = true
		km.log.InfoContext(ctx, "signing keys rotated", "current_kid", next.KID, "next_kid", fresh.KID,
			"retired_kid", cur.KID, "retired_until", cur.RetireUntil, "dropped", len(drop))
		return nil
	})
	if err != nil {
		return false, err
	}
	keys, err := km.read(ctx)
	if err != nil {
		return rotated, err
	}
	if err := km.install(keys); err != nil {
		return rotated, err
	}
	if rotated {
		_ = km.rdb.Publish(ctx, keysChannel, "rotated").Err() // best effort: replicas also poll
	}
	return rotated, nil
}

// withLock runs fn holding the Redis rotation lock. The lock has a TTL so a
// crashed replica cannot hold it forever, and is released only by its
// owner (compare-and-delete), so a slow replica never frees another's lock.
//
// With waitReplicas the lock is taken only once that many replicas hold
// it (SET NX, then WAIT on the same connection); otherwise it is given
// back and the rotation refused, since a failover could lose it and let
// another replica rotate as well.
func (km *keyManager) withLock(ctx context.Context, fn func() error) error {
	token := randomID(16)
	pipe := km.rdb.Pipeline()
	set := pipe.SetNX(ctx, keysLockKey, token, 30*time.Second)
	var wait *redis.Cmd
	if km.waitReplicas > 0 {
		wait = pipe.Do(ctx, "wait", km.waitReplicas, km.waitTimeout.Milliseconds())
	}
	_, _ = pipe.Exec(ctx)
	ok, err := set.Result()
	if err != nil {
		return fmt.Errorf("take key lock: %w", err)
	}
	if !ok {
		return ErrRotationInProgress
	}
	unlock := func() {
		_ = unlockScript.Run(context.WithoutCancel(ctx), km.rdb, []string{keysLockKey}, token).Err()
	}
	defer unlock()
	if wait != nil {
		if n, err := wait.Int64(); err != nil || n < int64(km.waitReplicas) {
			return fmt.Errorf("%w: key lock held by %d of %d replicas (%v)", ErrLockNotReplicated, n, km.waitReplicas, err)
		}
	}
	return fn()
}

// ErrLockNotReplicated: the rotation lock did not reach wait_replicas
// replicas in time, so no rotation was made.
var ErrLockNotReplicated = errors.New("key rotation lock not replicated")

var unlockScript = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`)

func (km *keyManager) read(ctx context.Context) ([]storedKey, error) {
	m, err := km.rdb.HGetAll(ctx, keysKey).Result()
	if err != nil {
		return nil, fmt.Errorf("read signing keys: %w", err)
	}
	keys := make([]storedKey, 0, len(m))
	for kid, v := range m {
		var k storedKey
		if err := json.Unmarshal([]byte(v), &k); err != nil {
			return nil, fmt.Errorf("decode signing key %s: %w", kid, err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

func (km *keyManager) write(ctx context.Context, keys []storedKey, drop []string) error {
	pipe := km.rdb.TxPipeline()
	for _, k := range keys {
		b, err := json.Marshal(k)
		if err != nil {
			return fmt.Errorf("encode signing key: %w", err)
		}
		pipe.HSet(ctx, keysKey, k.KID, b)
	}
	if len(drop) > 0 {
		pipe.HDel(ctx, keysKey, drop...)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("store signing keys: %w", err)
	}
	return nil
}

// install decodes the stored keys and swaps the snapshot.
func (km *keyManager) install(keys []storedKey) error {
	s := &keySet{byKID: map[string]*signingKey{}}
	for _, st := range keys {
		k, err := km.open(st)
		if err != nil {
			return err
		}
		s.byKID[st.KID] = k
		s.ordered = append(s.ordered, k)
		if st.State == stateCurrent {
			if s.current != nil && s.current.stored.ActivatedAt.After(st.ActivatedAt) {
				continue
			}
			s.current = k
		}
	}
	rank := map[string]int{stateCurrent: 0, stateNext: 1, stateRetired: 2}
	sort.SliceStable(s.ordered, func(i, j int) bool {
		a, b := s.ordered[i].stored, s.ordered[j].stored
		if rank[a.State] != rank[b.State] {
			return rank[a.State] < rank[b.State]
		}
		return a.CreatedAt.After(b.CreatedAt)
	})
	km.set.Store(s)
	return nil
}

func (km *keyManager) generate(state string, now time.Time) (storedKey, error) {
	var (
		priv any
		err  error
	)
	switch km.cfg.Algorithm {
	case passport.AlgES256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	}
	if err != nil {
		return storedKey{}, fmt.Errorf("generate signing key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return storedKey{}, fmt.Errorf("encode signing key: %w", err)
	}
	k := storedKey{KID: randomID(12), Alg: km.cfg.Algorithm, State: state, CreatedAt: now, Enc: "none", Private: der}
	if state == stateCurrent {
		k.ActivatedAt = now
	}
	if km.aead != nil {
		return km.seal(k)
	}
	return k, nil
}

// seal encrypts an unencrypted stored key with the encryption key, bound
// to its kid and algorithm.
func (km *keyManager) seal(k storedKey) (storedKey, error) {
	if km.aead == nil || k.Enc != "none" {
		return k, nil
	}
	nonce := make([]byte, km.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return storedKey{}, fmt.Errorf("seal signing key: %w", err)
	}
	k.Enc = "A256GCM"
	k.Private = km.aead.Seal(nonce, nonce, k.Private, []byte(k.KID+"."+k.Alg))
	return k, nil
}

// unsealed lists stored keys that an encryption key is configured for
// but that are stored unencrypted.
func (km *keyManager) unsealed(keys []storedKey) []storedKey {
	if km.aead == nil {
		return nil
	}
	var out []storedKey
	for _, k := range keys {
		if k.Enc == "none" {
			out = append(out, k)
		}
	}
	return out
}

func (km *keyManager) open(st storedKey) (*signingKey, error) {
	der := st.Private
	switch st.Enc {
	case "none":
		if km.aead != nil {
			km.log.Warn("signing key stored unencrypted although an encryption key is set; it will be replaced at rotation", "kid", st.KID)
		}
	case "A256GCM":
		if km.aead == nil {
			return nil, fmt.Errorf("open signing key %s: it is encrypted and no encryption key is configured (PASSPORT_KEY_ENCRYPTION_KEY)", st.KID)
		}
		ns := km.aead.NonceSize()
		if len(der) < ns {
			return nil, fmt.Errorf("open signing key %s: truncated", st.KID)
		}
		var err error
		der, err = km.aead.Open(nil, der[:ns], der[ns:], []byte(st.KID+"."+st.Alg))
		if err != nil {
			return nil, fmt.Errorf("open signing key %s: wrong encryption key or tampered data", st.KID)
		}
	default:
		return nil, fmt.Errorf("open signing key %s: unknown encryption %q", st.KID, st.Enc)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("parse signing key %s: %w", st.KID, err)
	}
	k := &signingKey{stored: st}
	switch p := parsed.(type) {
	case ed25519.PrivateKey:
		if st.Alg != passport.AlgEdDSA {
			return nil, fmt.Errorf("signing key %s: Ed25519 key with alg %s", st.KID, st.Alg)
		}
		k.priv, k.pub = p, p.Public()
	case *ecdsa.PrivateKey:
		if st.Alg != passport.AlgES256 || p.Curve != elliptic.P256() {
			return nil, fmt.Errorf("signing key %s: ECDSA key with alg %s", st.KID, st.Alg)
		}
		k.priv, k.pub = p, p.Public()
	default:
		return nil, fmt.Errorf("signing key %s: unsupported key type %T", st.KID, parsed)
	}
	return k, nil
}

// JWK is one public key of the JWKS (RFC 7517, RFC 8037 for OKP).
type JWK struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y,omitempty"`
	Kid string `json:"kid"`
	Alg string `json:"alg"`
	Use string `json:"use"`
}

// JWKS returns the published public keys: current, next, and retired keys
// whose passports may still be alive. Private material never leaves.
func (km *keyManager) JWKS() []JWK {
	s := km.set.Load()
	out := []JWK{}
	if s == nil {
		return out
	}
	for _, k := range s.ordered {
		if !km.published(k) {
			continue
		}
		out = append(out, publicJWK(k.stored.KID, k.stored.Alg, k.pub))
	}
	return out
}

func publicJWK(kid, alg string, pub crypto.PublicKey) JWK {
	b64 := base64.RawURLEncoding.EncodeToString
	j := JWK{Kid: kid, Alg: alg, Use: "sig"}
	switch p := pub.(type) {
	case ed25519.PublicKey:
		j.Kty, j.Crv, j.X = "OKP", "Ed25519", b64(p)
	case *ecdsa.PublicKey:
		raw, _ := p.Bytes() // uncompressed point 0x04 || X || Y, P-256 only here
		j.Kty, j.Crv = "EC", "P-256"
		j.X, j.Y = b64(raw[1:33]), b64(raw[33:65])
	}
	return j
}

func hasState(keys []storedKey, state string) bool { return find(keys, state) != nil }

// find returns the newest key in state.
func find(keys []storedKey, state string) *storedKey {
	var best *storedKey
	for i := range keys {
		if keys[i].State == state && (best == nil || keys[i].CreatedAt.After(best.CreatedAt)) {
			best = &keys[i]
		}
	}
	if best == nil {
		return nil
	}
	c := *best
	return &c
}

// randomID returns n random bytes, base64url without padding.
func randomID(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand failed: " + err.Error()) // never returns an error since Go 1.24
	}
	return base64.RawURLEncoding.EncodeToString(b)
}
