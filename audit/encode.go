package audit

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"sync"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/agentpassport/passport/internal/jsonstr"
)

// The write path produces the canonical encoding (see Canonical) directly
// from the Record, without encoding/json: the members are appended in key
// order by hand, strings are escaped exactly as encoding/json escapes them
// with HTML escaping off, numbers are formatted as encoding/json formats
// them, and the JSON payloads (Input, Details) are re-written into
// canonical form by a small single-pass parser. The result is byte for byte
// what the former path produced (encode the struct, decode it into a map,
// re-encode sorted); encode_ref_test.go keeps that path and checks the two
// against each other on random and hostile records. Verification still goes
// through Canonical, which accepts any stored bytes.

// maxDepth is encoding/json's nesting limit. The former write path decoded
// the whole record, so a payload may nest one level less than this.
const maxDepth = 10000

// errEncode wraps what cannot be encoded (NaN, a year past 9999, a payload
// that is not JSON).
var errEncode = errors.New("encode audit record")

// body is a record's canonical members without the chain members, sorted
// by key and already encoded, each followed by a comma. Encoding it is the
// costly part of sealing; it happens in the caller's goroutine, so the
// committer, which must seal one record after the other (each hash links to
// the one before), only splices four members in and hashes.
type body struct {
	buf []byte
	// cut[0..2] are where "hash", "prev" and "seq" go; "writer" sorts
	// after every other member and closes the object.
	cut [3]int
}

// Member names with their quotes and colon, in canonical (byte) order.
// TestRecordKeysSorted checks the order against the struct tags.
const (
	kAction         = `"action":`
	kAgentID        = `"agent_id":`
	kAgentName      = `"agent_name":`
	kAgentType      = `"agent_type":`
	kChain          = `"chain":`
	kClientReqID    = `"client_request_id":`
	kDecision       = `"decision":`
	kDetails        = `"details":`
	kHash           = `"hash":`
	kInput          = `"input":`
	kJTI            = `"jti":`
	kKind           = `"kind":`
	kLatencyMS      = `"latency_ms":`
	kMethod         = `"method":`
	kPassportID     = `"passport_id":`
	kPassportSHA    = `"passport_sha256":`
	kPath           = `"path":`
	kPolicyRevision = `"policy_revision":`
	kPrev           = `"prev":`
	kReasons        = `"reasons":`
	kReputation     = `"reputation":`
	kRequestID      = `"request_id":`
	kResource       = `"resource":`
	kRoute          = `"route":`
	kSeq            = `"seq":`
	kShadow         = `"shadow":`
	kStatus         = `"status":`
	kSubject        = `"subject":`
	kTaskID         = `"task_id":`
	kTenant         = `"tenant":`
	kTime           = `"time":`
	kTrustLevel     = `"trust_level":`
	kV              = `"v":`
	kWriter         = `"writer":`
)

// encodeBody encodes rec's members except the chain members (Writer, Seq,
// Prev, Hash), which seal adds.
func encodeBody(rec *Record) (*body, error) {
	b := &body{}
	buf := make([]byte, 0, 512+len(rec.Input)+len(rec.Details)+4*len(rec.Path))
	var err error
	buf = appendStrMember(buf, kAction, rec.Action)
	buf = appendStrMember(buf, kAgentID, rec.AgentID)
	buf = appendStrMember(buf, kAgentName, rec.AgentName)
	buf = appendStrMember(buf, kAgentType, rec.AgentType)
	if len(rec.Chain) > 0 {
		buf = append(buf, kChain...)
		buf = append(appendChain(buf, rec.Chain), ',')
	}
	buf = appendStrMember(buf, kClientReqID, rec.ClientRequestID)
	buf = appendStrMember(buf, kDecision, rec.Decision)
	if len(rec.Details) > 0 {
		buf = append(buf, kDetails...)
		if buf, err = appendCanonicalJSON(buf, rec.Details); err != nil {
			return nil, fmt.Errorf("%w: details: %w", errEncode, err)
		}
		buf = append(buf, ',')
	}
	b.cut[0] = len(buf) // "hash"
	if len(rec.Input) > 0 {
		buf = append(buf, kInput...)
		if buf, err = appendCanonicalJSON(buf, rec.Input); err != nil {
			return nil, fmt.Errorf("%w: input: %w", errEncode, err)
		}
		buf = append(buf, ',')
	}
	buf = appendStrMember(buf, kJTI, rec.JTI)
	buf = append(buf, kKind...)
	buf = append(appendString(buf, string(rec.Kind), false), ',')
	if buf, err = appendFloatMember(buf, kLatencyMS, rec.LatencyMS); err != nil {
		return nil, err
	}
	buf = appendStrMember(buf, kMethod, rec.Method)
	buf = appendStrMember(buf, kPassportID, rec.PassportID)
	buf = appendStrMember(buf, kPassportSHA, rec.PassportSHA256)
	buf = appendStrMember(buf, kPath, rec.Path)
	buf = appendStrMember(buf, kPolicyRevision, rec.PolicyRevision)
	b.cut[1] = len(buf) // "prev"
	if len(rec.Reasons) > 0 {
		buf = append(buf, kReasons...)
		buf = append(appendStrings(buf, rec.Reasons), ',')
	}
	if buf, err = appendFloatMember(buf, kReputation, rec.Reputation); err != nil {
		return nil, err
	}
	buf = appendStrMember(buf, kRequestID, rec.RequestID)
	buf = appendStrMember(buf, kResource, rec.Resource)
	buf = appendStrMember(buf, kRoute, rec.Route)
	b.cut[2] = len(buf) // "seq"
	if sh := rec.Shadow; sh != nil {
		buf = append(buf, kShadow...)
		buf = append(buf, `{"allow":`...)
		buf = strconv.AppendBool(buf, sh.Allow)
		buf = append(buf, `,"disagree":`...)
		buf = strconv.AppendBool(buf, sh.Disagree)
		if len(sh.Reasons) > 0 {
			buf = append(buf, `,"reasons":`...)
			buf = appendStrings(buf, sh.Reasons)
		}
		buf = append(buf, `,"revision":`...)
		buf = append(appendString(buf, sh.Revision, false), '}', ',')
	}
	if rec.Status != 0 {
		buf = append(buf, kStatus...)
		buf = append(strconv.AppendInt(buf, int64(rec.Status), 10), ',')
	}
	buf = appendStrMember(buf, kSubject, rec.Subject)
	buf = appendStrMember(buf, kTaskID, rec.TaskID)
	buf = append(buf, kTenant...)
	buf = append(appendString(buf, rec.Tenant, false), ',')
	buf = append(buf, kTime...)
	buf = append(buf, '"')
	if buf, err = rec.Time.AppendText(buf); err != nil {
		return nil, fmt.Errorf("%w: %w", errEncode, err)
	}
	buf = append(buf, '"', ',')
	buf = appendStrMember(buf, kTrustLevel, rec.TrustLevel)
	buf = append(buf, kV...)
	buf = append(strconv.AppendInt(buf, int64(rec.V), 10), ',')
	b.buf = buf
	return b, nil
}

// appendStrMember appends "key":"s", unless s is empty (omitempty).
func appendStrMember(buf []byte, key, s string) []byte {
	if s == "" {
		return buf
	}
	buf = append(buf, key...)
	return append(appendString(buf, s, false), ',')
}

// appendFloatMember appends `"key":f,` unless f is zero (omitempty).
func appendFloatMember(buf []byte, key string, f float64) ([]byte, error) {
	if f == 0 {
		return buf, nil
	}
	buf, err := appendFloat(append(buf, key...), f)
	if err != nil {
		return nil, err
	}
	return append(buf, ','), nil
}

func appendStrings(buf []byte, list []string) []byte {
	buf = append(buf, '[')
	for i, s := range list {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = appendString(buf, s, false)
	}
	return append(buf, ']')
}

// appendChain appends a delegation chain: [{"id":…,"name":…},…], members
// in canonical order, name omitted when empty.
func appendChain(buf []byte, chain []ChainLink) []byte {
	buf = append(buf, '[')
	for i, l := range chain {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, `{"id":`...)
		buf = appendString(buf, l.ID, false)
		if l.Name != "" {
			buf = append(buf, `,"name":`...)
			buf = appendString(buf, l.Name, false)
		}
		buf = append(buf, '}')
	}
	return append(buf, ']')
}

// appendFloat formats f as encoding/json formats a float64 (ES6 number to
// string), which the canonical form keeps as written.
func appendFloat(buf []byte, f float64) ([]byte, error) {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return nil, fmt.Errorf("%w: unsupported value: %s", errEncode, strconv.FormatFloat(f, 'g', -1, 64))
	}
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	buf = strconv.AppendFloat(buf, f, format, -1, 64)
	if format == 'e' {
		// e-09 -> e-9, as encoding/json does.
		n := len(buf)
		if n >= 4 && buf[n-4] == 'e' && buf[n-3] == '-' && buf[n-2] == '0' {
			buf[n-2] = buf[n-1]
			buf = buf[:n-1]
		}
	}
	return buf, nil
}

// seal returns the hash and the stored JSON (canonical order, hash set):
// it writes the object once with "hash":"", hashes it, and splices the hex
// hash in.
func (b *body) seal(writer string, seq uint64, prev string) (string, []byte) {
	const hexLen = 2 * sha256.Size
	n := 2 + len(b.buf) + len(kHash) + 3 + hexLen + len(kPrev) + len(prev) + 8 +
		len(kSeq) + 21 + len(kWriter) + len(writer) + 8
	out := make([]byte, 0, n)
	out = append(out, '{')
	out = append(out, b.buf[:b.cut[0]]...)
	out = append(out, kHash...)
	out = append(out, '"')
	at := len(out)
	out = append(out, '"', ',')
	out = append(out, b.buf[b.cut[0]:b.cut[1]]...)
	out = append(out, kPrev...)
	// The chain members were encoded once by encoding/json (not round
	// tripped), so invalid UTF-8 becomes the escape \ufffd here; Cap keeps
	// it from reaching this point.
	out = append(appendString(out, prev, true), ',')
	out = append(out, b.buf[b.cut[1]:b.cut[2]]...)
	out = append(out, kSeq...)
	out = append(strconv.AppendUint(out, seq, 10), ',')
	out = append(out, b.buf[b.cut[2]:]...)
	out = append(out, kWriter...)
	out = append(appendString(out, writer, true), '}')
	sum := sha256.Sum256(out)
	end := len(out)
	out = slices.Grow(out, hexLen)[:end+hexLen]
	copy(out[at+hexLen:], out[at:end])
	hex.Encode(out[at:at+hexLen], sum[:])
	return string(out[at : at+hexLen]), out
}

// appendString appends s quoted as encoding/json quotes a string with HTML
// escaping off (internal/jsonstr). An invalid UTF-8 byte becomes U+FFFD:
// written as is (the canonical form of a value that went through
// encoding/json, then a decoder) or, with escapeInvalid, as the escape
// \ufffd (encoding/json once).
func appendString[Bytes []byte | string](dst []byte, s Bytes, escapeInvalid bool) []byte {
	if escapeInvalid {
		return jsonstr.Append(dst, s, jsonstr.EscapeInvalid)
	}
	return jsonstr.Append(dst, s, 0)
}

// appendCanonicalJSON appends the canonical form of the JSON value src:
// what decoding it (numbers as json.Number) and re-encoding it with
// encoding/json (HTML escaping off, map keys sorted) gives. Objects keep
// the last of duplicate members, as the decoder does. An already canonical
// value is copied through without sorting.
func appendCanonicalJSON(dst, src []byte) ([]byte, error) {
	c := canonicalizers.Get().(*canonicalizer)
	defer c.release()
	c.src, c.i = src, 0
	dst, err := c.value(dst, 1)
	if err != nil {
		return nil, err
	}
	c.ws()
	if c.i != len(c.src) {
		return nil, c.errorf("trailing data")
	}
	return dst, nil
}

// canonicalizers keeps the scratch space of appendCanonicalJSON between
// records.
var canonicalizers = sync.Pool{New: func() any {
	return &canonicalizer{spans: make([]span, 0, 64)}
}}

func (c *canonicalizer) release() {
	c.src = nil
	c.keys, c.str, c.tmp = c.keys[:0], c.str[:0], c.tmp[:0]
	c.spans = c.spans[:0]
	// Oversized scratch (a payload past the usual caps) is not kept.
	if cap(c.tmp) > 64<<10 || cap(c.str) > 64<<10 || cap(c.keys) > 64<<10 || cap(c.spans) > 4096 {
		return
	}
	canonicalizers.Put(c)
}

type canonicalizer struct {
	src   []byte
	i     int
	spans []span // members of the objects being parsed, innermost last
	tmp   []byte // an object's members while they are reordered
	str   []byte // an unescaped string value
	keys  []byte // unescaped member names
}

// span is one encoded member `"key":value` in the output. Its decoded
// key, the sort key, is src[k0:k1], or keys[k0:k1] when it had to be
// unescaped. No pointers: sorting spans costs no write barriers.
type span struct {
	pre        uint64 // the key's first 8 bytes, big-endian, zero-padded
	k0, k1     int
	unescaped  bool
	start, end int
}

// compare orders spans by decoded key; the prefixes settle most pairs.
func (c *canonicalizer) compare(a, b span) int {
	if a.pre != b.pre {
		return cmp.Compare(a.pre, b.pre)
	}
	return bytes.Compare(c.key(a), c.key(b))
}

func prefix(key []byte) uint64 {
	var p [8]byte
	copy(p[:], key)
	return binary.BigEndian.Uint64(p[:])
}

func (c *canonicalizer) key(s span) []byte {
	if s.unescaped {
		return c.keys[s.k0:s.k1]
	}
	return c.src[s.k0:s.k1]
}

func (c *canonicalizer) errorf(format string, args ...any) error {
	return fmt.Errorf("invalid JSON at offset %d: %s", c.i, fmt.Sprintf(format, args...))
}

func (c *canonicalizer) ws() {
	for c.i < len(c.src) {
		switch c.src[c.i] {
		case ' ', '\t', '\n', '\r':
			c.i++
		default:
			return
		}
	}
}

// value parses one value at nesting depth depth (the record is 1).
func (c *canonicalizer) value(dst []byte, depth int) ([]byte, error) {
	c.ws()
	if c.i >= len(c.src) {
		return nil, c.errorf("unexpected end")
	}
	switch ch := c.src[c.i]; {
	case ch == '{':
		return c.object(dst, depth+1)
	case ch == '[':
		return c.array(dst, depth+1)
	case ch == '"':
		raw, esc, err := c.rawString()
		if err != nil {
			return nil, err
		}
		if esc {
			c.str = unquote(c.str[:0], raw)
			raw = c.str
		}
		return appendString(dst, raw, false), nil
	case ch == 't':
		return c.literal(dst, "true")
	case ch == 'f':
		return c.literal(dst, "false")
	case ch == 'n':
		return c.literal(dst, "null")
	case ch == '-' || ('0' <= ch && ch <= '9'):
		return c.number(dst)
	default:
		return nil, c.errorf("unexpected character %q", ch)
	}
}

func (c *canonicalizer) literal(dst []byte, lit string) ([]byte, error) {
	if !bytes.HasPrefix(c.src[c.i:], []byte(lit)) {
		return nil, c.errorf("invalid literal")
	}
	c.i += len(lit)
	return append(dst, lit...), nil
}

// number checks the JSON number grammar and copies it as written.
func (c *canonicalizer) number(dst []byte) ([]byte, error) {
	s, i := c.src, c.i
	start := i
	if s[i] == '-' {
		i++
	}
	digits := func() int {
		n := 0
		for i < len(s) && '0' <= s[i] && s[i] <= '9' {
			i++
			n++
		}
		return n
	}
	switch {
	case i < len(s) && s[i] == '0':
		i++
	case i < len(s) && '1' <= s[i] && s[i] <= '9':
		digits()
	default:
		c.i = i
		return nil, c.errorf("invalid number")
	}
	if i < len(s) && s[i] == '.' {
		i++
		if digits() == 0 {
			c.i = i
			return nil, c.errorf("invalid number")
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if digits() == 0 {
			c.i = i
			return nil, c.errorf("invalid number")
		}
	}
	c.i = i
	return append(dst, s[start:i]...), nil
}

// rawString parses a string at c.i and returns its contents between the
// quotes, and whether they must be unescaped (escapes, or invalid UTF-8,
// which decoding replaces).
func (c *canonicalizer) rawString() (raw []byte, esc bool, err error) {
	s := c.src
	i := c.i + 1
	start := i
	for i < len(s) {
		ch := s[i]
		switch {
		case ch == '"':
			c.i = i + 1
			return s[start:i], esc, nil
		case ch == '\\':
			esc = true
			if i+1 >= len(s) {
				c.i = i
				return nil, false, c.errorf("unterminated string")
			}
			switch s[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(s) || getu4(s[i:]) < 0 {
					c.i = i
					return nil, false, c.errorf("invalid \\u escape")
				}
				i += 6
			default:
				c.i = i
				return nil, false, c.errorf("invalid escape")
			}
		case ch < 0x20:
			c.i = i
			return nil, false, c.errorf("control character in string")
		case ch < utf8.RuneSelf:
			i++
		default:
			r, size := utf8.DecodeRune(s[i:])
			if r == utf8.RuneError && size == 1 {
				esc = true
			}
			i += size
		}
	}
	c.i = i
	return nil, false, c.errorf("unterminated string")
}

func (c *canonicalizer) array(dst []byte, depth int) ([]byte, error) {
	if depth > maxDepth {
		return nil, c.errorf("exceeded max depth")
	}
	c.i++ // [
	dst = append(dst, '[')
	c.ws()
	if c.i < len(c.src) && c.src[c.i] == ']' {
		c.i++
		return append(dst, ']'), nil
	}
	for n := 0; ; n++ {
		if n > 0 {
			dst = append(dst, ',')
		}
		var err error
		if dst, err = c.value(dst, depth); err != nil {
			return nil, err
		}
		c.ws()
		if c.i >= len(c.src) {
			return nil, c.errorf("unexpected end")
		}
		switch c.src[c.i] {
		case ',':
			c.i++
		case ']':
			c.i++
			return append(dst, ']'), nil
		default:
			return nil, c.errorf("expected , or ]")
		}
	}
}

func (c *canonicalizer) object(dst []byte, depth int) ([]byte, error) {
	if depth > maxDepth {
		return nil, c.errorf("exceeded max depth")
	}
	c.i++ // {
	dst = append(dst, '{')
	open := len(dst)
	c.ws()
	if c.i < len(c.src) && c.src[c.i] == '}' {
		c.i++
		return append(dst, '}'), nil
	}
	base := len(c.spans)
	sorted := true
	for n := 0; ; n++ {
		c.ws()
		if c.i >= len(c.src) || c.src[c.i] != '"' {
			return nil, c.errorf("expected member name")
		}
		raw, esc, err := c.rawString()
		if err != nil {
			return nil, err
		}
		sp := span{k0: c.i - 1 - len(raw), k1: c.i - 1}
		if esc {
			// Keys outlive c.str (the values reuse it).
			sp.k0 = len(c.keys)
			c.keys = unquote(c.keys, raw)
			sp.k1, sp.unescaped = len(c.keys), true
		}
		key := c.key(sp)
		sp.pre = prefix(key)
		if n > 0 {
			dst = append(dst, ',')
			if c.compare(c.spans[len(c.spans)-1], sp) >= 0 {
				sorted = false
			}
		}
		sp.start = len(dst)
		dst = appendString(dst, key, false)
		c.ws()
		if c.i >= len(c.src) || c.src[c.i] != ':' {
			return nil, c.errorf("expected colon")
		}
		c.i++
		dst = append(dst, ':')
		if dst, err = c.value(dst, depth); err != nil {
			return nil, err
		}
		sp.end = len(dst)
		c.spans = append(c.spans, sp)
		c.ws()
		if c.i >= len(c.src) {
			return nil, c.errorf("unexpected end")
		}
		if c.src[c.i] == ',' {
			c.i++
			continue
		}
		if c.src[c.i] != '}' {
			return nil, c.errorf("expected , or }")
		}
		c.i++
		break
	}
	members := c.spans[base:]
	if !sorted {
		// Sort by decoded key; of duplicates the last one wins, as when
		// decoding into a map.
		slices.SortStableFunc(members, c.compare)
		c.tmp = append(c.tmp[:0], dst[open:]...)
		dst = dst[:open]
		for j, m := range members {
			if j+1 < len(members) && c.compare(m, members[j+1]) == 0 {
				continue
			}
			if len(dst) > open {
				dst = append(dst, ',')
			}
			dst = append(dst, c.tmp[m.start-open:m.end-open]...)
		}
	}
	c.spans = c.spans[:base]
	return append(dst, '}'), nil
}

// getu4 decodes \uXXXX at the start of s, or returns -1.
func getu4(s []byte) rune {
	if len(s) < 6 || s[0] != '\\' || s[1] != 'u' {
		return -1
	}
	var r rune
	for _, ch := range s[2:6] {
		switch {
		case '0' <= ch && ch <= '9':
			ch -= '0'
		case 'a' <= ch && ch <= 'f':
			ch = ch - 'a' + 10
		case 'A' <= ch && ch <= 'F':
			ch = ch - 'A' + 10
		default:
			return -1
		}
		r = r*16 + rune(ch)
	}
	return r
}

// unquote appends the decoded contents of a string whose syntax rawString
// checked, as encoding/json decodes it: invalid UTF-8 and unpaired
// surrogates become U+FFFD.
func unquote(dst, s []byte) []byte {
	for i := 0; i < len(s); {
		ch := s[i]
		switch {
		case ch == '\\':
			switch s[i+1] {
			case 'b':
				dst = append(dst, '\b')
			case 'f':
				dst = append(dst, '\f')
			case 'n':
				dst = append(dst, '\n')
			case 'r':
				dst = append(dst, '\r')
			case 't':
				dst = append(dst, '\t')
			case 'u':
				r := getu4(s[i:])
				i += 6
				if utf16.IsSurrogate(r) {
					if dec := utf16.DecodeRune(r, getu4(s[i:])); dec != utf8.RuneError {
						i += 6
						dst = utf8.AppendRune(dst, dec)
						continue
					}
					r = utf8.RuneError
				}
				dst = utf8.AppendRune(dst, r)
				continue
			default: // " \ /
				dst = append(dst, s[i+1])
			}
			i += 2
		case ch < utf8.RuneSelf:
			dst = append(dst, ch)
			i++
		default:
			r, size := utf8.DecodeRune(s[i:])
			dst = utf8.AppendRune(dst, r)
			i += size
		}
	}
	return dst
}
