package passport

import (
	"fmt"
	"log/slog"
	"strings"
)

type slogValue = slog.Value

var redacted = slog.StringValue("REDACTED")

// TrustLevel is how far an agent is trusted: LOW may read, MEDIUM may make
// non-destructive changes, HIGH may take destructive actions.
type TrustLevel string

// The trust levels, lowest first.
const (
	TrustLow    TrustLevel = "LOW"
	TrustMedium TrustLevel = "MEDIUM"
	TrustHigh   TrustLevel = "HIGH"
)

// Rank orders trust levels: LOW 1, MEDIUM 2, HIGH 3, anything else 0.
func (t TrustLevel) Rank() int {
	switch t {
	case TrustLow:
		return 1
	case TrustMedium:
		return 2
	case TrustHigh:
		return 3
	}
	return 0
}

// Valid reports whether t is one of the three trust levels.
func (t TrustLevel) Valid() bool { return t.Rank() > 0 }

// Min returns the lower of two trust levels.
func (t TrustLevel) Min(o TrustLevel) TrustLevel {
	if o.Rank() < t.Rank() {
		return o
	}
	return t
}

// ParseTrustLevel parses a trust level, ignoring case.
func ParseTrustLevel(s string) (TrustLevel, error) {
	t := TrustLevel(strings.ToUpper(strings.TrimSpace(s)))
	if !t.Valid() {
		return "", fmt.Errorf("trust level %q: want HIGH, MEDIUM or LOW", s)
	}
	return t, nil
}
