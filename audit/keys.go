package audit

// Redis layout of the audit stream.
//
// Every key of one tenant carries the tenant in a hash tag, so in Redis
// Cluster the stream and its chain heads live in one slot and the Lua
// append (XADD + head update) is a single-slot script.
const (
	// WritersKey is a hash: writer id -> base64 (std) Ed25519 public key.
	// A writer registers with HSETNX, so the first key registered for an id
	// wins and a later process cannot silently replace it.
	WritersKey = "passport:audit:writers"
	// TenantsKey is a set of the tenants that have an audit stream. Writers
	// add to it; verify checks every tenant it lists, so a stream deleted
	// with its heads is still missed. Only a hint (Redis can be rewritten):
	// the witness is the proof.
	TenantsKey = "passport:audit:tenants"
	// FieldRecord is the one field of a stream entry: the record as JSON.
	FieldRecord = "r"
)

// StreamKey is the tenant's audit stream, "passport:{t:<tenant>}:audit".
//
// It must match passport.AuditStreamKey; audit is a
// leaf package and cannot import it, so the format is repeated here and a
// test in the external test package asserts both agree.
func StreamKey(tenant string) string { return "passport:{t:" + tenant + "}:audit" }

// HeadsKey is the hash of chain heads for the tenant's stream: writer id ->
// "<seq>:<hash>" of the writer's last stored record. It is updated in the
// same Lua script as the XADD, so it never disagrees with the stream.
func HeadsKey(tenant string) string { return StreamKey(tenant) + ":heads" }

// TenantFromStreamKey returns the tenant of a stream key, or false.
func TenantFromStreamKey(key string) (string, bool) {
	const pre, suf = "passport:{t:", "}:audit"
	if len(key) <= len(pre)+len(suf) || key[:len(pre)] != pre || key[len(key)-len(suf):] != suf {
		return "", false
	}
	return key[len(pre) : len(key)-len(suf)], true
}
