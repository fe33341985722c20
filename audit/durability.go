package audit

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Durability levels, from strongest to weakest.
const (
	DurabilityAlways   = "always"   // AOF on, appendfsync always: an acked record survives a crash
	DurabilityEverysec = "everysec" // AOF on, appendfsync everysec: up to ~1 s of acked records can be lost
	DurabilityNo       = "no"       // AOF on, fsync left to the OS (~30 s on Linux)
	DurabilityOff      = "off"      // no AOF: a crash loses everything since the last RDB snapshot
	DurabilityUnknown  = "unknown"  // CONFIG GET refused (ACL) or failed
)

var durabilityLevels = []string{DurabilityAlways, DurabilityEverysec, DurabilityNo, DurabilityOff, DurabilityUnknown}

// Durability is what the Redis persistence settings promise for an
// acknowledged audit record, as far as this client can see.
type Durability struct {
	Level       string // one of the Durability* constants
	AppendOnly  string // CONFIG GET appendonly, "" if unknown
	AppendFsync string // CONFIG GET appendfsync, "" if unknown
	Err         error  // why the level is unknown
}

// Meets reports whether d is at least as strong as min ("always",
// "everysec", "no", "off" or "" for no requirement). Unknown meets only "".
func (d Durability) Meets(min string) bool {
	rank := map[string]int{DurabilityAlways: 4, DurabilityEverysec: 3, DurabilityNo: 2, DurabilityOff: 1, "": 0}
	want, ok := rank[min]
	if !ok {
		return false
	}
	if want == 0 {
		return true
	}
	return rank[d.Level] >= want
}

// String is a short description for logs and readiness answers.
func (d Durability) String() string {
	if d.Err != nil {
		return fmt.Sprintf("%s (%v)", d.Level, d.Err)
	}
	return fmt.Sprintf("%s (appendonly=%s appendfsync=%s)", d.Level, d.AppendOnly, d.AppendFsync)
}

// CheckDurability asks Redis for its persistence settings with CONFIG GET.
// A Redis user that may not run CONFIG (the recommended proxy ACL allows
// only CONFIG GET; a stricter one denies it) yields DurabilityUnknown, not
// an error: the caller decides whether unknown is acceptable. Replication
// (WAIT) is not visible here and is not counted.
//
// On a Cluster every primary is asked and the weakest answer is the
// level: a record is as durable as the node its tenant lives on.
func CheckDurability(ctx context.Context, rdb redis.UniversalClient) Durability {
	cc, ok := rdb.(*redis.ClusterClient)
	if !ok {
		return checkNode(ctx, rdb)
	}
	var mu sync.Mutex
	var weakest *Durability
	err := cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
		d := checkNode(ctx, node)
		if d.Err != nil {
			d.Err = fmt.Errorf("%s: %w", node.Options().Addr, d.Err)
		}
		mu.Lock()
		defer mu.Unlock()
		if weakest == nil || strength(d.Level) < strength(weakest.Level) {
			weakest = &d
		}
		return nil
	})
	switch {
	case err != nil:
		return Durability{Level: DurabilityUnknown, Err: err}
	case weakest == nil:
		return Durability{Level: DurabilityUnknown, Err: fmt.Errorf("the cluster has no primary")}
	}
	return *weakest
}

// strength ranks a level: the higher, the stronger; unknown is weakest.
func strength(level string) int {
	return map[string]int{DurabilityAlways: 4, DurabilityEverysec: 3, DurabilityNo: 2, DurabilityOff: 1}[level]
}

// checkNode asks one node (or whatever node a client picks).
func checkNode(ctx context.Context, rdb redis.Cmdable) Durability {
	aof, err := configGet(ctx, rdb, "appendonly")
	if err != nil {
		return Durability{Level: DurabilityUnknown, Err: err}
	}
	d := Durability{AppendOnly: aof}
	if !strings.EqualFold(aof, "yes") {
		d.Level = DurabilityOff
		return d
	}
	fs, err := configGet(ctx, rdb, "appendfsync")
	if err != nil {
		return Durability{Level: DurabilityUnknown, AppendOnly: aof, Err: err}
	}
	d.AppendFsync = fs
	switch strings.ToLower(fs) {
	case "always":
		d.Level = DurabilityAlways
	case "everysec":
		d.Level = DurabilityEverysec
	case "no":
		d.Level = DurabilityNo
	default:
		d.Level = DurabilityUnknown
		d.Err = fmt.Errorf("unexpected appendfsync %q", fs)
	}
	return d
}

func configGet(ctx context.Context, rdb redis.Cmdable, name string) (string, error) {
	m, err := rdb.ConfigGet(ctx, name).Result()
	if err != nil {
		return "", fmt.Errorf("config get %s: %w", name, err)
	}
	v, ok := m[name]
	if !ok {
		return "", fmt.Errorf("config get %s: no value", name)
	}
	return v, nil
}

// Ready returns an error when the persistence level seen at the last check
// is weaker than min ("" accepts anything), for a readiness endpoint.
func (s *Stream) Ready(min string) error {
	d := s.Durability()
	if d.Meets(min) {
		return nil
	}
	return fmt.Errorf("audit durability %s is weaker than the required %q", d, min)
}
