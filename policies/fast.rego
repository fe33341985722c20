package passport.authz

import data.passport.config

# fast_decision is the decision of a call that every check of the library
# allows, and is undefined for any other call. It states every check
# positively in one rule body that reads the configuration once, so an
# allowed call (most calls) never evaluates the reason rules and their
# negations. It may be stricter than the rules (a call it does not clear
# gets full_decision, and the same answer), never looser.
#
# Every rule that adds a reason must have its counterpart here, or the
# check would not be applied to calls that pass all the others.
# policies_test.go fails when the reason rules change, as a reminder, and
# compares decision with full_decision over many inputs.
fast_decision := {
	"allow": true,
	"reasons": [],
	"input_version": 1,
	"data_revision": object.get(cfg, "revision", ""),
} if {
	# input_version_unsupported (1 is supported_input_version; a rule
	# reference would cost another evaluation), agent_blocked
	input.version == 1
	input.agent.blocked == false
	cfg := config

	# unknown_action, trust_level_too_low, reputation_too_low
	action := cfg.actions[input.action]
	action
	cfg.trust_levels[input.agent.trust_level] >= cfg.trust_levels[action.trust]
	is_number(input.agent.reputation)
	input.agent.reputation >= object.get(action, "min_reputation", 0)

	# unknown_agent_type, agent_type_not_permitted
	agent_type := cfg.agent_types[input.agent.type]
	agent_type
	input.action in agent_type.capabilities

	# tenant_mismatch
	is_string(input.tenant)
	input.tenant != ""
	input.passport.tenant == input.tenant
	is_object(input.route)
	object.get(input.route, "tenant", "") in {"", input.tenant}

	# resource_not_in_tenant: "*" needs any_resource, any other resource
	# must be one of the tenant's services.
	object.get(
		{"*": object.get(action, "any_resource", false)},
		input.resource,
		input.resource in cfg.tenants[input.tenant].services,
	) == true

	# invalid_argument, replicas_out_of_bounds, fault_type_not_permitted
	arguments_clear

	# chaos_on_production_route: actions limited to non-production routes
	# take the full evaluation.
	object.get(action, "non_production_only", false) != true

	# change_freeze, invalid_time
	freeze_clear

	# task_target_mismatch, task_action_mismatch
	task_clear

	# action_not_granted (last: it iterates)
	some detail in input.passport.authorization_details
	detail.type == "agent_action"
	input.action in detail.actions
	object.get(detail, "identifier", "") in {"", input.resource}
}

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

# freeze_clear holds when no window concerns the call, or the call's time
# is valid and no concerning window is open.
freeze_clear if count(concerning_windows) == 0

freeze_clear if {
	now_ns
	not window_open
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
