package passport.authz_test

with_task(task, patch) := object.union(call({"passport": {"task": task}}), patch)

incident := {"id": "inc-123", "purpose": "restart crashed checkout", "target": "checkout", "actions": ["service.restart"]}

test_task_target_and_action_match_allowed if {
	allowed(with_task(incident, {}))
}

test_task_other_target_denied if {
	denied_only(with_task(incident, {"resource": "payments"}), ["task_target_mismatch"])
}

test_task_other_action_denied if {
	denied_only(with_task(incident, {"action": "cache.warm"}), ["task_action_mismatch"])
}

test_task_other_target_and_action_denied if {
	x := with_task(incident, {"action": "deployment.rollback", "resource": "payments"})
	denied_only(x, ["task_action_mismatch", "task_target_mismatch"])
}

test_task_reads_exempt_allowed if {
	allowed(with_task(incident, {"action": "service.get", "resource": "payments"}))
	allowed(with_task(incident, {"action": "service.list", "resource": "*"}))
}

test_task_reads_not_exempt_when_data_says_so if {
	x := with_task(incident, {"action": "service.get", "resource": "payments"})
	denied_only(x, ["task_action_mismatch", "task_target_mismatch"]) with data.passport.config.task.reads_exempt as false
}

test_task_without_target_or_actions_allowed if {
	allowed(with_task({"id": "inc-9"}, {"resource": "payments"}))
	allowed(with_task({"id": "inc-9", "target": "", "actions": []}, {"resource": "payments"}))
}

test_task_null_is_no_task if {
	allowed(call({"passport": {"task": null}, "resource": "payments"}))
}
