package passport.authz

import data.passport.config

# Argument constraints read from the request body. Bounds and allowed values
# are data (scale, deploy, chaos); a missing or ill-typed argument is denied.

# service.scale: replicas must be an integer ...
reasons contains "invalid_argument" if {
	input.action == "service.scale"
	not replicas_integer
}

replicas_integer if {
	is_number(input.request.body.replicas)
	input.request.body.replicas == round(input.request.body.replicas)
}

# ... within the service's bounds (inclusive).
reasons contains "replicas_out_of_bounds" if {
	input.action == "service.scale"
	replicas_integer
	not replicas_within_bounds
}

replicas_within_bounds if {
	bounds := object.get(config.scale.services, input.resource, config.scale.default)
	input.request.body.replicas >= bounds.min
	input.request.body.replicas <= bounds.max
}

# deployment.deploy: version must be a string matching the data pattern.
reasons contains "invalid_argument" if {
	input.action == "deployment.deploy"
	not deploy_version_valid
}

deploy_version_valid if {
	is_string(input.request.body.version)
	regex.match(config.deploy.version_pattern, input.request.body.version)
}

# chaos.inject: the fault type must be one the data allows.
reasons contains "fault_type_not_permitted" if {
	input.action == "chaos.inject"
	not input.request.body.type in config.chaos.fault_types
}

# Fault injection and clearing only on routes explicitly marked
# non-production: a missing flag counts as production (fail closed).
reasons contains "chaos_on_production_route" if {
	action_config.non_production_only == true
	not input.route.production == false
}
