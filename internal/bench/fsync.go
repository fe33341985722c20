package main

// The disk's own flush latency, beside which the full path's p99 with
// appendfsync always is judged: with always, redis-server flushes its
// append-only file before it answers a write, so no write-ahead record can
// be acknowledged faster than the disk flushes (issue 16's target: within
// the disk's fsync p99 + 0.5 ms at 1,000 req/s).

import (
	"fmt"
	"os"
	"slices"
	"time"
)

// fsyncProbe is what the probe measured.
type fsyncProbe struct {
	n        int
	p50, p99 time.Duration
}

// probeFsync appends size bytes to a file in dir and flushes it n times,
// as redis-server does with its append-only file (fdatasync on Linux),
// and returns the flush's latency percentiles. The file is removed.
func probeFsync(dir string, n, size int) (fsyncProbe, error) {
	if n < 1 {
		return fsyncProbe{}, fmt.Errorf("fsync probe: n = %d, want at least 1", n)
	}
	f, err := os.CreateTemp(dir, "fsync-probe-*")
	if err != nil {
		return fsyncProbe{}, fmt.Errorf("fsync probe: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, size)
	took := make([]time.Duration, 0, n)
	for range n {
		if _, err := f.Write(buf); err != nil {
			return fsyncProbe{}, fmt.Errorf("fsync probe: write: %w", err)
		}
		start := time.Now()
		if err := datasync(f); err != nil {
			return fsyncProbe{}, fmt.Errorf("fsync probe: flush: %w", err)
		}
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	return fsyncProbe{n: n, p50: took[(n-1)/2], p99: took[(n-1)*99/100]}, nil
}
