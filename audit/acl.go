package audit

// ProxyACLRules are Redis (>= 7.0) ACL rules for the user a proxy connects
// as: it can append audit records (through the compare-and-append script)
// and read what the proxy reads, but it cannot delete, trim or reconfigure:
// no XDEL, XTRIM, DEL, UNLINK, RENAME, FLUSH*, CONFIG SET, no writes to any
// key but the audit stream (XADD), its chain heads (HSET) and the writers
// hash (HSETNX: register once, never replace), the tenant registry (SADD:
// add, never remove), the live feed's
// single-use connection tickets (SET, GETDEL), DPoP proofs' replay
// records and the proxies' DPoP nonce secret (SET: package proxy), and the
// approvals and budgets the proxy keeps (package approval, proxy/budget.go:
// hashes, sorted sets and strings under a tenant's approval and budget
// keys). Scripts run with the caller's permissions, so EVAL grants nothing
// beyond these rules. The proxy creates and consumes approvals, so it can
// write them: an approval's state is only as safe as the proxy's Redis
// password (the authority, which approves, needs the same rights).
//
// Use: ACL SETUSER passport-proxy on >PASSWORD <ProxyACLRules>, on every
// node of a Cluster (ACLs are per node) or from an ACL file on each.
//
// One thing no ACL can stop: XADD's own MAXLEN/MINID trimming arguments.
// Trimming that way leaves a chain that starts without a signed retention
// anchor, which `passport audit verify` reports as deleted records.
const ProxyACLRules = "resetkeys resetchannels -@all " +
	"+ping +hello +auth +client|setname +select " +
	// A Cluster client reads the slot map and the commands' key positions.
	"+cluster|slots +cluster|shards +command " +
	"%R~passport:* &passport:revocations " +
	"+get +mget +exists +hget +hmget +hgetall +smembers +sismember +zrange +zrangebyscore +zscore " +
	"+xrange +xrevrange +xread +xlen +subscribe +unsubscribe +config|get +wait " +
	"(~passport:{t:*}:audit* +eval +evalsha) " +
	"(~passport:{t:*}:audit +xadd) " +
	"(~passport:{t:*}:audit:heads +hset) " +
	"(~passport:audit:writers +hsetnx) " +
	"(~passport:audit:tenants +sadd) " +
	"(~passport:feed:ticket:* +set +getdel) " +
	"(~passport:dpop:jti:* ~passport:proxy:dpop_nonce_secret +set) " +
	"+time (~passport:{t:*}:approval:* ~passport:{t:*}:approvals ~passport:{t:*}:approval-call:* ~passport:{t:*}:budget:* " +
	"+eval +evalsha +hset +pexpire +zadd +zrem +zremrangebyscore +zcount +zcard +set)"
