package agentcall

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/passport"
)

// Credentials is what an agent's credentials file (--credentials) keeps:
// one agent's identity, so that a restarted healer or chaos agent stays
// the same agent (and keeps its reputation).
type Credentials struct {
	Tenant       string `json:"tenant"`
	Type         string `json:"type"`
	ClientID     string `json:"client_id"`
	ClientSecret string `json:"client_secret"`
}

// StoredOrRegistered returns the agent of tenant stored in path, or
// registers a new agent of agentType with admin (and stores it in path
// when path is set). A stored agent the authority no longer knows is
// replaced when admin allows it; any other failure to check it keeps it
// (the authority may be starting). admin may be nil: then only a stored
// agent will do.
func StoredOrRegistered(ctx context.Context, admin *client.Admin, path, tenant, agentType string, log *slog.Logger) (id, secret string, err error) {
	if path != "" {
		c, err := ReadCredentials(path)
		switch {
		case err == nil:
			if c.Tenant != tenant || c.Type != agentType {
				return "", "", fmt.Errorf("--credentials %s holds a %s agent of tenant %s, not a %s agent of tenant %s",
					path, c.Type, c.Tenant, agentType, tenant)
			}
			if admin == nil {
				return c.ClientID, c.ClientSecret, nil
			}
			if _, err := admin.GetAgent(ctx, tenant, c.ClientID); !errors.Is(err, client.ErrNotFound) {
				return c.ClientID, c.ClientSecret, nil
			}
			log.Warn("the stored agent no longer exists; registering a new one", "credentials", path, "id", c.ClientID)
		case !errors.Is(err, fs.ErrNotExist):
			return "", "", fmt.Errorf("--credentials %s: %w", path, err)
		}
	}
	if admin == nil {
		return "", "", fmt.Errorf("no %s credentials: use --data DIR, PASSPORT_CLIENT_ID/PASSPORT_CLIENT_SECRET, "+
			"--credentials FILE, or PASSPORT_ADMIN_TOKEN to register one", agentType)
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	name := fmt.Sprintf("%s-%s-%s", agentType, tenant, hex.EncodeToString(b[:]))
	reg, err := admin.RegisterAgent(ctx, tenant, client.AgentSpec{Name: name, Type: agentType, TrustLevel: passport.TrustHigh})
	if err != nil {
		return "", "", fmt.Errorf("register %s agent: %w", agentType, err)
	}
	log.Info("registered agent", "name", name, "id", reg.ID, "tenant", tenant)
	if path != "" {
		c := Credentials{Tenant: tenant, Type: agentType, ClientID: reg.ClientID, ClientSecret: reg.ClientSecret}
		if err := WriteCredentials(path, c); err != nil {
			return "", "", fmt.Errorf("--credentials %s: %w (agent %s is registered; delete it or fix the file)", path, err, reg.ID)
		}
	}
	return reg.ClientID, reg.ClientSecret, nil
}

// ReadCredentials reads a credentials file.
func ReadCredentials(path string) (Credentials, error) {
	var c Credentials
	b, err := os.ReadFile(path)
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("not a credentials file: %w", err)
	}
	if c.ClientID == "" || c.ClientSecret == "" || c.Tenant == "" || c.Type == "" {
		return c, errors.New("not a credentials file: tenant, type, client_id and client_secret are required")
	}
	return c, nil
}

// writeCredentials writes c to path atomically, readable by its owner only.
func WriteCredentials(path string, c Credentials) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after the rename, a no-op
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
