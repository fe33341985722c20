package dashboard

import (
	"errors"
	"net/http"
	"regexp"

	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/agentcall"
	"github.com/agentpassport/passport/internal/problem"
)

// Refusal is an action an agent was refused, as the page shows it: a
// stable code and the policy's reasons. Actions may return one (or wrap
// one); the errors of the project's own agents (agentcall's answers of
// the proxy, the authority client's token errors) are recognised too.
type Refusal struct {
	// Status is the HTTP status the dashboard answers: 403 for a refusal,
	// 409 for a busy target.
	Status int
	// Code is a stable snake_case code, e.g. policy_denied, agent_blocked.
	Code string
	// Detail is a fixed, safe sentence.
	Detail  string
	Reasons []string
}

func (r *Refusal) Error() string { return "refused: " + r.Code }

// codeRE bounds what is passed through from an upstream answer: codes and
// reasons are snake_case identifiers, anything else is dropped, so the
// page never shows (or is fed) arbitrary upstream text.
var codeRE = regexp.MustCompile(`^[a-z][a-z0-9_.:-]{0,63}$`)

func cleanCodes(in []string) []string {
	out := []string{}
	for _, s := range in {
		if codeRE.MatchString(s) && len(out) < 16 {
			out = append(out, s)
		}
	}
	return out
}

// refusalOf recognises a refusal in err, or returns nil.
func refusalOf(action string, err error) *Refusal {
	var r *Refusal
	if errors.As(err, &r) {
		c := *r
		c.Reasons = cleanCodes(c.Reasons)
		return &c
	}
	var ae *agentcall.Error
	if errors.As(err, &ae) {
		code := ""
		if codeRE.MatchString(ae.Resp.Code) {
			code = ae.Resp.Code
		}
		switch {
		case errors.Is(err, agentcall.ErrDenied):
			return &Refusal{Status: http.StatusForbidden, Code: or(code, "policy_denied"),
				Detail: "the policy refused the " + action + " agent's call", Reasons: cleanCodes(ae.Resp.Reasons)}
		case errors.Is(err, agentcall.ErrUnauthorized):
			return &Refusal{Status: http.StatusForbidden, Code: or(code, "passport_refused"),
				Detail: "the proxy refused the " + action + " agent's passport", Reasons: cleanCodes(ae.Resp.Reasons)}
		case errors.Is(err, agentcall.ErrConflict):
			return &Refusal{Status: http.StatusConflict, Code: "target_busy",
				Detail: "the target refused the change: it already has an active fault", Reasons: []string{}}
		}
		return nil
	}
	var ce *client.Error
	if errors.As(err, &ce) && ce.Status >= 400 && ce.Status < 500 && ce.Status != http.StatusTooManyRequests {
		code := "no_passport"
		if codeRE.MatchString(ce.Code) {
			code = ce.Code
		}
		detail := "the authority gave the " + action + " agent no passport"
		if errors.Is(err, client.ErrBlocked) {
			code, detail = "agent_blocked", "the "+action+" agent is blocked: unblock it in the agents panel"
		}
		return &Refusal{Status: http.StatusForbidden, Code: code, Detail: detail, Reasons: []string{code}}
	}
	return nil
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// writeRefusal answers an RFC 9457 problem with the refusal's code and
// reasons as extension members.
func writeRefusal(w http.ResponseWriter, r *Refusal) {
	problem.Write(w, problem.Details{Status: r.Status, Code: r.Code, Detail: r.Detail, Reasons: r.Reasons})
}
