package healer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/passport"
)

// ErrNotFound is returned for an unknown incident.
var ErrNotFound = errors.New("incident not found")

// ErrBadTenant is returned for a tenant name that is not a plain
// identifier.
var ErrBadTenant = errors.New("invalid tenant name")

// ValidTenant reports whether t is an acceptable tenant name
// (passport.ValidTenant: it is spliced into Redis keys inside a hash tag).
func ValidTenant(t string) bool { return passport.ValidTenant(t) }

// Store keeps incidents in Redis, per tenant:
//
//	passport:{t:<tenant>}:incident:<id>  string, the incident JSON with its timeline
//	passport:{t:<tenant>}:incidents      sorted set of ids scored by detection time (ms)
//
// Both keys of a tenant share a hash tag, so the transaction that writes
// them is valid in Redis Cluster.
type Store struct {
	rdb redis.UniversalClient
	// max is how many incidents a tenant keeps; older ones are removed.
	max int64
}

// DefaultMaxIncidents is how many incidents a tenant keeps by default.
const DefaultMaxIncidents = 10000

// NewStore returns a store on rdb keeping at most max incidents per tenant
// (DefaultMaxIncidents when max <= 0).
func NewStore(rdb redis.UniversalClient, max int) *Store {
	if max <= 0 {
		max = DefaultMaxIncidents
	}
	return &Store{rdb: rdb, max: int64(max)}
}

// IncidentKey is the key of one incident.
func IncidentKey(tenant, id string) string { return passport.TenantKey(tenant, "incident", id) }

// IndexKey is the key of a tenant's incident index.
func IndexKey(tenant string) string { return passport.TenantKey(tenant, "incidents") }

// Save writes the incident (creating or replacing it) and indexes it.
func (s *Store) Save(ctx context.Context, in *Incident) error {
	if !ValidTenant(in.Tenant) {
		return ErrBadTenant
	}
	b, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("encode incident %s: %w", in.ID, err)
	}
	idx := IndexKey(in.Tenant)
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, IncidentKey(in.Tenant, in.ID), b, 0)
		p.ZAdd(ctx, idx, redis.Z{Score: float64(in.DetectedAt.UnixMilli()), Member: in.ID})
		return nil
	})
	if err != nil {
		return fmt.Errorf("save incident %s: %w", in.ID, err)
	}
	return s.trim(ctx, in.Tenant)
}

// trim removes the oldest incidents beyond the retention bound.
func (s *Store) trim(ctx context.Context, tenant string) error {
	idx := IndexKey(tenant)
	n, err := s.rdb.ZCard(ctx, idx).Result()
	if err != nil || n <= s.max {
		return err
	}
	old, err := s.rdb.ZPopMin(ctx, idx, n-s.max).Result()
	if err != nil {
		return fmt.Errorf("trim incidents: %w", err)
	}
	keys := make([]string, 0, len(old))
	for _, z := range old {
		keys = append(keys, IncidentKey(tenant, fmt.Sprint(z.Member)))
	}
	return s.rdb.Del(ctx, keys...).Err()
}

// Get returns one incident of a tenant.
func (s *Store) Get(ctx context.Context, tenant, id string) (*Incident, error) {
	if !ValidTenant(tenant) {
		return nil, ErrBadTenant
	}
	b, err := s.rdb.Get(ctx, IncidentKey(tenant, id)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get incident %s: %w", id, err)
	}
	var in Incident
	if err := json.Unmarshal(b, &in); err != nil {
		return nil, fmt.Errorf("decode incident %s: %w", id, err)
	}
	return &in, nil
}

// List returns a tenant's most recent incidents, newest first, at most
// limit (100 when limit <= 0).
func (s *Store) List(ctx context.Context, tenant string, limit int) ([]*Incident, error) {
	if !ValidTenant(tenant) {
		return nil, ErrBadTenant
	}
	if limit <= 0 {
		limit = 100
	}
	ids, err := s.rdb.ZRevRange(ctx, IndexKey(tenant), 0, int64(limit-1)).Result()
	if err != nil {
		return nil, fmt.Errorf("list incidents: %w", err)
	}
	if len(ids) == 0 {
		return []*Incident{}, nil
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = IncidentKey(tenant, id)
	}
	// One slot (the tenant's hash tag), so MGET is valid in a cluster.
	vals, err := s.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, fmt.Errorf("list incidents: %w", err)
	}
	out := make([]*Incident, 0, len(vals))
	for _, v := range vals {
		str, ok := v.(string)
		if !ok {
			continue // trimmed between the two reads
		}
		var in Incident
		if err := json.Unmarshal([]byte(str), &in); err != nil {
			return nil, fmt.Errorf("decode incident: %w", err)
		}
		out = append(out, &in)
	}
	return out, nil
}
