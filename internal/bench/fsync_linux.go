package main

import (
	"os"
	"syscall"
)

// datasync is fdatasync, the call redis-server makes for its append-only
// file on Linux.
func datasync(f *os.File) error { return syscall.Fdatasync(int(f.Fd())) }
