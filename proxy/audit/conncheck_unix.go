//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package audit

import (
	"errors"
	"net"
	"syscall"
)

// connCheck reports whether an idle connection was closed by the server
// (a Redis restart, an idle timeout) without blocking: a peek that finds
// end-of-file or unexpected data means the connection is unusable. Only
// called while nothing is read from the connection.
func connCheck(nc net.Conn) error {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil // e.g. TLS: the first write or read will tell
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var sysErr error
	err = raw.Read(func(fd uintptr) bool {
		var buf [1]byte
		n, _, rerr := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case n == 0 && rerr == nil:
			sysErr = errors.New("audit connection closed by the server")
		case n > 0:
			sysErr = errors.New("audit connection: unexpected data")
		case errors.Is(rerr, syscall.EAGAIN), errors.Is(rerr, syscall.EWOULDBLOCK):
			sysErr = nil
		default:
			sysErr = rerr
		}
		return true
	})
	if err != nil {
		return err
	}
	return sysErr
}
