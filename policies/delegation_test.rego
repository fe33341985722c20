package passport.authz_test

# delegated is a call by the healer on behalf of a commander whose own
# passport was of trust level root_trust, with task (null: none).
delegated(root_trust, task, patch) := object.union(
	call({"passport": {
		"sub": "ag-healer",
		"act": {"sub": "ag-commander"},
		"delegation": {
			"depth": 1,
			"root": "ag-commander",
			"chain": ["ag-commander", "ag-healer"],
			"links": [{"sub": "ag-commander", "name": "commander-1", "type": "healer", "trust_level": root_trust, "jti": "jti-0"}],
		},
		"task": task,
	}}),
	patch,
)

restart_checkout := {"id": "inc-1", "target": "checkout", "actions": ["service.restart"]}

test_delegated_production_write_bound_to_task_allowed if {
	allowed(delegated("HIGH", restart_checkout, {}))
}

test_delegated_production_write_without_task_denied if {
	denied_only(delegated("HIGH", null, {}), ["delegated_production_write"])
}

test_delegated_production_write_root_not_high_denied if {
	denied_only(delegated("MEDIUM", restart_checkout, {}), ["delegated_production_write"])
}

test_delegated_production_write_task_without_target_denied if {
	denied_only(delegated("HIGH", {"id": "inc-1"}, {}), ["delegated_production_write"])
}

test_delegated_production_write_other_target_denied if {
	# the task's own rule and the delegation rule both object
	x := delegated("HIGH", restart_checkout, {"resource": "payments"})
	denied_only(x, ["delegated_production_write", "task_target_mismatch"])
}

test_delegated_read_allowed if {
	allowed(delegated("LOW", null, {"action": "service.get"}))
}

test_delegated_write_off_production_allowed if {
	allowed(delegated("MEDIUM", null, {"route": {"production": false}}))
}

test_undelegated_production_write_allowed if {
	allowed(call({}))
}
