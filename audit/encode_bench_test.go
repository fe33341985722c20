package audit_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/agentpassport/passport/audit"
)

// benchInput is a policy input document shaped like the one the proxy
// builds (a Go struct marshalled with encoding/json: members in declaration
// order, HTML escaped), about 1 KB.
func benchInput(tb testing.TB) json.RawMessage {
	type route struct {
		Name       string `json:"name"`
		Template   string `json:"template"`
		Tenant     string `json:"tenant"`
		Production bool   `json:"production"`
	}
	type request struct {
		ID      string              `json:"id"`
		Method  string              `json:"method"`
		Path    string              `json:"path"`
		Params  map[string]string   `json:"params"`
		Query   map[string][]string `json:"query"`
		Headers map[string]string   `json:"headers"`
		Body    json.RawMessage     `json:"body"`
	}
	type agent struct {
		ID         string  `json:"id"`
		Name       string  `json:"name"`
		Type       string  `json:"type"`
		TrustLevel string  `json:"trust_level"`
		Reputation float64 `json:"reputation"`
		Blocked    bool    `json:"blocked"`
	}
	doc := struct {
		Version  int             `json:"version"`
		Time     string          `json:"time"`
		Tenant   string          `json:"tenant"`
		Action   string          `json:"action"`
		Resource string          `json:"resource"`
		Route    route           `json:"route"`
		Request  request         `json:"request"`
		Passport json.RawMessage `json:"passport"`
		Agent    agent           `json:"agent"`
	}{
		Version: 1, Time: "2026-11-25T20:30:00.123456789Z", Tenant: "acme", Action: "service.restart", Resource: "checkout",
		Route: route{Name: "restart", Template: "POST /services/{name}/restart", Production: true},
		Request: request{ID: "req-0001", Method: "POST", Path: "/services/checkout/restart",
			Params:  map[string]string{"name": "checkout"},
			Query:   map[string][]string{"dry_run": {"false"}},
			Headers: map[string]string{"user-agent": "healer/1.0 (+https://example.com/healer?a=1&b=2)"},
			Body:    json.RawMessage(`{"reason":"health check failed 3 times","replicas":3}`)},
		Passport: json.RawMessage(`{"iss":"http://127.0.0.1:8081","sub":"agent-7f3c","aud":["passport-proxy"],"exp":1795638600,` +
			`"iat":1795638300,"nbf":1795638300,"jti":"2f6c3c0e-5b1a-4f7e-9d1c-8a2b3c4d5e6f","client_id":"acme-healer-1",` +
			`"tenant":"acme","scope":"service.list service.get service.restart deployment.rollback cache.warm",` +
			`"agent":{"id":"agent-7f3c","name":"healer-1","type":"healer","trust_level":"HIGH","reputation":72.5},` +
			`"authorization_details":[{"type":"agent_action","actions":["service.restart"],"locations":["https://fleet.example"],` +
			`"identifier":"checkout"}],"task":{"id":"inc-123","purpose":"restart unhealthy checkout","target":"checkout",` +
			`"actions":["service.restart"]}}`),
		Agent: agent{ID: "agent-7f3c", Name: "healer-1", Type: "healer", TrustLevel: "HIGH", Reputation: 72.5},
	}
	b, err := json.Marshal(doc)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// benchRecord is a typical decision record with a ~1 KB policy input.
func benchRecord(b *testing.B) *audit.Record {
	rec := decision("acme", 1)
	rec.V = audit.Version
	rec.Time = time.Date(2026, 11, 25, 20, 30, 0, 123456789, time.UTC)
	rec.Route = "restart"
	rec.Input = benchInput(b)
	rec.Writer, rec.Seq, rec.Prev = "proxy-a-1f2e3d", 42, "5f2b0c3c9f8e0d1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192"
	rec.Cap(0, 0)
	return rec
}

func benchSeal(b *testing.B, rec *audit.Record, ref bool) {
	// Direct calls, not a func value, so r stays on the stack.
	seal := func(r *audit.Record) ([]byte, error) {
		if ref {
			return audit.RefSeal(r)
		}
		return audit.Seal(r)
	}
	raw, err := seal(rec)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(len(rec.Input)), "input-bytes")
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	if ref {
		for b.Loop() {
			r := *rec // escapes: encoding/json takes it as an interface
			if _, err := audit.RefSeal(&r); err != nil {
				b.Fatal(err)
			}
		}
		return
	}
	for b.Loop() {
		r := *rec
		if _, err := audit.Seal(&r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEncodeRecord measures what the write path pays per record to
// encode and hash it: a typical decision record with a ~1 KB policy input
// as the proxy builds it (struct order, so its objects must be sorted),
// sealed (canonical encoding, SHA-256, stored bytes).
//
// Run: go test -run '^$' -bench EncodeRecord -benchmem ./audit/
func BenchmarkEncodeRecord(b *testing.B) {
	benchSeal(b, benchRecord(b), false)
}

// BenchmarkEncodeRecordReference is the same on the former path (encode
// with encoding/json, decode, re-encode sorted), for comparison.
func BenchmarkEncodeRecordReference(b *testing.B) {
	benchSeal(b, benchRecord(b), true)
}

// BenchmarkEncodeRecordCanonicalInput: the same record whose input is
// already canonical (members sorted, HTML not escaped), which is copied
// through without sorting.
func BenchmarkEncodeRecordCanonicalInput(b *testing.B) {
	rec := benchRecord(b)
	raw, err := audit.Seal(rec)
	if err != nil {
		b.Fatal(err)
	}
	var stored struct{ Input json.RawMessage }
	if err := json.Unmarshal(raw, &stored); err != nil {
		b.Fatal(err)
	}
	rec.Input = stored.Input
	benchSeal(b, rec, false)
}
