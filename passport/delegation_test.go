package passport

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

// delegatedPayload is a well-formed passport held by agt_C, acting for
// agt_B, who acted for agt_A (depth 2), bound to a key.
func (f *verifyFixture) delegatedPayload() map[string]any {
	now := f.now.Unix()
	return map[string]any{
		"iss": "https://authority.test", "sub": "agt_C", "aud": []any{"b"}, "exp": now + 300, "iat": now, "nbf": now,
		"jti": "jti-c", "client_id": "agt_C", "tenant": "acme", "scope": "service.get",
		"agent": map[string]any{"id": "agt_C", "name": "sub-agent", "type": "observer", "trust_level": "MEDIUM", "reputation": 75},
		"act":   map[string]any{"sub": "agt_B", "act": map[string]any{"sub": "agt_A"}},
		"delegation": map[string]any{
			"depth": 2, "root": "agt_A", "chain": []any{"agt_A", "agt_B", "agt_C"},
			"links": []any{
				map[string]any{"sub": "agt_A", "name": "commander", "type": "healer", "trust_level": "HIGH", "jti": "jti-a"},
				map[string]any{"sub": "agt_B", "name": "healer-1", "type": "healer", "trust_level": "MEDIUM", "jti": "jti-b"},
			},
		},
		"cnf": map[string]any{"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"},
	}
}

// signPayload signs a payload exactly as marshalled (or as written, for
// a string), with the fixture's Ed25519 key.
func (f *verifyFixture) signPayload(t *testing.T, p any) string {
	t.Helper()
	var pj []byte
	if s, ok := p.(string); ok {
		pj = []byte(s)
	} else {
		pj, _ = json.Marshal(p)
	}
	in := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"EdDSA","kid":"ed","typ":"at+jwt"}`)) + "." + base64.RawURLEncoding.EncodeToString(pj)
	return in + "." + base64.RawURLEncoding.EncodeToString(ed25519.Sign(f.ed, []byte(in)))
}

func clonePayload(m map[string]any) map[string]any {
	b, _ := json.Marshal(m)
	var out map[string]any
	_ = json.Unmarshal(b, &out)
	return out
}

// The delegation and confirmation claims are checked as strictly as every
// other claim, on what a policy would read: any inconsistency between
// act, delegation, sub and the trust levels, any unknown member, null or
// wrong type is refused.
func TestDelegationClaimsStrict(t *testing.T) {
	f := newVerifyFixture(t)
	strict, err := NewVerifier(VerifierConfig{
		Issuer: "https://authority.test", Audiences: []string{"b"}, Clock: func() time.Time { return f.now },
		Keys:            func(context.Context, string) (VerifyKey, error) { return VerifyKey{Key: f.ed.Public()}, nil },
		AcceptDelegated: true, AcceptBound: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	vp, err := strict.Verify(ctx, f.signPayload(t, f.delegatedPayload()))
	if err != nil {
		t.Fatalf("well-formed delegated passport: %v", err)
	}
	c := vp.Claims
	if !c.Delegated() || c.Act.Sub != "agt_B" || c.Act.Act.Sub != "agt_A" || c.Delegation.Root != "agt_A" ||
		c.Delegation.Links[1].JTI != "jti-b" || c.BoundKey() != "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I" {
		t.Fatalf("claims %+v", c)
	}

	del := func(m map[string]any) map[string]any { return m["delegation"].(map[string]any) }
	link := func(m map[string]any, i int) map[string]any { return del(m)["links"].([]any)[i].(map[string]any) }
	cases := []struct {
		name string
		mut  func(m map[string]any)
		want error // nil: any refusal
	}{
		{"act without delegation", func(m map[string]any) { delete(m, "delegation") }, ErrDelegation},
		{"delegation without act", func(m map[string]any) { delete(m, "act") }, ErrDelegation},
		{"act null", func(m map[string]any) { m["act"] = nil }, ErrDelegation},
		{"delegation null", func(m map[string]any) { m["delegation"] = nil }, ErrDelegation},
		{"act a string", func(m map[string]any) { m["act"] = "agt_B" }, nil},
		{"act with an unknown member", func(m map[string]any) { m["act"].(map[string]any)["iss"] = "x" }, ErrDelegation},
		{"act.sub missing", func(m map[string]any) { delete(m["act"].(map[string]any), "sub") }, ErrDelegation},
		{"act.sub a number", func(m map[string]any) { m["act"].(map[string]any)["sub"] = 7 }, nil},
		{"act.sub with a hash tag", func(m map[string]any) { m["act"].(map[string]any)["sub"] = "agt_{B}" }, ErrDelegation},
		{"act nesting shorter than depth", func(m map[string]any) { delete(m["act"].(map[string]any), "act") }, ErrDelegation},
		{"act in another order", func(m map[string]any) {
			m["act"] = map[string]any{"sub": "agt_A", "act": map[string]any{"sub": "agt_B"}}
		}, ErrDelegation},
		{"depth disagrees", func(m map[string]any) { del(m)["depth"] = 1 }, ErrDelegation},
		{"depth as a string", func(m map[string]any) { del(m)["depth"] = "2" }, nil},
		{"depth as a fraction", func(m map[string]any) { del(m)["depth"] = 2.5 }, nil},
		{"root is not the first link", func(m map[string]any) { del(m)["root"] = "agt_B" }, ErrDelegation},
		{"chain does not end with sub", func(m map[string]any) { del(m)["chain"] = []any{"agt_A", "agt_B", "agt_X"} }, ErrDelegation},
		{"chain names an agent twice", func(m map[string]any) {
			m["act"] = map[string]any{"sub": "agt_C", "act": map[string]any{"sub": "agt_A"}}
			del(m)["chain"] = []any{"agt_A", "agt_C", "agt_C"}
			link(m, 1)["sub"] = "agt_C"
		}, ErrDelegation},
		{"unknown delegation member", func(m map[string]any) { del(m)["principal"] = "someone" }, ErrDelegation},
		{"link missing its jti", func(m map[string]any) { delete(link(m, 0), "jti") }, ErrDelegation},
		{"link with an unknown member", func(m map[string]any) { link(m, 0)["exp"] = 1 }, ErrDelegation},
		{"link names another agent", func(m map[string]any) { link(m, 0)["sub"] = "agt_Z" }, ErrDelegation},
		{"link trust ROOT", func(m map[string]any) { link(m, 0)["trust_level"] = "ROOT" }, ErrDelegation},
		{"trust higher than a link", func(m map[string]any) { m["agent"].(map[string]any)["trust_level"] = "HIGH" }, ErrDelegation},
		{"too few links", func(m map[string]any) { del(m)["links"] = del(m)["links"].([]any)[:1] }, ErrDelegation},
		{"links null", func(m map[string]any) { del(m)["links"] = nil }, ErrDelegation},
		{"cnf null", func(m map[string]any) { m["cnf"] = nil }, ErrConfirmation},
		{"cnf with a jwk", func(m map[string]any) { m["cnf"].(map[string]any)["jwk"] = map[string]any{"kty": "OKP"} }, ErrConfirmation},
		{"cnf by x5t#S256 only", func(m map[string]any) { m["cnf"] = map[string]any{"x5t#S256": "abc"} }, nil},
		{"jkt too short", func(m map[string]any) { m["cnf"].(map[string]any)["jkt"] = "abc" }, ErrConfirmation},
		{"jkt padded", func(m map[string]any) {
			m["cnf"].(map[string]any)["jkt"] = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4="
		}, ErrConfirmation},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := clonePayload(f.delegatedPayload())
			tc.mut(m)
			_, err := strict.Verify(ctx, f.signPayload(t, m))
			var ae *AuthError
			// nil: any refusal (the JSON decoder already refuses a wrong type).
			if (tc.want == nil && !errors.As(err, &ae)) || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	// A depth past MaxDelegationDepth is refused however consistent.
	m := clonePayload(f.delegatedPayload())
	act := map[string]any{"sub": "agt_0"}
	chain := []any{"agt_0"}
	var links []any
	for i := 1; i <= MaxDelegationDepth+1; i++ {
		links = append(links, map[string]any{"sub": chain[i-1], "name": "n", "type": "healer", "trust_level": "HIGH", "jti": "j"})
		if i <= MaxDelegationDepth {
			id := "agt_" + string(rune('0'+i))
			chain = append(chain, id)
			if i < MaxDelegationDepth {
				act = map[string]any{"sub": id, "act": act}
			}
		}
	}
	chain = append(chain, "agt_C")
	act = map[string]any{"sub": chain[MaxDelegationDepth], "act": act}
	m["act"], m["delegation"] = act, map[string]any{"depth": MaxDelegationDepth + 1, "root": "agt_0", "chain": chain, "links": links}
	if _, err := strict.Verify(ctx, f.signPayload(t, m)); !errors.Is(err, ErrDelegation) {
		t.Fatalf("depth %d: %v", MaxDelegationDepth+1, err)
	}
	// Duplicate members inside act are refused (last one wins in Go).
	raw, _ := json.Marshal(f.delegatedPayload())
	dup := strings.Replace(string(raw), `"act":{"act":`, `"act":{"sub":"agt_X","act":`, 1)
	if dup == string(raw) {
		t.Fatal("test did not build the duplicate")
	}
	if _, err := strict.Verify(ctx, f.signPayload(t, dup)); err == nil {
		t.Fatal("duplicate act.sub accepted")
	}
}

// A verifier that does not check chains or DPoP refuses delegated and
// bound passports instead of taking them for plain bearer passports.
func TestVerifierRefusesWhatItCannotCheck(t *testing.T) {
	f := newVerifyFixture(t) // AcceptDelegated and AcceptBound unset
	ctx := context.Background()
	m := f.delegatedPayload()
	if _, err := f.v.Verify(ctx, f.signPayload(t, m)); !errors.Is(err, ErrDelegatedUnsupported) {
		t.Fatalf("delegated passport: %v", err)
	}
	delete(m, "act")
	delete(m, "delegation")
	m["agent"].(map[string]any)["id"] = "agt_C"
	if _, err := f.v.Verify(ctx, f.signPayload(t, m)); !errors.Is(err, ErrBoundUnsupported) {
		t.Fatalf("bound passport: %v", err)
	}
	delete(m, "cnf")
	if _, err := f.v.Verify(ctx, f.signPayload(t, m)); err != nil {
		t.Fatalf("plain passport: %v", err)
	}
}
