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
#
# Fast path: the body below clears an allowed call (most calls) in one rule
# body, without evaluating the reason rules and their negations. What data
# alone decides was worked out once per load (clearances, fast.rego); the
# body looks it up and checks the input against it. It may be stricter
# than the rules (a call it does not clear gets full_decision, and the same
# answer), never looser. Every rule that adds a reason must have its
# counterpart here or in clearances, or the check would not be applied to
# calls that pass all the others: fastpath_test.go fails when the reason
# rules change, as a reminder, and compares decision with full_decision
# over many inputs.
decision := {
	"allow": true,
	"reasons": [],
	"input_version": 1,
	"data_revision": clear.revision,
} if {
	# input_version_unsupported (1 is supported_input_version; a rule
	# reference would cost another evaluation), agent_blocked. Input
	# fields used more than once are bound once: each reference to input
	# costs a step. A missing field fails the fast path, never a check.
	input.version == 1
	agent := input.agent
	agent.blocked == false
	name := input.action
	tenant := input.tenant
	clear := data.passport.loaded.clearances

	# unknown_action, unknown_agent_type, agent_type_not_permitted,
	# trust_level_too_low, chaos_on_production_route
	action := clear.actions[agent.type][agent.trust_level][name]

	# reputation_too_low
	reputation := agent.reputation
	is_number(reputation)
	reputation >= action.min_reputation

	# resource_not_in_tenant (the lookup fails for an unknown tenant)
	resource := input.resource
	action.targets[clear.resources[tenant][resource]]

	# tenant_mismatch
	input.passport.tenant == tenant
	input.route.tenant in {"", tenant}

	# change_freeze, invalid_time: no window that concerns the call is
	# open at its time. The time is read only when a window concerns the
	# call, and must be valid then: without it, now is undefined and the
	# body fails (a bare now_ns inside the negation would make it true).
	every span in clear.windows[agent.type][name][tenant] {
		now := now_ns
		not span_open(span, now)
	}

	# invalid_argument, replicas_out_of_bounds, fault_type_not_permitted
	arguments_clear(action.arguments)

	# task_target_mismatch, task_action_mismatch
	task_clear(action.task_reads_exempt)

	# action_not_granted (last: it iterates)
	some detail in input.passport.authorization_details
	detail.type == "agent_action"
	name in detail.actions
	object.get(detail, "identifier", resource) == resource
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
