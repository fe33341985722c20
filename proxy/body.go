package proxy

import (
	"bytes"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"strings"

	"github.com/agentpassport/passport/internal/strictjson"
)

// The request body, between the client and the upstream.
//
// A body is read whole, up to the route's body_limit, before anything is
// forwarded: a malformed chunk, a body that breaks off or one over the
// limit is then the client's error (400 or 413, audited as a refusal),
// never a request the upstream sees start and then abort. The upstream
// gets the bytes with a Content-Length, without the client's framing and
// trailers. A route with stream_body opts out, for large uploads.
//
// What else is checked, and why:
//   - A route that shows its body to the policy takes application/json
//     only, without a content coding, and the body must be one JSON object
//     that every mainstream decoder reads the same way (strictjson): else
//     the policy could judge one value while the upstream executes another.
//   - A form body (urlencoded or multipart) with a _method field is
//     refused: frameworks such as Rails, Laravel and Symfony read it as the
//     request's method, which the policy did not judge.

// Refusals of a body (answered 400, 413 or 415, audited as refusals).
var (
	refuseBodyRead = &refusal{status: http.StatusBadRequest, code: "bad_body",
		detail: "the request body could not be read (framing error or cut short)"}
	refuseBodyJSON = &refusal{status: http.StatusBadRequest, code: "bad_body",
		detail: "the request body is not a JSON object that every decoder reads the same way (see docs/security.md)"}
	refuseMethodField = &refusal{status: http.StatusBadRequest, code: "bad_body", detail: "a form body may not carry a _method field"}
	refuseForm        = &refusal{status: http.StatusBadRequest, code: "bad_body", detail: "the form body is malformed"}
	refuseTooLarge    = refuseBodyTooLarge
	refuseMediaType   = &refusal{status: http.StatusUnsupportedMediaType, code: "unsupported_media_type",
		detail: "this route takes application/json bodies only, without a content coding"}
	refuseStreamedForm = &refusal{status: http.StatusUnsupportedMediaType, code: "unsupported_media_type",
		detail: "this route streams its body, so it takes no form bodies"}
	refuseContentType = &refusal{status: http.StatusUnsupportedMediaType, code: "unsupported_media_type",
		detail: "the request has more than one or a malformed Content-Type"}
)

// readBody is the step that takes the body (takeBody) and leaves on the
// call what the policy is shown of it.
func (p *Proxy) readBody(_ http.ResponseWriter, r *http.Request, c *call) *refusal {
	body, raw, ref := p.takeBody(r, c, c.route)
	if ref != nil {
		return ref
	}
	c.policyBody, c.bodyJSON = body, raw
	return nil
}

// bodyLimit is the most body bytes the route takes.
func (p *Proxy) bodyLimit(rt *route) int64 {
	if rt.StreamBody {
		return p.cfg.Limits.MaxBodyBytes
	}
	return rt.BodyLimit
}

// takeBody reads the body of a buffered route whole and checks it; on a
// streamed route it only checks the headers and watches the stream. It
// returns the body as the policy sees it (nil when the route does not
// show it, or the body is empty) and the raw JSON text.
func (p *Proxy) takeBody(r *http.Request, c *call, rt *route) (any, []byte, *refusal) {
	mediaType, ok := bodyMediaType(r)
	if !ok {
		return nil, nil, refuseContentType
	}
	if rt.StreamBody {
		if isForm(mediaType) {
			return nil, nil, refuseStreamedForm
		}
		cb := &clientBody{ReadCloser: r.Body}
		r.Body, c.body = cb, cb
		return nil, nil, nil
	}
	var raw []byte
	if r.ContentLength != 0 || len(r.TransferEncoding) > 0 {
		var err error
		raw, err = io.ReadAll(r.Body)
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			return nil, nil, refuseTooLarge
		case err != nil:
			return nil, nil, refuseBodyRead
		}
	}
	// The upstream gets exactly these bytes, framed by the proxy.
	c.rawBody = raw
	r.Body, r.ContentLength = http.NoBody, 0
	if len(raw) > 0 {
		r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(raw)), int64(len(raw))
	}
	r.TransferEncoding, r.Trailer = nil, nil

	switch {
	case rt.PolicyBody:
		if len(bytes.TrimSpace(raw)) == 0 {
			return nil, nil, nil
		}
		if mediaType != "application/json" || !identityCoding(r) {
			return nil, nil, refuseMediaType
		}
		body, err := decodeBody(raw, rt.bodyOpts)
		if err != nil {
			return nil, nil, refuseBodyJSON
		}
		return body, raw, nil
	case len(raw) > 0 && isForm(mediaType):
		return nil, nil, checkForm(mediaType, r.Header.Get("Content-Type"), raw)
	}
	return nil, nil, nil
}

// decodeBody decodes a body shown to the policy (strictjson).
func decodeBody(raw []byte, o strictjson.Options) (any, error) {
	return strictjson.Decode(raw, o)
}

// bodyMediaType is the request's media type, lower case ("" without a
// Content-Type). A repeated or unparseable Content-Type is refused: the
// proxy and the upstream could each read another one.
func bodyMediaType(r *http.Request) (string, bool) {
	vs := r.Header.Values("Content-Type")
	switch len(vs) {
	case 0:
		return "", true
	case 1:
	default:
		return "", false
	}
	mt, params, err := mime.ParseMediaType(vs[0])
	if err != nil {
		return "", false
	}
	if cs, ok := params["charset"]; ok && mt == "application/json" && !strings.EqualFold(cs, "utf-8") {
		return "", false // JSON is UTF-8 (RFC 8259 §8.1); another charset would be read another way
	}
	return mt, true
}

func identityCoding(r *http.Request) bool {
	for _, v := range r.Header.Values("Content-Encoding") {
		if !strings.EqualFold(strings.TrimSpace(v), "identity") {
			return false
		}
	}
	return true
}

func isForm(mediaType string) bool {
	return mediaType == "application/x-www-form-urlencoded" || mediaType == "multipart/form-data"
}

// checkForm refuses a form body with a method override field, or one the
// proxy cannot parse (an upstream might parse it otherwise).
func checkForm(mediaType, contentType string, raw []byte) *refusal {
	if mediaType == "application/x-www-form-urlencoded" {
		vs, err := url.ParseQuery(string(raw))
		if err != nil {
			return refuseForm
		}
		for k := range vs {
			if isMethodField(k) {
				return refuseMethodField
			}
		}
		return nil
	}
	_, params, _ := mime.ParseMediaType(contentType)
	if params["boundary"] == "" {
		return refuseForm
	}
	mr := multipart.NewReader(bytes.NewReader(raw), params["boundary"])
	for {
		part, err := mr.NextRawPart()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return refuseForm
		}
		if isMethodField(part.FormName()) {
			return refuseMethodField
		}
	}
}

// isMethodField reports a form or query field that frameworks read as a
// method override: _method in any case, also as _method[...].
func isMethodField(k string) bool {
	const name = "_method"
	return len(k) >= len(name) && strings.EqualFold(k[:len(name)], name) &&
		(len(k) == len(name) || k[len(name)] == '[')
}

// clientBody is a streamed body: it remembers why reading it failed, so
// that a client's framing error is answered as the client's (400, 413)
// rather than as the upstream's (502).
type clientBody struct {
	io.ReadCloser
	err error
}

func (b *clientBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF && b.err == nil {
		b.err = err
	}
	return n, err
}

// streamRefusal maps a streamed body's read error to the answer, or nil
// when the body was read without error.
func (b *clientBody) streamRefusal() *refusal {
	if b == nil || b.err == nil {
		return nil
	}
	var mbe *http.MaxBytesError
	if errors.As(b.err, &mbe) {
		return refuseTooLarge
	}
	return refuseBodyRead
}
