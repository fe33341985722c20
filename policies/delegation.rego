package passport.authz

# A delegated passport (RFC 8693 token exchange) carries its chain in
# input.passport.delegation: agent B acts on behalf of A (the root,
# delegation.links[0]). The proxy has already refused any chain with a
# revoked or blocked link. A delegated passport never changes production
# (a write or destructive action on a production route) unless the chain
# started with a HIGH agent and the passport's task binds this very target:
# a sub-agent does the one repair it was handed, not whatever its grants
# would otherwise allow. Reads, and non-production routes, are unaffected.
reasons contains "delegated_production_write" if {
	is_object(input.passport.delegation)
	input.route.production != false
	action_config.kind != "read"
	not delegated_write_bound
}

delegated_write_bound if {
	input.passport.delegation.links[0].trust_level == "HIGH"
	target := input.passport.task.target
	is_string(target)
	target != ""
	target == input.resource
}
