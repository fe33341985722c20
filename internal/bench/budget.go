package main

import (
	"bytes"
	"fmt"
	"io/fs"
	"testing/fstest"

	"github.com/agentpassport/passport/policies"
)

// The budgeted and unbudgeted cases: the same shape of call (a GET, no
// body, allowed), one that no budget counts (service.list) and one that
// the bench's budget counts (service.get), so the rows show what a
// reservation costs.
const (
	unbudgetedName = "GET, no budget (allow)"
	budgetedName   = "GET, budgeted (allow)"
)

// budgetedLibrary is the embedded library with one budget declared: every
// service.get counted per agent in a one-second window, with a limit no
// run reaches.
func budgetedLibrary() (fs.FS, error) {
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
				return fmt.Errorf("policies/data.yaml: no %q to declare the bench budget in", "budgets: []")
			}
			b = bytes.Replace(b, []byte(none),
				[]byte("\n  budgets:\n    - {name: bench-reads, actions: [service.get], per: agent, limit: 2000000000, window: 1s}\n"), 1)
		}
		out[p] = &fstest.MapFile{Data: b, Mode: 0o444}
		return nil
	})
	return out, err
}
