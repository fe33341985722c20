package passport

// SplitCompact splits a compact JWS into header, payload and signature the
// way the passport verifier does: base64url characters only, no padding,
// no empty part, exactly two dots. Other verifiers of this module (such as
// the authority's check of external workload tokens) use it so that every
// JWS is read by one rule.
func SplitCompact(tok string) (header, payload, signature string, ok bool) {
	p, ok := splitCompact(tok)
	return p[0], p[1], p[2], ok
}
