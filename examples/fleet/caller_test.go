package fleet

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"
)

// issuer signs assertions as the proxy does, with go-jose (independent of
// the proxy's signer), and serves its key set.
type issuer struct {
	key  ed25519.PrivateKey
	kid  string
	jwks *httptest.Server
}

func newIssuer(t *testing.T) *issuer {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	is := &issuer{key: priv, kid: "k1"}
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: pub, KeyID: is.kid, Algorithm: "EdDSA", Use: "sig"}}}
	is.jwks = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(set)
	}))
	t.Cleanup(is.jwks.Close)
	return is
}

func (is *issuer) sign(t *testing.T, key ed25519.PrivateKey, claims map[string]any) string {
	t.Helper()
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: jose.JSONWebKey{Key: key, KeyID: is.kid}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := josejwt.Signed(sig).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func claimsFor(method, path, body, jti string, now time.Time) map[string]any {
	sum := sha256.Sum256([]byte(body))
	return map[string]any{"iss": "https://proxy", "aud": "fleet-control", "iat": now.Unix(), "exp": now.Add(30 * time.Second).Unix(),
		"jti": jti, "txn": jti, "sub": "healer-1",
		"tctx": map[string]any{"method": method, "path": path, "body_sha256": base64.RawURLEncoding.EncodeToString(sum[:])}}
}

// TestCallerChecked: with a caller check, a control call needs the API key
// and an assertion bound to this exact request; a call that bypasses the
// proxy has neither and is refused, as is a replayed, forged, expired or
// misdirected assertion. Health, metrics and events stay open.
func TestCallerChecked(t *testing.T) {
	is := newIssuer(t)
	keyFile := filepath.Join(t.TempDir(), "api-key")
	if err := os.WriteFile(keyFile, []byte("fleet-api-key-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := New(Config{Listen: "127.0.0.1:0", Caller: CallerConfig{APIKeyFile: keyFile,
		AssertionJWKSURL: is.jwks.URL, AssertionAudience: "fleet-control", AssertionIssuer: "https://proxy"}},
		Deps{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	h := f.Handler()
	do := func(method, path, body string, hdr map[string]string) int {
		r := httptest.NewRequest(method, path, strings.NewReader(body))
		for k, v := range hdr {
			r.Header.Set(k, v)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}
	now := time.Now()
	good := is.sign(t, is.key, claimsFor("POST", "/services/checkout/restart", "", "a1", now))
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	key := "fleet-api-key-1"
	for _, tc := range []struct {
		name string
		hdr  map[string]string
		path string
		body string
		want int
	}{
		{"bypass: nothing", nil, "/services/checkout/restart", "", 401},
		{"key without assertion", map[string]string{"X-Api-Key": key}, "/services/checkout/restart", "", 401},
		{"assertion without key", map[string]string{"Passport-Assertion": good}, "/services/checkout/restart", "", 401},
		{"wrong key", map[string]string{"X-Api-Key": "guess", "Passport-Assertion": good}, "/services/checkout/restart", "", 401},
		{"both", map[string]string{"X-Api-Key": key, "Passport-Assertion": good}, "/services/checkout/restart", "", 200},
		{"replayed", map[string]string{"X-Api-Key": key, "Passport-Assertion": good}, "/services/checkout/restart", "", 401},
		{"another path", map[string]string{"X-Api-Key": key, "Passport-Assertion": is.sign(t, is.key,
			claimsFor("POST", "/services/checkout/restart", "", "a2", now))}, "/services/payments/restart", "", 401},
		{"another body", map[string]string{"X-Api-Key": key, "Passport-Assertion": is.sign(t, is.key,
			claimsFor("POST", "/services/checkout/scale", `{"replicas":2}`, "a3", now))}, "/services/checkout/scale", `{"replicas":20}`, 401},
		{"another key", map[string]string{"X-Api-Key": key, "Passport-Assertion": is.sign(t, other,
			claimsFor("POST", "/services/checkout/restart", "", "a4", now))}, "/services/checkout/restart", "", 401},
		{"expired", map[string]string{"X-Api-Key": key, "Passport-Assertion": is.sign(t, is.key,
			claimsFor("POST", "/services/checkout/restart", "", "a5", now.Add(-2*time.Minute)))}, "/services/checkout/restart", "", 401},
		{"same body, right request", map[string]string{"X-Api-Key": key, "Passport-Assertion": is.sign(t, is.key,
			claimsFor("POST", "/services/checkout/scale", `{"replicas":2}`, "a6", now))}, "/services/checkout/scale", `{"replicas":2}`, 200},
	} {
		if got := do(http.MethodPost, tc.path, tc.body, tc.hdr); got != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, got, tc.want)
		}
	}
	if got := do(http.MethodGet, "/healthz", "", nil); got != 200 {
		t.Errorf("/healthz: status %d, want open", got)
	}
}
