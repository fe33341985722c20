package fleet

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/agentpassport/passport/internal/tlstest"
	"github.com/agentpassport/passport/internal/tlsx"
)

func TestFleetServesTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "fleet CA")
	leaf := ca.Server("127.0.0.1")
	f, err := New(Config{Listen: "127.0.0.1:0", TLS: tlsx.Server{CertFile: leaf.CertFile, KeyFile: leaf.KeyFile}},
		Deps{Logger: testLogger(t)})
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
	hc, err := tlsx.HTTPClient(ca.File, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(f.URL(), "https://") {
		t.Fatalf("URL %q", f.URL())
	}
	res, err := hc.Get(f.URL() + "/services")
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Services []Status `json:"services"`
	}
	err = json.NewDecoder(res.Body).Decode(&list)
	res.Body.Close()
	if err != nil || len(list.Services) == 0 {
		t.Fatalf("services: %v %+v", err, list)
	}
	checkout := list.Services[0]
	if !strings.HasPrefix(checkout.HealthURL, "https://") {
		t.Fatalf("health url %q", checkout.HealthURL)
	}
	health := func() int {
		res, err := hc.Get(checkout.HealthURL)
		if err != nil {
			return 0
		}
		res.Body.Close()
		return res.StatusCode
	}
	if st := health(); st != 200 {
		t.Fatalf("health over TLS: %d", st)
	}
	// A service that comes back after service_down serves TLS again.
	post := func(path, body string) int {
		res, err := hc.Post(f.URL()+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	if st := post("/faults/"+checkout.Name, `{"type":"service_down"}`); st/100 != 2 {
		t.Fatalf("inject: %d", st)
	}
	if st := health(); st != 0 {
		t.Fatalf("health of a down service: %d", st)
	}
	if st := post("/services/"+checkout.Name+"/restart", ""); st/100 != 2 {
		t.Fatalf("restart: %d", st)
	}
	if st := health(); st != 200 {
		t.Fatalf("health over TLS after restart: %d", st)
	}
	// Plain HTTP to the control API is not served.
	if res, err := http.Get("http://" + f.Addr() + "/services"); err == nil {
		res.Body.Close()
		if res.StatusCode == 200 {
			t.Fatal("plain HTTP answered by a TLS fleet")
		}
	}
}
