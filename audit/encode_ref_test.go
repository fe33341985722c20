package audit

// The former write path, kept as the reference the fast encoder
// (encode.go) must match byte for byte: encode the Record with
// encoding/json, decode it into a map, re-encode every member sorted.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
)

// refSeal is Seal on the former path.
func refSeal(rec *Record) ([]byte, error) {
	b, err := refEncodeBody(rec)
	if err != nil {
		return nil, err
	}
	var stored []byte
	rec.Hash, stored = b.seal(rec.Writer, rec.Seq, rec.Prev)
	return stored, nil
}

// refEncode marshals rec as it is stored (HTML escaping off, so paths with
// "&" stay readable in redis-cli).
func refEncode(rec *Record) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(rec); err != nil {
		return nil, fmt.Errorf("encode audit record: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// refBody is a record's canonical members without the chain members, sorted
// by key and already encoded. Encoding it is the costly part of sealing;
// it happens in the caller's goroutine, so the committer, which must seal
// one record after the other (each hash links to the one before), only
// splices four members in and hashes.
type refBody struct {
	members []member
}

type member struct {
	key string
	enc []byte // "key":value
}

// chainKeys are the members the committer fills; sorted.
var chainKeys = [...]string{"hash", "prev", "seq", "writer"}

func refEncodeBody(rec *Record) (*refBody, error) {
	r := *rec
	r.Writer, r.Seq, r.Prev, r.Hash = "", 0, "", ""
	raw, err := refEncode(&r)
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
	b := &refBody{members: make([]member, 0, len(keys))}
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
func (b *refBody) seal(writer string, seq uint64, prev string) (string, []byte) {
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
func (b *refBody) merge(chain []member) []byte {
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
