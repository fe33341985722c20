package passport

import (
	"bytes"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"testing"
	"time"
)

func TestTrustLevel(t *testing.T) {
	tests := []struct {
		in      string
		want    TrustLevel
		wantErr bool
	}{
		{"HIGH", TrustHigh, false}, {"medium", TrustMedium, false}, {" low ", TrustLow, false},
		{"ROOT", "", true}, {"", "", true},
	}
	for _, tc := range tests {
		got, err := ParseTrustLevel(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("ParseTrustLevel(%q) = %q, %v", tc.in, got, err)
		}
	}
	if TrustHigh.Min(TrustLow) != TrustLow || TrustLow.Min(TrustHigh) != TrustLow {
		t.Error("Min")
	}
	if !(TrustLow.Rank() < TrustMedium.Rank() && TrustMedium.Rank() < TrustHigh.Rank()) || TrustLevel("x").Rank() != 0 {
		t.Error("Rank order")
	}
}

func TestKeysAreHashTagged(t *testing.T) {
	k := AgentKey("acme", "a1")
	if k != "passport:{t:acme}:agent:a1" {
		t.Fatalf("AgentKey = %q", k)
	}
	for _, k := range []string{AgentKey("acme", "x"), AuditStreamKey("acme"), TenantKey("acme", "incident", "1")} {
		if !strings.Contains(k, "{t:acme}") {
			t.Errorf("%q lacks the tenant hash tag", k)
		}
	}
}

func TestReputationDrift(t *testing.T) {
	t0 := time.Unix(1000, 0)
	r := Reputation{Score: 40, Baseline: 80, UpdatedAt: t0, HalfLife: time.Minute}
	if got := r.At(t0); got != 40 {
		t.Errorf("at t0 = %v", got)
	}
	if got := r.At(t0.Add(time.Minute)); math.Abs(got-60) > 1e-9 {
		t.Errorf("after one half-life = %v, want 60", got)
	}
	if got := r.At(t0.Add(time.Hour)); math.Abs(got-80) > 0.01 {
		t.Errorf("after long = %v, want ~80", got)
	}
	if got := (Reputation{Score: 150}).At(t0); got != 100 {
		t.Errorf("clamp = %v", got)
	}
}

func TestClaimsActions(t *testing.T) {
	c := Claims{AuthorizationDetails: []AuthorizationDetail{
		{Type: AuthorizationDetailType, Actions: []string{"a", "b"}},
		{Type: AuthorizationDetailType, Actions: []string{"b", "c"}},
	}}
	if got := fmt.Sprint(c.Actions()); got != "[a b c]" {
		t.Errorf("Actions = %s", got)
	}
	if !c.Grants("c") || c.Grants("d") {
		t.Error("Grants")
	}
}

func TestSecretNeverPrinted(t *testing.T) {
	s := Secret("hunter2")
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "secret", s)
	if strings.Contains(buf.String(), "hunter2") || strings.Contains(fmt.Sprint(s), "hunter2") || fmt.Sprintf("%v", s) != "REDACTED" {
		t.Fatalf("secret leaked: %q", buf.String())
	}
	if s.Reveal() != "hunter2" {
		t.Fatal("Reveal")
	}
}
