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
	"time"

	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/stack"
	"github.com/agentpassport/passport/passport"
	"github.com/spf13/cobra"
)

func (a *app) tokenCmd() *cobra.Command {
	var (
		authorityURL, clientID, secretFlag, secretFile, keyFile string
		scopes                                                  []string
		taskJSON, audience                                      string
		subjectFile, dpopKeyFile                                string
		data, tenant, role                                      string
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
header and claims (decoded, not verified) as JSON after it.

--subject-token-file makes it a token exchange (RFC 8693): the agent trades the
passport in that file (another agent's, which lists this one in may_delegate_to) for
a delegated passport naming the chain in act and delegation. The other flags narrow it.

--dpop-key binds the passport to a key (RFC 9449): a PEM PKCS#8 Ed25519 or P-256
private key. The answer's token_type is then DPoP, and every call with the passport
needs "Authorization: DPoP <passport>" and a fresh proof in a DPoP header, which
"passport token proof" makes (the command prints how on stderr).`,
		Example: `  passport token --client-id agt_x --client-secret-file healer.secret --scope service.restart \
      --task '{"id":"inc-42","purpose":"restart checkout","target":"checkout"}' --decode
  # a passport bound to a key, then a proof for one call with it:
  export PASSPORT=$(passport token --client-id agt_x --client-secret-file healer.secret --dpop-key healer.key.pem)
  curl -X POST -H "Authorization: DPoP $PASSPORT" \
      -H "DPoP: $(passport token proof --dpop-key healer.key.pem --passport "$PASSPORT" --method POST --url http://127.0.0.1:8080/services/checkout/restart)" \
      http://127.0.0.1:8080/services/checkout/restart
  # a sub-agent acting on the healer's behalf:
  passport token --client-id agt_sub --client-secret-file sub.secret --subject-token-file healer-passport.txt --scope service.get`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var demo *stack.Demo
			if data != "" {
				d, err := stack.ReadDemo(data)
				if err != nil {
					return fmt.Errorf("--data %s: %w", data, err)
				}
				demo = &d
			}
			byRole := demo != nil && (cmd.Flags().Changed("role") || cmd.Flags().Changed("tenant"))
			if clientID == "" && !byRole {
				clientID = a.getenv("PASSPORT_CLIENT_ID")
			}
			var demoSecret string
			if demo != nil {
				ag, err := demoAgent(*demo, clientID, tenant, role)
				if err != nil {
					return err
				}
				clientID, demoSecret = ag.ClientID, ag.ClientSecret
			}
			if clientID == "" {
				return errors.New("--client-id is required (or PASSPORT_CLIENT_ID, or --data DIR with --tenant and --role)")
			}
			secret := secretFlag
			if secret == "" {
				secret = demoSecret
			}
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
			if dpopKeyFile != "" {
				k, err := readPrivateKey(dpopKeyFile)
				if err != nil {
					return fmt.Errorf("--dpop-key: %w", err)
				}
				opts.DPoPKey = k
			}
			var subject string
			if subjectFile != "" {
				b, err := os.ReadFile(subjectFile)
				if err != nil {
					return fmt.Errorf("--subject-token-file: %w", err)
				}
				if subject = strings.TrimSpace(string(b)); subject == "" {
					return fmt.Errorf("--subject-token-file %s is empty", subjectFile)
				}
			}
			var demoAuthority string
			if demo != nil {
				demoAuthority = demo.URLs.Authority
			}
			authorityURL = firstNonEmpty(authorityURL, demoAuthority, a.getenv("PASSPORT_AUTHORITY_URL"), authorityDefaultURL)
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
			var tok client.Token
			if subject != "" {
				tok, err = c.Exchange(cmd.Context(), client.ExchangeRequest{SubjectToken: subject, TokenRequest: req})
			} else {
				tok, err = c.Token(cmd.Context(), req)
			}
			if err != nil {
				return err
			}
			if asJSON {
				out := map[string]any{"access_token": tok.Raw, "token_type": tok.Type, "expires_at": tok.ExpiresAt, "scope": tok.Scope}
				if opts.DPoPKey != nil {
					jkt, _ := passport.JWKThumbprint(opts.DPoPKey.Public())
					out["dpop_jkt"] = jkt
				}
				if err := printAuthorityJSON(a.stdout, out); err != nil {
					return err
				}
			} else {
				fmt.Fprintln(a.stdout, tok.Raw)
			}
			if tok.Bound() {
				fmt.Fprintf(a.stderr, "token_type DPoP: the passport is bound to %s. Send each call with\n"+
					"  -H \"Authorization: DPoP $PASSPORT\" -H \"DPoP: $(passport token proof --dpop-key %s --passport \"$PASSPORT\" --method METHOD --url URL)\"\n"+
					"where URL is the proxy's resource URL plus the path (one proof per call).\n", dpopKeyFile, dpopKeyFile)
			}
			if decode {
				return decodeJWT(a, tok.Raw)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&authorityURL, "authority", "", "authority URL (default: demo.json with --data, $PASSPORT_AUTHORITY_URL, "+authorityDefaultURL+")")
	f.StringVar(&data, "data", "", "directory of a running 'passport up': the authority and the agent's credentials come from DIR/demo.json (default $PASSPORT_DATA)")
	f.StringVar(&tenant, "tenant", "", "with --data: the demo agent's tenant (default the demo's first tenant)")
	f.StringVar(&role, "role", "observer", "with --data: the demo agent's role: healer, chaos, observer or rogue")
	f.StringVar(&clientID, "client-id", "", "the agent's client id (default $PASSPORT_CLIENT_ID)")
	f.StringVar(&secretFlag, "client-secret", "", "client secret (visible in ps; prefer --client-secret-file or $PASSPORT_CLIENT_SECRET)")
	f.StringVar(&secretFile, "client-secret-file", "", "file holding the client secret")
	f.StringVar(&keyFile, "private-key", "", "PEM PKCS#8 private key (Ed25519 or P-256): authenticate with private_key_jwt")
	f.StringArrayVar(&scopes, "scope", nil, "action to ask for (repeat, or space-separated); default every registered capability")
	f.StringVar(&taskJSON, "task", "", `task JSON, e.g. {"id":"inc-42","target":"checkout","actions":["service.restart"]}`)
	f.StringVar(&audience, "audience", "", "audience (resource server); default the authority's first audience")
	f.BoolVar(&decode, "decode", false, "also print the decoded header and claims as JSON")
	f.BoolVar(&asJSON, "json", false, "print {access_token, token_type, expires_at, scope, dpop_jkt} as JSON")
	f.StringVar(&subjectFile, "subject-token-file", "", "token exchange (RFC 8693): file holding the passport of the agent to act for")
	f.StringVar(&dpopKeyFile, "dpop-key", "", "PEM PKCS#8 private key (Ed25519 or P-256): bind the passport to it (DPoP, RFC 9449)")
	cmd.AddCommand(a.tokenProofCmd())
	return cmd
}

// tokenProofCmd prints a DPoP proof for one HTTP request, for curl users.
func (a *app) tokenProofCmd() *cobra.Command {
	var keyFile, method, target, passportFlag, passportFile, nonce string
	cmd := &cobra.Command{
		Use:   "proof",
		Short: "Print a DPoP proof (RFC 9449) for one HTTP request",
		Long: `Print a DPoP proof signed by --dpop-key for one request: --method and --url (its
query is left out of the proof). With a passport (--passport, --passport-file or
$PASSPORT) the proof carries its hash (ath), as every call to the proxy needs; without
one it is a proof for the token endpoint. A proof is single-use and expires within a
minute: make one per call. --nonce adds the server nonce a DPoP-Nonce header asked for.`,
		Example: `  passport token proof --dpop-key healer.key.pem --passport "$PASSPORT" --method POST \
      --url http://127.0.0.1:8080/services/checkout/restart`,
		Args: cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			if keyFile == "" || target == "" {
				return errors.New("--dpop-key and --url are required")
			}
			k, err := readPrivateKey(keyFile)
			if err != nil {
				return fmt.Errorf("--dpop-key: %w", err)
			}
			tok := passportFlag
			if passportFile != "" {
				b, err := os.ReadFile(passportFile)
				if err != nil {
					return fmt.Errorf("--passport-file: %w", err)
				}
				tok = strings.TrimSpace(string(b))
			}
			if tok == "" {
				tok = a.getenv("PASSPORT")
			}
			p, err := client.NewDPoPProof(k, strings.ToUpper(method), target, tok, nonce, time.Now())
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, p)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&keyFile, "dpop-key", "", "PEM PKCS#8 private key (Ed25519 or P-256) the passport is bound to (required)")
	f.StringVar(&method, "method", "GET", "HTTP method of the call")
	f.StringVar(&target, "url", "", "URL of the call, as the server knows itself (required)")
	f.StringVar(&passportFlag, "passport", "", "the bound passport (default $PASSPORT); none: a proof for the token endpoint")
	f.StringVar(&passportFile, "passport-file", "", "file holding the bound passport")
	f.StringVar(&nonce, "nonce", "", "server nonce from a DPoP-Nonce header")
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

// demoAgent picks the agent of demo.json: the one with clientID when it
// is there, else the agent of role in tenant (default: the first tenant).
// A client id demo.json does not know is returned as is, without a secret.
func demoAgent(d stack.Demo, clientID, tenant, role string) (stack.DemoAgent, error) {
	if clientID != "" {
		for _, ag := range d.Agents {
			if ag.ClientID == clientID {
				return ag, nil
			}
		}
		return stack.DemoAgent{ClientID: clientID}, nil
	}
	if tenant == "" && len(d.Tenants) > 0 {
		tenant = d.Tenants[0]
	}
	var roles []string
	for _, ag := range d.Agents {
		if ag.Tenant == tenant && ag.Role == role {
			return ag, nil
		}
		if ag.Tenant == tenant {
			roles = append(roles, ag.Role)
		}
	}
	return stack.DemoAgent{}, fmt.Errorf("demo.json has no %s agent in tenant %q (roles there: %s; tenants: %s)",
		role, tenant, strings.Join(roles, ", "), strings.Join(d.Tenants, ", "))
}
