# A small policy for the proxy's own tests (the real library lives in
# policies/ and is exercised by the benchmark and the integration test).
package passport.authz

granted contains a if {
	some d in input.passport.authorization_details
	some a in d.actions
}

reasons contains "action_not_granted" if not input.action in granted

reasons contains "resource_forbidden" if input.resource == "payments"

reasons contains "trust_level_too_low" if {
	input.action == "service.restart"
	input.agent.trust_level != "HIGH"
}

reasons contains "reputation_too_low" if input.agent.reputation < 50

reasons contains "replicas_out_of_bounds" if {
	input.action == "service.scale"
	not input.request.body.replicas <= 10
}

# boom.now fails evaluation (strict builtin errors): the proxy must deny.
reasons contains "never" if {
	input.action == "boom.now"
	to_number(input.resource) > 0
}

decision := {"allow": count(reasons) == 0, "reasons": reasons}
