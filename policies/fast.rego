package passport.authz

import data.passport.config

# The fast path of decision (authz.rego) and what it reads.
#
# clearances is everything the fast path needs to know from data alone,
# worked out once: which agent types at which trust levels may take which
# actions, which resources each tenant owns, and which freeze windows
# concern which calls. It reads no input, so the proxy evaluates it once
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
	"revision": object.get(config, "revision", ""),
	"actions": clear_actions,
	"resources": clear_resources,
	"windows": clear_windows,
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

# clear_actions[agent type][trust level][action] exists when the type's
# capabilities include the action (unknown_agent_type,
# agent_type_not_permitted), the level is high enough (unknown_action,
# trust_level_too_low), and the action is not limited to non-production
# routes (chaos_on_production_route: those take the full evaluation).
clear_actions[agent_type][level][name] := {
	"min_reputation": object.get(action, "min_reputation", 0),
	"targets": targets(action),
	"task_reads_exempt": task_reads_exempt(action),
	"arguments": name in {"service.scale", "deployment.deploy", "chaos.inject"},
} if {
	some agent_type, type_config in config.agent_types
	some name, action in config.actions
	is_object(action)
	name in type_config.capabilities
	object.get(action, "non_production_only", false) != true
	some level, rank in config.trust_levels
	rank >= config.trust_levels[action.trust]
}

# targets are the kinds of resource an action may name (see
# clear_resources): a tenant's service, or "*" when the action allows any
# resource (resource_not_in_tenant).
targets(action) := {"service": true, "any": true} if action.any_resource == true

else := {"service": true}

task_reads_exempt(action) if {
	config.task.reads_exempt == true
	action.kind == "read"
}

else := false

# clear_resources[tenant][resource] is "service" for each service the
# tenant owns, and "any" for "*" (a collection), which only actions with
# any_resource may name. A call with another tenant or resource has no
# entry (resource_not_in_tenant, tenant_mismatch for an empty tenant).
clear_resources[tenant][resource] := "service" if {
	some tenant, tenant_config in config.tenants
	is_string(tenant)
	tenant != ""
	some resource in tenant_config.services
}

clear_resources[tenant]["*"] := "any" if {
	some tenant, tenant_config in config.tenants
	is_string(tenant)
	tenant != ""
	not "*" in tenant_config.services
}

# clear_windows[agent type][action][tenant] are the [start, end) spans, in
# Unix nanoseconds, of the freeze windows that concern such a call
# (window_concerns, freeze.rego). A combination with a concerning window
# whose times do not parse has no entry: that window freezes it at any time
# (change_freeze).
clear_windows[agent_type][name][tenant] := spans if {
	some agent_type, _ in config.agent_types
	some name, action in config.actions
	some tenant, _ in config.tenants
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
