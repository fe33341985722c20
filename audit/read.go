package audit

import (
	"encoding/json"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// ParseMessage decodes a stream entry into a Record and returns the raw
// stored JSON as well (the bytes the hash covers).
func ParseMessage(m redis.XMessage) (*Record, []byte, error) {
	v, ok := m.Values[FieldRecord]
	if !ok {
		return nil, nil, fmt.Errorf("%w: entry %s has no %q field", ErrMalformed, m.ID, FieldRecord)
	}
	s, ok := v.(string)
	if !ok {
		return nil, nil, fmt.Errorf("%w: entry %s: field %q is not a string", ErrMalformed, m.ID, FieldRecord)
	}
	raw := []byte(s)
	rec, err := DecodeRecord(raw)
	if err != nil {
		return nil, raw, fmt.Errorf("entry %s: %w", m.ID, err)
	}
	return rec, raw, nil
}

// DecodeRecord decodes a stored record's JSON.
func DecodeRecord(raw []byte) (*Record, error) {
	var rec Record
	if err := json.Unmarshal(raw, &rec); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return &rec, nil
}
