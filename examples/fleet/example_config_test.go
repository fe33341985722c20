package fleet

import (
	"testing"

	"github.com/agentpassport/passport/internal/config"
)

// The shipped example must load strictly and validate.
func TestExampleConfig(t *testing.T) {
	cfg := Default()
	cfg.Services = nil
	if err := config.Load("../fleet.yaml", &cfg); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(cfg.Services) != 4 || cfg.LeakMaxBytes != 128<<20 || cfg.TLS.Enabled() {
		t.Errorf("cfg = %+v", cfg)
	}
}
