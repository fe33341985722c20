package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startFleet runs a fleet on loopback with small, fast fault settings.
func startFleet(t *testing.T) *Fleet {
	t.Helper()
	cfg := Config{
		Listen:        "127.0.0.1:0",
		CacheKeys:     100,
		MissLatency:   30 * time.Millisecond,
		LeakStepBytes: 1 << 20,
		LeakMaxBytes:  4 << 20,
		LeakInterval:  5 * time.Millisecond,
	}
	f, err := New(cfg, Deps{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("fleet run: %v", err)
		}
	})
	return f
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

var client = &http.Client{Timeout: 2 * time.Second}

func getHealth(t *testing.T, url string) (int, Health, error) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		return 0, Health{}, err
	}
	defer resp.Body.Close()
	var h Health
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		t.Fatalf("decode health: %v", err)
	}
	return resp.StatusCode, h, nil
}

func call(t *testing.T, method, url, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

func TestDefaultsAndStatus(t *testing.T) {
	f := startFleet(t)
	st := f.Services()
	want := map[string]string{"checkout": "acme", "payments": "acme", "search": "globex", "inventory": "globex"}
	if len(st) != len(want) {
		t.Fatalf("services = %d, want %d", len(st), len(want))
	}
	for _, s := range st {
		if want[s.Name] != s.Tenant {
			t.Errorf("%s tenant = %q, want %q", s.Name, s.Tenant, want[s.Name])
		}
		code, h, err := getHealth(t, s.HealthURL)
		if err != nil || code != 200 || h.Status != "ok" || h.Version != "v1" || h.CacheHitRatio != 1 || h.Replicas != 2 || h.MemoryBytes != 32<<20 {
			t.Errorf("%s health = %d %+v %v", s.Name, code, h, err)
		}
	}
	code, body := call(t, "GET", f.URL()+"/services/checkout", "")
	if code != 200 || body["name"] != "checkout" || body["up"] != true {
		t.Errorf("GET /services/checkout = %d %v", code, body)
	}
	if code, _ := call(t, "GET", f.URL()+"/services/nope", ""); code != 404 {
		t.Errorf("unknown service = %d, want 404", code)
	}
	code, body = call(t, "GET", f.URL()+"/services", "")
	if code != 200 || len(body["services"].([]any)) != 4 {
		t.Errorf("GET /services = %d %v", code, body)
	}
}

func TestServiceDownRefusesConnectionsUntilRestart(t *testing.T) {
	f := startFleet(t)
	url := f.HealthURL("checkout")
	if code, _ := call(t, "POST", f.URL()+"/faults/checkout", `{"type":"service_down"}`); code != 200 {
		t.Fatalf("inject = %d", code)
	}
	_, _, err := getHealth(t, url)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("after service_down: err = %v, want connection refused", err)
	}
	if st, _ := f.Service("checkout"); st.Up || st.Status != "down" || st.Fault != FaultServiceDown {
		t.Errorf("status = %+v", st)
	}
	// One fault per service: a second injection is refused.
	if code, _ := call(t, "POST", f.URL()+"/faults/checkout", `{"type":"cache_miss"}`); code != 409 {
		t.Errorf("second fault = %d, want 409", code)
	}
	if code, _ := call(t, "POST", f.URL()+"/services/checkout/restart", ""); code != 200 {
		t.Fatalf("restart = %d", code)
	}
	code, h, err := getHealth(t, url)
	if err != nil || code != 200 || h.Status != "ok" {
		t.Fatalf("after restart: %d %+v %v", code, h, err)
	}
	if st, _ := f.Service("checkout"); st.Fault != "" || st.HealthURL != url {
		t.Errorf("after restart status = %+v (health url was %s)", st, url)
	}
}

func TestBadDeployAnswers5xxUntilRollback(t *testing.T) {
	f := startFleet(t)
	st, _ := f.Service("payments")
	if code, _ := call(t, "POST", f.URL()+"/faults/payments", `{"type":"bad_deploy"}`); code != 200 {
		t.Fatalf("inject = %d", code)
	}
	if code, body := call(t, "GET", st.URL+"/", ""); code != 500 || body["version"] != "v2" {
		t.Errorf("GET / after bad deploy = %d %v", code, body)
	}
	code, h, err := getHealth(t, st.HealthURL)
	if err != nil || code != 503 || h.Status != "failing" || h.ErrorRate < 0.5 || h.Version != "v2" {
		t.Errorf("health after bad deploy = %d %+v %v", code, h, err)
	}
	if code, _ := call(t, "POST", f.URL()+"/deployments/payments/rollback", ""); code != 200 {
		t.Fatalf("rollback = %d", code)
	}
	code, h, err = getHealth(t, st.HealthURL)
	if err != nil || code != 200 || h.Version != "v1" || h.ErrorRate != 0 {
		t.Errorf("health after rollback = %d %+v %v", code, h, err)
	}
	if code, _ := call(t, "GET", st.URL+"/", ""); code != 200 {
		t.Errorf("GET / after rollback = %d", code)
	}
	// Nothing left to roll back to.
	if code, _ := call(t, "POST", f.URL()+"/deployments/payments/rollback", ""); code != 409 {
		t.Errorf("second rollback = %d, want 409", code)
	}
}

func TestMemoryLeakGrowsBoundedUntilRestart(t *testing.T) {
	f := startFleet(t)
	st, _ := f.Service("search")
	base := int64(32 << 20)
	if code, _ := call(t, "POST", f.URL()+"/faults/search", `{"type":"memory_leak"}`); code != 200 {
		t.Fatalf("inject = %d", code)
	}
	var last int64
	eventually(t, 5*time.Second, "leak to reach its cap", func() bool {
		_, h, err := getHealth(t, st.HealthURL)
		if err != nil {
			t.Fatal(err)
		}
		if h.MemoryBytes < last {
			t.Fatalf("memory shrank during leak: %d -> %d", last, h.MemoryBytes)
		}
		if h.MemoryBytes > base+4<<20 {
			t.Fatalf("memory %d above cap %d", h.MemoryBytes, base+4<<20)
		}
		last = h.MemoryBytes
		return h.MemoryBytes == base+4<<20
	})
	if code, _ := call(t, "POST", f.URL()+"/services/search/restart", ""); code != 200 {
		t.Fatal("restart failed")
	}
	if _, h, _ := getHealth(t, st.HealthURL); h.MemoryBytes != base {
		t.Errorf("after restart memory = %d, want %d", h.MemoryBytes, base)
	}
}

func TestCacheMissLowersHitRatioAndSlowsUntilWarm(t *testing.T) {
	f := startFleet(t)
	st, _ := f.Service("inventory")
	if code, _ := call(t, "POST", f.URL()+"/faults/inventory", `{"type":"cache_miss"}`); code != 200 {
		t.Fatalf("inject = %d", code)
	}
	_, h, _ := getHealth(t, st.HealthURL)
	if h.CacheHitRatio > 0.05 {
		t.Errorf("hit ratio after cache_miss = %v, want about 0", h.CacheHitRatio)
	}
	start := time.Now()
	code, body := call(t, "GET", st.URL+"/?key=42", "")
	if code != 200 || body["cache"] != "miss" || time.Since(start) < 30*time.Millisecond {
		t.Errorf("GET / on cold cache = %d %v in %v, want a slow miss", code, body, time.Since(start))
	}
	if _, body := call(t, "GET", st.URL+"/?key=42", ""); body["cache"] != "hit" {
		t.Errorf("second GET = %v, want hit (misses fill the cache)", body)
	}
	if code, _ := call(t, "POST", f.URL()+"/caches/inventory/warm", ""); code != 200 {
		t.Fatal("warm failed")
	}
	if _, h, _ := getHealth(t, st.HealthURL); h.CacheHitRatio != 1 {
		t.Errorf("after warm hit ratio = %v", h.CacheHitRatio)
	}
}

func TestControlAPIActionsAndErrors(t *testing.T) {
	f := startFleet(t)
	tests := []struct {
		name, method, path, body string
		want                     int
	}{
		{"scale", "POST", "/services/checkout/scale", `{"replicas":5}`, 200},
		{"scale out of range", "POST", "/services/checkout/scale", `{"replicas":500}`, 400},
		{"scale no body", "POST", "/services/checkout/scale", ``, 400},
		{"deploy", "POST", "/deployments/search", `{"version":"v7"}`, 200},
		{"deploy bad body", "POST", "/deployments/search", `{"v":1}`, 400},
		{"unknown fault", "POST", "/faults/checkout", `{"type":"meteor"}`, 400},
		{"fault unknown service", "POST", "/faults/nope", `{"type":"cache_miss"}`, 404},
		{"clear without fault", "DELETE", "/faults/checkout", ``, 200},
		{"restart unknown", "POST", "/services/nope/restart", ``, 404},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if code, body := call(t, tc.method, f.URL()+tc.path, tc.body); code != tc.want {
				t.Errorf("%s %s = %d %v, want %d", tc.method, tc.path, code, body, tc.want)
			}
		})
	}
	if st, _ := f.Service("checkout"); st.Replicas != 5 {
		t.Errorf("replicas = %d", st.Replicas)
	}
	if st, _ := f.Service("search"); st.Version != "v7" || st.Previous != "v1" {
		t.Errorf("deploy: %+v", st)
	}
}

func TestClearFaultRepairsEachType(t *testing.T) {
	f := startFleet(t)
	for _, typ := range FaultTypes {
		t.Run(typ, func(t *testing.T) {
			if err := f.Inject(typ, "checkout"); err != nil {
				t.Fatal(err)
			}
			if code, _ := call(t, "DELETE", f.URL()+"/faults/checkout", ""); code != 200 {
				t.Fatalf("clear = %d", code)
			}
			code, h, err := getHealth(t, f.HealthURL("checkout"))
			if err != nil || code != 200 || h.CacheHitRatio != 1 || h.MemoryBytes != 32<<20 {
				t.Errorf("after clear: %d %+v %v", code, h, err)
			}
			if st, _ := f.Service("checkout"); st.Fault != "" {
				t.Errorf("fault still %q", st.Fault)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"defaults", Config{}, ""},
		{"no tenant", Config{Services: []ServiceConfig{{Name: "a"}}}, "tenant is required"},
		{"duplicate", Config{Services: []ServiceConfig{{Name: "a", Tenant: "t"}, {Name: "a", Tenant: "t"}}}, "duplicate"},
		{"huge leak", Config{LeakMaxBytes: 2 << 30}, "1 GiB"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("Validate() = %v, want %q", err, tc.want)
			}
		})
	}
}

// Behind the proxy, GET /services lists only the calling tenant's services
// (the proxy sets X-Passport-Tenant from the verified passport).
func TestServicesListedPerTenant(t *testing.T) {
	f := startFleet(t)
	cases := []struct {
		tenant string
		want   []string
	}{
		{"acme", []string{"checkout", "payments"}},
		{"globex", []string{"inventory", "search"}},
		{"initech", []string{}},
		{"", []string{"checkout", "inventory", "payments", "search"}},
	}
	for _, tc := range cases {
		req, _ := http.NewRequest("GET", f.URL()+"/services", nil)
		if tc.tenant != "" {
			req.Header.Set(TenantHeader, tc.tenant)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body struct{ Services []Status }
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		got := []string{}
		for _, s := range body.Services {
			got = append(got, s.Name)
		}
		slices.Sort(got)
		if err != nil || resp.StatusCode != 200 || !slices.Equal(got, tc.want) {
			t.Errorf("tenant %q: %d %v %v, want %v", tc.tenant, resp.StatusCode, got, err, tc.want)
		}
	}
}
