package audit

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"time"
)

// Errors of witnesses.
var (
	// ErrStatementInvalid means a statement is malformed or its signature
	// does not verify with the key it carries.
	ErrStatementInvalid = errors.New("invalid witness statement")
	// ErrWitnessRefused is matched (errors.Is) by every *WitnessRefusal.
	ErrWitnessRefused = errors.New("witness refused the statement")
)

// Refusal codes of a witness.
const (
	RefusedInvalid      = "invalid"          // malformed, or the signature does not verify
	RefusedUnauthorized = "unauthorized"     // the witness wants a token
	RefusedUnknown      = "unknown_writer"   // not in the witness's trusted keys
	RefusedKey          = "key_mismatch"     // signed with another key than the writer's pinned one
	RefusedStale        = "stale"            // not later than the writer's last statement (a replay)
	RefusedRollback     = "rollback"         // a stream's sealed seq went backwards
	RefusedFork         = "fork"             // a stream's sealed seq with another hash
	RefusedFull         = "too_many_writers" // the witness holds as many writers as it may
)

// WitnessRefusal is a witness's definite no: sending the same statement
// again cannot help.
type WitnessRefusal struct {
	Code   string `json:"code"`
	Detail string `json:"detail"`
}

func (r *WitnessRefusal) Error() string {
	return "witness refused the statement: " + r.Code + ": " + r.Detail
}

// Is makes errors.Is(err, ErrWitnessRefused) true.
func (r *WitnessRefusal) Is(target error) bool { return target == ErrWitnessRefused }

// WitnessedWriter is what a witness holds about one writer: its pinned
// key, its latest statement and, merged over all statements, the last
// sealed head of every stream it has named.
type WitnessedWriter struct {
	Writer     string
	Key        ed25519.PublicKey
	Statements uint64
	// Last is the latest statement, LastReceived when the witness stored
	// it (the witness's clock).
	Last         *Statement
	LastReceived time.Time
	// Closed says the latest statement is a close: the writer stopped
	// cleanly after sealing everything it wrote.
	Closed bool
	// Streams is the latest sealed head per tenant.
	Streams map[string]StreamHead
	// Sealed holds every witnessed head per tenant (seq -> hash), kept
	// only when the log is read for verification.
	Sealed map[string]map[uint64]string

	lastTime time.Time
}

func newWitnessedWriter(writer string, history bool) *WitnessedWriter {
	w := &WitnessedWriter{Writer: writer, Streams: map[string]StreamHead{}}
	if history {
		w.Sealed = map[string]map[uint64]string{}
	}
	return w
}

// check says whether a witness may accept st (signed by pub) after what it
// holds: the writer's pinned key, a later time, and for every stream a seq
// that does not go back and, at the same seq, the same hash. trusted, when
// not nil, is the only source of keys.
func (w *WitnessedWriter) check(st *Statement, pub ed25519.PublicKey, trusted map[string]ed25519.PublicKey) error {
	if trusted != nil {
		k, ok := trusted[st.Writer]
		if !ok {
			return &WitnessRefusal{Code: RefusedUnknown, Detail: fmt.Sprintf("writer %q is not in the witness's trusted keys", st.Writer)}
		}
		if !k.Equal(pub) {
			return &WitnessRefusal{Code: RefusedKey, Detail: fmt.Sprintf("writer %q: signed with a key other than its trusted one", st.Writer)}
		}
	}
	if w.Key != nil && !w.Key.Equal(pub) {
		return &WitnessRefusal{Code: RefusedKey, Detail: fmt.Sprintf("writer %q: signed with a key other than the one pinned by its first statement", st.Writer)}
	}
	t := st.StatementTime()
	if w.Last != nil && !t.After(w.lastTime) {
		return &WitnessRefusal{Code: RefusedStale, Detail: fmt.Sprintf("writer %q: statement time %s is not after the last one, %s (a replay?)", st.Writer, st.Time, w.Last.Time)}
	}
	for _, h := range st.Streams {
		old, ok := w.Streams[h.Tenant]
		switch {
		case !ok:
		case h.Seq < old.Seq:
			return &WitnessRefusal{Code: RefusedRollback, Detail: fmt.Sprintf("writer %q stream %s: sealed seq %d after seq %d (the chain went back: Redis lost or rewrote sealed records)", st.Writer, h.Tenant, h.Seq, old.Seq)}
		case h.Seq == old.Seq && h.Hash != old.Hash:
			return &WitnessRefusal{Code: RefusedFork, Detail: fmt.Sprintf("writer %q stream %s: seq %d sealed with another hash (a forked chain)", st.Writer, h.Tenant, h.Seq)}
		}
	}
	return nil
}

// apply takes st (already checked) into the state.
func (w *WitnessedWriter) apply(st *Statement, pub ed25519.PublicKey, received time.Time) {
	if w.Key == nil {
		w.Key = pub
	}
	w.Statements++
	w.Last = st
	w.lastTime = st.StatementTime()
	w.LastReceived = received
	w.Closed = st.Type == StatementClose
	for _, h := range st.Streams {
		w.Streams[h.Tenant] = h
		if w.Sealed != nil {
			m := w.Sealed[h.Tenant]
			if m == nil {
				m = map[uint64]string{}
				w.Sealed[h.Tenant] = m
			}
			m[h.Seq] = h.Hash
		}
	}
}
