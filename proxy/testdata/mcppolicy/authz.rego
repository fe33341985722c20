# The policy of the proxy's MCP tests: the rules of testdata/policy, plus
# an argument bound that a tools/list (arguments unknown) must not apply.
package passport.authz

granted contains a if {
	some d in input.passport.authorization_details
	some a in d.actions
}

reasons contains "action_not_granted" if not input.action in granted

reasons contains "resource_forbidden" if input.resource == "payments"

reasons contains "replicas_out_of_bounds" if {
	input.action == "deployment.scale"
	not input.mcp.listing
	not input.request.body.replicas <= 10
}

reasons contains "tool_retired" if input.mcp.tool == "retired_tool"

decision := {"allow": count(reasons) == 0, "reasons": reasons}
