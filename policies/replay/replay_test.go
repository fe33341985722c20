package replay_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/policies"
	"github.com/agentpassport/passport/policies/replay"
	"github.com/agentpassport/passport/proxy/policy"
)

var now = time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC)

// input builds a policy input document v1 for one call.
func input(tenant, agentType, trust string, reputation float64, action, resource string, body any, grants ...string) map[string]any {
	return map[string]any{
		"version":  1,
		"time":     now.Add(-time.Hour).Format(time.RFC3339Nano),
		"tenant":   tenant,
		"action":   action,
		"resource": resource,
		"route":    map[string]any{"name": action, "template": "POST /x/{name}", "tenant": "", "production": true},
		"request": map[string]any{"id": "r", "method": "POST", "path": "/x/" + resource,
			"params": map[string]any{"name": resource}, "query": map[string]any{}, "headers": map[string]any{}, "body": body},
		"passport": map[string]any{"tenant": tenant, "sub": "cl-" + agentType,
			"agent":                 map[string]any{"id": "ag-" + agentType, "name": agentType + "-1", "type": agentType, "trust_level": trust},
			"authorization_details": []any{map[string]any{"type": "agent_action", "actions": grants}}},
		"agent": map[string]any{"id": "ag-" + agentType, "name": agentType + "-1", "type": agentType,
			"trust_level": trust, "reputation": reputation, "blocked": false},
	}
}

// record is a decision record as the proxy writes it.
func record(in map[string]any, decision string, reasons ...string) *audit.Record {
	rec := &audit.Record{V: audit.Version, Kind: audit.KindDecision, Time: now, Decision: decision, Reasons: reasons}
	if in != nil {
		b, _ := json.Marshal(in)
		rec.Input = b
		agent := in["agent"].(map[string]any)
		rec.Tenant, rec.Action, rec.Resource = in["tenant"].(string), in["action"].(string), in["resource"].(string)
		rec.AgentID, rec.AgentName, rec.AgentType = agent["id"].(string), agent["name"].(string), agent["type"].(string)
	}
	return rec
}

// add appends rec to the tenant's audit stream at time at, in the stream
// entry format of audit (one field holding the record's JSON).
func add(t *testing.T, c redis.Cmdable, tenant string, at time.Time, rec *audit.Record) string {
	t.Helper()
	rec.Tenant = tenant
	b, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	id, err := c.XAdd(context.Background(), &redis.XAddArgs{
		Stream: audit.StreamKey(tenant), ID: fmt.Sprintf("%d-*", at.UnixMilli()),
		Values: map[string]any{audit.FieldRecord: string(b)},
	}).Result()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// candidate is the embedded library with data.yaml edited by edit.
func candidate(t *testing.T, edit func(string) string) *policy.Engine {
	t.Helper()
	m := fstest.MapFS{}
	err := fs.WalkDir(policies.FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(policies.FS, p)
		if p == "data.yaml" {
			s := edit(string(b))
			if s == string(b) {
				t.Fatal("candidate edit changed nothing")
			}
			b = []byte(s)
		}
		m[p] = &fstest.MapFile{Data: b}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	e, err := policy.New(context.Background(), policy.Options{Name: "candidate", FS: m, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// stricter raises the restart reputation threshold to 70 and the scale
// maximum to 20: one change that denies, one that allows.
func stricter(s string) string {
	s = strings.Replace(s, "service.restart:\n        kind: destructive\n        trust: HIGH\n        min_reputation: 50",
		"service.restart:\n        kind: destructive\n        trust: HIGH\n        min_reputation: 70", 1)
	return strings.Replace(s, "min: 1\n        max: 10", "min: 1\n        max: 20", 1)
}

func TestReplay(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client()
	ctx := context.Background()

	healer := func(rep float64) map[string]any {
		return input("acme", "healer", "HIGH", rep, "service.restart", "checkout", nil, "service.restart")
	}
	scale := func(n int) map[string]any {
		return input("acme", "scaler", "MEDIUM", 75, "service.scale", "checkout", map[string]any{"replicas": n}, "service.scale")
	}
	rogue := input("acme", "observer", "LOW", 20, "service.restart", "checkout", nil, "service.get")
	recent := now.Add(-time.Hour)

	// Older than --since: not read.
	add(t, c, "acme", now.Add(-48*time.Hour), record(healer(60), audit.DecisionAllow))
	// Would now be denied: allowed restarts by a healer at reputation 60.
	denied1 := add(t, c, "acme", recent, record(healer(60), audit.DecisionAllow))
	add(t, c, "acme", recent, record(healer(60), audit.DecisionAllow))
	// Unchanged: a healthy healer, and the rogue agent (still denied, same reasons).
	add(t, c, "acme", recent, record(healer(95), audit.DecisionAllow))
	add(t, c, "acme", recent, record(rogue, audit.DecisionDeny,
		"action_not_granted", "agent_type_not_permitted", "reputation_too_low", "trust_level_too_low"))
	// Would now be allowed: scaling to 15 replicas.
	allowed1 := add(t, c, "acme", recent, record(scale(15), audit.DecisionDeny, "replicas_out_of_bounds"))
	// Still denied, for another reason now (25 is above the new maximum,
	// but recorded with a different reason).
	add(t, c, "acme", recent, record(scale(25), audit.DecisionDeny, "invalid_argument"))
	// A recorded policy error that the candidate allows.
	add(t, c, "acme", recent, record(scale(3), audit.DecisionError))
	// Not replayable: refused before policy, truncated input, old version.
	add(t, c, "acme", recent, record(nil, audit.DecisionDeny, "invalid_passport"))
	trunc := record(healer(60), audit.DecisionAllow)
	trunc.Input = json.RawMessage(`{"truncated":true,"size":20000}`)
	add(t, c, "acme", recent, trunc)
	v2 := healer(60)
	v2["version"] = 2
	add(t, c, "acme", recent, record(v2, audit.DecisionAllow))
	// Not a decision: ignored.
	add(t, c, "acme", recent, &audit.Record{V: 1, Kind: audit.KindOutcome, Status: 200})
	// Another tenant.
	g := input("globex", "healer", "HIGH", 65, "service.restart", "search", nil, "service.restart")
	add(t, c, "globex", recent, record(g, audit.DecisionAllow))
	// A stream entry that is not a record at all.
	if err := c.XAdd(ctx, &redis.XAddArgs{Stream: audit.StreamKey("acme"), ID: fmt.Sprintf("%d-*", recent.UnixMilli()),
		Values: map[string]any{"junk": "1"}}).Err(); err != nil {
		t.Fatal(err)
	}

	cand := candidate(t, stricter)
	rep, err := replay.Run(ctx, replay.Options{
		Client: c, Candidate: cand, Since: 24 * time.Hour, Now: func() time.Time { return now }, PageSize: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Tenants, []string{"acme", "globex"}) {
		t.Errorf("tenants %v, want [acme globex]", rep.Tenants)
	}
	if rep.Decisions != 11 || rep.Replayed != 8 {
		t.Errorf("decisions %d replayed %d, want 11 and 8", rep.Decisions, rep.Replayed)
	}
	wantSkipped := map[string]int{"no_input": 1, "truncated": 1, "unsupported_input": 1, "malformed": 1}
	if !maps.Equal(rep.Skipped, wantSkipped) {
		t.Errorf("skipped %v, want %v", rep.Skipped, wantSkipped)
	}
	if rep.Unchanged != 3 || rep.ReasonsChanged != 1 || rep.CandidateErrors != 0 {
		t.Errorf("unchanged %d reasons_changed %d errors %d, want 3 1 0", rep.Unchanged, rep.ReasonsChanged, rep.CandidateErrors)
	}
	if rep.Revision == "" || rep.Revision != cand.Revision() {
		t.Errorf("revision %q, want the candidate's %q", rep.Revision, cand.Revision())
	}

	if got := replay.Total(rep.NowDenied); got != 3 || len(rep.NowDenied) != 2 {
		t.Fatalf("now denied %d calls in %d groups, want 3 in 2: %+v", got, len(rep.NowDenied), rep.NowDenied)
	}
	d := rep.NowDenied[0]
	if d.Tenant != "acme" || d.Action != "service.restart" || d.AgentID != "ag-healer" || d.AgentName != "healer-1" ||
		d.Count != 2 || !maps.Equal(d.Reasons, map[string]int{"reputation_too_low": 2}) || d.Examples[0] != denied1 {
		t.Errorf("now denied[0] = %+v", d)
	}
	if d := rep.NowDenied[1]; d.Tenant != "globex" || d.Count != 1 {
		t.Errorf("now denied[1] = %+v", d)
	}
	if got := replay.Total(rep.NowAllowed); got != 2 || len(rep.NowAllowed) != 1 {
		t.Fatalf("now allowed %d calls in %d groups, want 2 in 1: %+v", got, len(rep.NowAllowed), rep.NowAllowed)
	}
	a := rep.NowAllowed[0]
	if a.Action != "service.scale" || a.AgentType != "scaler" || a.Examples[0] != allowed1 ||
		!maps.Equal(a.Reasons, map[string]int{"replicas_out_of_bounds": 1, "policy_error": 1}) {
		t.Errorf("now allowed = %+v", a)
	}

	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"replayed 8 of 11 decisions, tenants acme, globex, 2026-11-24T20:00:00Z to 2026-11-25T20:00:00Z",
		"now denied: 3 calls",
		"healer-1 (ag-healer)",
		"reputation_too_low×2",
		"now allowed: 2 calls",
		"policy_error×1 replicas_out_of_bounds×1",
		"unchanged: 3 (1 still denied, for other reasons)",
		"skipped: malformed 1, no_input 1, truncated 1, unsupported_input 1",
	} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text report lacks %q:\n%s", want, text.String())
		}
	}

	t.Run("one tenant, whole stream", func(t *testing.T) {
		rep, err := replay.Run(ctx, replay.Options{Client: c, Candidate: cand, Tenants: []string{"globex"}})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Decisions != 1 || replay.Total(rep.NowDenied) != 1 || !rep.From.IsZero() {
			t.Errorf("globex: %+v", rep)
		}
		rep, err = replay.Run(ctx, replay.Options{Client: c, Candidate: cand, Tenants: []string{"acme"}})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Decisions != 11 || replay.Total(rep.NowDenied) != 3 {
			t.Errorf("acme whole stream: decisions %d now denied %d, want 11 and 3", rep.Decisions, replay.Total(rep.NowDenied))
		}
	})
	t.Run("limit", func(t *testing.T) {
		rep, err := replay.Run(ctx, replay.Options{Client: c, Candidate: cand, Limit: 3, PageSize: 2})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Decisions != 3 {
			t.Errorf("decisions %d, want 3", rep.Decisions)
		}
	})
	t.Run("same policy changes nothing", func(t *testing.T) {
		same, err := policy.New(ctx, policy.Options{FS: policies.FS, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		rep, err := replay.Run(ctx, replay.Options{Client: c, Candidate: same, Tenants: []string{"globex"}})
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.NowDenied)+len(rep.NowAllowed) != 0 || rep.Unchanged != 1 {
			t.Errorf("the enforced library changed decisions: %+v", rep)
		}
	})
	t.Run("redis down", func(t *testing.T) {
		srv.Kill()
		_, err := replay.Run(ctx, replay.Options{Client: c, Candidate: cand, Tenants: []string{"acme"}})
		if err == nil {
			t.Fatal("replay against a dead Redis succeeded")
		}
	})
}

func TestReplayNoStreams(t *testing.T) {
	srv := redistest.Start(t)
	cand, err := policy.New(context.Background(), policy.Options{FS: policies.FS, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := replay.Run(context.Background(), replay.Options{Client: srv.Client(), Candidate: cand})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Tenants) != 0 || rep.Decisions != 0 {
		t.Fatalf("empty Redis: %+v", rep)
	}
	var b bytes.Buffer
	if err := rep.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "no tenant (no audit stream found)") {
		t.Fatalf("text: %s", b.String())
	}
	if _, err := replay.Run(context.Background(), replay.Options{Client: srv.Client()}); err == nil {
		t.Fatal("replay without a candidate succeeded")
	}
}

// TestReplayResolvesPassportReferences: a decision that references its
// passport record (as the proxy writes it) is replayed with the claims put
// back, also when the passport record is older than --since; a reference
// that does not resolve (deleted record, other claims) is skipped and
// counted, never replayed on a partial input.
func TestReplayResolvesPassportReferences(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client()
	ctx := context.Background()
	recent := now.Add(-time.Hour)

	// ref writes the passport record of in at time at and returns a
	// decision that references it instead of repeating the claims.
	ref := func(at time.Time, in map[string]any, decision string, reasons ...string) *audit.Record {
		claims, _ := json.Marshal(in["passport"])
		pr := audit.PassportRecord("acme", "ag-healer", "jti-1", claims, at)
		id := add(t, c, "acme", at, pr)
		rec := record(in, decision, reasons...)
		without := maps.Clone(in)
		delete(without, "passport")
		rec.Input, _ = json.Marshal(without)
		rec.JTI, rec.PassportID = "jti-1", id
		var err error
		if rec.PassportSHA256, err = audit.PassportDigest(claims); err != nil {
			t.Fatal(err)
		}
		return rec
	}
	healer := input("acme", "healer", "HIGH", 60, "service.restart", "checkout", nil, "service.restart")
	// The passport record is older than --since: read by its id.
	old := ref(now.Add(-48*time.Hour), healer, audit.DecisionAllow)
	add(t, c, "acme", recent, old)
	// Without its grant, the decision would be denied: the claims matter.
	ungranted := input("acme", "healer", "HIGH", 95, "service.restart", "checkout", nil, "service.get")
	add(t, c, "acme", recent, ref(recent, ungranted, audit.DecisionAllow))
	// Altered claims: the digest no longer matches.
	bad := ref(recent, healer, audit.DecisionAllow)
	bad.PassportSHA256 = strings.Repeat("A", 43)
	add(t, c, "acme", recent, bad)
	// A reference to a record that is not there.
	gone := ref(recent, healer, audit.DecisionAllow)
	if err := c.XDel(ctx, audit.StreamKey("acme"), gone.PassportID).Err(); err != nil {
		t.Fatal(err)
	}
	add(t, c, "acme", recent, gone)

	rep, err := replay.Run(ctx, replay.Options{
		Client: c, Candidate: candidate(t, stricter), Since: 24 * time.Hour, Now: func() time.Time { return now }, PageSize: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Decisions != 4 || rep.Replayed != 2 || rep.Skipped["passport_unresolved"] != 2 {
		t.Fatalf("decisions %d, replayed %d, skipped %v", rep.Decisions, rep.Replayed, rep.Skipped)
	}
	// Both replayed allows are now denied: reputation 60 under the
	// stricter threshold, and the missing grant (which only the claims say).
	n := 0
	for _, ch := range rep.NowDenied {
		n += ch.Count
	}
	if n != 2 {
		t.Fatalf("now denied %d, want 2: %+v", n, rep.NowDenied)
	}
}

// With Archive, replay reads the archived segments and then Redis: every
// decision written is replayed once.
func TestReplayReadsTheArchive(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client()
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	w, err := audit.NewStream(c, audit.StreamConfig{WriterID: "proxy-a", CheckpointEvery: 10}, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	const n = 250
	for i := range n {
		rec := record(input("acme", "healer", "HIGH", 80, "service.restart", "checkout", nil, "service.restart"), audit.DecisionAllow)
		rec.RequestID = fmt.Sprintf("r-%d", i)
		if _, err := w.Append(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	arch, err := audit.NewStream(c, audit.StreamConfig{WriterID: "archiver"}, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = arch.Close() })
	dir := t.TempDir()
	ar, err := audit.NewArchiver(c, arch, audit.ArchiveConfig{Dir: dir, MaxBytes: 1, SegmentRecords: 100}, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ar.Archive(ctx); err != nil {
		t.Fatal(err)
	}
	cand := candidate(t, stricter)
	alone, err := replay.Run(ctx, replay.Options{Client: c, Candidate: cand, Tenants: []string{"acme"}})
	if err != nil {
		t.Fatal(err)
	}
	full, err := replay.Run(ctx, replay.Options{Client: c, Candidate: cand, Tenants: []string{"acme"}, Archive: dir})
	if err != nil {
		t.Fatal(err)
	}
	if alone.Decisions >= n || full.Decisions != n || full.Replayed != n {
		t.Fatalf("Redis alone %d decisions; with the archive %d, %d replayed; want %d", alone.Decisions, full.Decisions, full.Replayed, n)
	}
}
