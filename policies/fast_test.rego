package passport.authz_test

import data.passport.authz

# fast_or_slow is the decision for x, or "slow" when it is not the fast
# path that clears it.
fast_or_slow(x) := d if {
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
