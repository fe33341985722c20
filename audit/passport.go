package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// A passport's claims are recorded once: a passport record (KindPassport,
// the claims in Details) goes into the tenant's stream before the first
// decision made on that passport, and each decision references it by its
// stream id and the SHA-256 of its claims (Record.PassportID and
// PassportSHA256) instead of repeating them in its input. ExpandInput and
// InputResolver put the claims back for replay and export; the verifier
// checks every reference against the record it names.

// ErrPassportRef is wrapped by every failure to resolve a decision's
// passport reference: the referenced record is gone, is not a passport
// record, or holds other claims.
var ErrPassportRef = errors.New("passport reference does not resolve")

// PassportDigest is the digest a decision records for the claims: SHA-256
// of their canonical JSON (the form a record stores them in), unpadded
// base64url.
func PassportDigest(claims json.RawMessage) (string, error) {
	c, err := appendCanonicalJSON(nil, claims)
	if err != nil {
		return "", fmt.Errorf("%w: passport claims: %w", errEncode, err)
	}
	sum := sha256.Sum256(c)
	return base64.RawURLEncoding.EncodeToString(sum[:]), nil
}

// PassportRecord is the record of a passport's claims, written before the
// first decision that references it.
func PassportRecord(tenant, agentID, jti string, claims json.RawMessage, now time.Time) *Record {
	return &Record{V: Version, Kind: KindPassport, Time: now, Tenant: tenant, AgentID: agentID, JTI: jti, Details: claims}
}

// ExpandInput returns rec's policy input as the policy saw it: with the
// claims of the passport record it references put back under "passport".
// A record without a reference is returned as it is. byID reads one
// record of the same stream by its id.
func ExpandInput(rec *Record, byID func(id string) (*Record, error)) (json.RawMessage, error) {
	if rec.PassportID == "" || len(rec.Input) == 0 {
		return rec.Input, nil
	}
	pr, err := byID(rec.PassportID)
	if err != nil {
		return nil, err
	}
	if err := checkPassportRef(rec, pr); err != nil {
		return nil, err
	}
	return spliceMember(rec.Input, "passport", pr.Details)
}

// checkPassportRef says whether pr is the passport record rec references.
func checkPassportRef(rec, pr *Record) error {
	if pr == nil {
		return fmt.Errorf("%w: no record at %s", ErrPassportRef, rec.PassportID)
	}
	if pr.Kind != KindPassport || pr.JTI != rec.JTI || pr.Tenant != rec.Tenant {
		return fmt.Errorf("%w: the record at %s is not passport %q of tenant %q", ErrPassportRef, rec.PassportID, rec.JTI, rec.Tenant)
	}
	d, err := PassportDigest(pr.Details)
	if err != nil || d != rec.PassportSHA256 {
		return fmt.Errorf("%w: the claims at %s do not match the decision's digest", ErrPassportRef, rec.PassportID)
	}
	return nil
}

// spliceMember adds "name":value to the JSON object obj. Member order
// does not matter to the readers (replay parses the object).
func spliceMember(obj json.RawMessage, name string, value json.RawMessage) (json.RawMessage, error) {
	obj = bytes.TrimSpace(obj)
	if len(obj) < 2 || obj[0] != '{' || !json.Valid(obj) {
		return nil, fmt.Errorf("%w: the decision's input is not a JSON object", ErrPassportRef)
	}
	key, _ := json.Marshal(name)
	out := make([]byte, 0, len(obj)+len(key)+len(value)+2)
	out = append(out, '{')
	out = append(out, key...)
	out = append(out, ':')
	out = append(out, value...)
	if rest := bytes.TrimSpace(obj[1:]); len(rest) > 0 && rest[0] != '}' {
		out = append(out, ',')
	}
	return append(out, obj[1:]...), nil
}

// InputResolver expands the inputs of one tenant's decision records read
// from Redis, keeping the passport records it has read (a passport serves
// many decisions).
type InputResolver struct {
	rdb    redis.Cmdable
	stream string
	seen   map[string]*Record
}

// NewInputResolver resolves the references of tenant's decision records.
func NewInputResolver(rdb redis.Cmdable, tenant string) *InputResolver {
	return &InputResolver{rdb: rdb, stream: StreamKey(tenant), seen: map[string]*Record{}}
}

// Note keeps a passport record met while reading the stream, so that the
// decisions after it resolve without another read.
func (ir *InputResolver) Note(id string, rec *Record) {
	if rec.Kind == KindPassport && len(ir.seen) < maxResolverCache {
		ir.seen[id] = rec
	}
}

// maxResolverCache bounds what a resolver keeps; past it, references are
// read from Redis one by one.
const maxResolverCache = 100_000

// Input is rec's full policy input (ExpandInput).
func (ir *InputResolver) Input(ctx context.Context, rec *Record) (json.RawMessage, error) {
	return ExpandInput(rec, func(id string) (*Record, error) {
		if pr, ok := ir.seen[id]; ok {
			return pr, nil
		}
		msgs, err := ir.rdb.XRange(ctx, ir.stream, id, id).Result()
		if err != nil {
			return nil, fmt.Errorf("read passport record %s: %w", id, err)
		}
		if len(msgs) == 0 {
			return nil, nil
		}
		pr, _, err := ParseMessage(msgs[0])
		if err != nil {
			return nil, fmt.Errorf("%w: the record at %s does not decode", ErrPassportRef, id)
		}
		ir.Note(id, pr)
		return pr, nil
	})
}
