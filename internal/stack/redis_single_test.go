//go:build !cluster

package stack_test

import (
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/internal/redistest"
	"github.com/agentpassport/passport/internal/stack"
)

// testRedis gives cfg a private single redis-server with AOF, stopped when
// the test ends, and returns a client of it for the test's own reads.
// With -tags cluster the tests run on a Cluster (redis_cluster_test.go).
func testRedis(t *testing.T, cfg *stack.Config) redis.UniversalClient {
	t.Helper()
	srv := redistest.Start(t, redistest.Options{AOF: true})
	cfg.RedisURL = srv.URL()
	return srv.Client()
}
