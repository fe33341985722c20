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
# Staged path: when the proxy hands in the passport's stage (stage.rego,
# worked out once per passport, route and policy load) as input.stage, the
# two staged bodies below clear an allowed call by checking only the
# call's own facts against it. Without a stage, or for a call they do not
# clear, the paths after them decide, with the same answer.
#
# Fast path: cleared_call (fast.rego) clears an allowed call (most calls)
# without evaluating the reason rules and their negations, and the first
# body below hands out the allowed decision when nothing is left to check;
# the second checks the rest (freeze windows, arguments, the passport's
# task). The third, the table path, decides most calls the fast path
# leaves, denials above all, from tables and three checks (table_decision),
# so that refusing costs about what allowing does: a flood of denials must
# not cost more CPU than allowed calls. What data alone decides was worked
# out once per load (clearances, fast.rego). A fast path may be stricter
# than the rules (a call it does not settle gets full_decision, and the
# same answer), never looser, and the table path gives exactly the rules'
# answer. Every rule that adds a reason must have its counterpart here or
# in clearances, or the check would not be applied to calls that pass all
# the others: fastpath_test.go fails when the reason rules change, as a
# reminder, and compares decision with full_decision over many inputs.
decision := listing_decision if {
	# An MCP tools/list: could the tool be allowed, its arguments unknown?
	# (mcp.rego)
	input.mcp.listing == true
} else := full_decision if {
	# An exhausted budget (escalate.rego): the full evaluation, ahead of
	# every fast path. An expression here rather than a rule: a rule would
	# cost every call an evaluation of its own. The calls an approval rule
	# may concern are left out of the fast paths' tables instead
	# (approval_calls, fast.rego), which costs an allowed call nothing.
	input.budgets[_].reserved == false
} else := data.passport.loaded.clearances.allowed if {
	# The staged path: what the passport, the route and the policy decide
	# was worked out once per passport (stage, stage.rego); the call's own
	# facts are checked here. A call without input.stage, or one these
	# checks do not clear, takes the paths below, with the same answer.
	stage := input.stage
	stage.simple == true

	# The resource among those the stage leaves the call, agent_blocked,
	# reputation_too_low (staged_call, stage.rego, inline: a function call
	# costs the hot path a step of its own). The resource first: a call
	# denied for it leaves the staged path at once.
	stage.resources[input.resource]
	agent := input.agent
	agent.blocked == false
	reputation := agent.reputation
	is_number(reputation)
	reputation >= stage.min_reputation
} else := data.passport.loaded.clearances.allowed if {
	# A stage with freeze windows or arguments to check; a simple one
	# leaves here at once.
	stage := input.stage
	stage.simple == false
	staged_call(stage)

	# change_freeze, invalid_time; invalid_argument,
	# replicas_out_of_bounds, fault_type_not_permitted: as below.
	every span in stage.spans {
		now := now_ns
		not span_open(span, now)
	}
	arguments_clear(stage.arguments)
} else := data.passport.loaded.clearances.allowed if {
	cleared_call.simple == true

	# task_target_mismatch, task_action_mismatch: a passport without a
	# task is bound to none.
	not input.passport.task
} else := data.passport.loaded.clearances.allowed if {
	call := cleared_call

	# change_freeze, invalid_time: no window that concerns the call is
	# open at its time. The time is read only when a window concerns the
	# call, and must be valid then: without it, now is undefined and the
	# body fails (a bare now_ns inside the negation would make it true).
	every span in call.spans {
		now := now_ns
		not span_open(span, now)
	}

	# invalid_argument, replicas_out_of_bounds, fault_type_not_permitted
	arguments_clear(call.arguments)

	# task_target_mismatch, task_action_mismatch
	task_clear(call.task_reads_exempt)
} else := d if {
	# The table path (fast.rego): most denied calls, decided from tables.
	d := table_decision
} else := full_decision

# full_decision evaluates every rule: the approvals and budgets
# (escalate.rego) for the calls they concern, else rules_decision.
full_decision := escalated_decision if {
	escalates
} else := rules_decision

# rules_decision is the decision of the reason rules alone: the allow flag
# and all the reasons.
rules_decision := {
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
