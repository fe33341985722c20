package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
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

// encode marshals rec as it is stored (HTML escaping off, so paths with
// "&" stay readable in redis-cli).
func encode(rec *Record) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(rec); err != nil {
		return nil, fmt.Errorf("encode audit record: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
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

// body is a record's canonical members without the chain members, sorted
// by key and already encoded. Encoding it is the costly part of sealing;
// it happens in the caller's goroutine, so the committer, which must seal
// one record after the other (each hash links to the one before), only
// splices four members in and hashes.
type body struct {
	members []member
}

type member struct {
	key string
	enc []byte // "key":value
}

// chainKeys are the members the committer fills; sorted.
var chainKeys = [...]string{"hash", "prev", "seq", "writer"}

func encodeBody(rec *Record) (*body, error) {
	r := *rec
	r.Writer, r.Seq, r.Prev, r.Hash = "", 0, "", ""
	raw, err := encode(&r)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	for _, k := range chainKeys {
		delete(obj, k)
	}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	b := &body{members: make([]member, 0, len(keys))}
	for _, k := range keys {
		kb, err := encodeValue(k)
		if err != nil {
			return nil, err
		}
		vb, err := encodeValue(obj[k])
		if err != nil {
			return nil, err
		}
		enc := make([]byte, 0, len(kb)+1+len(vb))
		enc = append(append(append(enc, kb...), ':'), vb...)
		b.members = append(b.members, member{key: k, enc: enc})
	}
	return b, nil
}

// seal returns the hash and the stored JSON (canonical order, hash set).
func (b *body) seal(writer string, seq uint64, prev string) (string, []byte) {
	w, _ := encodeValue(writer)
	p, _ := encodeValue(prev)
	chain := func(hash string) []member {
		h, _ := encodeValue(hash)
		return []member{
			{"hash", append([]byte(`"hash":`), h...)},
			{"prev", append([]byte(`"prev":`), p...)},
			{"seq", strconv.AppendUint([]byte(`"seq":`), seq, 10)},
			{"writer", append([]byte(`"writer":`), w...)},
		}
	}
	canon := b.merge(chain(""))
	sum := sha256.Sum256(canon)
	hash := hex.EncodeToString(sum[:])
	return hash, b.merge(chain(hash))
}

// merge writes the object with the chain members spliced in key order.
func (b *body) merge(chain []member) []byte {
	n := 2
	for _, m := range b.members {
		n += len(m.enc) + 1
	}
	for _, m := range chain {
		n += len(m.enc) + 1
	}
	out := make([]byte, 0, n)
	out = append(out, '{')
	i, j := 0, 0
	for i < len(b.members) || j < len(chain) {
		var m member
		if j >= len(chain) || (i < len(b.members) && b.members[i].key < chain[j].key) {
			m, i = b.members[i], i+1
		} else {
			m, j = chain[j], j+1
		}
		if len(out) > 1 {
			out = append(out, ',')
		}
		out = append(out, m.enc...)
	}
	return append(out, '}')
}

// encodeValue is encoding/json without HTML escaping and newline: the
// same encoder Canonical uses, so both produce the same bytes.
func encodeValue(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("encode audit record: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
