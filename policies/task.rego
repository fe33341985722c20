package passport.authz

import data.passport.config

# A passport bound to a task (an incident) may touch only that task's target
# and use only that task's actions. With data task.reads_exempt, reads
# (kind: read) stay allowed anywhere in the tenant, e.g. to verify a repair.

reasons contains "task_target_mismatch" if {
	task_binds_call
	target := object.get(input.passport.task, "target", "")
	target != ""
	input.resource != target
}

reasons contains "task_action_mismatch" if {
	task_binds_call
	actions := object.get(input.passport.task, "actions", [])
	count(actions) > 0
	not input.action in actions
}

task_binds_call if {
	is_object(input.passport.task)
	not task_read_exempt
}

task_read_exempt if {
	config.task.reads_exempt == true
	action_config.kind == "read"
}
