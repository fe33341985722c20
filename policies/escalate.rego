package passport.authz

import data.passport.config

# Approvals and budgets: a person for some calls, and a cap on how often
# actions run, whatever the passports say (docs/approvals.md).
#
# data.passport.config.approvals lists rules that ask a person to approve a
# call (decision.approval) instead of allowing it:
#   name           names the rule (for people)
#   actions        the actions it concerns
#   tenants        the tenants it concerns; absent or empty = every tenant
#   resources      the resources it concerns; absent or empty = every one
#   approvers      distinct approvers needed, 1 to 10 (default 1)
#   exclude_owner  the agent's registered owner may not approve
#   task_exempt    a passport bound to a task (an incident) needs no person:
#                  the task rules (task.rego) keep it to its target and actions
#   reason         what the approvers are shown
#
# data.passport.config.budget_escalations[budget name] = {approvers,
# exclude_owner, reason}: when that budget (data.passport.budgets) has no
# unit left, the call asks a person instead of being refused with
# budget_exhausted. An approval with enough approvers opens the call once,
# without a unit.
#
# Only a call that the other rules allow is shown to a person: a denial
# for any other reason stays a denial (a person cannot fix it), with
# budget_exhausted added when a budget ran out.

# escalates holds for the calls these rules concern: full_decision
# (authz.rego) takes escalated_decision for them. decision reaches
# full_decision for them too: an exhausted budget before every fast path,
# and the calls an approval rule may concern are not in the fast paths'
# tables (approval_calls).
escalates if {
	some b in input.budgets
	b.reserved == false
}

escalates if {
	some rule in config.approvals
	approval_rule_matches(rule)
}

approval_rule_matches(rule) if {
	input.action in rule.actions
	in_list_or_all(input.tenant, object.get(rule, "tenants", []))
	in_list_or_all(input.resource, object.get(rule, "resources", []))
	not task_exempted(rule)
}

in_list_or_all(_, []) := true

in_list_or_all(x, list) if x in list

task_exempted(rule) if {
	rule.task_exempt == true
	is_object(input.passport.task)
}

# exhausted are the budgets without a unit for the call.
exhausted contains name if {
	some name, b in input.budgets
	b.reserved == false
}

# asks are the approvals the call needs: the matching rules, and the
# escalations of its exhausted budgets.
asks contains ask_of(rule) if {
	some rule in config.approvals
	approval_rule_matches(rule)
}

asks contains ask_of(escalation) if {
	some name in exhausted
	escalation := config.budget_escalations[name]
}

ask_of(x) := {
	"approvers": object.get(x, "approvers", 1),
	"exclude_owner": object.get(x, "exclude_owner", false) == true,
	"reason": object.get(x, "reason", "a person must approve this call"),
}

# refused_budgets are the exhausted budgets that no escalation covers.
refused_budgets contains name if {
	some name in exhausted
	not config.budget_escalations[name]
}

# approval_request is what the decision asks for: as many approvers as the
# most demanding ask, the owner excluded when any ask excludes it, and
# every reason.
approval_request := {
	"required": true,
	"approvers": max({a.approvers | some a in asks}),
	"exclude_owner": count({a | some a in asks; a.exclude_owner}) > 0,
	"reason": concat("; ", sort({a.reason | some a in asks})),
}

# approved holds when the call brings an approval with enough approvers
# (the proxy passes input.approval only for an approval granted for
# exactly this call, and uses it up when the call is allowed).
approved if count(input.approval.approvers) >= approval_request.approvers

# escalated_decision is the decision for a call that escalates: the
# rules' denial (with budget_exhausted when a budget ran out), or
# budget_exhausted, or the rules' allow when an approval suffices, or a
# request for a person (a call that escalates has at least one ask).
escalated_decision := decision_for(array.concat(sort(reasons), ["budget_exhausted"])) if {
	count(reasons) > 0
	count(exhausted) > 0
} else := rules_decision if {
	count(reasons) > 0
} else := decision_for(["budget_exhausted"]) if {
	count(refused_budgets) > 0
} else := rules_decision if {
	approved
} else := object.union(decision_for(ask_reasons), {"approval": approval_request})

ask_reasons := ["approval_required", "budget_exhausted"] if {
	count(exhausted) > 0
} else := ["approval_required"]
