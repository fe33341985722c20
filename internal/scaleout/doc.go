// Package scaleout runs Agent Passport's Redis paths on a real Redis
// Cluster and a real Sentinel set (started by internal/redistest) and
// backs docs/scale-out.md, the survey of every key, multi-key command,
// transaction, script and channel. It holds tests only.
//
// A test that shows a problem not yet fixed is built with the tag
// scaleout_open (go test -tags scaleout_open ./internal/scaleout/ fails)
// until it is fixed; then the tag comes off. None is open today.
package scaleout
