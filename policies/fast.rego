package passport.authz

import data.passport.config

# Helpers of the fast path of decision (authz.rego): checks that need more
# than one rule body. Each holds only when the reason rules it stands for
# cannot object to the call.

arguments_clear if not input.action in {"service.scale", "deployment.deploy", "chaos.inject"}

arguments_clear if {
	input.action == "service.scale"
	replicas_integer
	replicas_within_bounds
}

arguments_clear if {
	input.action == "deployment.deploy"
	deploy_version_valid
}

arguments_clear if {
	input.action == "chaos.inject"
	input.request.body.type in config.chaos.fault_types
}

# window_quiet holds when a well-formed freeze window cannot freeze the
# call: it exempts the agent type, does not name the action or the tenant,
# leaves reads alone, or is closed at the call's (valid) time. The else
# chain stops at the first that holds.
window_quiet(window, action) if {
	input.agent.type in window.exempt_agent_types
} else if {
	count(object.get(window, "actions", [])) > 0
	not input.action in window.actions
} else if {
	count(object.get(window, "tenants", [])) > 0
	not input.tenant in window.tenants
} else if {
	count(object.get(window, "actions", [])) == 0
	action.kind == "read"
} else if {
	now_ns
	start := rfc3339_ns(window.start)
	end := rfc3339_ns(window.end)
	not now_within(start, end)
}

now_within(start, end) if {
	start <= now_ns
	now_ns < end
}

# task_clear holds when the passport is not bound to a task, or the call
# is within the task.
task_clear if not input.passport.task

task_clear if task_read_exempt

task_clear if {
	is_object(input.passport.task)
	object.get(input.passport.task, "target", "") in {"", input.resource}
	input.action in object.get(input.passport.task, "actions", [])
}
