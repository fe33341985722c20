package passport

import (
	"encoding/base64"
	"encoding/json"
	"regexp"
	"slices"
	"strconv"
)

// Refusals of the delegation and confirmation claims.
var (
	// ErrDelegation: act or delegation is malformed or inconsistent.
	ErrDelegation = NewAuthError("bad_delegation", "the passport's delegation claims are not acceptable")
	// ErrConfirmation: cnf is malformed or uses a method other than jkt.
	ErrConfirmation = NewAuthError("bad_cnf", "the passport's cnf claim is not acceptable")
	// ErrDelegatedUnsupported: a verifier that does not check every link
	// of a chain (VerifierConfig.AcceptDelegated) refuses delegated
	// passports rather than accept one whose ancestor was revoked.
	ErrDelegatedUnsupported = NewAuthError("delegation_unsupported", "delegated passports are not accepted here")
	// ErrBoundUnsupported: a verifier that does not check DPoP proofs
	// (VerifierConfig.AcceptBound) refuses bound passports rather than
	// accept one as a bearer token.
	ErrBoundUnsupported = NewAuthError("bound_unsupported", "DPoP-bound passports are not accepted here")
)

var (
	// chainIDRE bounds the agent ids a chain may name. They become parts
	// of Redis keys (AgentKey) when a verifier checks each link, so hash
	// tag braces and ':' never appear.
	chainIDRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
	// chainJTIRE bounds the passport ids a chain may name.
	chainJTIRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)
	// chainTypeRE and chainNameRE are the authority's agent type and name
	// formats.
	chainTypeRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)
	chainNameRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
)

// checkDelegation checks act and delegation strictly. It reads the decoded
// JSON (what a policy sees), so an unknown member, an explicit null or a
// number where a string belongs is refused rather than ignored by the Go
// struct, and then requires the struct to say the same. The chain must be
// consistent everywhere it is repeated: act nests the same agents as
// delegation.chain (innermost is the root), the chain ends with sub, no
// agent appears twice, and the passport's trust level is no higher than
// any link's.
func checkDelegation(payload map[string]any, c *Claims) error {
	actV, hasAct := payload["act"]
	delV, hasDel := payload["delegation"]
	if !hasAct && !hasDel {
		return nil
	}
	if !hasAct || !hasDel || c.Act == nil || c.Delegation == nil {
		return ErrDelegation
	}
	// act, outermost first: the agent the holder acts for, then the one
	// that one acted for, down to the root.
	var acts []string
	for cur := actV; ; {
		m, ok := cur.(map[string]any)
		if !ok || !onlyKeys(m, "sub", "act") {
			return ErrDelegation
		}
		sub, ok := m["sub"].(string)
		if !ok || !chainIDRE.MatchString(sub) || len(acts) == MaxDelegationDepth {
			return ErrDelegation
		}
		acts = append(acts, sub)
		next, ok := m["act"]
		if !ok {
			break
		}
		cur = next
	}
	d, ok := delV.(map[string]any)
	if !ok || !exactKeys(d, "depth", "root", "chain", "links") {
		return ErrDelegation
	}
	depth, ok := smallInt(d["depth"])
	if !ok || depth < 1 || depth > MaxDelegationDepth || depth != len(acts) {
		return ErrDelegation
	}
	chain, ok := stringList(d["chain"], chainIDRE)
	if !ok || len(chain) != depth+1 || chain[depth] != c.Subject {
		return ErrDelegation
	}
	if root, _ := d["root"].(string); root != chain[0] {
		return ErrDelegation
	}
	for i := range depth {
		if chain[i] != acts[depth-1-i] || slices.Contains(chain[i+1:], chain[i]) {
			return ErrDelegation
		}
	}
	links, ok := d["links"].([]any)
	if !ok || len(links) != depth {
		return ErrDelegation
	}
	for i, lv := range links {
		l, ok := lv.(map[string]any)
		if !ok || !exactKeys(l, "sub", "name", "type", "trust_level", "jti") {
			return ErrDelegation
		}
		sub, _ := l["sub"].(string)
		name, _ := l["name"].(string)
		typ, _ := l["type"].(string)
		jti, _ := l["jti"].(string)
		trust, _ := l["trust_level"].(string)
		if sub != chain[i] || !chainNameRE.MatchString(name) || !chainTypeRE.MatchString(typ) ||
			!chainJTIRE.MatchString(jti) || !TrustLevel(trust).Valid() ||
			c.Agent.TrustLevel.Rank() > TrustLevel(trust).Rank() {
			return ErrDelegation
		}
	}
	// The struct was decoded from the same bytes; this only guards
	// against a decoder that one day reads them differently.
	if !sameChain(c, acts, chain) {
		return ErrDelegation
	}
	return nil
}

func sameChain(c *Claims, acts, chain []string) bool {
	d := c.Delegation
	if d.Depth != len(acts) || d.Root != chain[0] || !slices.Equal(d.Chain, chain) || len(d.Links) != len(acts) {
		return false
	}
	a := c.Act
	for _, sub := range acts {
		if a == nil || a.Sub != sub {
			return false
		}
		a = a.Act
	}
	if a != nil {
		return false
	}
	for i, l := range d.Links {
		if l.Sub != chain[i] {
			return false
		}
	}
	return true
}

// checkConfirmation checks cnf strictly: an object with exactly one
// member, jkt (RFC 9449) or x5t#S256 (RFC 8705), a base64url SHA-256
// thumbprint. Any other confirmation method (jwk, both at once, ...) is
// refused: a verifier must never take a passport bound in a way it does
// not check for a bearer one.
func checkConfirmation(payload map[string]any, c *Claims) error {
	v, ok := payload["cnf"]
	if !ok {
		return nil
	}
	m, ok := v.(map[string]any)
	if !ok || c.Cnf == nil {
		return ErrConfirmation
	}
	switch {
	case exactKeys(m, "jkt"):
		jkt, ok := m["jkt"].(string)
		if !ok || !ValidThumbprint(jkt) || c.Cnf.JKT != jkt || c.Cnf.X5T != "" {
			return ErrConfirmation
		}
	case exactKeys(m, "x5t#S256"):
		x5t, ok := m["x5t#S256"].(string)
		if !ok || !ValidThumbprint(x5t) || c.Cnf.X5T != x5t || c.Cnf.JKT != "" {
			return ErrConfirmation
		}
	default:
		return ErrConfirmation
	}
	return nil
}

// ValidThumbprint reports whether s has the form of a base64url SHA-256
// JWK thumbprint: 43 characters of unpadded base64url, 32 bytes.
func ValidThumbprint(s string) bool {
	if len(s) != 43 {
		return false
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(s)
	return err == nil && len(b) == 32
}

// onlyKeys reports whether every key of m is one of keys.
func onlyKeys(m map[string]any, keys ...string) bool {
	for k := range m {
		if !slices.Contains(keys, k) {
			return false
		}
	}
	return true
}

// exactKeys reports whether m has exactly keys.
func exactKeys(m map[string]any, keys ...string) bool {
	if len(m) != len(keys) {
		return false
	}
	return onlyKeys(m, keys...)
}

// smallInt reads a JSON integer written plainly (no fraction, no
// exponent), as encoding/json decodes it into an int.
func smallInt(v any) (int, bool) {
	n, ok := v.(json.Number)
	if !ok {
		return 0, false
	}
	i, err := strconv.Atoi(string(n))
	if err != nil {
		return 0, false
	}
	return i, true
}

func stringList(v any, re *regexp.Regexp) ([]string, bool) {
	l, ok := v.([]any)
	if !ok {
		return nil, false
	}
	out := make([]string, 0, len(l))
	for _, x := range l {
		s, ok := x.(string)
		if !ok || !re.MatchString(s) {
			return nil, false
		}
		out = append(out, s)
	}
	return out, true
}
