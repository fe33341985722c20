package proxy

import (
	"net/http"
	"sync/atomic"
	"time"

	"github.com/agentpassport/passport/audit"
)

// A passport's claims go into the audit stream once (a passport record)
// and every decision references them (audit/passport.go). The reference
// lives with the verified passport in the verification cache: a passport
// verified again is recorded again, which costs one record and is never
// wrong.

// passportRefTTL is how long one passport record serves a passport's
// decisions before the passport is recorded again, so that a reference
// never reaches back further than this (retention trims by time).
const passportRefTTL = 10 * time.Minute

// passportRef is the recorded reference of a verified passport. Every
// call of the passport reads it without a lock; only recording takes one.
type passportRef struct {
	lock chan struct{} // one recording at a time; waiters honour their context
	cur  atomic.Pointer[recordedRef]
}

// recordedRef is one passport record: its stream id, the claims' digest,
// and when it was written.
type recordedRef struct {
	id, digest string
	at         time.Time
}

func (rr *recordedRef) fresh(now time.Time) bool {
	return rr != nil && now.Sub(rr.at) < passportRefTTL
}

// referencePassport fills rec's passport reference, recording the passport
// first when its record is missing or old, and leaves the passport out of
// in's JSON. When the passport cannot be recorded (the audit store is
// down, the claims are too large for one record), the decision keeps the
// claims inline, as before: referencing is an economy, never a new way to
// fail.
func (p *Proxy) referencePassport(r *http.Request, c *call, vp *Verified) (id, digest string) {
	pj := vp.payloadJSON()
	if len(pj) == 0 || len(pj) > audit.DefaultMaxJSON {
		return "", ""
	}
	ref := &vp.ref
	if rr := ref.cur.Load(); rr.fresh(c.now) {
		return rr.id, rr.digest
	}
	select {
	case ref.lock <- struct{}{}:
	case <-r.Context().Done():
		return "", ""
	}
	defer func() { <-ref.lock }()
	if rr := ref.cur.Load(); rr.fresh(c.now) {
		return rr.id, rr.digest // recorded while this call waited
	}
	digest, err := audit.PassportDigest(pj)
	if err != nil {
		return "", ""
	}
	cl := vp.Claims
	rc, err := p.audit.Append(r.Context(), audit.PassportRecord(cl.Tenant, cl.Agent.ID, cl.ID, pj, c.now))
	if err != nil {
		p.m.auditFailures.WithLabelValues("passport").Inc()
		p.log.WarnContext(r.Context(), "passport record not written; the decision keeps the claims inline",
			"request_id", c.id, "tenant", cl.Tenant, "error", err)
		return "", ""
	}
	ref.cur.Store(&recordedRef{id: rc.ID(), digest: digest, at: c.now})
	p.m.passportRecords.Inc()
	return rc.ID(), digest
}
