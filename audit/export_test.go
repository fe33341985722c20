package audit

// RefSeal is the former write path (encode_ref_test.go), for the
// benchmarks of the external test package.
var RefSeal = refSeal

// SetArchiveHook makes a call at each step of an archive pass (write,
// renamed, verified, checkpointed, trimmed); an error stops the pass there.
func SetArchiveHook(a *Archiver, fn func(step, tenant string) error) { a.hook = fn }
