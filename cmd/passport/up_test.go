package main

import (
	"strings"
	"testing"

	"github.com/agentpassport/passport/internal/stack"
)

// The tour printed by `passport up` names the Redis URL without its
// password (the full URL is in the 0600 demo.json) and warns about nothing.
func TestTourHidesRedisPassword(t *testing.T) {
	var b strings.Builder
	d := stack.Demo{RedisURL: "redis://:s3cret-generated-password@127.0.0.1:6390/0", DashboardLogin: "http://127.0.0.1:8090/#token=x"}
	printTour(&b, ".passport", ".passport/passport.log", d)
	out := b.String()
	if strings.Contains(out, "s3cret-generated-password") {
		t.Fatalf("password printed:\n%s", out)
	}
	if !strings.Contains(out, "redis://:REDACTED@127.0.0.1:6390/0") || !strings.Contains(out, "key-encryption-key") {
		t.Fatalf("tour lacks the redacted Redis URL or the key file:\n%s", out)
	}
	if strings.Contains(strings.ToLower(out), "unencrypted") || strings.Contains(strings.ToLower(out), "warning") {
		t.Fatalf("tour warns:\n%s", out)
	}
}
