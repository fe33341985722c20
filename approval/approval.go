// Package approval is the shared model of approvals: a person's consent to
// one exact call of one agent, stored in Redis, that the proxy creates when
// the policy asks for a person, the authority's approvers grant or deny,
// and the proxy consumes once when the agent repeats the identical call
// with the Passport-Approval header.
//
// An approval binds the tenant, the agent, the method, the normalised path,
// the query and the SHA-256 of the body. Every change is one Lua script
// (Store.Create, Approve, Deny, Consume), so that N distinct approvers are
// counted exactly and, of many concurrent consumers, exactly one succeeds.
// Every key of a tenant carries its hash tag ("passport:{t:<tenant>}:..."),
// so each script touches one Redis Cluster slot.
//
// The package imports only the shared vocabulary (passport): the proxy uses
// it without carrying the authority, and the authority without the proxy.
package approval

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Header is the request header with which an agent presents a granted
// approval when it repeats the call.
const Header = "Passport-Approval"

// Limits and defaults.
const (
	// DefaultTTL is how long an approval may be decided and used.
	DefaultTTL = 15 * time.Minute
	// MaxTTL bounds a requested lifetime.
	MaxTTL = 24 * time.Hour
	// Retention is how long a record stays readable after it expired, so
	// that a late retry is told "expired" or "used" rather than "unknown"
	// and approvers can look back; then Redis drops it.
	Retention = 24 * time.Hour
	// MaxApprovers bounds the number of distinct approvers a policy may
	// require.
	MaxApprovers = 10
	// MaxBodyPreview is how much of the body is kept for people to read.
	// The whole body is bound by its SHA-256.
	MaxBodyPreview = 8 << 10
	// DefaultMaxLive is how many unexpired approvals one tenant may hold
	// (pending or granted): a looping agent cannot fill Redis or bury the
	// approvers' list.
	DefaultMaxLive = 1000
	// MaxCommentLen bounds an approver's comment (bytes).
	MaxCommentLen = 1024
	// IDPrefix starts every approval id.
	IDPrefix = "apr_"
)

// AdminApprover is the identity recorded when an admin token decides.
const AdminApprover = "admin"

// State is where an approval is in its life.
type State string

// States. Expired is never stored: a pending or granted approval whose
// expiry has passed reads as expired.
const (
	StatePending State = "pending"
	StateGranted State = "granted"
	StateDenied  State = "denied"
	StateUsed    State = "used"
	StateExpired State = "expired"
)

// ParseState parses a state name; "" is the zero State (any state).
func ParseState(s string) (State, error) {
	switch st := State(s); st {
	case "", StatePending, StateGranted, StateDenied, StateUsed, StateExpired:
		return st, nil
	}
	return "", errors.New("state: want pending, granted, denied, used or expired")
}

// Vote is one approver's decision.
type Vote struct {
	// Approver names who decided: the name an approver token carries, or
	// "admin" for an admin token.
	Approver string    `json:"approver"`
	At       time.Time `json:"at"`
	Comment  string    `json:"comment,omitempty"`
	// Via says through what an admin decided for someone (for example
	// "dashboard:<operator>"); it never makes another identity.
	Via string `json:"via,omitempty"`
}

// Approval is one approval as the authority's API and the proxy see it.
type Approval struct {
	ID     string `json:"id"`
	Tenant string `json:"tenant"`
	State  State  `json:"state"`

	// The agent that made the call, and the passport it used then.
	AgentID   string `json:"agent_id"`
	AgentName string `json:"agent_name,omitempty"`
	AgentType string `json:"agent_type,omitempty"`
	JTI       string `json:"jti,omitempty"`
	// RequestID is the proxy's id of the call that was refused for
	// approval (its decision record in the audit stream).
	RequestID string `json:"request_id,omitempty"`

	// The exact call this approval opens.
	Method     string `json:"method"`
	Path       string `json:"path"`
	Query      string `json:"query"`
	BodySHA256 string `json:"body_sha256"`
	// Body is the start of the body for people to read (MaxBodyPreview
	// bytes): text, or base64 when BodyEncoding says so.
	Body          string `json:"body"`
	BodyEncoding  string `json:"body_encoding,omitempty"`
	BodyBytes     int    `json:"body_bytes"`
	BodyTruncated bool   `json:"body_truncated,omitempty"`

	Action   string   `json:"action"`
	Resource string   `json:"resource"`
	Reasons  []string `json:"reasons"`
	// Reason is the policy's explanation (decision.approval.reason).
	Reason string `json:"reason,omitempty"`

	// RequiredApprovers distinct approvers grant it.
	RequiredApprovers int `json:"required_approvers"`
	// ExcludeOwner: the agent's registered owner may not approve.
	ExcludeOwner bool `json:"exclude_owner,omitempty"`
	// Approvers who approved, oldest first.
	Approvers []Vote `json:"approvers"`
	// DeniedBy is the vote that denied it.
	DeniedBy *Vote `json:"denied_by,omitempty"`

	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt time.Time  `json:"expires_at"`
	GrantedAt *time.Time `json:"granted_at,omitempty"`
	UsedAt    *time.Time `json:"used_at,omitempty"`
	// UsedRequestID is the proxy's id of the call that used it.
	UsedRequestID string `json:"used_request_id,omitempty"`
}

// List is the answer of GET /v1/tenants/{t}/approvals.
type List struct {
	Approvals []Approval `json:"approvals"`
}

// DecisionRequest is the body of POST .../approvals/{id}/approve and
// .../deny.
type DecisionRequest struct {
	Comment string `json:"comment,omitempty"`
	// Via, for admin tokens only, names who the admin decides for (the
	// dashboard sends its operator); it is recorded, never counted as an
	// approver of its own.
	Via string `json:"via,omitempty"`
}

// Codes of refusals. They are reason codes ([a-z][a-z0-9_]*): the proxy
// answers an agent with them, the authority's API with them as problem
// types.
const (
	CodeUnknown         = "approval_unknown"
	CodePending         = "approval_pending"
	CodeGranted         = "approval_granted"
	CodeDenied          = "approval_denied"
	CodeUsed            = "approval_used"
	CodeExpired         = "approval_expired"
	CodeMismatch        = "approval_mismatch"
	CodeAlreadyApproved = "approval_already_approved"
	CodeOwnerExcluded   = "approval_owner_excluded"
	CodeLimit           = "approval_limit"
)

// Error is a refusal of the store: the approval is unknown, in the wrong
// state, or does not match. Code is one of the Code* constants; Field
// names what did not match (CodeMismatch: tenant, agent, method, path,
// query or body).
type Error struct {
	Code  string
	Field string
}

func (e *Error) Error() string {
	if e.Field != "" {
		return e.Code + ": " + e.Field
	}
	return e.Code
}

// Is matches the sentinel of the same code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code && (t.Field == "" || t.Field == e.Field)
}

// Sentinels for errors.Is.
var (
	ErrUnknown         = &Error{Code: CodeUnknown}
	ErrPending         = &Error{Code: CodePending}
	ErrGranted         = &Error{Code: CodeGranted}
	ErrDenied          = &Error{Code: CodeDenied}
	ErrUsed            = &Error{Code: CodeUsed}
	ErrExpired         = &Error{Code: CodeExpired}
	ErrMismatch        = &Error{Code: CodeMismatch}
	ErrAlreadyApproved = &Error{Code: CodeAlreadyApproved}
	ErrOwnerExcluded   = &Error{Code: CodeOwnerExcluded}
	ErrLimit           = &Error{Code: CodeLimit}
)

// Digest is the hex SHA-256 of a body: what an approval binds.
func Digest(body []byte) string {
	s := sha256.Sum256(body)
	return hex.EncodeToString(s[:])
}

var idRE = regexp.MustCompile(`^apr_[A-Za-z0-9_-]{16,64}$`)

// ValidID reports whether s has the shape of an approval id. Anything else
// is unknown without asking Redis (and never reaches a key).
func ValidID(s string) bool { return idRE.MatchString(s) }

var approverRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$`)

// ValidApprover reports whether s may name an approver: 1-128 letters,
// digits and ". _ @ + -", starting with a letter or digit (an e-mail
// address fits). ':', '=' and ',' are excluded so that
// PASSPORT_APPROVER_TOKENS can be parsed unambiguously.
func ValidApprover(s string) bool { return approverRE.MatchString(s) }

// ValidComment reports whether s may be a comment or a via: at most
// MaxCommentLen bytes of printable UTF-8 (it reaches logs, the audit
// trail and the dashboard).
func ValidComment(s string) bool {
	if len(s) > MaxCommentLen || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) && r != ' ' {
			return false
		}
	}
	return true
}

// Visible returns s as a person may safely be shown it in a terminal or a
// page: control characters (but newline and tab), invisible formatting
// characters (bidirectional overrides, zero-width spaces) and invalid
// UTF-8 are written as escapes (\x1b, \u202e), so that an agent cannot
// make the call it asks for look like another one.
func Visible(s string) string {
	var b strings.Builder
	for len(s) > 0 {
		r, size := utf8.DecodeRuneInString(s)
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[0])
		case r == '\n' || r == '\t':
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case (r >= 0x80 && r < 0xa0) || unicode.Is(unicode.Cf, r) || r == 0x2028 || r == 0x2029:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
		s = s[size:]
	}
	return b.String()
}

// PageURL is the dashboard's page for an approval (the approval_url of
// the proxy's 403): the dashboard at base, on tenant, showing the
// approval. It holds no credential.
func PageURL(dashboardBase, tenant, id string) string {
	v := url.Values{"tenant": {tenant}, "approval": {id}}
	return strings.TrimRight(dashboardBase, "/") + "/#" + v.Encode()
}
