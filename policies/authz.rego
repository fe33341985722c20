# METADATA
# title: Agent Passport authorization
# description: |
#   The decision the proxy enforces on every call. Each other file in this
#   package adds deny reasons to the set "reasons"; a call is allowed only
#   when no rule objects. Everything tunable lives in data.passport.config
#   (policies/data.yaml); the rules read only input and data.
package passport.authz

# config is the policy data (policies/data.yaml). An import is an alias:
# rules read only the parts of data they name.
import data.passport.config

# action_config is the data entry of the requested action; undefined for an
# action the library does not know.
action_config := config.actions[input.action]

# Default deny: allow is true only when it is proven below. An input that is
# missing fields makes the checks that read them add reasons, never pass.
default allow := false

allow if count(reasons) == 0

# decision is what the proxy evaluates: data.passport.authz.decision.
# An allowed call takes the fast path (fast.rego), which never builds the
# set of reasons; any other call gets full_decision, which collects every
# reason. Both give the same answer: the fast path only ever allows a call
# that full_decision allows (policies_test.go compares them).
decision := d if {
	d := fast_decision
} else := full_decision

# full_decision evaluates every rule: the allow flag and all the reasons.
full_decision := {
	"allow": allow,
	"reasons": sort(reasons),
	"input_version": supported_input_version,
	"data_revision": data_revision,
}

# supported_input_version is the version of the input document these rules
# read (policies/README.md, "The input document").
supported_input_version := 1

default data_revision := ""

data_revision := config.revision

# The input document must be the version the rules were written for: a new
# shape must never be read with old rules.
reasons contains "input_version_unsupported" if not input.version == supported_input_version

# Every action must be known to the library; an action added to the proxy's
# routes is denied until a security team describes it in data.
reasons contains "unknown_action" if not action_config
