package passport.authz

import data.passport.config

# The agent's trust level must reach the action's: LOW reads, MEDIUM
# non-destructive writes, HIGH destructive actions (data: actions.*.trust).
reasons contains "trust_level_too_low" if {
	action_config
	not trust_sufficient
}

trust_sufficient if {
	config.trust_levels[input.agent.trust_level] >= config.trust_levels[action_config.trust]
}

# Destructive actions also need a live reputation at or above the action's
# threshold (data: actions.*.min_reputation). The proxy computes the live
# score; a missing or non-numeric score fails the check.
reasons contains "reputation_too_low" if {
	threshold := action_config.min_reputation
	threshold > 0
	not reputation_at_least(threshold)
}

reputation_at_least(threshold) if {
	is_number(input.agent.reputation)
	input.agent.reputation >= threshold
}
