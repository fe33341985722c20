# Shared fixtures for the passport.authz tests: typical inputs (input
# document v1) and helpers that evaluate the decision.
package passport.authz_test

import data.passport.authz

# healer_restart is a typical allowed call: the acme healer restarts
# checkout on a production route with a passport that grants it.
healer_restart := {
	"version": 1,
	"time": "2026-11-25T20:00:00.123456789Z",
	"tenant": "acme",
	"action": "service.restart",
	"resource": "checkout",
	"route": {
		"name": "service-restart",
		"template": "POST /services/{name}/restart",
		"tenant": "",
		"production": true,
	},
	"request": {
		"id": "req-1",
		"method": "POST",
		"path": "/services/checkout/restart",
		"params": {"name": "checkout"},
		"query": {},
		"headers": {"user-agent": "healer/1.0"},
		"body": null,
	},
	"passport": {
		"iss": "http://127.0.0.1:8081",
		"sub": "cl-healer",
		"aud": ["passport-proxy"],
		"exp": 1795636800,
		"iat": 1795636500,
		"nbf": 1795636500,
		"jti": "jti-1",
		"client_id": "cl-healer",
		"tenant": "acme",
		"scope": "service.list service.get service.restart deployment.rollback cache.warm",
		"agent": {"id": "ag-healer", "name": "healer-1", "type": "healer", "trust_level": "HIGH", "reputation": 90},
		"authorization_details": [{
			"type": "agent_action",
			"actions": ["service.list", "service.get", "service.restart", "deployment.rollback", "cache.warm"],
			"locations": ["passport-proxy"],
		}],
	},
	"agent": {
		"id": "ag-healer",
		"name": "healer-1",
		"type": "healer",
		"trust_level": "HIGH",
		"reputation": 90,
		"blocked": false,
	},
}

# call returns the healer_restart input with patch merged in (objects merge
# recursively, anything else is replaced).
call(patch) := object.union(healer_restart, patch)

# as_agent is a call by an agent of the given type and trust level whose
# passport grants exactly actions.
as_agent(type, trust, actions, patch) := object.union(
	call({
		"agent": {"type": type, "trust_level": trust},
		"passport": {
			"agent": {"type": type, "trust_level": trust},
			"authorization_details": [{"type": "agent_action", "actions": actions}],
		},
	}),
	patch,
)

# decide is the decision for input x as the proxy evaluates it: with the
# load-time document clearances in data (proxy/policy stores it once per
# load), so that calls take the fast path or the table path. It is
# undefined, and the test fails, unless the reason rules (full_decision)
# give the same answer, and the staged path (staged_decision) too, so that
# every test checks the rules, the fast paths and the stage alike.
decide(x) := d if {
	d := authz.decision with input as x with data.passport.loaded.clearances as authz.clearances
	d == authz.full_decision with input as x
	d == staged_decision(x)
}

# staged_decision is the decision for x as the proxy evaluates it once it
# holds the stage of x's passport and route (stage.rego): the stage
# computed from the stage input alone, then the call with it as
# input.stage. Without a stage, x's decision.
staged_decision(x) := d if {
	s := authz.stage with input as stage_input(x) with data.passport.loaded.clearances as authz.clearances
	d := authz.decision with input as object.union(x, {"stage": s})
		with data.passport.loaded.clearances as authz.clearances
} else := d if {
	d := authz.decision with input as x with data.passport.loaded.clearances as authz.clearances
}

# stage_input is the part of input x the stage may read (proxy/policy,
# StageInput): version, tenant, action, route, passport, and agent
# without its reputation and blocked flag.
stage_input(x) := object.union(
	object.filter(x, ["version", "tenant", "action", "route", "passport"]),
	stage_agent(x),
)

stage_agent(x) := {"agent": object.filter(x.agent, ["id", "name", "type", "trust_level"])} if {
	is_object(x.agent)
} else := {"agent": x.agent} if {
	"agent" in object.keys(x)
} else := {}

# reasons_of is the decision's reasons for input x.
reasons_of(x) := decide(x).reasons

# allowed holds when the decision for x allows with no reasons.
allowed(x) if {
	d := decide(x)
	d.allow == true
	d.reasons == []
}

# denied_only holds when the decision for x denies with exactly reasons.
denied_only(x, reasons) if {
	d := decide(x)
	d.allow == false
	d.reasons == reasons
}
