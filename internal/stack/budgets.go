package stack

import (
	"bytes"
	"fmt"
	"io/fs"
	"testing/fstest"

	"github.com/agentpassport/passport/policies"
)

// demoLibrary is the embedded policy library, with the budget
// restarts-per-service declared in its data when restarts > 0: the demo's
// brake on a healer caught in a restart loop. The library escalates that
// budget to a person (budget_escalations in policies/data.yaml).
func demoLibrary(restarts int) (fs.FS, error) {
	if restarts <= 0 {
		return policies.FS, nil
	}
	out := fstest.MapFS{}
	err := fs.WalkDir(policies.FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(policies.FS, p)
		if err != nil {
			return err
		}
		if p == "data.yaml" {
			const none = "\n  budgets: []\n"
			if !bytes.Contains(b, []byte(none)) {
				return fmt.Errorf("policies/data.yaml: no %q to declare the demo's budget in", "budgets: []")
			}
			b = bytes.Replace(b, []byte(none), fmt.Appendf(nil, "\n  budgets:\n    - {name: restarts-per-service, actions: [service.restart], per: resource, limit: %d, window: 10m}\n", restarts), 1)
		}
		out[p] = &fstest.MapFile{Data: b, Mode: 0o444}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("demo policy library: %w", err)
	}
	return out, nil
}
