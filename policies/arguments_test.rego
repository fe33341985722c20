package passport.authz_test

scale(replicas, resource) := as_agent("scaler", "MEDIUM", ["service.scale"], {
	"action": "service.scale",
	"resource": resource,
	"request": {"method": "POST", "path": concat("", ["/services/", resource, "/scale"]), "body": {"replicas": replicas}},
})

test_scale_within_default_bounds_allowed if {
	allowed(scale(1, "checkout"))
	allowed(scale(3, "checkout"))
	allowed(scale(10, "checkout"))
	allowed(scale(3.0, "checkout"))
}

test_scale_outside_default_bounds_denied if {
	denied_only(scale(0, "checkout"), ["replicas_out_of_bounds"])
	denied_only(scale(11, "checkout"), ["replicas_out_of_bounds"])
	denied_only(scale(-1, "checkout"), ["replicas_out_of_bounds"])
}

test_scale_service_bounds_override_default if {
	allowed(scale(2, "payments"))
	allowed(scale(8, "payments"))
	denied_only(scale(1, "payments"), ["replicas_out_of_bounds"])
	denied_only(scale(9, "payments"), ["replicas_out_of_bounds"])
}

test_scale_bounds_from_data if {
	denied_only(scale(5, "checkout"), ["replicas_out_of_bounds"]) with data.passport.config.scale.default as {"min": 1, "max": 4}
}

test_scale_replicas_not_integer_denied if {
	denied_only(scale(2.5, "checkout"), ["invalid_argument"])
	denied_only(scale("3", "checkout"), ["invalid_argument"])
	denied_only(scale(null, "checkout"), ["invalid_argument"])
}

test_scale_body_missing_denied if {
	x := as_agent("scaler", "MEDIUM", ["service.scale"], {"action": "service.scale"})
	denied_only(x, ["invalid_argument"])
}

deploy(version) := as_agent("deployer", "MEDIUM", ["deployment.deploy"], {
	"action": "deployment.deploy",
	"request": {"method": "POST", "path": "/deployments/checkout", "body": {"version": version}},
})

test_deploy_version_valid_allowed if {
	allowed(deploy("v2"))
	allowed(deploy("v2.1"))
	allowed(deploy("v2.1.3-rc.1"))
}

test_deploy_version_invalid_denied if {
	denied_only(deploy("latest"), ["invalid_argument"])
	denied_only(deploy("v2; rm -rf /"), ["invalid_argument"])
	denied_only(deploy(2), ["invalid_argument"])
	denied_only(deploy(""), ["invalid_argument"])
}

inject(fault, production) := as_agent("chaos", "HIGH", ["chaos.inject"], {
	"action": "chaos.inject",
	"route": {"name": "chaos-inject", "template": "POST /faults/{name}", "production": production},
	"request": {"method": "POST", "path": "/faults/checkout", "body": {"type": fault}},
})

test_chaos_fault_types_allowed if {
	allowed(inject("service_down", false))
	allowed(inject("bad_deploy", false))
	allowed(inject("memory_leak", false))
	allowed(inject("cache_miss", false))
}

test_chaos_fault_type_unknown_denied if {
	denied_only(inject("disk_wipe", false), ["fault_type_not_permitted"])
	denied_only(inject(null, false), ["fault_type_not_permitted"])
}

test_chaos_on_production_route_denied if {
	denied_only(inject("service_down", true), ["chaos_on_production_route"])
	denied_only(inject("service_down", "false"), ["chaos_on_production_route"])
}

test_chaos_route_production_missing_denied if {
	x := inject("service_down", false)
	y := json.remove(x, ["route/production"])
	denied_only(y, ["chaos_on_production_route"])
}

test_chaos_clear_on_production_route_denied if {
	x := as_agent("chaos", "HIGH", ["chaos.clear"], {"action": "chaos.clear", "route": {"production": true}})
	denied_only(x, ["chaos_on_production_route"])
}

test_non_chaos_actions_ignore_production_flag if {
	allowed(call({"route": {"production": true}}))
	allowed(call({"route": {"production": false}}))
}
