package passport.authz

# The per-passport stage (policies/README.md, "The per-passport stage").
#
# stage is what the fast path (cleared_call, fast.rego) would work out on
# every call from the passport, the route and the policy alone: the
# clearances entry of the agent's type, trust level, action and tenant,
# the tenancy of the passport and of the route, and which resources the
# passport's grants and its task leave the call. The proxy's engine
# evaluates it once per passport, route and policy load against the stage
# input, which holds only those parts of the input: version, tenant,
# action, route, passport, and agent without its reputation and blocked
# flag (proxy/policy, StageInput). The input of each call then carries
# the value as input.stage, and the staged body of decision (authz.rego)
# checks only what changes per call against it: the block, the live
# reputation, the resource, the time (freeze windows) and the arguments.
#
# It never holds a per-call fact, and it cannot read one: the stage input
# has none. Without it (opa eval, opa test, an input without input.stage)
# the library computes everything itself, with the same answers.
#
# A combination the fast path would not clear has no stage (undefined),
# and such calls take the other paths of decision.
stage := {
	"min_reputation": call.min_reputation,
	"resources": resources,
	"spans": call.spans,
	"arguments": call.arguments,
	"simple": call.simple,
} if {
	# input_version_unsupported; delegated_production_write (a delegated
	# passport takes the full evaluation)
	input.version == 1
	not input.passport.delegation
	name := input.action
	tenant := input.tenant
	agent := input.agent

	# unknown_action, unknown_agent_type, agent_type_not_permitted,
	# trust_level_too_low, chaos_on_production_route, tenant_mismatch
	call := data.passport.loaded.clearances.calls[agent.type][agent.trust_level][name][tenant]
	input.passport.tenant == tenant
	call.route_tenants[input.route.tenant]

	# resource_not_in_tenant, action_not_granted, task_target_mismatch,
	# task_action_mismatch: the resources the call may name, as keys.
	resources := {resource: true |
		some resource, _ in call.resources
		stage_granted(name, resource)
		stage_task_clear(call.task_reads_exempt, name, resource)
	}
	count(resources) > 0
}

# stage_granted holds when one "agent_action" entry of the passport lists
# the action for the resource (cleared_call's test of action_granted).
stage_granted(name, resource) if {
	some detail in input.passport.authorization_details
	detail.type == "agent_action"
	name in detail.actions
	object.get(detail, "identifier", resource) == resource
}

# stage_task_clear holds when the passport is not bound to a task, the
# action is exempt, or the call on the resource is within the task
# (task_clear, fast.rego, for a resource given).
stage_task_clear(_, _, _) if not input.passport.task

stage_task_clear(true, _, _)

stage_task_clear(_, name, resource) if {
	is_object(input.passport.task)
	object.get(input.passport.task, "target", "") in {"", resource}
	name in object.get(input.passport.task, "actions", [])
}

# staged_call holds when the call's own facts pass the checks the stage
# leaves: agent_blocked, reputation_too_low, and the resource among those
# the stage allows (resource_not_in_tenant, action_not_granted, the task).
staged_call(stage) if {
	stage.resources[input.resource]
	agent := input.agent
	agent.blocked == false
	reputation := agent.reputation
	is_number(reputation)
	reputation >= stage.min_reputation
}
