package audit

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
)

// Checkpoint types written in Checkpoint.Type.
const (
	CheckpointPeriodic  = "periodic"  // every CheckpointEvery records or CheckpointInterval
	CheckpointShutdown  = "shutdown"  // on a clean stop, so the whole chain is sealed
	CheckpointRetention = "retention" // just before trimming, with the anchors of what stays
	// CheckpointLoss is written when the writer finds its stored chain
	// head behind records Redis had acknowledged (a failover promoted a
	// replica that never got them): Lost names them, and verify reports
	// them as deleted.
	CheckpointLoss = "loss"
)

// Checkpoint is the Details of a KindCheckpoint record: the writer's
// signature over its chain head in one stream. Head is the hash of the
// writer's previous record in that stream (the checkpoint record's Prev),
// and since every hash covers the one before it, the signature seals the
// whole chain up to the checkpoint: rewriting anything before it needs the
// writer's private key.
type Checkpoint struct {
	Type    string `json:"type"`
	Stream  string `json:"stream"`
	Writer  string `json:"writer"`
	Seq     uint64 `json:"seq"`  // seq of the checkpoint record itself
	Head    string `json:"head"` // hash of the writer's previous record ("" if none)
	Records uint64 `json:"records"`
	Time    string `json:"time"` // RFC 3339, UTC
	// MinID and Anchors are set by retention checkpoints: entries with ids
	// below MinID are trimmed right after this record is written, and for
	// each writer Anchors gives the last trimmed (seq, hash), so the chain
	// that remains is accepted as starting right after it.
	MinID   string            `json:"min_id,omitempty"`
	Anchors map[string]Anchor `json:"anchors,omitempty"`
	// Segment is set by the retention checkpoint of the archiver: the
	// entries trimmed are in this segment file of the archive (its last
	// id and SHA-256), so that a reader of the archive finds a segment
	// that was deleted or replaced, under this signature.
	Segment *SegmentRef `json:"segment,omitempty"`
	// Lost is set by loss checkpoints: the acknowledged records the
	// stored chain no longer has.
	Lost *LostRange `json:"lost,omitempty"`
	// Key is the writer's public key (base64 std), informative only: the
	// verifier takes the key from the trusted-keys file or the writers
	// hash, never from the record it checks.
	Key string `json:"key"`
	Sig string `json:"sig"` // base64 std Ed25519 signature over SigningBytes
}

// LostRange is a writer's acknowledged records that Redis lost: seq
// First..Last of its chain, the last of them with hash LastHash.
type LostRange struct {
	First    uint64 `json:"first"`
	Last     uint64 `json:"last"`
	LastHash string `json:"last_hash"`
}

// Anchor is where a writer's retained chain resumes after trimming.
type Anchor struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

// sigDomain separates checkpoint signatures from anything else the key
// might ever sign.
const sigDomain = "passport-audit-checkpoint/v1\n"

// SigningBytes returns what the writer signs: the domain string followed
// by the canonical JSON of the checkpoint with "sig" empty (sorted keys, as
// for record hashes).
func (c Checkpoint) SigningBytes() ([]byte, error) {
	c.Sig = ""
	raw, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode checkpoint: %w", err)
	}
	canon, err := canonicalWith(raw, "sig")
	if err != nil {
		return nil, err
	}
	return append([]byte(sigDomain), canon...), nil
}

// Sign fills Key and Sig.
func (c *Checkpoint) Sign(key ed25519.PrivateKey) error {
	c.Key = base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey))
	msg, err := c.SigningBytes()
	if err != nil {
		return err
	}
	c.Sig = base64.StdEncoding.EncodeToString(ed25519.Sign(key, msg))
	return nil
}

// ErrBadSignature means a checkpoint does not verify with the writer's key.
var ErrBadSignature = errors.New("checkpoint signature does not verify with the writer's key")

// Verify checks the signature with pub.
func (c Checkpoint) Verify(pub ed25519.PublicKey) error {
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: no valid public key", ErrBadSignature)
	}
	sig, err := base64.StdEncoding.DecodeString(c.Sig)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return fmt.Errorf("%w: malformed signature", ErrBadSignature)
	}
	msg, err := c.SigningBytes()
	if err != nil {
		return err
	}
	if !ed25519.Verify(pub, msg, sig) {
		return ErrBadSignature
	}
	return nil
}

// ParsePublicKey decodes a base64 (std or URL, padded or not) Ed25519
// public key.
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	s = string(bytes.TrimSpace([]byte(s)))
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(b) == ed25519.PublicKeySize {
			return ed25519.PublicKey(b), nil
		}
	}
	return nil, errors.New("parse public key: want base64 of 32 bytes")
}
