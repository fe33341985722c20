package audit

// RefSeal is the former write path (encode_ref_test.go), for the
// benchmarks of the external test package.
var RefSeal = refSeal

// PeakInFlight is the most batches this writer has had in flight at once.
func PeakInFlight(s *Stream) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak
}
