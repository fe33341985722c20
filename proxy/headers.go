package proxy

import "strings"

// strippedHeaders are the headers with which a client could change what an
// upstream believes about a call: its method (frameworks honour method
// override headers), its target (IIS, Symfony and nginx setups read the
// original URL from a header), or who the client is and how it came
// (address and scheme headers that proxies set). The policy judged the
// real method, path and connection, so none of these may reach the
// upstream; the proxy sets X-Forwarded-For, -Host and -Proto itself.
// Names are in normalised form (normHeader); a name ending in "-" is a
// prefix.
var strippedHeaders = []string{
	// Method overrides.
	"x-http-method-override", "x-http-method", "x-method-override", "x-original-method",
	// Target overrides.
	"x-original-url", "x-original-uri", "x-rewrite-url", "x-original-host", "x-host",
	// Client identity and the way in.
	"forwarded", "x-forwarded", "x-forwarded-", "x-real-ip", "x-client-ip", "true-client-ip",
	"x-cluster-client-ip", "client-ip", "cf-connecting-ip", "fastly-client-ip",
}

// headerStrip matches header names, in every spelling, against a list of
// names and prefixes.
type headerStrip struct {
	names    map[string]bool
	prefixes []string
}

// newHeaderStrip is the built-in list plus extra (config strip_headers,
// where "X-Foo-*" is a prefix).
func newHeaderStrip(extra []string) *headerStrip {
	s := &headerStrip{names: map[string]bool{}}
	add := func(n string) {
		if strings.HasSuffix(n, "-") {
			s.prefixes = append(s.prefixes, n)
		} else {
			s.names[n] = true
		}
	}
	for _, n := range strippedHeaders {
		add(n)
	}
	for _, n := range extra {
		if p, ok := strings.CutSuffix(n, "*"); ok {
			p = normHeader(p)
			if !strings.HasSuffix(p, "-") {
				p += "-" // "X-Acme*" and "X-Acme-*" both mean the X-Acme- prefix
			}
			s.prefixes = append(s.prefixes, p)
			continue
		}
		add(normHeader(n))
	}
	return s
}

// match reports whether header name k, normalised, is on the list.
func (s *headerStrip) match(k string) bool {
	var buf [64]byte
	n := buf[:0]
	if len(k) > len(buf) {
		n = make([]byte, 0, len(k))
	}
	for i := 0; i < len(k); i++ {
		n = append(n, normByte(k[i]))
	}
	if s.names[string(n)] { // a map index does not allocate the string
		return true
	}
	for _, p := range s.prefixes {
		if len(n) >= len(p) && string(n[:len(p)]) == p {
			return true
		}
	}
	return false
}

// normHeader is a header name as stacks that treat case, "_" and "." alike
// see it (CGI, nginx with underscores_in_headers, Rails, PHP): lower case,
// with "_" and "." read as "-".
func normHeader(k string) string {
	b := []byte(k)
	for i, c := range b {
		b[i] = normByte(c)
	}
	return string(b)
}

func normByte(c byte) byte {
	switch {
	case 'A' <= c && c <= 'Z':
		return c + 'a' - 'A'
	case c == '_' || c == '.':
		return '-'
	}
	return c
}
