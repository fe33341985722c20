//go:build unix

package policy

import (
	"io/fs"
	"syscall"
)

// openNonBlock makes opening a FIFO return at once instead of waiting for a
// writer.
const openNonBlock = syscall.O_NONBLOCK

// hardLinks is the number of names the file has.
func hardLinks(info fs.FileInfo) uint64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Nlink)
	}
	return 1
}
