// Package jsonstr writes JSON text exactly as encoding/json would, without
// reflection or allocation: strings escaped by its rules (Append), and a
// JSON text compacted as json.Marshal writes a json.RawMessage
// (AppendCompactHTML). The audit encoder (canonical form) and the proxy's
// policy input writer share it, so the escaping rules live in one place.
package jsonstr

import "unicode/utf8"

// Mode selects the encoding/json behaviour to reproduce.
type Mode uint8

const (
	// HTML escapes <, > and & as \u003c, \u003e and \u0026, as
	// json.Marshal does (an Encoder with SetEscapeHTML(false) does not).
	HTML Mode = 1 << iota
	// EscapeInvalid writes each byte of invalid UTF-8 as the escape
	// \ufffd, as encoding/json does when it encodes. Without it the byte
	// becomes the character U+FFFD itself: what a value that went through
	// encoding/json and then a decoder is re-encoded as.
	EscapeInvalid
)

const hexDigits = "0123456789abcdef"

// safe[html][c] reports whether the ASCII byte c is written as is.
var safe = func() (t [2][utf8.RuneSelf]bool) {
	for c := range utf8.RuneSelf {
		ok := c >= 0x20 && c != '"' && c != '\\'
		t[0][c] = ok
		t[1][c] = ok && c != '<' && c != '>' && c != '&'
	}
	return t
}()

// Append appends s quoted: `"` and `\` escaped, control characters as \b
// \f \n \r \t or \u00XX, U+2028 and U+2029 as \u2028 and \u2029, and
// invalid UTF-8 and HTML characters as mode says.
func Append[Bytes []byte | string](dst []byte, s Bytes, mode Mode) []byte {
	table := &safe[0]
	if mode&HTML != 0 {
		table = &safe[1]
	}
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if table[c] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '\\', '"':
				dst = append(dst, '\\', c)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		n := min(len(s)-i, utf8.UTFMax)
		r, size := utf8.DecodeRuneInString(string(s[i : i+n]))
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			if mode&EscapeInvalid != 0 {
				dst = append(dst, `\ufffd`...)
			} else {
				dst = append(dst, "\uFFFD"...)
			}
			i++
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// AppendCompactHTML appends the JSON text src as json.Marshal writes a
// json.RawMessage: whitespace between tokens dropped, <, >, & and U+2028,
// U+2029 escaped, everything else (invalid UTF-8 included) copied. src
// must be valid JSON; it is not checked. In valid JSON the only whitespace
// byte a string holds as is is the space, and the byte after a backslash
// is one of "\/bfnrtu, so skipping it never skips the end of a string or
// a byte to escape.
func AppendCompactHTML(b, src []byte) []byte {
	start := 0
	inString := false
	for i := 0; i < len(src); i++ {
		switch c := src[i]; {
		case c == '\\' && inString:
			i++
		case c == '"':
			inString = !inString
		case c == ' ' && inString:
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			b = append(b, src[start:i]...)
			start = i + 1
		case c == '<' || c == '>' || c == '&':
			b = append(b, src[start:i]...)
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			start = i + 1
		case c == 0xE2 && i+2 < len(src) && src[i+1] == 0x80 && src[i+2]&^1 == 0xA8:
			b = append(b, src[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[src[i+2]&0xF])
			i += 2
			start = i + 1
		}
	}
	return append(b, src[start:]...)
}
