package passport.authz

import data.passport.config

# The fast path of decision (authz.rego) and what it reads.
#
# clearances is everything the fast path needs to know from data alone,
# worked out once: which agent types at which trust levels may take which
# actions in which tenant, on which resources, which freeze windows concern
# such calls, and the allowed decision itself. It reads no input, so the proxy evaluates it once
# per policy load and stores the value at data.passport.loaded.clearances
# (proxy/policy), where the fast path looks it up. Where that document is
# absent (opa eval, or opa test without `with`), the fast path clears
# nothing and every call takes the full evaluation: the same answers,
# slower. The fixtures of the tests supply it with `with`, as the proxy
# does.
#
# Every entry only restates, for a combination of data keys, checks of the
# reason rules; a combination they would object to has no entry, and a call
# without an entry takes the full evaluation.
clearances := {
	"allowed": allowed_decision,
	"calls": clear_calls,
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
	resources := object.union({resource: true | some resource in tenant_config.services}, any_resource(action))
	spans := window_spans(agent_type, name, action, tenant)
	arguments := name in {"service.scale", "deployment.deploy", "chaos.inject"}
}

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
