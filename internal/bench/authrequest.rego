# The comparison point's policy: what a user who puts nginx auth_request in
# front of an OPA server would write to check an agent passport. nginx asks
# for OPA's default decision (POST / evaluates data.system.main): OPA answers
# 200 when main is defined and 404 when it is undefined, which nginx turns
# into a 403. The REST data API would answer 200 either way, so it cannot
# carry a deny to auth_request.
#
# The bench writes the authority's JWKS, issuer and audience into data.json
# as data.passport.
package system

main if allow

# The passport must be signed by the authority, unexpired, for this audience
# and grant the action, and the agent's type must be one that may do it.
allow if {
	action in capabilities[claims.agent.type]
	some detail in claims.authorization_details
	detail.type == "agent_action"
	action in detail.actions
}

# claims are the passport's claims once io.jwt.decode_verify has checked its
# signature against the JWKS, its algorithm, iss, aud, exp and nbf.
claims := payload if {
	startswith(input.authorization, "Bearer ")
	token := substring(input.authorization, count("Bearer "), -1)
	[valid, header, payload] := io.jwt.decode_verify(token, {
		"cert": data.passport.jwks,
		"alg": "EdDSA",
		"iss": data.passport.issuer,
		"aud": data.passport.audience,
	})
	valid
	header.typ == "at+jwt"
}

# The most an agent of each type may ever do, whatever its passport says.
capabilities := {
	"healer": {"service.list", "service.get", "service.restart"},
	"observer": {"service.list", "service.get"},
}

# action names the request as the proxy's routes do.
action := "service.list" if {
	input.method == "GET"
	input.path == "/services"
}

action := "service.get" if {
	input.method == "GET"
	["", "services", _] = split(input.path, "/")
}

action := "service.restart" if {
	input.method == "POST"
	["", "services", _, "restart"] = split(input.path, "/")
}
