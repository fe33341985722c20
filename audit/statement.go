package audit

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Statement types.
const (
	// StatementCheckpoint says the writer sealed new checkpoints.
	StatementCheckpoint = "checkpoint"
	// StatementHeartbeat says the writer is still running; nothing new.
	StatementHeartbeat = "heartbeat"
	// StatementClose is the writer's last word at a clean shutdown, after
	// its final checkpoints: nothing of it may follow in Redis.
	StatementClose = "close"
)

// StatementVersion is the "v" of every statement.
const StatementVersion = 1

// Limits of one statement, so that a witness can bound what a stranger
// makes it parse and store.
const (
	MaxStatementBytes   = 1 << 20
	MaxStatementStreams = 10000
	maxWriterID         = 128
)

// Statement is what an audit writer tells its witnesses: signed with the
// writer's checkpoint key, it names every stream the writer has sealed and
// the head of its last acknowledged checkpoint there. The witness keeps the
// statements outside Redis, so that whoever can write Redis cannot take back
// what a writer had sealed: a deleted stream, a cut tail, a rewritten head
// or a restored snapshot no longer matches what the witness holds.
//
// Time is the writer's clock and increases strictly from one statement of a
// writer to the next, so a witness refuses a replayed statement.
type Statement struct {
	V       int          `json:"v"`
	Type    string       `json:"type"`
	Writer  string       `json:"writer"`
	Time    string       `json:"time"` // RFC 3339, UTC, ns
	Streams []StreamHead `json:"streams"`
	// Key is the writer's public key (base64 std). A witness pins the
	// first key it sees for a writer (or takes it from a trusted-keys
	// file) and refuses statements under any other.
	Key string `json:"key"`
	Sig string `json:"sig"` // base64 std Ed25519 over StatementSigningBytes
}

// StreamHead is a writer's last acknowledged checkpoint in one stream.
type StreamHead struct {
	Tenant string `json:"tenant"`
	// Seq and Hash are the checkpoint record's own seq and hash: the
	// writer's chain head it seals.
	Seq        uint64 `json:"seq"`
	Hash       string `json:"hash"`
	Checkpoint string `json:"checkpoint"` // its type (periodic, shutdown, retention)
	Time       string `json:"time"`       // its time
}

// statementDomain separates statement signatures from checkpoint
// signatures made with the same key.
const statementDomain = "passport-audit-witness/v1\n"

// StatementSigningBytes returns what a writer signs: the domain string and
// the canonical JSON of the stored statement with "sig" empty. It works on
// the raw object, so members a newer writer adds are covered too.
func StatementSigningBytes(raw []byte) ([]byte, error) {
	canon, err := canonicalWith(raw, "sig")
	if err != nil {
		return nil, err
	}
	return append([]byte(statementDomain), canon...), nil
}

// SignStatement fills st.Key and st.Sig and returns the statement's
// compact JSON.
func SignStatement(st *Statement, key ed25519.PrivateKey) ([]byte, error) {
	st.Key = base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey))
	st.Sig = ""
	raw, err := json.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("encode statement: %w", err)
	}
	msg, err := StatementSigningBytes(raw)
	if err != nil {
		return nil, err
	}
	st.Sig = base64.StdEncoding.EncodeToString(ed25519.Sign(key, msg))
	raw, err = json.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("encode statement: %w", err)
	}
	return raw, nil
}

// ParseStatement decodes and checks a statement's form and its signature
// under the key it carries (pinning that key is the witness's business).
// It returns the statement, its public key and the compact JSON to store.
func ParseStatement(raw []byte) (*Statement, ed25519.PublicKey, []byte, error) {
	if len(raw) > MaxStatementBytes {
		return nil, nil, nil, fmt.Errorf("%w: larger than %d bytes", ErrStatementInvalid, MaxStatementBytes)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return nil, nil, nil, fmt.Errorf("%w: %v", ErrStatementInvalid, err)
	}
	compact := buf.Bytes()
	// Decoders disagree on repeated member names (most keep the last, some
	// the first): a statement with one could say one writer to the witness
	// and another to whoever reads its files later.
	if err := noDuplicateMembers(compact); err != nil {
		return nil, nil, nil, fmt.Errorf("%w: %v", ErrStatementInvalid, err)
	}
	var st Statement
	if err := json.Unmarshal(compact, &st); err != nil {
		return nil, nil, nil, fmt.Errorf("%w: %v", ErrStatementInvalid, err)
	}
	if err := st.validate(); err != nil {
		return nil, nil, nil, fmt.Errorf("%w: %v", ErrStatementInvalid, err)
	}
	pub, err := ParsePublicKey(st.Key)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w: key: %v", ErrStatementInvalid, err)
	}
	sig, err := base64.StdEncoding.DecodeString(st.Sig)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return nil, nil, nil, fmt.Errorf("%w: malformed signature", ErrStatementInvalid)
	}
	msg, err := StatementSigningBytes(compact)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w: %v", ErrStatementInvalid, err)
	}
	if !ed25519.Verify(pub, msg, sig) {
		return nil, nil, nil, fmt.Errorf("%w: signature does not verify", ErrStatementInvalid)
	}
	return &st, pub, compact, nil
}

// StatementTime parses the statement's time.
func (st *Statement) StatementTime() time.Time {
	t, _ := time.Parse(time.RFC3339Nano, st.Time)
	return t
}

func (st *Statement) validate() error {
	if st.V != StatementVersion {
		return fmt.Errorf("version %d, want %d", st.V, StatementVersion)
	}
	switch st.Type {
	case StatementCheckpoint, StatementHeartbeat, StatementClose:
	default:
		return fmt.Errorf("type %q", st.Type)
	}
	if err := validWriterID(st.Writer); err != nil {
		return err
	}
	if _, err := time.Parse(time.RFC3339Nano, st.Time); err != nil {
		return fmt.Errorf("time: %v", err)
	}
	if len(st.Streams) > MaxStatementStreams {
		return fmt.Errorf("more than %d streams", MaxStatementStreams)
	}
	for i, h := range st.Streams {
		if err := validTenant(h.Tenant); err != nil {
			return err
		}
		if i > 0 && st.Streams[i-1].Tenant >= h.Tenant {
			return errors.New("streams not sorted by tenant, or a tenant twice")
		}
		if h.Seq == 0 || !isHexHash(h.Hash) {
			return fmt.Errorf("stream %s: seq and a SHA-256 hex hash are required", h.Tenant)
		}
	}
	return nil
}

// validWriterID keeps writer ids printable and short: they name files at
// a witness and appear in its URLs.
func validWriterID(w string) error {
	if w == "" || len(w) > maxWriterID {
		return fmt.Errorf("writer id must be 1 to %d bytes", maxWriterID)
	}
	for _, r := range w {
		if r <= ' ' || r == 0x7f || r == '/' || r == '\\' {
			return fmt.Errorf("writer id %q: character %q not allowed", w, r)
		}
	}
	return nil
}

func isHexHash(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

// sortHeads orders heads by tenant, as statements require.
func sortHeads(hs []StreamHead) {
	sort.Slice(hs, func(i, j int) bool { return hs[i].Tenant < hs[j].Tenant })
}

// noDuplicateMembers refuses JSON in which an object names a member twice.
func noDuplicateMembers(raw []byte) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	var walk func(depth int) error
	walk = func(depth int) error {
		if depth > 32 {
			return errors.New("nested too deep")
		}
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'):
			seen := map[string]bool{}
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return err
				}
				name, _ := k.(string)
				if seen[name] {
					return fmt.Errorf("member %q appears twice", name)
				}
				seen[name] = true
				if err := walk(depth + 1); err != nil {
					return err
				}
			}
			_, err = dec.Token()
			return err
		case json.Delim('['):
			for dec.More() {
				if err := walk(depth + 1); err != nil {
					return err
				}
			}
			_, err = dec.Token()
			return err
		}
		return nil
	}
	return walk(0)
}
