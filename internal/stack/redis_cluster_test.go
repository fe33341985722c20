//go:build cluster

package stack_test

import (
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/internal/stack"
)

// onCluster reports whether the tests run the stack on a Redis Cluster:
// they do when built with -tags cluster (make test-cluster), which keeps
// the three seconds a Cluster takes to start per test out of make test.
const onCluster = true

// testRedis gives cfg a private Redis Cluster (3 primaries, 3 replicas,
// AOF), stopped when the test ends, and returns a client of it for the
// test's own reads.
func testRedis(t *testing.T, cfg *stack.Config) redis.UniversalClient {
	t.Helper()
	c := redistest.StartCluster(t)
	cfg.RedisAddrs = c.Addrs()
	return c.Client()
}
