package policies

import (
	"io/fs"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/format"
)

// withoutTests hides *_test.rego files of an fs.FS.
type withoutTests struct{ fsys fs.FS }

func (w withoutTests) Open(name string) (fs.File, error) {
	if IsTestFile(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	f, err := w.fsys.Open(name)
	if err != nil {
		return nil, err
	}
	if d, ok := f.(fs.ReadDirFile); ok {
		return dirWithoutTests{d}, nil
	}
	return f, nil
}

func (w withoutTests) ReadDir(name string) ([]fs.DirEntry, error) {
	entries, err := fs.ReadDir(w.fsys, name)
	if err != nil {
		return nil, err
	}
	return dropTests(entries), nil
}

// dirWithoutTests is a directory of withoutTests.
type dirWithoutTests struct{ fs.ReadDirFile }

func (d dirWithoutTests) ReadDir(n int) ([]fs.DirEntry, error) {
	for {
		entries, err := d.ReadDirFile.ReadDir(n)
		kept := dropTests(entries)
		// A batch made only of test files must not look like the end.
		if len(kept) > 0 || err != nil || n <= 0 || len(entries) == 0 {
			return kept, err
		}
	}
}

func dropTests(entries []fs.DirEntry) []fs.DirEntry {
	out := entries[:0:0]
	for _, e := range entries {
		if !IsTestFile(e.Name()) {
			out = append(out, e)
		}
	}
	return out
}

// dataFinder tells the compiler whether data already holds a document at a
// path, so that a rule and a data document never claim the same path
// (what opa check and opa test do).
func dataFinder(m map[string]any) func([]string) (bool, error) {
	return func(path []string) (bool, error) {
		if len(path) == 0 {
			return false, nil
		}
		node := m
		for _, key := range path {
			v, ok := node[key]
			if !ok {
				return false, nil
			}
			sub, ok := v.(map[string]any)
			if !ok {
				return true, nil
			}
			node = sub
		}
		return true, nil
	}
}

// formatSource formats Rego v1 source as opa fmt does.
func formatSource(name string, src []byte) ([]byte, error) {
	return format.SourceWithOpts(name, src, format.Opts{RegoVersion: ast.RegoV1})
}

var (
	_ fs.ReadDirFS   = withoutTests{}
	_ fs.ReadDirFile = dirWithoutTests{}
)
