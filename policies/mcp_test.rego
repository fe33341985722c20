package passport.authz_test

import data.passport.authz

# tool_call is a tools/call of an MCP route, as the proxy builds its input:
# the tool's action and resource, its arguments as request.body.
tool_call(type, trust, actions, action, resource, arguments) := as_agent(type, trust, actions, {
	"action": action,
	"resource": resource,
	"route": {"name": "mcp", "template": "POST /mcp"},
	"request": {"method": "POST", "path": "/mcp", "params": {}, "body": arguments},
	"mcp": {"listing": false, "method": "tools/call", "protocol_version": "2026-07-28", "tool": "scale_service"},
})

# listed is tool_call as the proxy asks about a tool of a tools/list
# answer: arguments unknown, a resource made of arguments empty.
listed(type, trust, actions, action) := object.union(tool_call(type, trust, actions, action, "", null), {"mcp": {"listing": true}})

# listing_decide is the decision on a listed tool, as the proxy evaluates
# it (the listing branch is not full_decision, so not decide).
listing_decide(x) := d if {
	d := authz.decision with input as x with data.passport.loaded.clearances as authz.clearances
}

test_tool_call_is_judged_like_its_rest_call if {
	allowed(tool_call("scaler", "MEDIUM", ["service.scale"], "service.scale", "checkout", {"replicas": 3}))
	denied_only(tool_call("scaler", "MEDIUM", ["service.scale"], "service.scale", "checkout", {"replicas": 50}), ["replicas_out_of_bounds"])
	denied_only(tool_call("scaler", "MEDIUM", ["service.scale"], "service.scale", "search", {"replicas": 3}), ["resource_not_in_tenant"])
	denied_only(tool_call("scaler", "MEDIUM", ["service.scale"], "service.scale", "checkout", {}), ["invalid_argument"])
}

test_listing_shows_a_tool_whose_arguments_decide if {
	d := listing_decide(listed("scaler", "MEDIUM", ["service.scale"], "service.scale"))
	d.allow == true
	d.reasons == []
}

test_listing_hides_what_no_arguments_could_allow if {
	listing_decide(listed("observer", "LOW", ["service.list", "service.get"], "service.restart")).reasons == [
		"action_not_granted",
		"agent_type_not_permitted",
		"trust_level_too_low",
	]
	listing_decide(listed("healer", "HIGH", ["service.list"], "service.restart")).reasons == ["action_not_granted"]
	listing_decide(listed("healer", "HIGH", ["service.restart"], "chaos.inject")).allow == false
}

test_listing_counts_a_grant_for_one_resource if {
	x := object.union(listed("healer", "HIGH", [], "service.restart"), {"passport": {
		"authorization_details": [{"type": "agent_action", "actions": ["service.restart"], "identifier": "checkout"}],
		"task": {"id": "inc-1", "target": "checkout", "actions": ["service.restart"]},
	}})
	listing_decide(x).allow == true
}

test_listing_keeps_the_task_actions if {
	x := object.union(listed("healer", "HIGH", ["service.restart", "cache.warm"], "cache.warm"), {"passport": {
		"task": {"id": "inc-1", "target": "checkout", "actions": ["service.restart"]},
	}})
	listing_decide(x).reasons == ["task_action_mismatch"]
}

test_listing_only_when_the_proxy_says_so if {
	# Without mcp.listing, an empty resource is judged as one.
	x := object.union(listed("scaler", "MEDIUM", ["service.scale"], "service.scale"), {"mcp": {"listing": false}})
	decide(x).allow == false
}
