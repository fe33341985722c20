package passport.authz

import data.passport.config

# A blocked agent may do nothing. The proxy also refuses blocked agents
# before policy; this rule keeps the library safe on its own. Absent or
# non-boolean "blocked" counts as blocked (fail closed).
reasons contains "agent_blocked" if not input.agent.blocked == false

# The agent's type must be one the library knows.
reasons contains "unknown_agent_type" if not config.agent_types[input.agent.type]

# The agent's type must include the action among its capabilities: the most
# an agent of that type may ever do, whatever its passport says. A type
# whose entry has no capabilities (a typo in data) permits nothing.
reasons contains "agent_type_not_permitted" if {
	config.agent_types[input.agent.type]
	not input.action in type_capabilities
}

default type_capabilities := []

type_capabilities := config.agent_types[input.agent.type].capabilities

# The passport itself must grant the action: issuance may narrow an agent to
# fewer actions and resources (authorization_details and their identifier),
# never widen it. (The authority keeps "scope" consistent; it is not read.)
reasons contains "action_not_granted" if not action_granted

# action_granted holds when one RFC 9396 "agent_action" entry of the
# passport lists the action and, if it names a resource (identifier), names
# this one.
action_granted if {
	some detail in input.passport.authorization_details
	detail.type == "agent_action"
	input.action in detail.actions
	object.get(detail, "identifier", "") in {"", input.resource}
}
