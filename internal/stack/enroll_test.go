package stack_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/stack"
)

// The demo's workload enrolls with a token from the stand-in Kubernetes
// issuer, and anyone holding the token file (as a pod holds its projected
// volume) can do the same with a plain form POST.
func TestEndToEndWorkloadEnrolls(t *testing.T) {
	r := startStack(t, stack.Config{Tenants: []string{"acme", "globex"}, NoRogue: true})
	en := r.demo.Enrolled
	if en == nil || en.Tenant != "acme" || en.AgentID == "" || en.Subject != "system:serviceaccount:acme:inventory" {
		t.Fatalf("demo.json enrolled: %+v", en)
	}
	agent, err := r.admin.GetAgent(context.Background(), "acme", en.AgentID)
	if err != nil {
		t.Fatal(err)
	}
	if agent.Enrollment == nil || agent.Enrollment.Subject != en.Subject || agent.Type != "observer" || agent.TrustLevel != "MEDIUM" {
		t.Fatalf("enrolled agent: %+v", agent)
	}

	tok, err := os.ReadFile(en.TokenFile)
	if err != nil {
		t.Fatal(err)
	}
	form := url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:jwt-bearer"}, "assertion": {string(tok)}}
	resp, err := http.PostForm(r.demo.URLs.Authority+"/oauth2/token", form)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("enroll with the token file: %d %s", resp.StatusCode, body)
	}
	var tr client.TokenResponse
	if err := json.Unmarshal(body, &tr); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, r.demo.URLs.Proxy+"/services", nil)
	req.Header.Set("Authorization", "Bearer "+tr.AccessToken)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "acme") {
		t.Fatalf("list services with the enrolled passport: %d %s", resp.StatusCode, body)
	}
}
