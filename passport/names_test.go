package passport

import (
	"strings"
	"testing"
)

func TestNames(t *testing.T) {
	for _, tc := range []struct {
		fn   func(string) bool
		name string
		s    string
		want bool
	}{
		{ValidTenant, "tenant", "acme", true},
		{ValidTenant, "tenant", "acme-eu_1", true},
		{ValidTenant, "tenant", "9lives", true},
		{ValidTenant, "tenant", "", false},
		{ValidTenant, "tenant", "Acme", false},
		{ValidTenant, "tenant", "-acme", false},
		{ValidTenant, "tenant", "ac}me", false},      // leaves its hash tag
		{ValidTenant, "tenant", "acme:audit", false}, // forges a key
		{ValidTenant, "tenant", "ac me", false},
		{ValidTenant, "tenant", "acme\n", false},
		{ValidTenant, "tenant", strings.Repeat("a", 63), true},
		{ValidTenant, "tenant", strings.Repeat("a", 64), false},
		{ValidAction, "action", "service.restart", true},
		{ValidAction, "action", "service.scale-up", true}, // the proxy and the authority agree on '-'
		{ValidAction, "action", "a.b.c_d", true},
		{ValidAction, "action", "service", false},
		{ValidAction, "action", "Service.restart", false},
		{ValidAction, "action", "service..restart", false},
		{ValidAction, "action", "service.restart.", false},
		{ValidAction, "action", ".restart", false},
		{ValidAction, "action", "service.1restart", false},
		{ValidAction, "action", "a." + strings.Repeat("b", MaxActionLength), false},
		{ValidAgentType, "type", "healer", true},
		{ValidAgentType, "type", "incident-commander", true},
		{ValidAgentType, "type", "Healer", false},
		{ValidAgentType, "type", "1healer", false},
		{ValidAgentType, "type", "heal.er", false},
	} {
		if got := tc.fn(tc.s); got != tc.want {
			t.Errorf("valid %s %q = %v, want %v", tc.name, tc.s, got, tc.want)
		}
	}
}
