# Checks of policies/data.yaml itself, so that a typo in data fails the
# tests instead of silently changing decisions.
package passport.authz_test

cfg := data.passport.config

test_data_actions_well_formed if {
	every name, a in cfg.actions {
		a.kind in {"read", "write", "destructive"}
		cfg.trust_levels[a.trust]
		is_string(name)
	}
}

test_data_contract_trust_levels if {
	every name in {"service.list", "service.get"} {
		cfg.actions[name].trust == "LOW"
		cfg.actions[name].kind == "read"
	}
	every name in {"cache.warm", "service.scale", "deployment.deploy"} {
		cfg.actions[name].trust == "MEDIUM"
	}
	every name in {"service.restart", "deployment.rollback", "chaos.inject", "chaos.clear"} {
		cfg.actions[name].trust == "HIGH"
		cfg.actions[name].kind == "destructive"
	}
}

test_data_capabilities_are_known_actions if {
	every _, t in cfg.agent_types {
		every c in t.capabilities {
			cfg.actions[c]
		}
	}
}

test_data_freeze_windows_parse if {
	every w in cfg.freeze_windows {
		time.parse_rfc3339_ns(w.start) < time.parse_rfc3339_ns(w.end)
	}
}

test_data_scale_bounds_ordered if {
	cfg.scale.default.min <= cfg.scale.default.max
	every _, b in cfg.scale.services {
		b.min <= b.max
	}
}

test_data_deploy_pattern_compiles if {
	regex.is_valid(cfg.deploy.version_pattern)
}
