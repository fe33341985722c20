package passport

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

type verifyFixture struct {
	v    *Verifier
	ed   ed25519.PrivateKey
	ec   *ecdsa.PrivateKey
	now  time.Time
	keys map[string]VerifyKey
}

func newVerifyFixture(t testing.TB) *verifyFixture {
	t.Helper()
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	f := &verifyFixture{ed: ed, ec: ec, now: time.Unix(1_900_000_000, 0)}
	f.keys = map[string]VerifyKey{
		"ed":        {Key: ed.Public()},
		"ec":        {Key: &ec.PublicKey, Alg: AlgES256},
		"ed-as-es":  {Key: ed.Public(), Alg: AlgES256},
		"not-a-sig": {},
	}
	f.v, err = NewVerifier(VerifierConfig{
		Issuer: "https://authority.test", Audiences: []string{"a", "b"}, Leeway: 5 * time.Second,
		Clock: func() time.Time { return f.now },
		Keys: func(_ context.Context, kid string) (VerifyKey, error) {
			if kid == "not-a-sig" {
				return VerifyKey{}, ErrAlgorithm
			}
			k, ok := f.keys[kid]
			if !ok {
				return VerifyKey{}, errors.New("no such kid")
			}
			return k, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *verifyFixture) claims() *Claims {
	return &Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer: "https://authority.test", Subject: "agt_1", Audience: jwt.ClaimStrings{"b"},
			ExpiresAt: jwt.NewNumericDate(f.now.Add(5 * time.Minute)), IssuedAt: jwt.NewNumericDate(f.now),
			NotBefore: jwt.NewNumericDate(f.now), ID: "jti-1",
		},
		ClientID: "agt_1", Tenant: "acme",
		Agent: Agent{ID: "agt_1", Name: "healer", Type: TypeHealer, TrustLevel: TrustHigh},
	}
}

func (f *verifyFixture) sign(t testing.TB, m jwt.SigningMethod, kid string, key any, c *Claims) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, c)
	tok.Header["typ"] = TokenType
	tok.Header["kid"] = kid
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestVerifierConfig(t *testing.T) {
	keys := func(context.Context, string) (VerifyKey, error) { return VerifyKey{}, nil }
	for _, tc := range []struct {
		name string
		cfg  VerifierConfig
	}{
		{"no issuer", VerifierConfig{Audiences: []string{"a"}, Keys: keys}},
		{"no audience", VerifierConfig{Issuer: "i", Keys: keys}},
		{"empty audience", VerifierConfig{Issuer: "i", Audiences: []string{""}, Keys: keys}},
		{"leeway too long", VerifierConfig{Issuer: "i", Audiences: []string{"a"}, Leeway: time.Minute, Keys: keys}},
		{"lifetime too long", VerifierConfig{Issuer: "i", Audiences: []string{"a"}, MaxLifetime: 2 * time.Hour, Keys: keys}},
		{"no keys", VerifierConfig{Issuer: "i", Audiences: []string{"a"}}},
	} {
		if _, err := NewVerifier(tc.cfg); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
}

func TestVerifierKeysAndTimes(t *testing.T) {
	f := newVerifyFixture(t)
	ctx := context.Background()
	vp, err := f.v.Verify(ctx, f.sign(t, jwt.SigningMethodEdDSA, "ed", f.ed, f.claims()))
	if err != nil || vp.Claims.Tenant != "acme" || !vp.Exp.Equal(f.now.Add(5*time.Minute)) || vp.Payload["tenant"] != "acme" {
		t.Fatalf("genuine EdDSA passport: %+v %v", vp, err)
	}
	if _, err := f.v.Verify(ctx, f.sign(t, jwt.SigningMethodES256, "ec", f.ec, f.claims())); err != nil {
		t.Fatalf("genuine ES256 passport: %v", err)
	}
	for _, tc := range []struct {
		name string
		tok  string
		want error
	}{
		{"key pinned to another alg", f.sign(t, jwt.SigningMethodEdDSA, "ed-as-es", f.ed, f.claims()), ErrAlgorithm},
		{"key source refusal passed through", f.sign(t, jwt.SigningMethodEdDSA, "not-a-sig", f.ed, f.claims()), ErrAlgorithm},
		{"unknown kid", f.sign(t, jwt.SigningMethodEdDSA, "nope", f.ed, f.claims()), ErrUnknownKey},
		{"ES256 signed for the Ed25519 key", f.sign(t, jwt.SigningMethodES256, "ed", f.ec, f.claims()), ErrAlgorithm},
		{"too large", strings.Repeat("a", DefaultMaxTokenBytes+1), ErrTooLarge},
	} {
		if _, err := f.v.Verify(ctx, tc.tok); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	// CheckTimes repeats the time checks for a kept passport.
	if err := f.v.CheckTimes(vp, f.now.Add(5*time.Minute+4*time.Second)); err != nil {
		t.Errorf("within leeway: %v", err)
	}
	if err := f.v.CheckTimes(vp, f.now.Add(5*time.Minute+5*time.Second)); !errors.Is(err, ErrExpired) {
		t.Errorf("past leeway: %v", err)
	}
	if err := f.v.CheckTimes(vp, f.now.Add(-6*time.Second)); !errors.Is(err, ErrNotYetValid) {
		t.Errorf("before nbf: %v", err)
	}
}

// FuzzVerify: the verifier never panics, refuses with an *AuthError, and
// accepts only what a genuine passport's signature covers.
func FuzzVerify(f *testing.F) {
	fx := newVerifyFixture(f)
	good := fx.sign(f, jwt.SigningMethodEdDSA, "ed", fx.ed, fx.claims())
	f.Add(good)
	f.Add(good + "x")
	f.Add(strings.Replace(good, ".", "..", 1))
	f.Add("e30.e30.e30")
	f.Add("")
	f.Fuzz(func(t *testing.T, tok string) {
		vp, err := fx.v.Verify(context.Background(), tok)
		if err != nil {
			var ae *AuthError
			if !errors.As(err, &ae) || ae.Reason == "" {
				t.Fatalf("refusal %v is not an *AuthError", err)
			}
			return
		}
		if vp.Claims.Tenant == "" || vp.Claims.ID == "" || !ValidTenant(vp.Claims.Tenant) {
			t.Fatalf("accepted incomplete claims %+v", vp.Claims)
		}
	})
}
