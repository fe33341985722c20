package passport.authz_test

test_typical_call_allowed if {
	d := decide(healer_restart) with data.passport.config.revision as "r1"
	d == {"allow": true, "reasons": [], "input_version": 1, "data_revision": "r1"}
}

test_empty_input_denied if {
	d := decide({})
	d.allow == false
	"input_version_unsupported" in d.reasons
	"unknown_action" in d.reasons
	"agent_blocked" in d.reasons
	"tenant_mismatch" in d.reasons
	"action_not_granted" in d.reasons
}

test_reasons_sorted_and_unique if {
	r := reasons_of(call({"version": 2, "agent": {"blocked": true}}))
	r == ["agent_blocked", "input_version_unsupported"]
}

test_input_version_other_denied if {
	denied_only(call({"version": 2}), ["input_version_unsupported"])
}

test_input_version_missing_denied if {
	denied_only(object.remove(healer_restart, ["version"]), ["input_version_unsupported"])
}

test_unknown_action_denied if {
	x := as_agent("healer", "HIGH", ["service.delete"], {"action": "service.delete"})
	denied_only(x, ["agent_type_not_permitted", "unknown_action"])
}

test_data_revision_defaults_to_empty if {
	cfg := object.remove(data.passport.config, ["revision"])
	d := decide(healer_restart) with data.passport.config as cfg
	d.data_revision == ""
	d.allow == true
}

# A denied call takes the full evaluation (full_decision), which must
# carry the same metadata as the fast path of an allowed call.
test_denied_decision_carries_revision if {
	d := decide(call({"agent": {"blocked": true}})) with data.passport.config.revision as "r2"
	d == {"allow": false, "reasons": ["agent_blocked"], "input_version": 1, "data_revision": "r2"}
}

test_denied_data_revision_defaults_to_empty if {
	cfg := object.remove(data.passport.config, ["revision"])
	d := decide(call({"agent": {"blocked": true}})) with data.passport.config as cfg
	d.data_revision == ""
	d.allow == false
}

# The full evaluation accepts a collection read of "*" too: a blocked
# agent's list call is denied for the block alone.
test_denied_collection_read_only_for_its_reason if {
	denied_only(call({"action": "service.list", "resource": "*", "agent": {"blocked": true}}), ["agent_blocked"])
}
