package passport.authz_test

import data.passport.authz

# fast_or_slow is the decision for x, or "slow" when it is not the fast
# path that clears it.
fast_or_slow(x) := d if {
	d := authz.decision with input as x
		with data.passport.loaded.clearances as authz.clearances
		with authz.table_decision as "slow"
		with authz.full_decision as "slow"
}

# table_or_slow is the decision for x, or "slow" when neither fast path
# (the allowed calls' nor the table path) decides it.
table_or_slow(x) := d if {
	d := authz.decision with input as x
		with data.passport.loaded.clearances as authz.clearances
		with authz.full_decision as "slow"
}

test_fast_path_clears_typical_call if {
	fast_or_slow(healer_restart) == {"allow": true, "reasons": [], "input_version": 1, "data_revision": data.passport.config.revision}
}

# Without the load-time document (opa eval, opa test without `with`),
# every call takes the full evaluation, with the same answer.
test_fast_path_needs_clearances if {
	d := authz.decision with input as healer_restart with authz.full_decision as "slow"
	d == "slow"
	allowed_full := authz.decision with input as healer_restart
	allowed_full == decide(healer_restart)
}

test_fast_path_leaves_denials_to_the_rules if {
	fast_or_slow(call({"resource": "search"})) == "slow"
	fast_or_slow(call({"agent": {"reputation": 10}})) == "slow"
	fast_or_slow(call({"agent": {"type": "observer"}})) == "slow"
}

# The table path decides denials with the rules' answer.
test_table_path_decides_denials if {
	observer := call({"agent": {"type": "observer", "trust_level": "LOW"}})
	d := table_or_slow(observer)
	d == {
		"allow": false,
		"reasons": ["agent_type_not_permitted", "trust_level_too_low"],
		"input_version": 1,
		"data_revision": data.passport.config.revision,
	}
	d == authz.full_decision with input as observer
	table_or_slow(call({"resource": "search"})).reasons == ["resource_not_in_tenant"]
	table_or_slow(call({"agent": {"reputation": 10}})).reasons == ["reputation_too_low"]
	table_or_slow(call({"passport": {"authorization_details": []}})).reasons == ["action_not_granted"]
	table_or_slow(as_agent("deployer", "MEDIUM", [], {"action": "deployment.rollback", "agent": {"reputation": 10}})).reasons == [
		"action_not_granted", "reputation_too_low",
		"trust_level_too_low",
	]
	chaos := as_agent("chaos", "HIGH", ["chaos.clear"], {"action": "chaos.clear"})
	table_or_slow(chaos).reasons == ["chaos_on_production_route"]

	# An allowed call the fast path leaves (a non-production route) is
	# allowed by the table path.
	table_or_slow(object.union(chaos, {"route": {"production": false}})) == authz.clearances.allowed
}

# Arguments and freeze windows add their reasons.
test_table_path_arguments_and_freezes if {
	scale := as_agent("scaler", "MEDIUM", ["service.scale"], {
		"action": "service.scale",
		"time": "2026-11-25T10:00:00Z",
		"request": {"body": {"replicas": 30}},
	})
	table_or_slow(scale).reasons == ["replicas_out_of_bounds"]
	table_or_slow(object.union(scale, {"request": {"body": {"replicas": "3"}}})).reasons == ["invalid_argument"]
	frozen := object.union(scale, {"time": "2026-12-25T10:00:00Z", "resource": "search"})
	table_or_slow(frozen).reasons == ["change_freeze", "replicas_out_of_bounds", "resource_not_in_tenant"]
	table_or_slow(object.union(scale, {"time": "yesterday"})).reasons == ["invalid_time", "replicas_out_of_bounds"]
	table_or_slow(object.union(scale, {"request": {"body": {"replicas": 3}}})) == authz.clearances.allowed
	inject := as_agent("chaos", "HIGH", ["chaos.inject"], {
		"action": "chaos.inject",
		"route": {"production": false},
		"request": {"body": {"type": "meteor"}},
	})
	table_or_slow(inject).reasons == ["fault_type_not_permitted"]
	deploy := as_agent("deployer", "MEDIUM", ["deployment.deploy"], {
		"action": "deployment.deploy",
		"time": "2026-11-25T10:00:00Z",
		"request": {"body": {"version": "latest"}},
	})
	table_or_slow(deploy).reasons == ["invalid_argument"]
}

# It leaves to the rules what it does not settle: a task, another tenant,
# a malformed field, an unknown type, a window whose time does not parse.
test_table_path_leaves_the_rest_to_the_rules if {
	table_or_slow(with_task(incident, {"resource": "payments"})) == "slow"
	table_or_slow(call({"resource": "search", "route": {"tenant": "globex"}})) == "slow"
	table_or_slow(call({"resource": "search", "agent": {"reputation": "90"}})) == "slow"
	table_or_slow(call({"resource": 7})) == "slow"
	table_or_slow(call({"resource": "search", "agent": {"type": "robot"}})) == "slow"
	windows := [{"start": "soon", "end": "2027-01-02T00:00:00Z", "actions": ["service.restart"]}]
	table_or_slow(call({"resource": "search"})) == "slow" with data.passport.config.freeze_windows as windows
}

test_clearances_denials if {
	authz.type_index.observer["service.restart"] == 1
	authz.type_index.healer["service.restart"] == 0
	authz.type_index.scaler["service.restart"] == 2 with data.passport.config.agent_types.scaler as false
	authz.level_index.LOW["service.restart"] == 1
	authz.level_index.HIGH["service.restart"] == 0
	authz.chaos_index["chaos.clear"] == [1, 0]
	authz.chaos_index["service.get"] == [0, 0]
	c := authz.clearances
	c.static_index.observer.LOW["service.restart"] == [6, 6]
	c.static_index.chaos.HIGH["chaos.clear"] == [1, 0]

	# not permitted, too low, not chaos (6); not granted; reputation ok;
	# resource in tenant
	c.denials[6][0][1][1].reasons == ["action_not_granted", "agent_type_not_permitted", "trust_level_too_low"]
	c.denials[9][1][0][0].reasons == [
		"chaos_on_production_route", "reputation_too_low",
		"resource_not_in_tenant", "unknown_agent_type",
	]
	c.denials[0][1][1][1] == c.allowed
	c.min_reputations["service.restart"] == 50
	c.min_reputations["service.get"] == 0
	c.resources["service.list"].acme == {"checkout": true, "payments": true, "*": true}
	c.route_tenants.acme == {"": true, "acme": true}
	count(c.spans.deployer["deployment.deploy"].acme) == 1
	c.spans.healer["deployment.deploy"].acme == []
	c.plain_actions["service.restart"]
	not c.plain_actions["service.scale"]
}

test_fast_path_chaos_only_when_not_limited_to_non_production if {
	x := as_agent("chaos", "HIGH", ["chaos.inject"], {
		"action": "chaos.inject",
		"route": {"production": false},
		"request": {"body": {"type": "service_down"}},
	})
	fast_or_slow(x) == "slow"
	d := fast_or_slow(x) with data.passport.config.actions["chaos.inject"].non_production_only as false
	d.allow == true
	bad := object.union(x, {"request": {"body": {"type": "meteor"}}})
	fast_or_slow(bad) == "slow" with data.passport.config.actions["chaos.inject"].non_production_only as false
}

test_fast_path_clears_task_bound_calls_within_the_task if {
	fast_or_slow(with_task(incident, {})).allow == true
	fast_or_slow(with_task(incident, {"action": "service.get", "resource": "payments"})).allow == true
	fast_or_slow(with_task(incident, {"resource": "payments"})) == "slow"
	fast_or_slow(with_task(incident, {"action": "cache.warm"})) == "slow"
}

test_fast_path_checks_arguments if {
	x := as_agent("scaler", "MEDIUM", ["service.scale"], {
		"action": "service.scale",
		"time": "2026-11-25T10:00:00Z",
		"request": {"body": {"replicas": 3}},
	})
	fast_or_slow(x).allow == true
	fast_or_slow(object.union(x, {"request": {"body": {"replicas": 30}}})) == "slow"
	fast_or_slow(object.union(x, {"request": {"body": {"replicas": 2.5}}})) == "slow"
}

test_clearances_allowed_is_the_allowed_full_decision if {
	authz.clearances.allowed == {"allow": true, "reasons": [], "input_version": 1, "data_revision": data.passport.config.revision}
	authz.clearances.allowed == authz.full_decision with input as healer_restart
}

test_clearances_calls if {
	c := authz.clearances.calls
	c.healer.HIGH["service.restart"].acme == {
		"min_reputation": 50,
		"resources": {"checkout": true, "payments": true},
		"route_tenants": {"": true, "acme": true},
		"spans": [],
		"arguments": false,
		"task_reads_exempt": false,
		"simple": true,
	}
	c.healer.HIGH["service.restart"].globex.resources == {"search": true, "inventory": true}
	c.healer.HIGH["service.list"].acme.resources == {"checkout": true, "payments": true, "*": true}
	c.healer.HIGH["service.get"].acme.task_reads_exempt == true
	c.deployer.MEDIUM["deployment.deploy"].acme.arguments == true
	c.deployer.MEDIUM["deployment.deploy"].acme.simple == false
	not c.healer.MEDIUM["service.restart"]
	not c.observer.HIGH["service.restart"]
	not c.chaos.HIGH["chaos.inject"]
}

test_clearances_resources_star_as_a_service if {
	c := authz.clearances.calls with data.passport.config.tenants.acme.services as ["checkout", "*"]
	c.healer.HIGH["service.get"].acme.resources == {"checkout": true, "*": true}
	c.healer.HIGH["service.list"].acme.resources == {"checkout": true, "*": true}
}

test_clearances_no_empty_tenant if {
	c := authz.clearances.calls with data.passport.config.tenants as {"": {"services": ["checkout"]}, "acme": {"services": []}}
	not c.healer.HIGH["service.restart"][""]
	c.healer.HIGH["service.restart"].acme.resources == {}
}

test_clearances_windows if {
	c := authz.clearances.calls
	span := [time.parse_rfc3339_ns("2026-12-24T00:00:00Z"), time.parse_rfc3339_ns("2027-01-02T00:00:00Z")]
	c.deployer.MEDIUM["deployment.deploy"].acme.spans == [span]
	c.scaler.MEDIUM["service.scale"].globex.spans == [span]
	c.deployer.MEDIUM["service.get"].acme.spans == []
	exempt := authz.clearances.calls with data.passport.config.agent_types.healer.capabilities as ["deployment.deploy"]
	exempt.healer.HIGH["deployment.deploy"].acme.spans == []
}

test_clearances_window_time_unparseable if {
	windows := [{"start": "soon", "end": "2027-01-02T00:00:00Z", "actions": ["deployment.deploy"]}]
	c := authz.clearances.calls with data.passport.config.freeze_windows as windows
	not c.deployer.MEDIUM["deployment.deploy"].acme
	c.scaler.MEDIUM["service.scale"].acme.spans == []
}

test_clearances_undefined_for_malformed_windows if {
	not authz.clearances with data.passport.config.freeze_windows as [{"tenants": "acme"}]
	not authz.clearances with data.passport.config.freeze_windows as ["x"]
	not authz.clearances with data.passport.config.freeze_windows as {"a": {}}
}

test_task_read_exempt_in_full_evaluation if {
	x := with_task(incident, {"action": "service.get", "resource": "payments", "agent": {"blocked": true}})
	denied_only(x, ["agent_blocked"])
}

# A window that concerns the call needs a valid time: with none, the fast
# path does not clear the call, and the rules deny it (invalid_time).
test_fast_path_needs_a_valid_time_when_a_window_concerns_the_call if {
	fast_or_slow(deploy_at("yesterday")) == "slow"
	fast_or_slow(object.remove(deploy_at("x"), ["time"])) == "slow"
	fast_or_slow(deploy_at("2026-12-25T10:00:00Z")) == "slow"
	d := fast_or_slow(deploy_at("2026-11-25T10:00:00Z"))
	d.allow == true
}

# staged_or_slow is the decision for x with its stage (stage.rego), or
# "slow" when it is not the staged path that decides it.
staged_or_slow(x) := d if {
	s := authz.stage with input as stage_input(x) with data.passport.loaded.clearances as authz.clearances
	d := authz.decision with input as object.union(x, {"stage": s})
		with data.passport.loaded.clearances as authz.clearances
		with authz.cleared_call as "slow"
		with authz.table_decision as "slow"
		with authz.full_decision as "slow"
} else := "no stage"

test_staged_path_clears_typical_call if {
	staged_or_slow(healer_restart) == decide(healer_restart)
	decide(healer_restart).allow == true
}

test_staged_path_checks_arguments_and_windows if {
	scale := as_agent("scaler", "MEDIUM", ["service.scale"], {"action": "service.scale", "request": {"body": {"replicas": 3}}})
	staged_or_slow(scale).allow == true
	staged_or_slow(object.union(scale, {"request": {"body": {"replicas": 30}}})) == "slow"
	frozen := object.union(scale, {"time": "2026-12-25T00:00:00Z"})
	staged_or_slow(frozen) == "slow"
	decide(frozen).reasons == ["change_freeze"]
}

# The stage reads the passport's task; the call's resource is the
# residual's.
test_staged_path_task if {
	task := {"passport": {"task": {"id": "inc-1", "target": "checkout", "actions": ["service.restart"]}}}
	staged_or_slow(call(task)).allow == true
	staged_or_slow(call(object.union(task, {"resource": "payments"}))) == "slow"
	decide(call(object.union(task, {"resource": "payments"}))).reasons == ["task_target_mismatch"]
}

# What changes per call is never the stage's: a low reputation, a block
# or another resource takes the other paths, whatever the stage holds.
test_staged_path_leaves_per_call_facts if {
	staged_or_slow(call({"agent": {"reputation": 10}})) == "slow"
	staged_or_slow(call({"agent": {"blocked": true}})) == "slow"
	staged_or_slow(call({"resource": "search"})) == "slow"
	staged_or_slow(call({"agent": {"reputation": "90"}})) == "slow"
}

# The stage is the same whatever the call's own facts, and reads nothing
# outside the stage input.
test_stage_reads_only_the_stage_input if {
	s := authz.stage with input as stage_input(healer_restart) with data.passport.loaded.clearances as authz.clearances
	every x in [
		healer_restart,
		call({"agent": {"reputation": 10, "blocked": true}, "resource": "search", "time": "x"}),
		call({"request": {"body": {"replicas": 3}}, "budgets": {"b": {"reserved": false}}}),
	] {
		s == authz.stage with input as x with data.passport.loaded.clearances as authz.clearances
	}
}

test_no_stage if {
	staged_or_slow(call({"agent": {"type": "observer", "trust_level": "LOW"}})) == "no stage"
	staged_or_slow(call({"passport": {"delegation": {"depth": 1}}})) == "no stage"
	staged_or_slow(call({"passport": {"tenant": "globex"}})) == "no stage"
	staged_or_slow(call({"passport": {"authorization_details": []}})) == "no stage"

	# Without the load-time document there is no stage either.
	not authz.stage with input as stage_input(healer_restart)
}
