package audit

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

func (s *Stream) trimAll(ctx context.Context) error {
	var errs []error
	for _, t := range s.tenants() {
		// Stream ids are milliseconds of the server holding the stream, so
		// the cut is computed from that server's clock: a skewed local
		// clock (or, on a Cluster, another node's) can never put the cut
		// past the retention checkpoint that is written right after it.
		now, err := streamTime(ctx, s.rdb, StreamKey(t))
		if err != nil {
			errs = append(errs, fmt.Errorf("audit retention: %s: redis time: %w", t, err))
			continue
		}
		before := now.Add(-s.cfg.Retention)
		if err := s.Trim(ctx, t, strconv.FormatInt(before.UnixMilli(), 10)+"-0"); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// streamTime is TIME on the server that holds key: on a Cluster, the
// primary of its slot.
func streamTime(ctx context.Context, rdb redis.UniversalClient, key string) (time.Time, error) {
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		node, err := cc.MasterForKey(ctx, key)
		if err != nil {
			return time.Time{}, err
		}
		return node.Time(ctx).Result()
	}
	return rdb.Time(ctx).Result()
}

// Trim removes the tenant's entries with ids below minID, after writing a
// signed retention checkpoint that anchors every writer's remaining chain,
// so the stream that is left still verifies. The Redis user needs XTRIM.
func (s *Stream) Trim(ctx context.Context, tenant, minID string) error {
	key := StreamKey(tenant)
	// Nothing older than the cut: nothing to do (and no checkpoint, so an
	// idle stream does not grow by one record per run).
	old, err := s.rdb.XRangeN(ctx, key, "-", "("+minID, 1).Result()
	if err != nil {
		return fmt.Errorf("trim %s: %w", key, err)
	}
	if len(old) == 0 {
		return nil
	}
	// Heads first: a writer that appends after this read continues from
	// the head read here, so its anchor stays right.
	heads, err := s.rdb.HGetAll(ctx, HeadsKey(tenant)).Result()
	if err != nil {
		return fmt.Errorf("trim %s: read heads: %w", key, err)
	}
	anchors := map[string]Anchor{}
	for w, v := range heads {
		seq, hash, err := parseHead(v)
		if err != nil {
			return fmt.Errorf("trim %s: %w", key, err)
		}
		anchors[w] = Anchor{Seq: seq, Hash: hash}
	}
	// The first retained record of each writer fixes its anchor.
	firstSeen := map[string]bool{}
	start := minID
	for {
		msgs, err := s.rdb.XRangeN(ctx, key, start, "+", 1000).Result()
		if err != nil {
			return fmt.Errorf("trim %s: scan: %w", key, err)
		}
		for _, m := range msgs {
			rec, _, err := ParseMessage(m)
			if err != nil || firstSeen[rec.Writer] {
				continue
			}
			firstSeen[rec.Writer] = true
			if rec.Seq > 0 {
				anchors[rec.Writer] = Anchor{Seq: rec.Seq - 1, Hash: rec.Prev}
			}
		}
		if len(msgs) < 1000 {
			break
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
	r := s.submit(ctx, &item{rec: &Record{Tenant: tenant}, checkpoint: CheckpointRetention, anchors: anchors, minID: minID})
	if r.err != nil {
		return fmt.Errorf("trim %s: write retention checkpoint: %w", key, r.err)
	}
	n, err := s.rdb.XTrimMinID(ctx, key, minID).Result()
	if err != nil {
		return fmt.Errorf("trim %s: %w", key, err)
	}
	s.log.Info("audit stream trimmed", "stream", key, "min_id", minID, "removed", n)
	return nil
}
