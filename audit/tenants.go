package audit

import (
	"context"
	"sync"
)

// tenantRegistry remembers which tenants this writer has added to
// TenantsKey (Run's ticks and its shutdown).
type tenantRegistry struct {
	mu     sync.Mutex
	done   map[string]bool
	warned bool
}

// registerTenants adds the tenants this writer has sealed a checkpoint in
// to the tenant registry, once each: a stream with a checkpoint exists, so
// the registry never names a tenant that never had one. It is a hint for
// verify (a stream deleted with its heads is still missed); a Redis user
// without SADD on it only loses the hint, logged once.
func (s *Stream) registerTenants(ctx context.Context) {
	r := &s.listed
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done == nil {
		r.done = map[string]bool{}
	}
	var add []any
	var names []string
	for _, t := range s.wit.sealedTenants() {
		if !r.done[t] {
			add, names = append(add, t), append(names, t)
		}
	}
	if len(add) == 0 {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.WriteTimeout)
	defer cancel()
	if err := s.rdb.SAdd(cctx, TenantsKey, add...).Err(); err != nil {
		if !r.warned && ctx.Err() == nil {
			s.log.Warn("audit tenant registry not updated (verify then finds deleted streams only through a witness)", "key", TenantsKey, "err", err)
			r.warned = true
		}
		return
	}
	for _, t := range names {
		r.done[t] = true
	}
}
