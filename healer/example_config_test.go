package healer

import (
	"testing"

	"github.com/agentpassport/passport/internal/config"
)

// The shipped example must load strictly and validate.
func TestExampleConfig(t *testing.T) {
	cfg := Default()
	if err := config.Load("../examples/healer.yaml", &cfg); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Playbooks[TypeCacheMiss].Action != "cache.warm" || cfg.Defaults.Fall != 2 || cfg.TLS.Enabled() {
		t.Errorf("cfg = %+v", cfg)
	}
}
