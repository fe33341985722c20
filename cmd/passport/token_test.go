package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/passport"
)

func writeKey(t *testing.T, k crypto.Signer) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "dpop.key.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func cliClaims(t *testing.T, raw string) passport.Claims {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(strings.Split(strings.TrimSpace(raw), ".")[1])
	if err != nil {
		t.Fatal(err)
	}
	var c passport.Claims
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// passport token --dpop-key prints a bound passport and tells a curl user
// what each call needs; passport token proof makes those proofs, and they
// pass the shared verifier; --subject-token-file does a token exchange.
func TestTokenCommandDPoPAndExchange(t *testing.T) {
	url := startAuthority(t)
	ctx := context.Background()
	adm, _ := client.NewAdmin(url, cliAdminToken, client.Options{})
	cmdReg, err := adm.RegisterAgent(ctx, "acme", client.AgentSpec{Name: "commander", Type: "healer", TrustLevel: "HIGH",
		MayDelegateTo: []string{"type:healer"}, RequireDPoP: true})
	if err != nil {
		t.Fatal(err)
	}
	subReg, _ := adm.RegisterAgent(ctx, "acme", client.AgentSpec{Name: "sub", Type: "healer", TrustLevel: "MEDIUM"})
	env := map[string]string{"PASSPORT_AUTHORITY_URL": url}
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	keyFile := writeKey(t, ec)
	cmdSecret := writeFile(t, "cmd.secret", cmdReg.ClientSecret)

	if _, errOut, code := cli(t, env, "token", "--client-id", cmdReg.ClientID, "--client-secret-file", cmdSecret); code == 0 ||
		!strings.Contains(errOut, "invalid_dpop_proof") {
		t.Fatalf("require_dpop agent without --dpop-key: %d %q", code, errOut)
	}
	out, errOut, code := cli(t, env, "token", "--client-id", cmdReg.ClientID, "--client-secret-file", cmdSecret, "--dpop-key", keyFile)
	if code != 0 {
		t.Fatalf("token --dpop-key: %d %s", code, errOut)
	}
	bound := strings.TrimSpace(out)
	tp, _ := (&jose.JSONWebKey{Key: ec.Public()}).Thumbprint(crypto.SHA256)
	if c := cliClaims(t, bound); c.Cnf == nil || c.Cnf.JKT != base64.RawURLEncoding.EncodeToString(tp) {
		t.Fatalf("cnf %+v", c.Cnf)
	}
	if !strings.Contains(errOut, "Authorization: DPoP $PASSPORT") || !strings.Contains(errOut, "passport token proof --dpop-key "+keyFile) {
		t.Fatalf("no curl hint on stderr: %q", errOut)
	}
	out, _, code = cli(t, env, "token", "--client-id", cmdReg.ClientID, "--client-secret-file", cmdSecret, "--dpop-key", keyFile, "--json")
	var js map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &js) != nil || js["token_type"] != "DPoP" || js["dpop_jkt"] != base64.RawURLEncoding.EncodeToString(tp) {
		t.Fatalf("--json: %d %q", code, out)
	}

	// A proof for one proxied call, checked by the shared verifier.
	target := "http://127.0.0.1:8080/services/checkout/restart"
	out, errOut, code = cli(t, map[string]string{"PASSPORT": bound}, "token", "proof", "--dpop-key", keyFile, "--method", "post", "--url", target)
	if code != 0 {
		t.Fatalf("token proof: %d %s", code, errOut)
	}
	v, err := passport.NewDPoPVerifier(passport.DPoPConfig{Replay: func(context.Context, string, time.Duration) (bool, error) { return true, nil }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(ctx, strings.TrimSpace(out), passport.DPoPRequest{Method: "POST", URL: target, AccessToken: bound,
		JKT: cliClaims(t, bound).Cnf.JKT}); err != nil {
		t.Fatalf("the printed proof does not verify: %v", err)
	}
	if _, err := v.Verify(ctx, strings.TrimSpace(out), passport.DPoPRequest{Method: "POST", URL: target, AccessToken: "another"}); !errors.Is(err, passport.ErrDPoPATH) {
		t.Fatalf("proof for another passport: %v", err)
	}
	if _, errOut, code := cli(t, env, "token", "proof", "--url", target); code == 0 || !strings.Contains(errOut, "required") {
		t.Fatalf("proof without a key: %d %q", code, errOut)
	}

	// Token exchange: the sub-agent acts for the commander; the subject is
	// bound, so the result must be bound too (to the sub-agent's key).
	subjectFile := writeFile(t, "subject.txt", bound+"\n")
	subSecret := writeFile(t, "sub.secret", subReg.ClientSecret)
	if _, errOut, code := cli(t, env, "token", "--client-id", subReg.ClientID, "--client-secret-file", subSecret,
		"--subject-token-file", subjectFile); code == 0 || !strings.Contains(errOut, "invalid_dpop_proof") {
		t.Fatalf("exchange of a bound subject without a key: %d %q", code, errOut)
	}
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	out, errOut, code = cli(t, env, "token", "--client-id", subReg.ClientID, "--client-secret-file", subSecret,
		"--subject-token-file", subjectFile, "--dpop-key", writeKey(t, edKey), "--scope", "service.get")
	if code != 0 {
		t.Fatalf("exchange: %d %s", code, errOut)
	}
	c := cliClaims(t, out)
	if c.Subject != subReg.ID || c.Act == nil || c.Act.Sub != cmdReg.ID || c.Delegation.Depth != 1 || c.Scope != "service.get" || c.Cnf == nil {
		t.Fatalf("delegated passport %+v", c)
	}
	if _, errOut, code := cli(t, env, "token", "--client-id", subReg.ClientID, "--client-secret-file", subSecret,
		"--subject-token-file", writeFile(t, "empty.txt", "\n")); code == 0 || !strings.Contains(errOut, "empty") {
		t.Fatalf("empty subject file: %d %q", code, errOut)
	}
}
