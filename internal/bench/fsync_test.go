package main

import (
	"os"
	"testing"
)

func TestProbeFsync(t *testing.T) {
	dir := t.TempDir()
	p, err := probeFsync(dir, 20, 256)
	if err != nil {
		t.Fatal(err)
	}
	if p.n != 20 || p.p50 <= 0 || p.p99 < p.p50 {
		t.Fatalf("probe = %+v: want 20 flushes, 0 < p50 <= p99", p)
	}
	left, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Fatalf("the probe left %d files in its directory", len(left))
	}
	if _, err := probeFsync(dir+"/missing", 1, 1); err == nil {
		t.Fatal("a probe in a missing directory succeeded")
	}
	if _, err := probeFsync(dir, 0, 1); err == nil {
		t.Fatal("a probe of 0 flushes succeeded")
	}
}
