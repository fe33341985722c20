package passport.authz_test

deploy_at(t) := as_agent("deployer", "MEDIUM", ["deployment.deploy"], {
	"time": t,
	"action": "deployment.deploy",
	"request": {"body": {"version": "v3"}},
})

window(patch) := object.union(
	{
		"name": "test",
		"start": "2026-12-01T00:00:00Z",
		"end": "2026-12-02T00:00:00Z",
	},
	patch,
)

test_freeze_shipped_window_denies_deploys if {
	denied_only(deploy_at("2026-12-25T10:00:00Z"), ["change_freeze"])
}

test_freeze_before_and_after_window_allowed if {
	allowed(deploy_at("2026-12-23T23:59:59.999999999Z"))
	allowed(deploy_at("2027-01-02T00:00:00Z"))
}

test_freeze_start_is_inclusive if {
	denied_only(deploy_at("2026-12-24T00:00:00Z"), ["change_freeze"])
}

test_freeze_honours_time_zone_offsets if {
	denied_only(deploy_at("2026-12-23T20:00:00-05:00"), ["change_freeze"])
	allowed(deploy_at("2026-12-24T00:30:00+01:00"))
}

test_freeze_shipped_window_spares_unlisted_actions if {
	allowed(call({"time": "2026-12-25T10:00:00Z"}))
}

test_freeze_exempt_agent_type_allowed if {
	x := as_agent("healer", "HIGH", ["cache.warm"], {"time": "2026-12-01T12:00:00Z", "action": "cache.warm"})
	allowed(x) with data.passport.config.freeze_windows as [window({"exempt_agent_types": ["healer"]})]
	denied_only(x, ["change_freeze"]) with data.passport.config.freeze_windows as [window({})]
}

test_freeze_without_actions_freezes_writes_not_reads if {
	windows := [window({"actions": [], "tenants": []})]
	denied_only(call({"time": "2026-12-01T12:00:00Z"}), ["change_freeze"]) with data.passport.config.freeze_windows as windows
	allowed(call({"time": "2026-12-01T12:00:00Z", "action": "service.get"})) with data.passport.config.freeze_windows as windows
}

test_freeze_absent_actions_freezes_writes_not_reads if {
	windows := [window({})]
	denied_only(call({"time": "2026-12-01T12:00:00Z"}), ["change_freeze"]) with data.passport.config.freeze_windows as windows
	allowed(call({"time": "2026-12-01T12:00:00Z", "action": "service.get"})) with data.passport.config.freeze_windows as windows
}

test_freeze_tenant_scoped if {
	windows := [window({"tenants": ["globex"]})]
	allowed(call({"time": "2026-12-01T12:00:00Z"})) with data.passport.config.freeze_windows as windows
	x := call({"time": "2026-12-01T12:00:00Z", "tenant": "globex", "resource": "search", "passport": {"tenant": "globex"}})
	denied_only(x, ["change_freeze"]) with data.passport.config.freeze_windows as windows
}

test_freeze_invalid_window_freezes_what_it_names if {
	windows := [window({"start": "the first of december"})]
	denied_only(call({"time": "2026-11-01T12:00:00Z"}), ["change_freeze"]) with data.passport.config.freeze_windows as windows
	allowed(call({"time": "2026-11-01T12:00:00Z", "action": "service.get"})) with data.passport.config.freeze_windows as windows
}

test_freeze_invalid_window_end_freezes_what_it_names if {
	windows := [window({"end": 20261202})]
	denied_only(call({"time": "2026-11-01T12:00:00Z"}), ["change_freeze"]) with data.passport.config.freeze_windows as windows
}

test_freeze_no_windows_allowed if {
	allowed(deploy_at("2026-12-25T10:00:00Z")) with data.passport.config.freeze_windows as []
}

test_time_invalid_denied_when_a_window_concerns_the_call if {
	denied_only(deploy_at("yesterday"), ["invalid_time"])
	denied_only(deploy_at(1795636800), ["invalid_time"])
	denied_only(deploy_at("2026-12-25 10:00:00"), ["invalid_time"])
	denied_only(json.remove(deploy_at("x"), ["time"]), ["invalid_time"])
}

test_time_not_needed_when_no_window_concerns_the_call if {
	allowed(call({"time": "yesterday"}))
}
