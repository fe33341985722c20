package passport.authz_test

# Approvals and budgets (escalate.rego), with the shipped data: deploys to
# payments need a person unless the passport is bound to a task; the
# restarts-per-service budget asks a person when it runs out.

deploy_to(resource) := as_agent("deployer", "MEDIUM", ["deployment.deploy"], {
	"action": "deployment.deploy",
	"resource": resource,
	"request": {"method": "POST", "path": concat("/", ["", "deployments", resource]), "body": {"version": "v2"}},
})

with_budget(x, name, reserved) := object.union(x, {"budgets": {name: {
	"limit": 3, "used": 3, "remaining": 0, "window": "10m0s", "reserved": reserved,
}}})

with_approval(x, approvers) := object.union(x, {"approval": {
	"id": "apr_0123456789abcdefghij", "approvers": approvers, "granted_at": "2026-11-25T20:00:00Z",
}})

test_deploy_to_payments_asks_a_person if {
	d := decide(deploy_to("payments"))
	d.allow == false
	d.reasons == ["approval_required"]
	d.approval == {"required": true, "approvers": 1, "exclude_owner": false, "reason": "deploys to payments need a person"}
}

test_deploy_to_payments_with_an_approval_allowed if {
	allowed(with_approval(deploy_to("payments"), ["alice"]))
}

test_deploy_elsewhere_needs_no_person if {
	allowed(deploy_to("checkout"))
}

test_deploy_within_a_task_needs_no_person if {
	x := object.union(deploy_to("payments"), {"passport": {"task": {
		"id": "inc-1", "target": "payments", "actions": ["deployment.deploy"],
	}}})
	allowed(x)
}

test_denied_deploy_asks_nobody if {
	x := object.union(deploy_to("payments"), {"agent": {"trust_level": "LOW"}, "passport": {"agent": {"trust_level": "LOW"}}})
	d := decide(x)
	d.reasons == ["trust_level_too_low"]
	not d.approval
}

test_more_approvers_than_given_asks_again if {
	rule := {"name": "two", "actions": ["deployment.deploy"], "resources": ["payments"], "approvers": 2, "exclude_owner": true, "reason": "two people"}
	d := decide(with_approval(deploy_to("payments"), ["alice"])) with data.passport.config.approvals as [rule]
	d.reasons == ["approval_required"]
	d.approval.approvers == 2
	d.approval.exclude_owner == true
	allowed(with_approval(deploy_to("payments"), ["alice", "bob"])) with data.passport.config.approvals as [rule]
}

test_reserved_budget_changes_nothing if {
	allowed(with_budget(healer_restart, "restarts-per-service", true))
}

test_exhausted_budget_without_escalation_denied if {
	x := with_budget(healer_restart, "restarts-per-service", false)
	denied_only(x, ["budget_exhausted"]) with data.passport.config.budget_escalations as {}
	d := decide(x) with data.passport.config.budget_escalations as {}
	not d.approval
}

test_exhausted_budget_escalates_to_a_person if {
	d := decide(with_budget(healer_restart, "restarts-per-service", false))
	d.allow == false
	d.reasons == ["approval_required", "budget_exhausted"]
	d.approval.required == true
	d.approval.reason == "this service was restarted too often: a person should look"
}

test_escalated_budget_with_an_approval_allowed if {
	allowed(with_approval(with_budget(healer_restart, "restarts-per-service", false), ["alice"]))
}

test_approval_does_not_lift_an_unescalated_budget if {
	x := with_approval(with_budget(healer_restart, "other", false), ["alice"])
	denied_only(x, ["budget_exhausted"])
}

test_exhausted_budget_adds_to_other_reasons if {
	x := with_budget(call({"agent": {"blocked": true}}), "restarts-per-service", false)
	denied_only(x, ["agent_blocked", "budget_exhausted"])
}

test_approval_without_a_rule_changes_nothing if {
	allowed(with_approval(healer_restart, ["alice"]))
}

# The calls an approval rule may concern are not in the fast paths' tables;
# the others keep them.
test_fast_paths_leave_approval_calls_to_the_full_evaluation if {
	fast_or_slow(deploy_to("payments")) == "slow"
	table_or_slow(deploy_to("payments")) == "slow"
	fast_or_slow(deploy_to("checkout")).allow == true
	low := object.union(deploy_to("payments"), {"agent": {"trust_level": "LOW"}, "passport": {"agent": {"trust_level": "LOW"}}})
	table_or_slow(low) == "slow"
	table_or_slow(object.union(low, {"resource": "checkout"})).reasons == ["trust_level_too_low"]
}

test_rule_for_every_resource_leaves_the_action_out if {
	rule := {"name": "all", "actions": ["service.restart"]}
	fast_or_slow(healer_restart) == "slow" with data.passport.config.approvals as [rule]
	d := decide(healer_restart) with data.passport.config.approvals as [rule]
	d.reasons == ["approval_required"]
}

test_exhausted_budget_takes_the_full_evaluation if {
	fast_or_slow(with_budget(healer_restart, "restarts-per-service", false)) == "slow"
	fast_or_slow(with_budget(healer_restart, "restarts-per-service", true)).allow == true
}
