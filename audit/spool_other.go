//go:build !unix

package audit

import (
	"fmt"
	"os"
	"path/filepath"
)

// lockDir creates dir/lock exclusively where flock is not available; a
// lock left by a crash must be removed by hand.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit spool %s: in use or left locked: %w", dir, err)
	}
	return f, nil
}

func unlockDir(f *os.File) {
	name := f.Name()
	_ = f.Close()
	_ = os.Remove(name)
}
