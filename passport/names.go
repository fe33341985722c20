package passport

import "regexp"

// The one rule for each name that crosses components. Tenants are spliced
// into Redis keys inside a Cluster hash tag ("{t:<tenant>}"), into audit
// stream names and URL paths, so '{', '}', ':' and control characters must
// never reach one; actions are matched by routes, grants and policies alike,
// so the proxy, the authority and the policy library must agree on them.
var (
	tenantRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	actionRE = regexp.MustCompile(`^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)+$`)
	typeRE   = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,63}$`)
)

// MaxActionLength bounds an action name.
const MaxActionLength = 128

// ValidTenant reports whether s is a valid tenant name: lowercase letters,
// digits, '-' and '_', starting with a letter or digit, at most 63 bytes.
func ValidTenant(s string) bool { return tenantRE.MatchString(s) }

// ValidAction reports whether s is a valid action name: two or more dotted
// lowercase segments such as "service.restart", each starting with a letter
// and holding letters, digits, '-' and '_', at most MaxActionLength bytes.
func ValidAction(s string) bool { return len(s) <= MaxActionLength && actionRE.MatchString(s) }

// ValidAgentType reports whether s is a valid agent type name ("healer",
// "chaos"): lowercase letters, digits, '-' and '_', starting with a letter,
// at most 64 bytes.
func ValidAgentType(s string) bool { return typeRE.MatchString(s) }
