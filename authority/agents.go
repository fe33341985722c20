package authority

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/passport"
	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/bcrypt"
)

// clientsKey maps every client id to its tenant, so the token endpoint can
// find an agent from its client id alone. It is one global hash.
const clientsKey = "passport:authority:clients"

// Agent ids (which are also the OAuth client ids) are "agt_" followed by 20
// random bytes in base64url: unguessable, so knowing one agent's id says
// nothing about another's, and recognisable in logs.
const agentIDPrefix = "agt_"

// Sentinel errors of the registry.
var (
	ErrAgentNotFound = errors.New("agent not found")
	ErrInvalidAgent  = errors.New("invalid agent")
)

// Fields of the agent hash besides passport.Field*.
const (
	fieldID            = "id"
	fieldTenant        = "tenant"
	fieldName          = "name"
	fieldType          = "type"
	fieldTrust         = "trust_level"
	fieldCapabilities  = "capabilities"
	fieldSecretHash    = "secret_hash"
	fieldPublicKey     = "public_key"
	fieldOwner         = passport.FieldOwner
	fieldCreatedAt     = "created_at"
	fieldBlockedReason = "blocked_reason"
	fieldBlockedAt     = "blocked_at"
	fieldRequireDPoP   = "require_dpop"
	fieldMayDelegateTo = "may_delegate_to"
	// An agent registered on first use of an external identity
	// (enroll.go) keeps the issuer's name and the subject.
	fieldEnrollIssuer  = "enroll_issuer"
	fieldEnrollSubject = "enroll_subject"
)

// delegateTypePrefix marks a may_delegate_to entry naming an agent type.
const delegateTypePrefix = "type:"

// maxDelegates bounds an agent's may_delegate_to list.
const maxDelegates = 32

// agentRecord is an agent as stored in its hash (passport.AgentKey).
type agentRecord struct {
	ID            string
	Tenant        string
	Name          string
	Type          string
	Trust         passport.TrustLevel
	Capabilities  []string
	SecretHash    []byte
	PublicKeyText string
	PublicKey     crypto.PublicKey
	Owner         string
	CreatedAt     time.Time
	Blocked       bool
	BlockedReason string
	BlockedAt     time.Time
	Reputation    passport.Reputation
	// RequireDPoP: only DPoP-bound passports for this agent.
	RequireDPoP bool
	// MayDelegateTo: agent ids and "type:<type>" entries that may act on
	// this agent's behalf (token exchange).
	MayDelegateTo []string
	// EnrollIssuer and EnrollSubject: the trusted issuer (its configured
	// name) and the subject this agent was registered for on first use.
	EnrollIssuer  string
	EnrollSubject string
	// TLSSubject ("<kind>:<value>") or TLSCert (x5t#S256 of a self-signed
	// certificate): mutual TLS client authentication (mtls.go).
	TLSSubject string
	TLSCert    string
}

// allowsDelegationTo reports whether actor may act on r's behalf.
func (r *agentRecord) allowsDelegationTo(actor *agentRecord) bool {
	return mayDelegateTo(r.MayDelegateTo, actor)
}

func mayDelegateTo(list []string, actor *agentRecord) bool {
	return slices.Contains(list, actor.ID) || slices.Contains(list, delegateTypePrefix+actor.Type)
}

func tenantAgentsKey(tenant string) string { return passport.TenantKey(tenant, "agents") }

// issuedKey is a zset of the jtis issued to one agent, scored by exp, so a
// block can revoke every passport still alive.
func issuedKey(tenant, id string) string { return passport.TenantKey(tenant, "agent", id, "issued") }

func decodeAgent(m map[string]string) (*agentRecord, error) {
	if m[fieldID] == "" {
		return nil, ErrAgentNotFound
	}
	r := &agentRecord{
		ID: m[fieldID], Tenant: m[fieldTenant], Name: m[fieldName], Type: m[fieldType],
		Trust:         passport.TrustLevel(m[fieldTrust]),
		SecretHash:    []byte(m[fieldSecretHash]),
		PublicKeyText: m[fieldPublicKey],
		Owner:         m[fieldOwner],
		Blocked:       m[passport.FieldBlocked] == "1",
		BlockedReason: m[fieldBlockedReason],
		RequireDPoP:   m[fieldRequireDPoP] == "1",
		EnrollIssuer:  m[fieldEnrollIssuer],
		EnrollSubject: m[fieldEnrollSubject],
		TLSSubject:    m[fieldTLSSubject],
		TLSCert:       m[fieldTLSCert],
	}
	if err := json.Unmarshal([]byte(m[fieldCapabilities]), &r.Capabilities); err != nil && m[fieldCapabilities] != "" {
		return nil, fmt.Errorf("decode agent %s capabilities: %w", r.ID, err)
	}
	if err := json.Unmarshal([]byte(m[fieldMayDelegateTo]), &r.MayDelegateTo); err != nil && m[fieldMayDelegateTo] != "" {
		return nil, fmt.Errorf("decode agent %s may_delegate_to: %w", r.ID, err)
	}
	r.CreatedAt, _ = time.Parse(time.RFC3339Nano, m[fieldCreatedAt])
	r.BlockedAt, _ = time.Parse(time.RFC3339Nano, m[fieldBlockedAt])
	r.Reputation = reputationFromHash(m)
	if r.PublicKeyText != "" {
		pk, err := parsePublicKey(r.PublicKeyText)
		if err != nil {
			return nil, fmt.Errorf("decode agent %s public key: %w", r.ID, err)
		}
		r.PublicKey = pk
	}
	return r, nil
}

func reputationFromHash(m map[string]string) passport.Reputation {
	f := func(k string) float64 { v, _ := strconv.ParseFloat(m[k], 64); return v }
	ms := func(k string) int64 { v, _ := strconv.ParseInt(m[k], 10, 64); return v }
	return passport.Reputation{
		Score:     f(passport.FieldReputation),
		Baseline:  f(passport.FieldReputationBaseline),
		UpdatedAt: time.UnixMilli(ms(passport.FieldReputationAt)),
		HalfLife:  time.Duration(ms(passport.FieldReputationHalfLife)) * time.Millisecond,
	}
}

func reputationFields(r passport.Reputation) map[string]any {
	return map[string]any{
		passport.FieldReputation:         strconv.FormatFloat(r.Score, 'f', -1, 64),
		passport.FieldReputationBaseline: strconv.FormatFloat(r.Baseline, 'f', -1, 64),
		passport.FieldReputationAt:       strconv.FormatInt(r.UpdatedAt.UnixMilli(), 10),
		passport.FieldReputationHalfLife: strconv.FormatInt(r.HalfLife.Milliseconds(), 10),
	}
}

// getAgent loads one agent of a tenant.
func (a *Authority) getAgent(ctx context.Context, tenant, id string) (*agentRecord, error) {
	if !ValidTenant(tenant) || !validAgentID(id) {
		return nil, ErrAgentNotFound
	}
	m, err := a.rdb.HGetAll(ctx, passport.AgentKey(tenant, id)).Result()
	if err != nil {
		return nil, fmt.Errorf("load agent %s: %w", id, err)
	}
	return decodeAgent(m)
}

// lookupClient finds an agent by client id alone.
func (a *Authority) lookupClient(ctx context.Context, clientID string) (*agentRecord, error) {
	if !validAgentID(clientID) {
		return nil, ErrAgentNotFound
	}
	tenant, err := a.rdb.HGet(ctx, clientsKey, clientID).Result()
	if errors.Is(err, redis.Nil) {
		return nil, ErrAgentNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("look up client: %w", err)
	}
	return a.getAgent(ctx, tenant, clientID)
}

func validAgentID(id string) bool {
	if !strings.HasPrefix(id, agentIDPrefix) || len(id) > 64 {
		return false
	}
	for _, c := range id[len(agentIDPrefix):] {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return len(id) > len(agentIDPrefix)
}

// ownerOK accepts 1-128 printable characters (no control characters:
// the owner reaches logs, passports and audit records).
func ownerOK(s string) bool {
	if s == "" || len(s) > 128 || !utf8.ValidString(s) {
		return false
	}
	for _, c := range s {
		if !unicode.IsPrint(c) {
			return false
		}
	}
	return true
}

var nameOK = func(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// createAgent validates spec and stores a new agent. It returns the record
// and the client secret, which exists nowhere else after this call.
func (a *Authority) createAgent(ctx context.Context, tenant string, spec client.AgentSpec) (*agentRecord, string, error) {
	var errs []error
	if !ValidTenant(tenant) {
		errs = append(errs, fmt.Errorf("tenant %q: want lowercase letters, digits, '-' or '_'", tenant))
	}
	if !nameOK(spec.Name) {
		errs = append(errs, fmt.Errorf("name %q: want 1-64 letters, digits, '-', '_' or '.'", spec.Name))
	}
	typeCaps, ok := a.types[spec.Type]
	if !ok {
		errs = append(errs, fmt.Errorf("type %q: want one of %s", spec.Type, strings.Join(sortedKeys(a.types), ", ")))
	}
	trust, err := passport.ParseTrustLevel(string(spec.TrustLevel))
	if err != nil {
		errs = append(errs, err)
	}
	caps := spec.Capabilities
	if caps == nil {
		caps = slices.Clone(typeCaps)
	}
	for _, c := range caps {
		if !slices.Contains(a.actions, c) {
			errs = append(errs, fmt.Errorf("capability %q: not a known action (%s)", c, strings.Join(a.actions, ", ")))
		}
	}
	slices.Sort(caps)
	caps = slices.Compact(caps)
	var pub crypto.PublicKey
	if spec.PublicKey != "" {
		if len(spec.PublicKey) > 8192 {
			errs = append(errs, errors.New("public_key: too long"))
		} else if pub, err = parsePublicKey(spec.PublicKey); err != nil {
			errs = append(errs, fmt.Errorf("public_key: %w", err))
		}
	}
	if spec.Owner != "" && !ownerOK(spec.Owner) {
		errs = append(errs, errors.New("owner: want at most 128 printable characters"))
	}
	delegates := slices.Clone(spec.MayDelegateTo)
	if len(delegates) > maxDelegates {
		errs = append(errs, fmt.Errorf("may_delegate_to: at most %d entries", maxDelegates))
		delegates = nil
	}
	for _, d := range delegates {
		typ, isType := strings.CutPrefix(d, delegateTypePrefix)
		switch {
		case isType && a.types[typ] != nil:
		case !isType && validAgentID(d):
		default:
			errs = append(errs, fmt.Errorf("may_delegate_to: %q: want an agent id (agt_...) or type:<agent type> (%s)",
				safeEntry(d), strings.Join(sortedKeys(a.types), ", ")))
		}
	}
	slices.Sort(delegates)
	delegates = slices.Compact(delegates)
	tlsSubject, err := tlsSubjectOf(spec)
	if err != nil {
		errs = append(errs, err)
	}
	tlsCert, err := tlsCertOf(spec)
	if err != nil {
		errs = append(errs, err)
	}
	if tlsSubject != "" && tlsCert != "" {
		errs = append(errs, errors.New("tls_client_certificate and tls_client_auth_*: register one way of certificate authentication"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, "", fmt.Errorf("%w: %w", ErrInvalidAgent, err)
	}
	secret := "cs_" + randomID(32)
	hash, err := bcrypt.GenerateFromPassword([]byte(secret), a.cfg.Clients.BcryptCost)
	if err != nil {
		return nil, "", fmt.Errorf("hash client secret: %w", err)
	}
	now := a.now()
	base := a.cfg.Reputation.baseline(trust)
	rec := &agentRecord{
		ID: agentIDPrefix + randomID(20), Tenant: tenant, Name: spec.Name, Type: spec.Type, Trust: trust,
		Capabilities: caps, SecretHash: hash, PublicKeyText: spec.PublicKey, PublicKey: pub, Owner: spec.Owner, CreatedAt: now,
		Reputation:  passport.Reputation{Score: base, Baseline: base, UpdatedAt: now, HalfLife: a.cfg.Reputation.HalfLife},
		RequireDPoP: spec.RequireDPoP, MayDelegateTo: delegates,
		TLSSubject: tlsSubject, TLSCert: tlsCert,
	}
	fields := agentFields(rec)
	// The agent hash and the tenant index share the tenant's hash slot;
	// the global client index is written first so that a client id never
	// points at nothing for long if the second step fails.
	if err := a.rdb.HSet(ctx, clientsKey, rec.ID, tenant).Err(); err != nil {
		return nil, "", fmt.Errorf("store agent: %w", err)
	}
	pipe := a.rdb.TxPipeline()
	pipe.HSet(ctx, passport.AgentKey(tenant, rec.ID), fields)
	pipe.SAdd(ctx, tenantAgentsKey(tenant), rec.ID)
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, "", fmt.Errorf("store agent: %w", err)
	}
	return rec, secret, nil
}

// agentFields is rec as the fields of its hash (passport.AgentKey).
func agentFields(rec *agentRecord) map[string]any {
	capsJSON, _ := json.Marshal(rec.Capabilities)
	fields := map[string]any{
		fieldID: rec.ID, fieldTenant: rec.Tenant, fieldName: rec.Name, fieldType: rec.Type, fieldTrust: string(rec.Trust),
		fieldCapabilities: string(capsJSON), fieldSecretHash: string(rec.SecretHash), fieldPublicKey: rec.PublicKeyText,
		fieldCreatedAt: rec.CreatedAt.UTC().Format(time.RFC3339Nano), passport.FieldBlocked: "0",
	}
	if rec.Owner != "" {
		fields[fieldOwner] = rec.Owner
	}
	if rec.RequireDPoP {
		fields[fieldRequireDPoP] = "1"
	}
	if len(rec.MayDelegateTo) > 0 {
		b, _ := json.Marshal(rec.MayDelegateTo)
		fields[fieldMayDelegateTo] = string(b)
	}
	if rec.TLSSubject != "" {
		fields[fieldTLSSubject] = rec.TLSSubject
	}
	if rec.TLSCert != "" {
		fields[fieldTLSCert] = rec.TLSCert
	}
	if rec.EnrollIssuer != "" {
		fields[fieldEnrollIssuer] = rec.EnrollIssuer
		fields[fieldEnrollSubject] = rec.EnrollSubject
	}
	for k, v := range reputationFields(rec.Reputation) {
		fields[k] = v
	}
	return fields
}

// listAgents returns a tenant's agents sorted by name then id.
func (a *Authority) listAgents(ctx context.Context, tenant string) ([]*agentRecord, error) {
	ids, err := a.rdb.SMembers(ctx, tenantAgentsKey(tenant)).Result()
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	pipe := a.rdb.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.HGetAll(ctx, passport.AgentKey(tenant, id))
	}
	if len(ids) > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, fmt.Errorf("list agents: %w", err)
		}
	}
	out := make([]*agentRecord, 0, len(ids))
	for _, c := range cmds {
		r, err := decodeAgent(c.Val())
		if errors.Is(err, ErrAgentNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(x, y *agentRecord) int {
		if c := strings.Compare(x.Name, y.Name); c != 0 {
			return c
		}
		return strings.Compare(x.ID, y.ID)
	})
	return out, nil
}

// toAPI renders an agent for the admin API.
func (a *Authority) toAPI(r *agentRecord) client.Agent {
	score := r.Reputation.At(a.now())
	out := client.Agent{
		ID: r.ID, ClientID: r.ID, Tenant: r.Tenant, Name: r.Name, Type: r.Type, Owner: r.Owner, TrustLevel: r.Trust,
		Capabilities: r.Capabilities, Reputation: round2(score), ReputationBaseline: r.Reputation.Baseline,
		EffectiveTrustLevel: r.Trust.Min(a.cfg.Reputation.allowed(score)),
		Blocked:             r.Blocked, BlockedReason: r.BlockedReason, HasPublicKey: r.PublicKey != nil,
		RequireDPoP: r.RequireDPoP, MayDelegateTo: r.MayDelegateTo,
		TLSClientAuth: r.TLSSubject, HasTLSClientCert: r.TLSCert != "",
		CreatedAt: r.CreatedAt.UTC(),
	}
	if out.Capabilities == nil {
		out.Capabilities = []string{}
	}
	if out.MayDelegateTo == nil {
		out.MayDelegateTo = []string{}
	}
	if r.Blocked && !r.BlockedAt.IsZero() {
		t := r.BlockedAt.UTC()
		out.BlockedAt = &t
	}
	if r.EnrollIssuer != "" {
		out.Enrollment = &client.Enrollment{Issuer: r.EnrollIssuer, Subject: r.EnrollSubject}
	}
	return out
}

// safeEntry keeps a refused may_delegate_to entry out of an answer unless
// it is short and plain.
func safeEntry(s string) string {
	if len(s) > 80 || !nameOK(strings.ReplaceAll(s, ":", "")) {
		return "(malformed)"
	}
	return s
}

func round2(f float64) float64 { return float64(int64(f*100+0.5)) / 100 }

// parsePublicKey accepts a PEM "PUBLIC KEY" (PKIX) or a JWK (JSON) holding
// an Ed25519 or P-256 key: the two algorithms passports use, so that
// agents need no other crypto.
func parsePublicKey(text string) (crypto.PublicKey, error) {
	text = strings.TrimSpace(text)
	if strings.HasPrefix(text, "{") {
		return parseJWK([]byte(text))
	}
	block, _ := pem.Decode([]byte(text))
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, errors.New("want a PEM PUBLIC KEY block or a JWK")
	}
	pk, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse public key: %w", err)
	}
	return checkKey(pk)
}

func checkKey(pk crypto.PublicKey) (crypto.PublicKey, error) {
	switch k := pk.(type) {
	case ed25519.PublicKey:
		return k, nil
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() {
			return k, nil
		}
	}
	return nil, fmt.Errorf("unsupported key type %T: want Ed25519 or ECDSA P-256", pk)
}

func parseJWK(b []byte) (crypto.PublicKey, error) {
	var j struct {
		Kty, Crv, X, Y, D string
	}
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, fmt.Errorf("parse JWK: %w", err)
	}
	if j.D != "" {
		// Refuse outright: the agent just sent its private key over the
		// wire and must generate a new one.
		return nil, errors.New("JWK contains a private key (\"d\"); register the public key only")
	}
	dec := base64.RawURLEncoding.DecodeString
	switch {
	case j.Kty == "OKP" && j.Crv == "Ed25519":
		x, err := dec(j.X)
		if err != nil || len(x) != ed25519.PublicKeySize {
			return nil, errors.New("JWK: bad Ed25519 x")
		}
		return ed25519.PublicKey(x), nil
	case j.Kty == "EC" && j.Crv == "P-256":
		x, errX := dec(j.X)
		y, errY := dec(j.Y)
		if errX != nil || errY != nil || len(x) != 32 || len(y) != 32 {
			return nil, errors.New("JWK: bad P-256 coordinates")
		}
		raw := append(append([]byte{4}, x...), y...)
		pk, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), raw)
		if err != nil {
			return nil, errors.New("JWK: point not on P-256")
		}
		return pk, nil
	}
	return nil, fmt.Errorf("JWK: unsupported kty %q crv %q: want OKP/Ed25519 or EC/P-256", j.Kty, j.Crv)
}
