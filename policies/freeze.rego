package passport.authz

import data.passport.config

# A change-freeze window (data: freeze_windows) denies the actions it names
# in the tenants it names while it is open, except for exempt agent types.
reasons contains "change_freeze" if window_open

# window_open holds when a window that concerns the call is open.
window_open if {
	some i in concerning_windows
	window_freezes_now(config.freeze_windows[i])
}

# Without a valid time (input.time, RFC 3339) a window that concerns the
# call cannot be ruled out, so the call is denied. Time is read only when
# some window concerns the call: most calls never pay for parsing it.
reasons contains "invalid_time" if {
	count(concerning_windows) > 0
	not now_ns
}

# concerning_windows are the indexes of the windows that name this call's
# tenant and action and do not exempt its agent type, whatever the time.
concerning_windows contains i if {
	some i, window in config.freeze_windows
	window_concerns(window, call_agent_type, call_action, call_action_config, call_tenant)
}

# The call's fields as window_concerns reads them: null where the input
# (or data, for the action's entry) has none, which no window lists.
default call_agent_type := null

call_agent_type := input.agent.type

default call_action := null

call_action := input.action

default call_action_config := null

call_action_config := action_config

default call_tenant := null

call_tenant := input.tenant

# window_concerns holds when a window names the tenant and the action (an
# action named by its config entry too, for its kind) and does not exempt
# the agent type. It reads no input: clearances (fast.rego) evaluates it
# for every combination once per load.
window_concerns(window, agent_type, name, action, tenant) if {
	window_covers_tenant(window, tenant)
	window_covers_action(window, name, action)
	not agent_type in object.get(window, "exempt_agent_types", [])
}

window_covers_tenant(window, _) if not window.tenants

window_covers_tenant(window, _) if count(window.tenants) == 0

window_covers_tenant(window, tenant) if tenant in window.tenants

window_covers_action(window, _, action) if {
	not window.actions
	action.kind != "read"
}

window_covers_action(window, _, action) if {
	count(window.actions) == 0
	action.kind != "read"
}

window_covers_action(window, name, _) if name in window.actions

# now_ns is the call's time in Unix nanoseconds. The proxy sets input.time,
# so tests and replay evaluate freezes at a chosen moment.
now_ns := rfc3339_ns(input.time)

window_freezes_now(window) if {
	rfc3339_ns(window.start) <= now_ns
	now_ns < rfc3339_ns(window.end)
}

# A window whose start or end does not parse freezes everything it names: a
# typo in data must not silently lift a freeze.
window_freezes_now(window) if not rfc3339_ns(window.start)

window_freezes_now(window) if not rfc3339_ns(window.end)

# rfc3339_ns parses an RFC 3339 time, and is undefined (never an error, even
# with strict builtin errors as the proxy evaluates) for anything else.
rfc3339_ns(s) := time.parse_rfc3339_ns(s) if {
	is_string(s)
	regex.match(`^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$`, s)
}
