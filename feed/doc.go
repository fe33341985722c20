// Package feed is the live feed of Agent Passport: a WebSocket endpoint
// that streams one tenant's audit events (decisions, incidents, reputation
// changes, blocks, chaos) as JSON, read from the tenant's Redis audit
// stream, so any instance serves every event whichever process wrote it.
//
// # Connecting
//
// A browser first trades its operator token for a ticket, then opens the
// socket with it (the token never appears in a URL; see auth.go for why):
//
//	POST /v1/feed/ticket            Authorization: Bearer <operator token>
//	     {"tenant":"acme"}       → 201 {"ticket":"…","tenant":"acme","expires_in":30}
//	GET  /v1/feed?ticket=<ticket>&tail=500          (WebSocket upgrade)
//
// A non-browser client may instead send Authorization: Bearer on the
// upgrade request itself, with tenant=<tenant>.
//
// Query parameters of GET /v1/feed:
//
//	since=<stream id>   replay every entry after this id, then go live
//	                    ("0" replays the whole stream)
//	tail=<n>            replay the last n entries (n ≤ max_tail), then go live
//	                    (neither: live only)
//	types=a,b           event types (default: decision, refusals, incident,
//	                    reputation, agent_blocked, agent_unblocked, chaos,
//	                    approval_requested, approval_approved, approval_denied;
//	                    also outcome, revocation on request)
//	agent=<id>[,<id>]   only events about these agents
//	decision=deny[,…]   only decision/outcome/refusals events with these decisions
//	                    (other types are not affected)
//
// Refusals are plain HTTP problem documents before the upgrade: 400 bad
// parameter, 401 missing/invalid/used ticket or token, 403 Origin not
// allowed or tenant out of the credential's scope, 503 store unavailable.
//
// # Event schema, version 1
//
// Every text message carries one or more events, one JSON object per line
// (newline-delimited; JSON encoding never puts a raw newline inside an
// object), so a busy feed costs one frame per batch, not per event. Each
// event is:
//
//	{
//	  "v": 1,                       schema version
//	  "id": "1732567000000-0",      stream id: resume with since=<id>
//	  "type": "decision",           decision | outcome | refusals | incident |
//	                                reputation | agent_blocked | agent_unblocked |
//	                                revocation | chaos | approval_requested |
//	                                approval_approved | approval_denied | live
//	  "tenant": "acme",
//	  "time": "2026-11-25T20:00:00.123Z",  when the record was written
//	  "agent_id", "agent_name", "agent_type", "trust_level", "reputation",
//	  "request_id", "task_id",
//	  "chain": [{"id","name"},..], "subject"   a delegated call (RFC 8693): every
//	                                agent of the chain, root first, the acting
//	                                agent last; subject is the root
//	  "method", "path", "route", "action", "resource",       (requests)
//	  "decision": "allow|deny|error", "reasons": [..], "policy_revision",
//	  "status", "latency_ms",                                  (outcome)
//	  "details": {..},              payload of non-request kinds, as written:
//	      incident: {"id","type","target","state":"DETECTED|DISPATCHED|RESOLVED|ESCALATED",
//	                 "injected_at" (when announced),"detected_at","dispatched_at","resolved_at",
//	                 "resolution_ms" (from detection),"time_to_resolve_ms" (from injection,
//	                 else detection),"attempts","timeline":[{"state","at","note"}]}
//	      chaos: {"id","type","target","action":"inject|clear","injected_at"}
//	      reputation: {"agent_id","score","previous","outcome","trust_level"}
//	      agent_blocked: {"agent_id","reason","cause"}
//	      approval_approved, approval_denied: {"approval_id","approver","comment",
//	                 "via","state","approvals","required_approvers"} (docs/approvals.md)
//	      refusals: {"reason","count","first","last","first_request_id",
//	                 "last_request_id","source","outage"}: refused calls of
//	                 one source, reason and second, counted in one event
//	                 (calls without a valid passport, and every refusal
//	                 while the audit store is degraded)
//	  "writer", "seq"               the audit chain position, to cross-check
//	                                with passport audit verify
//	}
//
// Empty fields are omitted. For reputation and agent_(un)blocked events
// agent_id is lifted from details. The policy input and the passport id
// (jti) of a record are not sent. Within version 1 fields may be added,
// never removed or changed in meaning.
//
// After the requested replay the server sends one control message
// {"v":1,"type":"live","tenant":"acme","last_id":"…"} (no "id"): from then
// on events arrive as they are written. Events are sent in stream order,
// each exactly once per connection; a client that remembers the last "id"
// it saw and reconnects with since=<id> misses nothing and sees nothing
// twice.
//
// # Close codes
//
//	1001 server shutting down          reconnect (to another instance) with since
//	1008 credential revoked            sign in again; do not retry with the same token
//	1013 slow consumer / store down    reconnect with since (after a pause)
//
// # Robustness
//
// Each followed tenant's stream is read once per instance, however many
// connections follow it, by one audit.Tail for all tenants (one XREAD BLOCK
// over every stream; a poll on a Cluster), and each event is encoded once. Every connection has a bounded buffer
// (send_buffer events) and its own writer goroutine; the fan-out never
// blocks. A connection whose buffer is full leaves the live fan-out: its
// writer sends what is queued, then reads the rest from the stream itself
// at its own pace (the stream is the buffer) and rejoins, so a hiccup costs
// latency, not events, and memory stays bounded by send_buffer. One that has
// not caught up within lag_timeout is dropped with 1013 "slow consumer". A
// peer that stops reading entirely is cut after write_wait. The server
// pings every ping_interval and drops a peer silent for pong_wait.
//
// # Revocation
//
// Open connections re-check their credential (Auth.Check) every
// recheck_interval, at once on every message of the authority's
// revocation channel (passport:revocations) and whenever the host calls
// Hub.Recheck (after reloading its tokens); a revoked credential's
// connections close with 1008. Hub.CloseCredential closes them without
// asking Auth.
//
// Measured (BenchmarkFeedLoad, 100 clients, 2,000 events/s for 10 s, on a
// shared 2-core machine): 2,000,000 deliveries in 10.4 s, every client got
// every event in order, peak heap 39 MiB, end-to-end lag mean 125 ms.
package feed
