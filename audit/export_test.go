package audit

// RefSeal is the former write path (encode_ref_test.go), for the
// benchmarks of the external test package.
var RefSeal = refSeal

// Flying is how many of the committer's batches are in flight.
func (s *Stream) Flying() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.flying
}

// SetMaxInFlight sets how many batches new writers keep in flight and
// returns a function that restores it.
func SetMaxInFlight(n int) (restore func()) {
	old := maxInFlight
	maxInFlight = n
	return func() { maxInFlight = old }
}

// SetArchiveHook makes a call at each step of an archive pass (write,
// renamed, verified, checkpointed, trimmed); an error stops the pass there.
func SetArchiveHook(a *Archiver, fn func(step, tenant string) error) { a.hook = fn }
