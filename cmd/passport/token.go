package main

import (
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/passport"
	"github.com/spf13/cobra"
)

func (a *app) tokenCmd() *cobra.Command {
	var (
		authorityURL, clientID, secretFlag, secretFile, keyFile string
		scopes                                                  []string
		taskJSON, audience                                      string
		decode, asJSON                                          bool
	)
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Get a passport for an agent and print it",
		Long: `Exchange an agent's credentials for a passport (POST /oauth2/token,
grant_type=client_credentials) and print the passport, so that

  export PASSPORT=$(passport token --client-id agt_... --client-secret-file secret.txt)

works. The client secret comes from --client-secret-file, PASSPORT_CLIENT_SECRET or
--client-secret (the last shows in ps; avoid it). With --private-key the agent
authenticates with private_key_jwt instead. --decode also prints the passport's
header and claims (decoded, not verified) as JSON after it.`,
		Example: `  passport token --client-id agt_x --client-secret-file healer.secret --scope service.restart \
      --task '{"id":"inc-42","purpose":"restart checkout","target":"checkout"}' --decode`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if clientID == "" {
				clientID = a.getenv("PASSPORT_CLIENT_ID")
			}
			if clientID == "" {
				return errors.New("--client-id is required (or PASSPORT_CLIENT_ID)")
			}
			secret := secretFlag
			if v := a.getenv("PASSPORT_CLIENT_SECRET"); secret == "" && v != "" {
				secret = v
			}
			if secretFile != "" {
				b, err := os.ReadFile(secretFile)
				if err != nil {
					return fmt.Errorf("client secret: %w", err)
				}
				secret = strings.TrimSpace(string(b))
			}
			opts, err := a.clientOptions()
			if err != nil {
				return err
			}
			if keyFile != "" {
				k, err := readPrivateKey(keyFile)
				if err != nil {
					return err
				}
				opts.PrivateKey = k
			}
			if authorityURL == "" {
				authorityURL = a.getenv("PASSPORT_AUTHORITY_URL")
			}
			if authorityURL == "" {
				authorityURL = authorityDefaultURL
			}
			c, err := client.New(authorityURL, clientID, passport.Secret(secret), opts)
			if err != nil {
				return err
			}
			req := client.TokenRequest{Audience: audience}
			for _, s := range scopes {
				req.Scope = append(req.Scope, strings.Fields(s)...)
			}
			if taskJSON != "" {
				var t passport.Task
				dec := json.NewDecoder(strings.NewReader(taskJSON))
				dec.DisallowUnknownFields()
				if err := dec.Decode(&t); err != nil {
					return fmt.Errorf("--task: want JSON {\"id\",\"purpose\",\"target\",\"actions\"}: %w", err)
				}
				req.Task = &t
			}
			tok, err := c.Token(cmd.Context(), req)
			if err != nil {
				return err
			}
			if asJSON {
				if err := printAuthorityJSON(a.stdout, map[string]any{
					"access_token": tok.Raw, "expires_at": tok.ExpiresAt, "scope": tok.Scope,
				}); err != nil {
					return err
				}
			} else {
				fmt.Fprintln(a.stdout, tok.Raw)
			}
			if decode {
				return decodeJWT(a, tok.Raw)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&authorityURL, "authority", "", "authority URL (default $PASSPORT_AUTHORITY_URL or "+authorityDefaultURL+")")
	f.StringVar(&clientID, "client-id", "", "the agent's client id (default $PASSPORT_CLIENT_ID)")
	f.StringVar(&secretFlag, "client-secret", "", "client secret (visible in ps; prefer --client-secret-file or $PASSPORT_CLIENT_SECRET)")
	f.StringVar(&secretFile, "client-secret-file", "", "file holding the client secret")
	f.StringVar(&keyFile, "private-key", "", "PEM PKCS#8 private key (Ed25519 or P-256): authenticate with private_key_jwt")
	f.StringArrayVar(&scopes, "scope", nil, "action to ask for (repeat, or space-separated); default every registered capability")
	f.StringVar(&taskJSON, "task", "", `task JSON, e.g. {"id":"inc-42","target":"checkout","actions":["service.restart"]}`)
	f.StringVar(&audience, "audience", "", "audience (resource server); default the authority's first audience")
	f.BoolVar(&decode, "decode", false, "also print the decoded header and claims as JSON")
	f.BoolVar(&asJSON, "json", false, "print {access_token, expires_at, scope} as JSON")
	return cmd
}

func readPrivateKey(path string) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("private key: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("private key %s: want a PEM \"PRIVATE KEY\" (PKCS#8) block", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("private key %s: %w", path, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key %s: not a signing key", path)
	}
	return s, nil
}

// decodeJWT prints the header and claims of a compact JWS, unverified.
func decodeJWT(a *app, raw string) error {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return errors.New("decode: not a compact JWS")
	}
	out := map[string]json.RawMessage{}
	for i, name := range []string{"header", "claims"} {
		b, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			return fmt.Errorf("decode %s: %w", name, err)
		}
		out[name] = b
	}
	return printAuthorityJSON(a.stdout, out)
}
