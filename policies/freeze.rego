package passport.authz

# now_ns is the call's time (input.time, RFC 3339) in Unix nanoseconds. The
# proxy sets it, so tests and replay evaluate freezes at a chosen moment.
now_ns := time.parse_rfc3339_ns(input.time)

# Without a valid time no freeze can be ruled out, so the call is denied.
reasons contains "invalid_time" if not now_ns

# A change-freeze window (data: freeze_windows) denies the actions it names
# in the tenants it names while it is open, except for exempt agent types.
reasons contains "change_freeze" if {
	some window in config.freeze_windows
	window_concerns_call(window)
	window_open(window)
}

# A window whose start or end does not parse freezes everything it names: a
# typo in data must not silently lift a freeze.
reasons contains "change_freeze" if {
	some window in config.freeze_windows
	window_concerns_call(window)
	not window_times_valid(window)
}

window_concerns_call(window) if {
	window_covers_tenant(window)
	window_covers_action(window)
	not input.agent.type in object.get(window, "exempt_agent_types", [])
}

window_covers_tenant(window) if count(object.get(window, "tenants", [])) == 0

window_covers_tenant(window) if input.tenant in window.tenants

window_covers_action(window) if {
	count(object.get(window, "actions", [])) == 0
	action_config.kind != "read"
}

window_covers_action(window) if input.action in window.actions

window_times_valid(window) if {
	time.parse_rfc3339_ns(window.start)
	time.parse_rfc3339_ns(window.end)
}

window_open(window) if {
	time.parse_rfc3339_ns(window.start) <= now_ns
	now_ns < time.parse_rfc3339_ns(window.end)
}
