// Package problem writes the one error body of every HTTP API in the
// project: an RFC 9457 problem document (application/problem+json).
//
// Every problem has a stable snake_case code. Its type is a URI under Base,
// the code's entry in docs/problems.md, so a client can read either; the
// detail is a fixed, safe sentence, never an internal error string.
package problem

import (
	"bytes"
	"encoding/json"
	"net/http"
	"sync"
)

// Base is the start of every problem's type URI: the code follows it,
// naming its entry in docs/problems.md.
const Base = "https://github.com/agentpassport/passport/blob/main/docs/problems.md#"

// Details is a problem document: RFC 9457's members and the project's
// extensions (code, and the proxy's request id and policy answer).
type Details struct {
	Type      string   `json:"type"`
	Title     string   `json:"title"`
	Status    int      `json:"status"`
	Code      string   `json:"code"`
	Detail    string   `json:"detail,omitempty"`
	RequestID string   `json:"request_id,omitempty"`
	Action    string   `json:"action,omitempty"`
	Resource  string   `json:"resource,omitempty"`
	Reasons   []string `json:"reasons,omitempty"`
	Revision  string   `json:"policy_revision,omitempty"`
	// An approval_required answer names the pending approval, the
	// dashboard's page for it and when it expires (RFC 3339).
	ApprovalID  string `json:"approval_id,omitempty"`
	ApprovalURL string `json:"approval_url,omitempty"`
	ExpiresAt   string `json:"expires_at,omitempty"`
}

// TypeOf is the type URI of code.
func TypeOf(code string) string { return Base + code }

var buffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// Write answers d. Type defaults to TypeOf(Code), Title to the status
// text. The answer is never cached and never sniffed as another type.
func Write(w http.ResponseWriter, d Details) {
	if d.Type == "" {
		d.Type = TypeOf(d.Code)
	}
	if d.Title == "" {
		d.Title = http.StatusText(d.Status)
	}
	b := buffers.Get().(*bytes.Buffer)
	b.Reset()
	_ = json.NewEncoder(b).Encode(d) // strings, ints and a list of strings: cannot fail
	h := w.Header()
	h.Set("Content-Type", "application/problem+json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(d.Status)
	_, _ = w.Write(b.Bytes())
	buffers.Put(b)
}

// Answer writes the usual problem: a status, a code and a detail.
func Answer(w http.ResponseWriter, status int, code, detail string) {
	Write(w, Details{Status: status, Code: code, Detail: detail})
}
