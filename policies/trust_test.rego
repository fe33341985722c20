package passport.authz_test

test_trust_high_destructive_allowed if {
	allowed(healer_restart)
}

test_trust_medium_destructive_denied if {
	denied_only(call({"agent": {"trust_level": "MEDIUM"}}), ["trust_level_too_low"])
}

test_trust_low_destructive_denied if {
	denied_only(call({"agent": {"trust_level": "LOW"}}), ["trust_level_too_low"])
}

test_trust_medium_write_allowed if {
	allowed(as_agent("healer", "MEDIUM", ["cache.warm"], {"action": "cache.warm"}))
}

test_trust_low_write_denied if {
	denied_only(as_agent("healer", "LOW", ["cache.warm"], {"action": "cache.warm"}), ["trust_level_too_low"])
}

test_trust_low_read_allowed if {
	allowed(as_agent("healer", "LOW", ["service.get"], {"action": "service.get"}))
}

test_trust_unknown_level_denied if {
	denied_only(call({"agent": {"trust_level": "ROOT"}}), ["trust_level_too_low"])
}

test_trust_missing_level_denied if {
	x := json.remove(healer_restart, ["agent/trust_level"])
	denied_only(x, ["trust_level_too_low"])
}

test_reputation_at_threshold_allowed if {
	allowed(call({"agent": {"reputation": 50}}))
}

test_reputation_below_threshold_denied if {
	denied_only(call({"agent": {"reputation": 49.9}}), ["reputation_too_low"])
}

test_reputation_missing_denied if {
	x := json.remove(healer_restart, ["agent/reputation"])
	denied_only(x, ["reputation_too_low"])
}

test_reputation_not_number_denied if {
	denied_only(call({"agent": {"reputation": "99"}}), ["reputation_too_low"])
}

test_reputation_not_needed_for_writes if {
	allowed(as_agent("healer", "MEDIUM", ["cache.warm"], {"action": "cache.warm", "agent": {"reputation": 0}}))
}

test_reputation_threshold_from_data if {
	x := call({"agent": {"reputation": 60}})
	allowed(x)
	denied_only(x, ["reputation_too_low"]) with data.passport.config.actions["service.restart"].min_reputation as 70
}
