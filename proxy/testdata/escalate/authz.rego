# A small policy for the proxy's approval and budget tests: scaling needs a
# person; restarts (per service), reads (per agent) and lists (per tenant)
# have budgets (data.yaml); an exhausted lists budget asks two people.
package passport.authz

granted contains a if {
	some d in input.passport.authorization_details
	some a in d.actions
}

reasons contains "action_not_granted" if not input.action in granted

reasons contains "approval_required" if {
	input.action == "service.scale"
	not input.approval
}

reasons contains "budget_exhausted" if {
	some name, b in input.budgets
	b.reserved == false
	not escalated(name)
}

reasons contains "approval_required" if {
	some name, b in input.budgets
	b.reserved == false
	escalated(name)
	not count(object.get(input, ["approval", "approvers"], [])) >= 2
}

escalated("lists")

ask := {"required": true, "reason": "a person must look", "approvers": 2} if {
	input.action == "service.list"
} else := {"required": true, "reason": "scaling needs a person", "approvers": 1}

decision := {"allow": false, "reasons": reasons, "approval": ask} if {
	reasons == {"approval_required"}
} else := {"allow": count(reasons) == 0, "reasons": reasons}
