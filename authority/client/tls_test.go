package client

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestAnUnreadableCAFileIsAnError(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "ca.pem")
	if _, err := New("https://authority.internal", "agt_1", "secret", Options{CAFile: missing}); err == nil || !strings.Contains(err.Error(), "ca.pem") {
		t.Fatalf("New = %v, want an error naming the CA file", err)
	}
	if _, err := NewAdmin("https://authority.internal", "admin-token-0123456789", Options{CAFile: missing}); err == nil || !strings.Contains(err.Error(), "ca.pem") {
		t.Fatalf("NewAdmin = %v, want an error naming the CA file", err)
	}
}
