package healer_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/bcrypt"

	"github.com/agentpassport/passport/authority"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/authority/passport"
	"github.com/agentpassport/passport/chaos"
	"github.com/agentpassport/passport/examples/fleet"
	"github.com/agentpassport/passport/examples/rogue"
	"github.com/agentpassport/passport/healer"
	"github.com/agentpassport/passport/internal/agentcall"
	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/policies"
	"github.com/agentpassport/passport/proxy"
	"github.com/agentpassport/passport/proxy/audit"
)

const stackAdminToken = "healer-stack-admin-token-0123456789"

// TestHealerWithRealStack runs chaos and the healer as agents against the
// real authority, proxy (embedded policies), audit stream and fleet on one
// private redis-server, fires each fault type through the proxy and checks
// that each incident is RESOLVED, that the repair went through the proxy
// (an allow decision record carrying the incident id) and that a passport
// bound to one incident cannot act on another target.
func TestHealerWithRealStack(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	rs := redistest.Start(t, redistest.Options{AOF: true})
	rdb := rs.Client()
	run := func(name string, fn func(context.Context) error) {
		done := make(chan error, 1)
		go func() { done <- fn(ctx) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("%s: %v", name, err)
			}
		})
	}

	stream, err := audit.NewStream(rdb, audit.StreamConfig{}, log, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stream.Close() })
	run("audit", stream.Run)

	// Authority.
	authSrv := httptest.NewUnstartedServer(nil)
	acfg := authority.DefaultConfig()
	acfg.AdminToken = stackAdminToken
	acfg.Clients.BcryptCost = bcrypt.MinCost
	acfg.Issuer = "http://" + authSrv.Listener.Addr().String()
	auth, err := authority.New(acfg, authority.Deps{Redis: rdb, Logger: log, Registry: prometheus.NewRegistry(), Audit: stream})
	if err != nil {
		t.Fatal(err)
	}
	if err := auth.Init(ctx); err != nil {
		t.Fatal(err)
	}
	authSrv.Config.Handler = auth.Handler()
	authSrv.Start()
	t.Cleanup(authSrv.Close)
	admin, err := client.NewAdmin(authSrv.URL, stackAdminToken, client.Options{})
	if err != nil {
		t.Fatal(err)
	}

	// Fleet.
	fl, err := fleet.New(fleet.Config{Listen: "127.0.0.1:0", LeakStepBytes: 16 << 20, LeakMaxBytes: 64 << 20}, fleet.Deps{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	run("fleet", fl.Run)

	// Proxy in front of the fleet's control API.
	pcfg := proxy.Default()
	pcfg.Issuer = acfg.Issuer
	pcfg.AuthorityURL = authSrv.URL
	pcfg.AdminToken = stackAdminToken
	pcfg.Redis.URL = rs.URL()
	// Generous: the race detector on a shared 2-core machine slows Rego.
	pcfg.Policy.Timeout = 2 * time.Second
	pcfg.Upstreams = map[string]proxy.Upstream{"fleet": {URL: fl.URL()}}
	nonProd := false
	pcfg.Routes = []proxy.Route{
		{Match: "GET /services", Action: "service.list", Resource: "*"},
		{Match: "GET /services/{name}", Action: "service.get", Resource: "{name}"},
		{Match: "POST /services/{name}/restart", Action: "service.restart", Resource: "{name}"},
		{Match: "POST /deployments/{name}/rollback", Action: "deployment.rollback", Resource: "{name}"},
		{Match: "POST /caches/{name}/warm", Action: "cache.warm", Resource: "{name}"},
		{Match: "POST /faults/{name}", Action: "chaos.inject", Resource: "{name}", Production: &nonProd, PolicyBody: true},
		{Match: "DELETE /faults/{name}", Action: "chaos.clear", Resource: "{name}", Production: &nonProd},
	}
	px, err := proxy.New(pcfg, proxy.Deps{Redis: rdb, Audit: stream, Logger: log, Registry: prometheus.NewRegistry(), Policies: policies.FS})
	if err != nil {
		t.Fatal(err)
	}
	pln, _ := net.Listen("tcp", "127.0.0.1:0")
	aln, _ := net.Listen("tcp", "127.0.0.1:0")
	run("proxy", func(ctx context.Context) error { return px.Serve(ctx, pln, aln) })
	proxyURL := "http://" + pln.Addr().String()

	// Agents.
	agent := func(name, typ string) (client.Registration, agentcall.AuthorityPassports) {
		reg, err := admin.RegisterAgent(ctx, "acme", client.AgentSpec{Name: name, Type: typ, TrustLevel: passport.TrustHigh})
		if err != nil {
			t.Fatal(err)
		}
		c, err := client.New(authSrv.URL, reg.ClientID, passport.Secret(reg.ClientSecret), client.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return reg, agentcall.AuthorityPassports{Client: c}
	}
	healerReg, healerPP := agent("healer-acme", passport.TypeHealer)
	_, chaosPP := agent("chaos-acme", passport.TypeChaos)

	store := healer.NewStore(rdb, 0)
	var checks []healer.CheckConfig
	for _, st := range fl.Services() {
		if st.Tenant == "acme" {
			checks = append(checks, healer.CheckConfig{Target: st.Name, URL: st.HealthURL})
		}
	}
	h, err := healer.New(healer.Config{Tenant: "acme", ProxyURL: proxyURL, Checks: checks},
		healer.Deps{Logger: log, Passports: healerPP, Store: store, Sink: stream,
			Reputation: agentcall.AdminReputation{Admin: admin, Tenant: "acme", AgentID: healerReg.ID}})
	if err != nil {
		t.Fatal(err)
	}
	run("healer", h.Run)
	ch, err := chaos.New(chaos.Config{Tenant: "acme", ProxyURL: proxyURL}, chaos.Deps{Logger: log, Passports: chaosPP, Sink: stream})
	if err != nil {
		t.Fatal(err)
	}

	targets := map[string]string{chaos.ServiceDown: "checkout", chaos.BadDeploy: "payments", chaos.MemoryLeak: "checkout", chaos.CacheMiss: "payments"}
	for _, typ := range chaos.Types {
		target := targets[typ]
		start := time.Now()
		ev, err := ch.Fire(ctx, typ, target)
		if err != nil {
			t.Fatalf("fire %s: %v", typ, err)
		}
		var in *healer.Incident
		deadline := time.Now().Add(15 * time.Second)
		for in == nil {
			list, err := store.List(ctx, "acme", 3)
			if err != nil {
				t.Fatal(err)
			}
			for _, x := range list {
				if x.Type == typ && x.Target == target && x.DetectedAt.After(start) {
					switch x.State {
					case healer.StateResolved:
						in = x
					case healer.StateEscalated:
						t.Fatalf("%s escalated: %+v", typ, x.Timeline)
					}
				}
			}
			if time.Now().After(deadline) {
				for _, x := range list {
					t.Logf("incident %s %s %s %s %+v", x.ID, x.Type, x.Target, x.State, x.Timeline)
				}
				t.Fatalf("%s on %s: not resolved within 15s", typ, target)
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("%s on %s (chaos %s): RESOLVED %v after the fault, resolution_ms %d", typ, target, ev.ID, in.ResolvedAt.Sub(start).Round(time.Millisecond), in.ResolutionMS)
		if !allowedWithTask(t, rdb, in.ID, in.Action, target) {
			t.Errorf("%s: no allow decision for %s on %s with task %s in the audit stream", typ, in.Action, target, in.ID)
		}
		if st, _ := fl.Service(target); !st.Up || st.Fault != "" {
			t.Errorf("%s: fleet not healthy after: %+v", typ, st)
		}
	}

	// Run mode lists the fleet through the proxy and fires one event at an
	// acme service; the healer repairs it too.
	ev, err := ch.Tick(ctx)
	if err != nil {
		t.Fatalf("chaos tick: %v", err)
	}
	if ev.Target != "checkout" && ev.Target != "payments" {
		t.Errorf("tick hit %q, not an acme service", ev.Target)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		st, _ := fl.Service(ev.Target)
		if st.Up && st.Fault == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tick's %s on %s not repaired: %+v", ev.Type, ev.Target, st)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Chaos and incident records are in the tenant's stream for the feed.
	kinds := map[audit.Kind]int{}
	states := map[string]bool{}
	msgs, err := rdb.XRange(ctx, passport.AuditStreamKey("acme"), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		rec, _, err := audit.ParseMessage(m)
		if err != nil {
			t.Fatalf("audit record: %v", err)
		}
		kinds[rec.Kind]++
		if rec.Kind == audit.KindIncident {
			var d struct {
				State string `json:"state"`
			}
			if err := json.Unmarshal(rec.Details, &d); err != nil {
				t.Fatal(err)
			}
			states[d.State] = true
		}
	}
	if kinds[audit.KindChaos] != 5 || !states[healer.StateDetected] || !states[healer.StateDispatched] || !states[healer.StateResolved] {
		t.Errorf("audit kinds %v, incident states %v", kinds, states)
	}

	// The rogue (a LOW observer trying restarts) is denied, reported by the
	// proxy, blocked by the authority, and never allowed through.
	rogueReg, err := admin.RegisterAgent(ctx, "acme", client.AgentSpec{Name: "rogue-acme", Type: passport.TypeObserver, TrustLevel: passport.TrustLow})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := client.New(authSrv.URL, rogueReg.ClientID, passport.Secret(rogueReg.ClientSecret), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rg, err := rogue.New(rogue.Config{ProxyURL: proxyURL, Interval: 10 * time.Millisecond, MaxInterval: 50 * time.Millisecond, MaxAttempts: 200},
		rogue.Deps{Logger: log, Passports: agentcall.AuthorityPassports{Client: rc}})
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithCancel(ctx)
	rdone := make(chan error, 1)
	go func() { rdone <- rg.Run(rctx) }()
	deadline = time.Now().Add(15 * time.Second)
	for {
		ag, err := admin.GetAgent(ctx, "acme", rogueReg.ID)
		if err != nil {
			t.Fatal(err)
		}
		if ag.Blocked && rg.Stats().Refused > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rogue not blocked: %+v, stats %+v", ag, rg.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	rcancel()
	<-rdone
	if st := rg.Stats(); st.Allowed != 0 || st.Denied == 0 {
		t.Errorf("rogue stats %+v", st)
	}
	t.Logf("rogue: %+v", rg.Stats())

	// A passport bound to one incident cannot act on another target.
	tok, err := healerPP.Passport(ctx, &passport.Task{ID: "inc-scope", Target: "checkout", Actions: []string{"service.restart"}}, []string{"service.restart"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = (&agentcall.Client{BaseURL: proxyURL}).Do(ctx, tok, "POST", "/services/payments/restart", nil)
	if ae, ok := err.(*agentcall.Error); !ok || ae.Resp.Status != 403 {
		t.Errorf("restart of payments with a checkout-bound passport: %v, want 403", err)
	}
}

// allowedWithTask looks for the proxy's allow decision for action on
// target carrying the incident id.
func allowedWithTask(t *testing.T, rdb redis.UniversalClient, taskID, action, target string) bool {
	msgs, err := rdb.XRange(context.Background(), passport.AuditStreamKey("acme"), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		rec, _, err := audit.ParseMessage(m)
		if err != nil {
			continue
		}
		if rec.Kind == audit.KindDecision && rec.Decision == audit.DecisionAllow && rec.TaskID == taskID && rec.Action == action && rec.Resource == target {
			return true
		}
	}
	return false
}
