package passport.authz_test

test_tenant_same_allowed if {
	allowed(healer_restart)
}

test_tenant_passport_other_denied if {
	denied_only(call({"passport": {"tenant": "globex"}}), ["tenant_mismatch"])
}

test_tenant_passport_missing_denied if {
	x := json.remove(healer_restart, ["passport/tenant"])
	denied_only(x, ["tenant_mismatch"])
}

test_tenant_empty_denied if {
	x := call({"tenant": "", "passport": {"tenant": ""}})
	denied_only(x, ["resource_not_in_tenant", "tenant_mismatch"])
}

test_tenant_not_string_denied if {
	x := call({"tenant": 7, "passport": {"tenant": 7}})
	denied_only(x, ["resource_not_in_tenant", "tenant_mismatch"])
}

test_tenant_route_same_allowed if {
	allowed(call({"route": {"tenant": "acme"}}))
}

test_tenant_route_other_denied if {
	denied_only(call({"route": {"tenant": "globex"}}), ["tenant_mismatch"])
}

test_tenant_route_missing_denied if {
	denied_only(object.remove(healer_restart, ["route"]), ["tenant_mismatch"])
}

test_resource_other_service_in_tenant_allowed if {
	allowed(call({"resource": "payments"}))
}

test_resource_of_other_tenant_denied if {
	denied_only(call({"resource": "search"}), ["resource_not_in_tenant"])
}

test_resource_unknown_denied if {
	denied_only(call({"resource": "mainframe"}), ["resource_not_in_tenant"])
}

test_globex_resources_allowed if {
	x := call({"tenant": "globex", "resource": "inventory", "passport": {"tenant": "globex"}})
	allowed(x)
	denied_only(object.union(x, {"resource": "checkout"}), ["resource_not_in_tenant"])
}

test_resource_wildcard_for_collection_allowed if {
	allowed(call({"action": "service.list", "resource": "*"}))
}

test_resource_wildcard_for_single_resource_action_denied if {
	denied_only(call({"resource": "*"}), ["resource_not_in_tenant"])
}
