package passport.authz

default decision := {"allow": false, "reasons": ["no_rule_matched"]}

decision := {"allow": true, "reasons": []} if {
	input.action in data.allowed[input.agent.type]
}

decision := {"allow": false, "reasons": ["action_not_allowed"]} if {
	not input.action in data.allowed[input.agent.type]
}
