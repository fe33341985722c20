package passport.authz_test

test_blocked_agent_denied if {
	denied_only(call({"agent": {"blocked": true}}), ["agent_blocked"])
}

test_blocked_flag_missing_denied if {
	x := json.remove(healer_restart, ["agent/blocked"])
	denied_only(x, ["agent_blocked"])
}

test_blocked_flag_not_boolean_denied if {
	denied_only(call({"agent": {"blocked": "false"}}), ["agent_blocked"])
}

test_unknown_agent_type_denied if {
	denied_only(call({"agent": {"type": "robot"}}), ["unknown_agent_type"])
}

# Each agent type may do what data gives it ...
test_agent_type_capabilities_allowed if {
	allowed(as_agent("healer", "HIGH", ["service.restart"], {}))
	allowed(as_agent("healer", "HIGH", ["deployment.rollback"], {"action": "deployment.rollback"}))
	allowed(as_agent("healer", "HIGH", ["cache.warm"], {"action": "cache.warm"}))
	allowed(as_agent("deployer", "MEDIUM", ["deployment.deploy"], {"action": "deployment.deploy", "request": {"body": {"version": "v2"}}}))
	allowed(as_agent("deployer", "HIGH", ["deployment.rollback"], {"action": "deployment.rollback"}))
	allowed(as_agent("scaler", "MEDIUM", ["service.scale"], {"action": "service.scale", "request": {"body": {"replicas": 3}}}))
	allowed(as_agent("observer", "LOW", ["service.get"], {"action": "service.get"}))
	allowed(as_agent("observer", "LOW", ["service.list"], {"action": "service.list", "resource": "*"}))
	allowed(as_agent("chaos", "HIGH", ["chaos.inject"], {
		"action": "chaos.inject",
		"route": {"production": false},
		"request": {"body": {"type": "service_down"}},
	}))
	allowed(as_agent("chaos", "HIGH", ["chaos.clear"], {"action": "chaos.clear", "route": {"production": false}}))
}

# ... and nothing else, even when trust and passport would allow it.
test_agent_type_not_permitted_denied if {
	denied_only(as_agent("observer", "HIGH", ["service.restart"], {}), ["agent_type_not_permitted"])
	denied_only(as_agent("healer", "HIGH", ["deployment.deploy"], {"action": "deployment.deploy", "request": {"body": {"version": "v2"}}}), ["agent_type_not_permitted"])
	denied_only(as_agent("deployer", "HIGH", ["service.restart"], {}), ["agent_type_not_permitted"])
	denied_only(as_agent("scaler", "HIGH", ["cache.warm"], {"action": "cache.warm"}), ["agent_type_not_permitted"])
	denied_only(as_agent("chaos", "HIGH", ["service.restart"], {}), ["agent_type_not_permitted"])
	denied_only(
		as_agent("healer", "HIGH", ["chaos.inject"], {
			"action": "chaos.inject",
			"route": {"production": false},
			"request": {"body": {"type": "service_down"}},
		}),
		["agent_type_not_permitted"],
	)
}

# The demo's rogue agent: an observer with LOW trust trying to restart.
test_rogue_observer_restart_denied if {
	x := as_agent("observer", "LOW", ["service.list", "service.get"], {"agent": {"reputation": 20}})
	denied_only(x, ["action_not_granted", "agent_type_not_permitted", "reputation_too_low", "trust_level_too_low"])
}

test_passport_not_granting_action_denied if {
	denied_only(as_agent("healer", "HIGH", ["service.get"], {}), ["action_not_granted"])
}

test_passport_without_authorization_details_denied if {
	x := json.remove(healer_restart, ["passport/authorization_details"])
	denied_only(x, ["action_not_granted"])
}

test_passport_detail_of_other_type_denied if {
	x := call({"passport": {"authorization_details": [{"type": "payment", "actions": ["service.restart"]}]}})
	denied_only(x, ["action_not_granted"])
}

test_passport_identifier_matching_resource_allowed if {
	x := call({"passport": {"authorization_details": [{"type": "agent_action", "actions": ["service.restart"], "identifier": "checkout"}]}})
	allowed(x)
}

test_passport_empty_identifier_allowed if {
	x := call({"passport": {"authorization_details": [{"type": "agent_action", "actions": ["service.restart"], "identifier": ""}]}})
	allowed(x)
}

test_passport_identifier_other_resource_denied if {
	x := call({"passport": {"authorization_details": [{"type": "agent_action", "actions": ["service.restart"], "identifier": "payments"}]}})
	denied_only(x, ["action_not_granted"])
}

test_passport_any_matching_detail_grants if {
	x := call({"passport": {"authorization_details": [
		{"type": "agent_action", "actions": ["service.get"]},
		{"type": "agent_action", "actions": ["service.restart"], "identifier": "checkout"},
	]}})
	allowed(x)
}

# A misspelt key must not lift the restriction: a type without
# capabilities permits nothing.
test_agent_type_without_capabilities_permits_nothing if {
	types := {"healer": {"capabilites": ["service.restart"]}}
	denied_only(healer_restart, ["agent_type_not_permitted"]) with data.passport.config.agent_types as types
}
