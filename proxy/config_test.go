package proxy

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestExampleConfigIsTheDefaults(t *testing.T) {
	c, err := LoadConfig("../examples/proxy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	want := FleetConfig("http://127.0.0.1:9000")
	want.Redis.URL = "redis://127.0.0.1:6379/0"
	if err := want.Validate(); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("examples/proxy.yaml differs from the documented defaults:\n got %+v\nwant %+v", c, want)
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "p.yaml")
	if err := os.WriteFile(bad, []byte("listen: 127.0.0.1:1\nlistne: x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(bad); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("typo: %v, want an error naming line 2", err)
	}
	c := FleetConfig("http://127.0.0.1:9000")
	c.Leeway = time.Minute
	c.Routes = append(c.Routes,
		Route{Match: "GET /services/{other}", Action: "service.get", Resource: "{other}"},
		Route{Match: "POST services", Action: "x", Resource: "{nope}"},
		Route{Match: "GET /x/{a}", Action: "service.get", Resource: "{b}", Upstream: "ghost"},
	)
	c.PolicyHeaders = []string{"authorization"}
	c.Policy.Engine = "turbo"
	err := c.Validate()
	for _, want := range []string{"leeway", "overlaps", "match", "upstream \"ghost\"", "parameter {b}", "authorization", "policy.engine"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v; want it to mention %q", err, want)
		}
	}
}
