package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// The canonical encoding of a record, which its hash covers:
//
//  1. Take the record's JSON object as stored in the stream (field "r").
//  2. Set the member "hash" to the empty string "" (add it if absent).
//  3. Re-encode the whole value with every object's members sorted by key
//     (byte order of the UTF-8 key), no insignificant whitespace, numbers
//     exactly as written in the stored JSON, strings escaped as Go's
//     encoding/json does with HTML escaping off (", \, and control
//     characters escaped; U+2028/U+2029 as \u2028/\u2029; invalid UTF-8 is
//     not accepted).
//
// The hash is the lowercase hex SHA-256 of those bytes. The record's "prev"
// member is inside the encoding, so each hash covers the whole chain before
// it. Working on the stored object (not on the Go struct) means members a
// newer writer adds are covered too, and an older verifier still checks
// them. testdata/canonical.golden pins the encoding.

// ErrMalformed reports a stored entry that is not a valid record.
var ErrMalformed = errors.New("malformed audit record")

// Canonical returns the canonical encoding of a stored record's JSON.
func Canonical(raw []byte) ([]byte, error) { return canonicalWith(raw, "hash") }

// canonicalWith is Canonical with the emptied member named.
func canonicalWith(raw []byte, member string) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if obj == nil {
		return nil, fmt.Errorf("%w: not a JSON object", ErrMalformed)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: trailing data", ErrMalformed)
	}
	if !utf8.Valid(raw) {
		return nil, fmt.Errorf("%w: invalid UTF-8", ErrMalformed)
	}
	obj[member] = ""
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(obj); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// HashRaw returns the hex SHA-256 of the canonical encoding of raw.
func HashRaw(raw []byte) (string, error) {
	c, err := Canonical(raw)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(c)
	return hex.EncodeToString(sum[:]), nil
}

// Seal sets rec.Hash from the canonical encoding of rec and returns the
// stored JSON. Writer, Seq and Prev must already be set.
func Seal(rec *Record) ([]byte, error) {
	b, err := encodeBody(rec)
	if err != nil {
		return nil, err
	}
	var stored []byte
	rec.Hash, stored = b.seal(rec.Writer, rec.Seq, rec.Prev)
	return stored, nil
}
