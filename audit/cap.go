package audit

import (
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// Limits on what a record may carry. Values taken from requests are
// attacker-controlled; capping them keeps one request from bloating the
// stream (and the memory of everyone tailing it).
const (
	// DefaultMaxField is the default cap, in bytes, of each string field.
	DefaultMaxField = 1024
	// DefaultMaxJSON is the default cap, in bytes, of Input and Details.
	DefaultMaxJSON = 16 << 10
	// MaxReasons is the most reasons a record keeps.
	MaxReasons = 32
	// MaxChain is the most delegation chain links a record keeps (a
	// passport's chain is at most 9 agents long).
	MaxChain = 16
)

// truncMark ends a truncated value so a reader sees it was cut.
const truncMark = "…"

// capString cuts s to at most max bytes on a rune boundary, marking the cut.
// Invalid UTF-8 is replaced so the stored JSON is always valid.
func capString(s string, max int) string {
	if !utf8.ValidString(s) {
		s = string([]rune(s)) // replaces invalid bytes with U+FFFD
	}
	if len(s) <= max {
		return s
	}
	cut := max - len(truncMark)
	if cut < 0 {
		cut = 0
	}
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + truncMark
}

// capJSON replaces an oversized or invalid JSON value by a small object
// saying so: the record still says what happened, without the payload.
func capJSON(v json.RawMessage, max int) json.RawMessage {
	if len(v) == 0 {
		return v
	}
	if len(v) > max {
		return json.RawMessage(`{"truncated":true,"size":` + strconv.Itoa(len(v)) + `}`)
	}
	if !json.Valid(v) {
		return json.RawMessage(`{"invalid":true,"size":` + strconv.Itoa(len(v)) + `}`)
	}
	return v
}

// Cap applies the length caps to every string field, the reasons list and
// the JSON payloads. maxField and maxJSON <= 0 mean the defaults.
func (r *Record) Cap(maxField, maxJSON int) {
	if maxField <= 0 {
		maxField = DefaultMaxField
	}
	if maxJSON <= 0 {
		maxJSON = DefaultMaxJSON
	}
	for _, p := range []*string{
		&r.RequestID, &r.ClientRequestID, &r.Tenant, &r.AgentID, &r.AgentName, &r.AgentType, &r.TrustLevel,
		&r.JTI, &r.TaskID, &r.Subject, &r.Method, &r.Path, &r.Route, &r.Action, &r.Resource,
		&r.Decision, &r.PolicyRevision, &r.Writer, &r.PassportID, &r.PassportSHA256,
	} {
		*p = capString(*p, maxField)
	}
	// Copies, not in-place edits: the caller may share these slices.
	r.Reasons = capList(r.Reasons, maxField)
	if r.Chain != nil {
		chain := make([]ChainLink, 0, min(len(r.Chain), MaxChain))
		for _, l := range r.Chain[:min(len(r.Chain), MaxChain)] {
			chain = append(chain, ChainLink{ID: capString(l.ID, maxField), Name: capString(l.Name, maxField)})
		}
		r.Chain = chain
	}
	if r.Shadow != nil {
		sh := *r.Shadow
		sh.Revision = capString(sh.Revision, maxField)
		sh.Reasons = capList(sh.Reasons, maxField)
		r.Shadow = &sh
	}
	r.Input = capJSON(r.Input, maxJSON)
	r.Details = capJSON(r.Details, maxJSON)
}

func capList(in []string, maxField int) []string {
	if in == nil {
		return nil
	}
	n := min(len(in), MaxReasons)
	out := make([]string, 0, n+1)
	for _, s := range in[:n] {
		out = append(out, capString(s, maxField))
	}
	if len(in) > MaxReasons {
		out = append(out, "reasons_truncated")
	}
	return out
}
