package passport.authz

import data.passport.config

# A passport is valid only inside its own tenant: the call's tenant, the
# passport's tenant and (when the route names one) the route's tenant must
# all be the same, non-empty tenant.
reasons contains "tenant_mismatch" if not tenant_matches

tenant_matches if {
	is_string(input.tenant)
	input.tenant != ""
	input.passport.tenant == input.tenant
	is_object(input.route)
	object.get(input.route, "tenant", "") in {"", input.tenant}
}

# The resource must belong to the tenant (data: tenants.*.services), so that
# one tenant's agent can never touch another tenant's service. "*" is
# accepted only for collection reads (data: actions.*.any_resource).
reasons contains "resource_not_in_tenant" if {
	action_config
	not resource_in_tenant
}

resource_in_tenant if {
	input.resource == "*"
	action_config.any_resource == true
}

resource_in_tenant if input.resource in config.tenants[input.tenant].services
