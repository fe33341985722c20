// Package strictjson decodes the JSON texts that every mainstream decoder
// reads the same way, and refuses the others.
//
// A proxy that shows a request body to a policy and then forwards the same
// bytes to an upstream has two readers of one input. Where JSON decoders
// disagree, a client can make the policy judge one value while the
// upstream executes another: Go's encoding/json matches member names
// case-insensitively with the last one winning ({"replicas":5,
// "Replicas":20} is 20 to it and 5 to a case-sensitive reader, and it folds
// "ſ" to "s" and "K" (Kelvin) to "k"); decoders replace invalid UTF-8 and
// lone surrogates differently or refuse them; a number past float64
// precision is one value to an arbitrary-precision reader (OPA) and another
// to a float64 one (JavaScript, most JSON libraries). Decode refuses every
// such text:
//
//   - anything that is not RFC 8259 JSON, a byte order mark, trailing data;
//   - invalid UTF-8 anywhere, and \u escapes that leave a lone surrogate;
//   - two member names of one object that are equal, or equal once case is
//     folded (simple Unicode case folding, as strings.EqualFold, and also
//     as strings.ToLower or strings.ToUpper would compare them);
//   - with Options.Names = NamesFolded, any member name that is not in its
//     folded (lower-case) form, so that a case-insensitive and a
//     case-sensitive reader of lower-case field names cannot disagree;
//   - nesting deeper than Options.MaxDepth;
//   - a number whose value changes in a float64 round trip (more digits
//     than a float64 holds, or out of its range);
//   - with Options.Object, a top-level value that is not an object.
//
// It is used for the bodies the proxy shows to its policy and for MCP tool
// arguments; the proxy answers 400 bad_body for any error.
package strictjson

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// DefaultMaxDepth is the nesting limit when Options.MaxDepth is 0.
const DefaultMaxDepth = 32

// Names says how member names may be spelled.
type Names int

const (
	// NamesDistinct accepts any spelling, but no two names of one object
	// may be equal under case folding.
	NamesDistinct Names = iota
	// NamesFolded accepts only names in folded form (lower case, no "ſ",
	// "K" or other spelling that folds to another letter): a name then
	// reads the same to a case-sensitive reader and to one that folds
	// case, such as encoding/json, whenever the reader's own names are
	// lower case. It implies NamesDistinct.
	NamesFolded
)

// Options tune Decode. The zero value is NamesDistinct, DefaultMaxDepth and
// any top-level value.
type Options struct {
	// MaxDepth bounds nesting of objects and arrays (a top-level object
	// is depth 1). 0 means DefaultMaxDepth.
	MaxDepth int
	// Names is the member name rule.
	Names Names
	// Object requires the top-level value to be an object.
	Object bool
}

// Errors, wrapped in an *Error that gives the offset.
var (
	ErrSyntax       = errors.New("not valid JSON")
	ErrUTF8         = errors.New("invalid UTF-8")
	ErrSurrogate    = errors.New("lone surrogate in a \\u escape")
	ErrDuplicate    = errors.New("duplicate member name")
	ErrFoldedName   = errors.New("member names equal once case is folded")
	ErrNotFolded    = errors.New("member name not in lower-case folded form")
	ErrDepth        = errors.New("nested too deep")
	ErrNumber       = errors.New("number does not survive a float64 round trip")
	ErrNotObject    = errors.New("top-level value is not an object")
	errTrailingData = fmt.Errorf("%w: data after the value", ErrSyntax)
)

// Error is a refusal at a byte offset of the input. It never quotes the
// input: bodies may carry secrets, and the error may be logged.
type Error struct {
	Offset int
	Err    error
}

func (e *Error) Error() string { return fmt.Sprintf("strictjson: %v at offset %d", e.Err, e.Offset) }

func (e *Error) Unwrap() error { return e.Err }

// Decode decodes data, which must hold exactly one JSON value, into
// map[string]any, []any, string, json.Number (the number as written), bool
// or nil, or refuses it with an *Error.
func Decode(data []byte, o Options) (any, error) {
	if o.MaxDepth <= 0 {
		o.MaxDepth = DefaultMaxDepth
	}
	d := decoder{data: data, opts: o}
	d.space()
	if o.Object && (d.i >= len(d.data) || d.data[d.i] != '{') {
		return nil, d.fail(ErrNotObject)
	}
	v, err := d.value(0)
	if err != nil {
		return nil, err
	}
	d.space()
	if d.i != len(d.data) {
		return nil, d.fail(errTrailingData)
	}
	return v, nil
}

// Valid is Decode without keeping the value.
func Valid(data []byte, o Options) error {
	_, err := Decode(data, o)
	return err
}

type decoder struct {
	data []byte
	i    int
	opts Options
	buf  []byte // scratch for strings with escapes
}

func (d *decoder) fail(err error) error { return &Error{Offset: d.i, Err: err} }

func (d *decoder) space() {
	for d.i < len(d.data) {
		switch d.data[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

func (d *decoder) value(depth int) (any, error) {
	if d.i >= len(d.data) {
		return nil, d.fail(ErrSyntax)
	}
	switch c := d.data[d.i]; {
	case c == '{':
		return d.object(depth + 1)
	case c == '[':
		return d.array(depth + 1)
	case c == '"':
		return d.str()
	case c == '-' || '0' <= c && c <= '9':
		return d.number()
	case c == 't':
		return true, d.literal("true")
	case c == 'f':
		return false, d.literal("false")
	case c == 'n':
		return nil, d.literal("null")
	}
	return nil, d.fail(ErrSyntax)
}

func (d *decoder) literal(s string) error {
	if len(d.data)-d.i < len(s) || string(d.data[d.i:d.i+len(s)]) != s {
		return d.fail(ErrSyntax)
	}
	d.i += len(s)
	return nil
}

func (d *decoder) object(depth int) (any, error) {
	if depth > d.opts.MaxDepth {
		return nil, d.fail(ErrDepth)
	}
	d.i++ // {
	m := map[string]any{}
	var keys keySet // folded names, for NamesDistinct
	d.space()
	if d.i < len(d.data) && d.data[d.i] == '}' {
		d.i++
		return m, nil
	}
	for {
		if d.i >= len(d.data) || d.data[d.i] != '"' {
			return nil, d.fail(ErrSyntax)
		}
		at := d.i
		name, err := d.str()
		if err != nil {
			return nil, err
		}
		if _, dup := m[name]; dup {
			return nil, &Error{Offset: at, Err: ErrDuplicate}
		}
		switch d.opts.Names {
		case NamesFolded:
			if !isFolded(name) {
				return nil, &Error{Offset: at, Err: ErrNotFolded}
			}
		default:
			if !keys.add(foldKey(name)) {
				return nil, &Error{Offset: at, Err: ErrFoldedName}
			}
		}
		d.space()
		if d.i >= len(d.data) || d.data[d.i] != ':' {
			return nil, d.fail(ErrSyntax)
		}
		d.i++
		d.space()
		v, err := d.value(depth)
		if err != nil {
			return nil, err
		}
		m[name] = v
		d.space()
		if d.i >= len(d.data) {
			return nil, d.fail(ErrSyntax)
		}
		switch d.data[d.i] {
		case ',':
			d.i++
			d.space()
		case '}':
			d.i++
			return m, nil
		default:
			return nil, d.fail(ErrSyntax)
		}
	}
}

func (d *decoder) array(depth int) (any, error) {
	if depth > d.opts.MaxDepth {
		return nil, d.fail(ErrDepth)
	}
	d.i++ // [
	a := []any{}
	d.space()
	if d.i < len(d.data) && d.data[d.i] == ']' {
		d.i++
		return a, nil
	}
	for {
		v, err := d.value(depth)
		if err != nil {
			return nil, err
		}
		a = append(a, v)
		d.space()
		if d.i >= len(d.data) {
			return nil, d.fail(ErrSyntax)
		}
		switch d.data[d.i] {
		case ',':
			d.i++
			d.space()
		case ']':
			d.i++
			return a, nil
		default:
			return nil, d.fail(ErrSyntax)
		}
	}
}

// str reads a string at d.i (on its opening quote).
func (d *decoder) str() (string, error) {
	d.i++ // "
	start := d.i
	// Fast path: no escapes.
	for d.i < len(d.data) {
		c := d.data[d.i]
		switch {
		case c == '"':
			s := string(d.data[start:d.i])
			d.i++
			return s, nil
		case c == '\\':
			return d.escaped(start)
		case c < 0x20:
			return "", d.fail(ErrSyntax)
		case c < utf8.RuneSelf:
			d.i++
		default:
			r, n := utf8.DecodeRune(d.data[d.i:])
			if r == utf8.RuneError && n <= 1 {
				return "", d.fail(ErrUTF8)
			}
			d.i += n
		}
	}
	return "", d.fail(ErrSyntax)
}

// escaped finishes a string that has an escape at d.i; start is where its
// content began.
func (d *decoder) escaped(start int) (string, error) {
	b := append(d.buf[:0], d.data[start:d.i]...)
	for d.i < len(d.data) {
		c := d.data[d.i]
		switch {
		case c == '"':
			d.i++
			d.buf = b[:0]
			return string(b), nil
		case c < 0x20:
			return "", d.fail(ErrSyntax)
		case c == '\\':
			if d.i+1 >= len(d.data) {
				return "", d.fail(ErrSyntax)
			}
			switch e := d.data[d.i+1]; e {
			case '"', '\\', '/':
				b = append(b, e)
				d.i += 2
			case 'b':
				b, d.i = append(b, '\b'), d.i+2
			case 'f':
				b, d.i = append(b, '\f'), d.i+2
			case 'n':
				b, d.i = append(b, '\n'), d.i+2
			case 'r':
				b, d.i = append(b, '\r'), d.i+2
			case 't':
				b, d.i = append(b, '\t'), d.i+2
			case 'u':
				r, ok := d.hex4(d.i + 2)
				if !ok {
					return "", d.fail(ErrSyntax)
				}
				switch {
				case utf16.IsSurrogate(r) && r < 0xdc00:
					// A high surrogate must be followed by a low one.
					lo, ok := rune(0), false
					if d.i+11 < len(d.data) && d.data[d.i+6] == '\\' && d.data[d.i+7] == 'u' {
						lo, ok = d.hex4(d.i + 8)
					}
					if !ok || lo < 0xdc00 || lo > 0xdfff {
						return "", d.fail(ErrSurrogate)
					}
					b = utf8.AppendRune(b, utf16.DecodeRune(r, lo))
					d.i += 12
				case utf16.IsSurrogate(r):
					return "", d.fail(ErrSurrogate)
				default:
					b = utf8.AppendRune(b, r)
					d.i += 6
				}
			default:
				return "", d.fail(ErrSyntax)
			}
		case c < utf8.RuneSelf:
			b = append(b, c)
			d.i++
		default:
			r, n := utf8.DecodeRune(d.data[d.i:])
			if r == utf8.RuneError && n <= 1 {
				return "", d.fail(ErrUTF8)
			}
			b = append(b, d.data[d.i:d.i+n]...)
			d.i += n
		}
	}
	return "", d.fail(ErrSyntax)
}

// hex4 reads four hex digits at i.
func (d *decoder) hex4(i int) (rune, bool) {
	if i+4 > len(d.data) {
		return 0, false
	}
	var r rune
	for _, c := range d.data[i : i+4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// number reads a number (RFC 8259 grammar) and checks that a float64
// holds its value exactly as written.
func (d *decoder) number() (any, error) {
	start := d.i
	if d.data[d.i] == '-' {
		d.i++
	}
	switch {
	case d.i < len(d.data) && d.data[d.i] == '0':
		d.i++
	case d.i < len(d.data) && '1' <= d.data[d.i] && d.data[d.i] <= '9':
		d.digits()
	default:
		return nil, d.fail(ErrSyntax)
	}
	if d.i < len(d.data) && d.data[d.i] == '.' {
		d.i++
		if d.digits() == 0 {
			return nil, d.fail(ErrSyntax)
		}
	}
	if d.i < len(d.data) && (d.data[d.i] == 'e' || d.data[d.i] == 'E') {
		d.i++
		if d.i < len(d.data) && (d.data[d.i] == '+' || d.data[d.i] == '-') {
			d.i++
		}
		if d.digits() == 0 {
			return nil, d.fail(ErrSyntax)
		}
	}
	lit := string(d.data[start:d.i])
	if !RoundTrips(lit) {
		return nil, &Error{Offset: start, Err: ErrNumber}
	}
	return json.Number(lit), nil
}

func (d *decoder) digits() int {
	n := 0
	for d.i < len(d.data) && '0' <= d.data[d.i] && d.data[d.i] <= '9' {
		d.i++
		n++
	}
	return n
}

// RoundTrips reports whether the JSON number lit has exactly the value of
// the shortest decimal that reads back as the same float64: a reader that
// keeps every digit (OPA, big-number libraries) and one that reads a
// float64 (JavaScript, most JSON libraries) then agree on its value. It
// refuses numbers past float64 precision (9007199254740993, 0.1 written
// with 30 digits), out of range (1e400) or lost to underflow (1e-400).
func RoundTrips(lit string) bool {
	f, err := strconv.ParseFloat(lit, 64)
	if err != nil {
		return false
	}
	a, ok := canonical(lit)
	if !ok {
		return false
	}
	b, _ := canonical(strconv.FormatFloat(f, 'e', -1, 64))
	return a == b
}

// decimal is a number as sign, significant digits (no leading or trailing
// zeros) and the exponent of the first digit.
type decimal struct {
	neg    bool
	digits string
	exp    int
}

// canonical reads a number in JSON or strconv 'e' syntax. Zero is
// {false, "", 0} whatever its sign. Exponents beyond ±1e9 are refused:
// ParseFloat has already refused any such number that is not zero.
func canonical(s string) (decimal, bool) {
	var d decimal
	i := 0
	if i < len(s) && s[i] == '-' {
		d.neg = true
		i++
	}
	var digits []byte
	point := -1 // digits before the decimal point
	for ; i < len(s); i++ {
		c := s[i]
		if c == '.' {
			point = len(digits)
			continue
		}
		if c < '0' || c > '9' {
			break
		}
		digits = append(digits, c)
	}
	if point < 0 {
		point = len(digits)
	}
	exp := 0
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		neg := false
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			neg = s[i] == '-'
			i++
		}
		for ; i < len(s); i++ {
			exp = exp*10 + int(s[i]-'0')
			if exp > 1e9 {
				// Only zero survives ParseFloat with such an exponent.
				for _, c := range digits {
					if c != '0' {
						return d, false
					}
				}
				return decimal{}, true
			}
		}
		if neg {
			exp = -exp
		}
	}
	lead := 0
	for lead < len(digits) && digits[lead] == '0' {
		lead++
	}
	if lead == len(digits) {
		return decimal{}, true
	}
	end := len(digits)
	for digits[end-1] == '0' {
		end--
	}
	d.digits = string(digits[lead:end])
	d.exp = exp + point - lead
	return d, true
}

// foldKey maps a member name to a key that two names share when
// strings.EqualFold, strings.ToLower or strings.ToUpper would make them
// equal: each rune becomes the lower case of the upper case of the least
// rune of its simple case folding orbit.
func foldKey(s string) string {
	ascii := true
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if ascii {
		// ASCII letters' orbits: {A, a}, and {K, k, U+212A}, {S, s,
		// U+017F}, whose keys are k and s too.
		b := []byte(s)
		for i, c := range b {
			if 'A' <= c && c <= 'Z' {
				b[i] = c + 'a' - 'A'
			}
		}
		return string(b)
	}
	out := make([]rune, 0, len(s))
	for _, r := range s {
		out = append(out, foldRune(r))
	}
	return string(out)
}

func foldRune(r rune) rune {
	least := r
	for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
		least = min(least, f)
	}
	return unicode.ToLower(unicode.ToUpper(least))
}

// isFolded reports whether every rune of a name is its own foldRune.
func isFolded(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= utf8.RuneSelf {
			for _, r := range s[i:] {
				if foldRune(r) != r {
					return false
				}
			}
			return true
		}
		if 'A' <= c && c <= 'Z' {
			return false
		}
	}
	return true
}

// keySet is a set of strings: a list while small, a map beyond, so that an
// object with thousands of members costs no quadratic time.
type keySet struct {
	list []string
	m    map[string]struct{}
}

// add adds k and reports whether it was new.
func (s *keySet) add(k string) bool {
	if s.m != nil {
		if _, ok := s.m[k]; ok {
			return false
		}
		s.m[k] = struct{}{}
		return true
	}
	for _, prev := range s.list {
		if prev == k {
			return false
		}
	}
	s.list = append(s.list, k)
	if len(s.list) > 16 {
		s.m = make(map[string]struct{}, 2*len(s.list))
		for _, x := range s.list {
			s.m[x] = struct{}{}
		}
		s.list = nil
	}
	return true
}

// FoldedNames reports whether every member name in v, a value Decode
// returned, is in folded form: what Decode with NamesFolded checks, for a
// value decoded with NamesDistinct (the proxy reads an MCP message with
// camelCase names, and holds its tool arguments to the route's rule).
func FoldedNames(v any) bool {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if !isFolded(k) || !FoldedNames(e) {
				return false
			}
		}
	case []any:
		for _, e := range v {
			if !FoldedNames(e) {
				return false
			}
		}
	}
	return true
}
