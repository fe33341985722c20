package proxy

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"

	"github.com/agentpassport/passport/internal/jsonstr"
)

// The audit record's copy of the policy input (audit.Record.Input) is
// written by hand, not by json.Marshal: under load, json.Marshal of the
// input took about 2% of the proxy's CPU, much of it validating and
// compacting the passport, which is the same bytes for every call with
// that passport.

// errInputJSON is what json.Marshal would have refused.
var errInputJSON = errors.New("encode policy input")

// marshalJSON returns d as JSON; see appendJSON. Without the passport,
// the "passport" member is left out (the decision references its passport
// record instead).
func (d *inputDoc) marshalJSON(withPassport bool) ([]byte, error) {
	return d.appendJSON(make([]byte, 0, d.sizeHint()), withPassport)
}

// appendJSON appends d as JSON. The document is the one json.Marshal(d)
// writes, member for member and byte for byte, except that the members of
// every object it builds come in byte order of their names: the canonical
// order, which the audit encoder then copies without sorting. Keeping
// json.Marshal's escaping (<, >, & and invalid UTF-8 as \u escapes)
// keeps its length too, and audit.Record.Cap measures that length: a
// record is cut exactly where it was before. It fails where json.Marshal
// fails: a reputation that is NaN or infinite, an empty (not nil) passport
// or body.
func (d *inputDoc) appendJSON(b []byte, withPassport bool) ([]byte, error) {
	var err error
	b = append(b, `{"action":`...)
	b = appendJSONString(b, d.Action)
	b = append(b, `,"agent":{"blocked":`...)
	b = strconv.AppendBool(b, d.Agent.Blocked)
	b = append(b, `,"id":`...)
	b = appendJSONString(b, d.Agent.ID)
	b = append(b, `,"name":`...)
	b = appendJSONString(b, d.Agent.Name)
	b = append(b, `,"reputation":`...)
	if b, err = appendJSONFloat(b, d.Agent.Reputation); err != nil {
		return nil, err
	}
	b = append(b, `,"trust_level":`...)
	b = appendJSONString(b, d.Agent.TrustLevel)
	b = append(b, `,"type":`...)
	b = appendJSONString(b, d.Agent.Type)
	b = append(b, '}')
	if b, err = d.appendEscalationsJSON(b); err != nil {
		return nil, err
	}
	if d.MCP != nil {
		b = d.MCP.appendJSON(append(b, `,"mcp":`...))
	}
	// The passport is json.Marshal's own output (Verified.payloadJSON):
	// valid, compact and escaped as json.Marshal escapes, so json.Marshal
	// would copy it unchanged, and so does this.
	if withPassport {
		b = append(b, `,"passport":`...)
	}
	switch {
	case !withPassport:
	case d.Passport == nil:
		b = append(b, "null"...)
	case len(d.Passport) == 0:
		return nil, fmt.Errorf("%w: empty passport", errInputJSON)
	default:
		b = append(b, d.Passport...)
	}
	b = append(b, `,"request":{"body":`...)
	// The body is a JSON text decodeBody accepted (inputRequest.Body), so
	// it only needs compacting and escaping, not checking.
	switch {
	case d.Request.Body == nil:
		b = append(b, "null"...)
	case len(d.Request.Body) == 0:
		return nil, fmt.Errorf("%w: empty body", errInputJSON)
	default:
		b = jsonstr.AppendCompactHTML(b, d.Request.Body)
	}
	b = append(b, `,"headers":`...)
	b = appendJSONObject(b, d.Request.Headers, appendJSONString)
	b = append(b, `,"id":`...)
	b = appendJSONString(b, d.Request.ID)
	b = append(b, `,"method":`...)
	b = appendJSONString(b, d.Request.Method)
	b = append(b, `,"params":`...)
	b = appendJSONObject(b, d.Request.Params, appendJSONString)
	b = append(b, `,"path":`...)
	b = appendJSONString(b, d.Request.Path)
	b = append(b, `,"query":`...)
	b = appendJSONObject(b, d.Request.Query, appendJSONStrings)
	b = append(b, `},"resource":`...)
	b = appendJSONString(b, d.Resource)
	b = append(b, `,"route":{"name":`...)
	b = appendJSONString(b, d.Route.Name)
	b = append(b, `,"production":`...)
	b = strconv.AppendBool(b, d.Route.Production)
	b = append(b, `,"template":`...)
	b = appendJSONString(b, d.Route.Template)
	b = append(b, `,"tenant":`...)
	b = appendJSONString(b, d.Route.Tenant)
	b = append(b, `},"tenant":`...)
	b = appendJSONString(b, d.Tenant)
	b = append(b, `,"time":`...)
	b = appendJSONString(b, d.Time)
	b = append(b, `,"version":`...)
	b = strconv.AppendInt(b, int64(d.Version), 10)
	return append(b, '}'), nil
}

// sizeHint is about the length of d as JSON when nothing needs escaping:
// 318 bytes with every value empty, plus the values.
func (d *inputDoc) sizeHint() int {
	n := 320 + len(d.Action) + len(d.Agent.ID) + len(d.Agent.Name) + len(d.Agent.TrustLevel) + len(d.Agent.Type) +
		len(d.Passport) + len(d.Request.Body) + len(d.Request.ID) + len(d.Request.Method) + len(d.Request.Path) +
		len(d.Resource) + len(d.Route.Name) + len(d.Route.Template) + len(d.Route.Tenant) + len(d.Tenant) + len(d.Time)
	for k, v := range d.Request.Headers {
		n += len(k) + len(v) + 6
	}
	for k, v := range d.Request.Params {
		n += len(k) + len(v) + 6
	}
	for k, vs := range d.Request.Query {
		n += len(k) + 6
		for _, v := range vs {
			n += len(v) + 3
		}
	}
	return n
}

// appendJSONString appends s quoted as json.Marshal quotes it
// (internal/jsonstr): HTML characters escaped, and each byte of invalid
// UTF-8 as \ufffd. Paths, query values and headers come from clients, so
// any of these can occur.
func appendJSONString(b []byte, s string) []byte {
	return jsonstr.Append(b, s, jsonstr.HTML|jsonstr.EscapeInvalid)
}

// appendJSONStrings appends list as a JSON array of strings (null for a
// nil list, as json.Marshal writes it).
func appendJSONStrings(b []byte, list []string) []byte {
	if list == nil {
		return append(b, "null"...)
	}
	b = append(b, '[')
	for i, s := range list {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, s)
	}
	return append(b, ']')
}

// appendJSONObject appends m as a JSON object with its keys in byte order,
// as json.Marshal sorts a map's keys (null for a nil map).
func appendJSONObject[V any](b []byte, m map[string]V, appendValue func([]byte, V) []byte) []byte {
	if m == nil {
		return append(b, "null"...)
	}
	var scratch [8]string // the keys of a usual map, without an allocation
	keys := scratch[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(appendJSONString(b, k), ':')
		b = appendValue(b, m[k])
	}
	return append(b, '}')
}

// appendJSONFloat appends f as json.Marshal writes a float64 (ES6 number to
// string: %f, or %e outside [1e-6, 1e21) with a one-digit exponent kept
// short).
func appendJSONFloat(b []byte, f float64) ([]byte, error) {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return nil, fmt.Errorf("%w: unsupported value: %s", errInputJSON, strconv.FormatFloat(f, 'g', -1, 64))
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// e-07 -> e-7, as json.Marshal writes it.
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b, nil
}
