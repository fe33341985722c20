//go:build cluster

package stack_test

import (
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/internal/stack"
)

// testRedis gives cfg a private Redis Cluster (3 primaries, 3 replicas,
// AOF), stopped when the test ends, and returns a client of it for the
// test's own reads. Only with -tags cluster (make test-cluster): a
// Cluster takes over 2 s to start, per test, which keeps it out of make
// test.
func testRedis(t *testing.T, cfg *stack.Config) redis.UniversalClient {
	t.Helper()
	c := redistest.StartCluster(t)
	cfg.RedisAddrs = c.Addrs()
	return c.Client()
}
