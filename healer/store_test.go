package healer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/agentpassport/passport/internal/redistest"
)

func mkIncident(tenant, id string, at time.Time) *Incident {
	in := &Incident{ID: id, Tenant: tenant, Type: TypeServiceDown, Target: "checkout", State: StateDetected, DetectedAt: at}
	in.note(at, "connection refused")
	return in
}

func TestStoreAgainstRealRedis(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	rdb := srv.Client()
	s := NewStore(rdb, 3)
	ctx := context.Background()
	t0 := time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC)

	in := mkIncident("acme", "inc-1", t0)
	if err := s.Save(ctx, in); err != nil {
		t.Fatal(err)
	}
	in.transition(StateDispatched, t0.Add(100*time.Millisecond), "service.restart")
	in.transition(StateResolved, t0.Add(300*time.Millisecond), "healthy")
	if err := s.Save(ctx, in); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, "acme", "inc-1")
	if err != nil {
		t.Fatal(err)
	}
	if got.State != StateResolved || got.ResolutionMS != 300 || len(got.Timeline) != 3 || got.Timeline[1].State != StateDispatched {
		t.Errorf("got %+v", got)
	}
	// Keys are tenant hash-tagged.
	if ok, _ := rdb.Exists(ctx, "passport:{t:acme}:incident:inc-1").Result(); ok != 1 {
		t.Error("incident key missing")
	}
	if n, _ := rdb.ZCard(ctx, "passport:{t:acme}:incidents").Result(); n != 1 {
		t.Errorf("index size = %d", n)
	}
	// Tenants are isolated.
	if _, err := s.Get(ctx, "globex", "inc-1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("globex sees acme's incident: %v", err)
	}
	if _, err := s.List(ctx, "acme}x", 10); !errors.Is(err, ErrBadTenant) {
		t.Errorf("bad tenant accepted: %v", err)
	}
	// Newest first, trimmed to 3.
	for i := 2; i <= 5; i++ {
		if err := s.Save(ctx, mkIncident("acme", fmt.Sprintf("inc-%d", i), t0.Add(time.Duration(i)*time.Second))); err != nil {
			t.Fatal(err)
		}
	}
	list, err := s.List(ctx, "acme", 10)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, x := range list {
		ids = append(ids, x.ID)
	}
	if fmt.Sprint(ids) != "[inc-5 inc-4 inc-3]" {
		t.Errorf("list = %v", ids)
	}
	if n, _ := rdb.Exists(ctx, IncidentKey("acme", "inc-1"), IncidentKey("acme", "inc-2")).Result(); n != 0 {
		t.Errorf("trimmed incidents still stored: %d", n)
	}
	// Survives a crash and restart (AOF, fsync always).
	srv.Kill()
	srv.Restart()
	if got, err := s.Get(ctx, "acme", "inc-5"); err != nil || got.ID != "inc-5" {
		t.Errorf("after restart: %v %v", got, err)
	}
}

func TestAPI(t *testing.T) {
	srv := redistest.Start(t)
	s := NewStore(srv.Client(), 0)
	ctx := context.Background()
	if err := s.Save(ctx, mkIncident("acme", "inc-a", time.Now())); err != nil {
		t.Fatal(err)
	}
	api := httptest.NewServer(NewAPI(s, "admintok", nil, discard()))
	defer api.Close()
	noToken := httptest.NewServer(NewAPI(s, "", nil, discard()))
	defer noToken.Close()
	tests := []struct {
		name, base, path, token string
		want                    int
	}{
		{"list", api.URL, "/v1/tenants/acme/incidents", "admintok", 200},
		{"get", api.URL, "/v1/tenants/acme/incidents/inc-a", "admintok", 200},
		{"other tenant", api.URL, "/v1/tenants/globex/incidents/inc-a", "admintok", 404},
		{"no token", api.URL, "/v1/tenants/acme/incidents", "", 401},
		{"wrong token", api.URL, "/v1/tenants/acme/incidents", "nope", 401},
		{"unconfigured token fails closed", noToken.URL, "/v1/tenants/acme/incidents", "", 401},
		{"bad tenant", api.URL, "/v1/tenants/ACME%7D/incidents", "admintok", 400},
		{"bad limit", api.URL, "/v1/tenants/acme/incidents?limit=0", "admintok", 400},
		{"healthz", api.URL, "/healthz", "", 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", tc.base+tc.path, nil)
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status = %d, want %d", resp.StatusCode, tc.want)
			}
			if tc.name == "list" {
				var body struct {
					Incidents []map[string]any `json:"incidents"`
				}
				_ = json.NewDecoder(resp.Body).Decode(&body)
				in := body.Incidents[0]
				for _, k := range []string{"id", "type", "target", "state", "detected_at", "dispatched_at", "resolved_at", "resolution_ms", "attempts", "timeline"} {
					if _, ok := in[k]; !ok {
						t.Errorf("incident JSON lacks %q", k)
					}
				}
			}
		})
	}
}
