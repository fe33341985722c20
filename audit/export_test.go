package audit

// RefSeal is the former write path (encode_ref_test.go), for the
// benchmarks of the external test package.
var RefSeal = refSeal
