package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/internal/agentcall"
)

// --credentials keeps an agent's identity across restarts: the first start
// registers and writes the file, later starts reuse it, and a stored agent
// the authority no longer knows is replaced.
func TestAgentCredentialsFile(t *testing.T) {
	authURL := startAuthority(t)
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	path := filepath.Join(t.TempDir(), "healer.json")
	env := map[string]string{"PASSPORT_ADMIN_TOKEN": cliAdminToken}
	a := &app{getenv: func(k string) string { return env[k] }, stdout: io.Discard, stderr: io.Discard}
	opts := agentOpts{authority: authURL, tenant: "acme", credentials: path}
	admin, err := client.NewAdmin(authURL, cliAdminToken, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	agents := func() []string {
		list, err := admin.ListAgents(ctx, "acme")
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, ag := range list {
			ids = append(ids, ag.ID)
		}
		return ids
	}

	first, err := a.agentEnv(ctx, opts, "healer", "", "", log)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("credentials file: %v %v, want mode 0600", st, err)
	}
	var stored agentcall.Credentials
	b, _ := os.ReadFile(path)
	if err := json.Unmarshal(b, &stored); err != nil || stored.ClientID != first.clientID || stored.Type != "healer" || stored.Tenant != "acme" {
		t.Fatalf("stored %+v %v, registered %s", stored, err, first.clientID)
	}
	if _, err := first.passports.Passport(ctx, nil, []string{"service.list"}); err != nil {
		t.Fatalf("passport with the stored agent: %v", err)
	}

	again, err := a.agentEnv(ctx, opts, "healer", "", "", log)
	if err != nil || again.clientID != first.clientID {
		t.Fatalf("restart: %v, agent %s, want the stored %s", err, again.clientID, first.clientID)
	}
	if ids := agents(); len(ids) != 1 {
		t.Fatalf("agents after a restart: %v, want only the stored one", ids)
	}

	// Without the admin token the file alone is enough; the environment
	// can name it too.
	env = map[string]string{"PASSPORT_CREDENTIALS_FILE": path}
	byEnv := opts
	byEnv.credentials = ""
	if s, err := a.agentEnv(ctx, byEnv, "healer", "", "", log); err != nil || s.clientID != first.clientID {
		t.Fatalf("without admin token, file from PASSPORT_CREDENTIALS_FILE: %v %v", s, err)
	}
	env = map[string]string{"PASSPORT_ADMIN_TOKEN": cliAdminToken}

	// The stored agent is deleted: a new one replaces it, in the file too.
	if err := admin.DeleteAgent(ctx, "acme", first.clientID); err != nil {
		t.Fatal(err)
	}
	next, err := a.agentEnv(ctx, opts, "healer", "", "", log)
	if err != nil || next.clientID == first.clientID {
		t.Fatalf("after deletion: %v, agent %s", err, next.clientID)
	}
	if c, err := agentcall.ReadCredentials(path); err != nil || c.ClientID != next.clientID {
		t.Fatalf("file after re-registration: %+v %v", c, err)
	}

	// Refusals name the file and say why.
	cases := []struct {
		name, content, typ, want string
		env                      map[string]string
	}{
		{"another type", "", "chaos", "holds a healer agent of tenant acme, not a chaos agent", env},
		{"not JSON", "client_id=x", "healer", "not a credentials file", env},
		{"incomplete", `{"client_id":"x"}`, "healer", "are required", env},
		{"missing, no admin token", "-", "healer", "--credentials FILE, or PASSPORT_ADMIN_TOKEN", map[string]string{}},
	}
	for _, tc := range cases {
		p := path
		if tc.content == "-" {
			p = filepath.Join(t.TempDir(), "absent.json")
		} else if tc.content != "" {
			p = filepath.Join(t.TempDir(), "bad.json")
			if err := os.WriteFile(p, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		env = tc.env
		o := opts
		o.credentials = p
		_, err := a.agentEnv(ctx, o, tc.typ, "", "", log)
		if err == nil || !strings.Contains(err.Error(), tc.want) || (tc.content != "-" && !strings.Contains(err.Error(), p)) {
			t.Errorf("%s: err = %v, want %q naming %s", tc.name, err, tc.want, p)
		}
	}
}
