package passport.authz

# MCP tool lists (docs/mcp.md). The proxy filters an MCP server's
# tools/list answer to the tools the agent could be allowed to call: for
# each tool it asks for the decision on a tools/call of it with the
# arguments unknown. Such an input has input.mcp.listing true, a null
# request.body (the arguments) and, when the tool's resource is made of
# arguments, an empty resource. The reasons that only the arguments or the
# resource decide cannot be given then, so listing_decision leaves them
# out; a grant limited to one resource (an identifier) still grants the
# action for some resource. Every other reason (agent type, trust,
# reputation, tenant, freeze windows, the task's actions) hides the tool.
# A real tools/call is judged by the rules like any call: its tool's
# action, its resource and its arguments as request.body.

# listing_undecided are the reasons that depend on a call's arguments or
# resource.
listing_undecided := {
	"action_not_granted",
	"fault_type_not_permitted",
	"invalid_argument",
	"replicas_out_of_bounds",
	"resource_not_in_tenant",
	"task_target_mismatch",
}

listing_reasons contains reason if {
	some reason in reasons
	not reason in listing_undecided
}

listing_reasons contains "action_not_granted" if not granted_somewhere

# granted_somewhere: some entry of the passport grants the action, for
# any resource or for one.
granted_somewhere if {
	some detail in input.passport.authorization_details
	detail.type == "agent_action"
	input.action in detail.actions
}

# listing_decision is the decision on a listed tool (authz.rego).
listing_decision := {
	"allow": count(listing_reasons) == 0,
	"reasons": sort(listing_reasons),
	"input_version": supported_input_version,
	"data_revision": data_revision,
}
