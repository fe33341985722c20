package passport.authz

import data.passport.config

# The fast path of decision (authz.rego) and what it reads.
#
# clearances is everything the fast path needs to know from data alone,
# worked out once: which agent types at which trust levels may take which
# actions in which tenant, on which resources, which freeze windows concern
# such calls, and the allowed decision itself. It reads no input, so the
# annotation below declares it a load-time document: the proxy's engine
# evaluates it once per policy load and stores the value at
# data.passport.loaded.clearances, where the fast path looks it up. Where
# that document is absent (opa eval, or opa test without `with`), the fast
# path clears nothing and every call takes the full evaluation: the same
# answers, slower. The fixtures of the tests supply it with `with`, as the
# proxy does.
#
# Every entry only restates, for a combination of data keys, checks of the
# reason rules; a combination they would object to has no entry, and a call
# without an entry takes the full evaluation.

# METADATA
# custom:
#   load_time: data.passport.loaded.clearances
clearances := {
	"allowed": allowed_decision,
	"calls": clear_calls,
	"denials": denials,
	"min_reputations": min_reputations,
	"resources": tenant_resources,
	"plain_actions": plain_actions,
	"route_tenants": route_tenants,
	"spans": call_spans,
	"static_index": static_index,
} if {
	# The freeze windows are well formed, so that no freeze rule can fail
	# on them: each is an object whose lists are lists.
	windows := object.get(config, "freeze_windows", [])
	is_array(windows)
	every window in windows {
		is_object(window)
		is_array(object.get(window, "tenants", []))
		is_array(object.get(window, "actions", []))
		is_array(object.get(window, "exempt_agent_types", []))
	}
}

# allowed_decision is full_decision's value for an allowed call (1 is
# supported_input_version; fast_test.rego checks that they agree). Stored
# whole, the fast path hands it out as it is, without building an object
# per call.
allowed_decision := {
	"allow": true,
	"reasons": [],
	"input_version": 1,
	"data_revision": object.get(config, "revision", ""),
}

# clear_calls[agent type][trust level][action][tenant] exists when the
# type's capabilities include the action (unknown_agent_type,
# agent_type_not_permitted), the level is high enough (unknown_action,
# trust_level_too_low), the action is not limited to non-production routes
# (chaos_on_production_route: those take the full evaluation), and the
# tenant is named (tenant_mismatch for an empty tenant). A combination the
# rules would object to whatever the input has no entry.
#
# Each entry holds what the input is then checked against:
#   min_reputation     reputation_too_low
#   resources          the resources the call may name, as keys (data has
#                      no sets): the tenant's services, and "*" (a
#                      collection) when the action allows any resource
#                      (resource_not_in_tenant)
#   route_tenants      the route tenants (keys) that agree with the call's
#                      tenant: none ("") or the same (tenant_mismatch)
#   spans              the [start, end) spans, in Unix nanoseconds, of the
#                      freeze windows that concern the call (change_freeze,
#                      invalid_time); a combination with a concerning
#                      window whose times do not parse has no entry: that
#                      window freezes it at any time
#   arguments          whether the action has argument constraints
#                      (invalid_argument, replicas_out_of_bounds,
#                      fault_type_not_permitted)
#   task_reads_exempt  whether a task-bound passport may still take the
#                      action anywhere in its tenant
#   simple             no spans and no arguments: nothing to check but the
#                      lookups above (and the task, which is the input's)
clear_calls[agent_type][level][name][tenant] := {
	"min_reputation": object.get(action, "min_reputation", 0),
	"resources": resources,
	"route_tenants": {"": true, tenant: true},
	"spans": spans,
	"arguments": arguments,
	"task_reads_exempt": task_reads_exempt(action),
	"simple": simple(spans, arguments),
} if {
	some agent_type, type_config in config.agent_types
	some name, action in config.actions
	is_object(action)
	name in type_config.capabilities
	object.get(action, "non_production_only", false) != true
	some level, rank in config.trust_levels
	rank >= config.trust_levels[action.trust]
	some tenant, tenant_config in config.tenants
	is_string(tenant)
	tenant != ""

	# An approval rule may concern the call: the full evaluation decides.
	not approval_calls[name]["*"]
	resources := object.remove(
		object.union({resource: true | some resource in tenant_config.services}, any_resource(action)),
		object.keys(object.get(approval_calls, name, {})),
	)
	spans := window_spans(agent_type, name, action, tenant)
	arguments := name in argument_actions
}

# approval_calls[action][resource] exists when an approval rule names the
# action and the resource, [action]["*"] when a rule names the action for
# every resource: what the rules may ask a person for, whatever the tenant
# and the task. The fast paths leave these calls to the full evaluation
# (escalate.rego decides them).
approval_calls := {name: resources |
	some rule in object.get(config, "approvals", [])
	some name in rule.actions
	resources := object.union_n([rule_resources(r) |
		some r in object.get(config, "approvals", [])
		name in r.actions
	])
}

rule_resources(rule) := {"*": true} if {
	object.get(rule, "resources", []) == []
} else := {resource: true | some resource in rule.resources}

# argument_actions have argument constraints on the request body
# (arguments.rego).
argument_actions := {"service.scale", "deployment.deploy", "chaos.inject"}

simple(spans, arguments) if {
	count(spans) == 0
	arguments == false
}

else := false

any_resource(action) := {"*": true} if action.any_resource == true

else := {}

task_reads_exempt(action) if {
	config.task.reads_exempt == true
	action.kind == "read"
}

else := false

# window_spans are the spans of the freeze windows that concern such a
# call (window_concerns, freeze.rego); undefined when one of them has a
# time that does not parse.
window_spans(agent_type, name, action, tenant) := spans if {
	concerning := [window |
		some window in object.get(config, "freeze_windows", [])
		window_concerns(window, agent_type, name, action, tenant)
	]
	spans := [[start, end] |
		some window in concerning
		start := rfc3339_ns(window.start)
		end := rfc3339_ns(window.end)
	]
	count(spans) == count(concerning)
}

# cleared_call is the clearances entry of the call (clear_calls) when the
# input passes every check that does not branch; decision (authz.rego)
# checks the rest. Input fields used more than once are bound once: each
# reference to input costs a step. A missing field fails the fast path,
# never a check.
cleared_call := call if {
	# input_version_unsupported (1 is supported_input_version; a rule
	# reference would cost another evaluation), agent_blocked
	input.version == 1
	agent := input.agent
	agent.blocked == false
	name := input.action
	tenant := input.tenant

	# delegated_production_write: a delegated passport takes the full
	# evaluation (delegation.rego).
	not input.passport.delegation

	# unknown_action, unknown_agent_type, agent_type_not_permitted,
	# trust_level_too_low, chaos_on_production_route, tenant_mismatch
	# (an empty tenant)
	call := data.passport.loaded.clearances.calls[agent.type][agent.trust_level][name][tenant]

	# reputation_too_low
	reputation := agent.reputation
	is_number(reputation)
	reputation >= call.min_reputation

	# resource_not_in_tenant
	resource := input.resource
	call.resources[resource]

	# tenant_mismatch
	input.passport.tenant == tenant
	call.route_tenants[input.route.tenant]

	# action_not_granted (last: it iterates)
	some detail in input.passport.authorization_details
	detail.type == "agent_action"
	name in detail.actions
	object.get(detail, "identifier", resource) == resource
}

# span_open holds when now is within a window's span.
span_open(span, now) if {
	span[0] <= now
	now < span[1]
}

# arguments_clear holds when the call's arguments satisfy the constraints
# of its action (invalid_argument, replicas_out_of_bounds,
# fault_type_not_permitted); checked tells whether the action has any
# (clearances).
arguments_clear(false)

arguments_clear(true) if {
	input.action == "service.scale"
	replicas_integer
	replicas_within_bounds
}

arguments_clear(true) if {
	input.action == "deployment.deploy"
	deploy_version_valid
}

arguments_clear(true) if {
	input.action == "chaos.inject"
	input.request.body.type in config.chaos.fault_types
}

# task_clear holds when the passport is not bound to a task, or the call
# is within the task (task_target_mismatch, task_action_mismatch); reads
# are exempt when data says so.
task_clear(_) if not input.passport.task

task_clear(exempt) if exempt == true

task_clear(_) if {
	is_object(input.passport.task)
	object.get(input.passport.task, "target", "") in {"", input.resource}
	input.action in object.get(input.passport.task, "actions", [])
}

# The table path: denied calls.
#
# A denied call must cost about what an allowed one does, or a flood of
# denials costs the proxy more than the calls it serves, and evaluating
# every reason rule costs several allowed calls (BenchmarkEngineDecide/deny
# against /allow; the figures are in docs/performance.md). table_decision
# decides the calls that the
# fast path does not clear (denials, and allowed calls on non-production
# routes) from tables worked out once per load and a few checks, with the
# rules' answer (TestFastDecisionMatchesFullDecision compares them); it
# leaves task-bound passports and malformed or unknown fields to
# full_decision.
#
# The reasons that the agent type, the trust level, the action and the
# route's production decide alone, whatever else the call holds, are the
# checks of unknown_agent_type, agent_type_not_permitted (agents.rego),
# trust_level_too_low (trust.rego) and chaos_on_production_route
# (arguments.rego), restated for data keys as three indexes of denials.
# Only actions whose data entry is an object are in these tables (such an
# action is never unknown_action); the calls of the others take the full
# evaluation.
#
# type_index[agent type][action] is 2 when the type is false in data
# (unknown_agent_type), 1 when its capabilities lack the action
# (agent_type_not_permitted), else 0.
type_index := {agent_type: {name: type_check(agent_type, name) |
	some name, action in config.actions
	is_object(action)
} |
	some agent_type, _ in config.agent_types
}

type_check(agent_type, name) := 2 if {
	config.agent_types[agent_type] == false
} else := 0 if {
	name in type_capabilities_of(agent_type)
} else := 1

type_capabilities_of(agent_type) := capabilities if {
	capabilities := config.agent_types[agent_type].capabilities
} else := []

# level_index[trust level][action] is 1 when the level is below the
# action's (trust_level_too_low), else 0.
level_index := {level: {name: level_check(level, action) |
	some name, action in config.actions
	is_object(action)
} |
	some level, _ in config.trust_levels
}

level_check(level, action) := 0 if {
	config.trust_levels[level] >= config.trust_levels[action.trust]
} else := 1

# chaos_index[action][route kind] is 1 when the action is limited to
# non-production routes and the route is not one
# (chaos_on_production_route), else 0. The route kind is 0 for a route
# whose production is not false, 1 for one whose production is false.
chaos_index := {name: [to_number(object.get(action, "non_production_only", false) == true), 0] |
	some name, action in config.actions
	is_object(action)
}

# static_index[agent type][trust level][action][route kind] is the three
# indexes above as one number, 4 * type + 2 * level + chaos: the first
# index of denials. One lookup per call instead of three.
static_index := {agent_type: {level: {name: [i |
	some c in chaos_index[name]
	i := ((4 * t) + (2 * level_index[level][name])) + c
] |
	some name, t in by_name
} |
	some level, _ in config.trust_levels
} |
	some agent_type, by_name in type_index
}

# denials[static index][granted][reputation ok][resource in tenant] is the
# decision for a call with these indexes (the last three are
# table_decision's checks, 0 when one fails, 1 when it passes), as far as
# they decide it: stored whole, handed out as it is when the call has no
# argument or freeze reasons. It does not depend on data beyond the
# revision: 96 decisions, whatever the data's size.
denials := [[[[decision_for(array.concat(static, checks)) |
	some checks in by_reputation
] |
	some by_reputation in by_granted
] |
	some by_granted in check_reasons
] |
	some i in numbers.range(0, 11)
	static := array.concat(array.concat(type_reasons[floor(i / 4)], level_reasons[floor((i % 4) / 2)]), chaos_reasons[i % 2])
]

type_reasons := [[], ["agent_type_not_permitted"], ["unknown_agent_type"]]

level_reasons := [[], ["trust_level_too_low"]]

chaos_reasons := [[], ["chaos_on_production_route"]]

# check_reasons[granted][reputation ok][resource in tenant] are the
# reasons of table_decision's three checks: action_not_granted,
# reputation_too_low, resource_not_in_tenant.
check_reasons := [[[array.concat(
	array.concat(
		[code | code := "action_not_granted"; granted == false],
		[code | code := "reputation_too_low"; reputation_ok == false],
	),
	[code | code := "resource_not_in_tenant"; in_tenant == false],
) |
	some in_tenant in [false, true]
] |
	some reputation_ok in [false, true]
] |
	some granted in [false, true]
]

# decision_for is full_decision's value for a call with these reasons (1
# is supported_input_version).
decision_for(reasons) := {
	"allow": false,
	"reasons": sort(reasons),
	"input_version": 1,
	"data_revision": object.get(config, "revision", ""),
} if {
	count(reasons) > 0
} else := allowed_decision

# min_reputations[action] is the reputation an action needs (reputation_too_low),
# 0 for none; actions whose threshold is not a number have none here.
min_reputations := {name: max([threshold, 0]) |
	some name, action in config.actions
	is_object(action)
	threshold := object.get(action, "min_reputation", 0)
	is_number(threshold)
}

# tenant_resources[action][tenant] are the resources, as keys, that such a
# call may name (resource_in_tenant): the tenant's services that are
# strings, and "*" when the action allows any resource. A tenant whose
# services are not a list has none. A resource an approval rule names for
# the action (approval_calls, escalate.rego) has the value 2, which no
# entry of denials has: table_call fails and the full evaluation decides
# (at no cost to the other calls); an action an approval rule names for
# every resource has no entry.
tenant_resources := {name: {tenant: object.union(
	object.union(
		{resource: true | some resource in tenant_config.services; is_string(resource)},
		any_resource(action),
	),
	{resource: 2 | some resource, _ in object.get(approval_calls, name, {})},
) |
	some tenant, tenant_config in config.tenants
	is_array(tenant_config.services)
} |
	some name, action in config.actions
	is_object(action)
	not approval_calls[name]["*"]
}

# route_tenants[tenant] are the route tenants, as keys, that agree with a
# call's tenant (tenant_mismatch): none ("") or the same. An empty tenant
# has none.
route_tenants := {tenant: {"": true, tenant: true} |
	some tenant, _ in config.tenants
	is_string(tenant)
	tenant != ""
}

# call_spans[agent type][action][tenant] are the spans of the freeze
# windows that concern such a call (window_spans); a combination with a
# concerning window whose times do not parse has none.
call_spans := {agent_type: {name: {tenant: spans |
	some tenant, _ in config.tenants
	spans := window_spans(agent_type, name, action, tenant)
} |
	some name, action in config.actions
} |
	some agent_type, _ in config.agent_types
}

# table_decision is the decision for a call that the tables settle
# (table_call): the stored decision when the call's action has no
# arguments and no freeze window concerns it, else that decision with the
# reasons of its arguments and windows added.
table_decision := d if {
	[d, spans] := table_call
	spans == []
	data.passport.loaded.clearances.plain_actions[input.action]
} else := with_reasons(d, array.concat(argument_reasons, freeze_reasons(spans))) if {
	[d, spans] := table_call
}

# plain_actions are the actions without arguments, as keys.
plain_actions := {name: true |
	some name, _ in config.actions
	not name in argument_actions
}

# table_call is, for a call that the tables settle, its decision as far as
# denials decides it and the spans of the freeze windows that concern it:
# a well-formed call (input_version_unsupported, agent_blocked) with no
# task (task_target_mismatch, task_action_mismatch) and no delegation
# (delegated_production_write), within its tenant
# (tenant_mismatch), whose type, trust level, action and tenant are in
# data, whose freeze windows' times parse, with a numeric reputation of at
# least 0 and a string resource. Any other call takes the full
# evaluation. Input fields used more than once are bound once: each
# reference to input costs a step, and so does each rule or negation.
table_call := [d, spans] if {
	input.version == 1
	agent := input.agent
	agent.blocked == false
	not input.passport.task
	not input.passport.delegation
	tenant := input.tenant
	input.passport.tenant == tenant
	route := input.route
	reputation := agent.reputation
	is_number(reputation)
	reputation >= 0
	resource := input.resource
	is_string(resource)
	name := input.action
	data.passport.loaded.clearances.route_tenants[tenant][route.tenant]
	spans := data.passport.loaded.clearances.spans[agent.type][name][tenant]

	# The indexes of denials, each bound before it is used: a call inside
	# a reference would run after it, and the reference would iterate.
	kind := to_number(route.production == false)
	static := data.passport.loaded.clearances.static_index[agent.type][agent.trust_level][name][kind]

	# action_not_granted: the test of action_granted (agents.rego).
	granted := to_number(count([detail |
		some detail in input.passport.authorization_details
		detail.type == "agent_action"
		name in detail.actions
		object.get(detail, "identifier", "") in {"", resource}
	]) > 0)

	# reputation_too_low, resource_not_in_tenant
	reputation_ok := to_number(reputation >= data.passport.loaded.clearances.min_reputations[name])
	in_tenant := to_number(object.get(data.passport.loaded.clearances.resources[name][tenant], resource, false))
	d := data.passport.loaded.clearances.denials[static][granted][reputation_ok][in_tenant]
}

# with_reasons is decision d with extra reasons added.
with_reasons(d, []) := d

with_reasons(d, extra) := decision_for(array.concat(d.reasons, extra)) if count(extra) > 0

# argument_reasons are the reasons of the call's arguments: at most one
# per action, by the rules' own helpers (arguments.rego).
argument_reasons := ["invalid_argument"] if {
	input.action == "service.scale"
	not replicas_integer
} else := ["replicas_out_of_bounds"] if {
	input.action == "service.scale"
	not replicas_within_bounds
} else := ["invalid_argument"] if {
	input.action == "deployment.deploy"
	not deploy_version_valid
} else := ["fault_type_not_permitted"] if {
	input.action == "chaos.inject"
	not input.request.body.type in config.chaos.fault_types
} else := []

# freeze_reasons are change_freeze and invalid_time (freeze.rego) for a
# call whose concerning windows have these spans: without a valid time,
# invalid_time (and no window can be open); with one, change_freeze when a
# span holds it.
freeze_reasons([]) := []

freeze_reasons(spans) := ["invalid_time"] if {
	count(spans) > 0
	not now_ns
} else := ["change_freeze"] if {
	count(spans) > 0
	some span in spans
	span_open(span, now_ns)
} else := []
