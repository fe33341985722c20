package archtest

import (
	"bufio"
	"go/build"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/agentpassport/passport"

// rules reads the "imports" block of docs/architecture.md: package, then
// what it may import ("-" nothing, "*" anything, "internal/*" any helper).
func rules(t *testing.T, root string) map[string][]string {
	t.Helper()
	f, err := os.Open(filepath.Join(root, "docs", "architecture.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]string{}
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "```imports":
			in = true
		case in && line == "```":
			in = false
		case in:
			fields := strings.Fields(line)
			if len(fields) < 2 {
				t.Fatalf("docs/architecture.md: malformed imports line %q", line)
			}
			if fields[1] == "-" {
				fields = fields[:1]
			}
			out[fields[0]] = fields[1:]
		}
	}
	if len(out) == 0 {
		t.Fatal("docs/architecture.md has no imports block")
	}
	return out
}

func allowed(rule []string, imp string) bool {
	for _, r := range rule {
		switch {
		case r == "*", r == imp:
			return true
		case r == "internal/*":
			if strings.HasPrefix(imp, "internal/") && imp != "internal/stack" && imp != "internal/bench" && imp != "internal/assemble" {
				return true
			}
		}
	}
	return false
}

// TestImportsFollowThePackageMap: every package of the module is in the
// map, and imports (outside its tests) only what the map allows it.
func TestImportsFollowThePackageMap(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	rs := rules(t, root)
	seen := map[string]bool{}
	err = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		name := d.Name()
		if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "docs") {
			return filepath.SkipDir
		}
		pkg, err := build.ImportDir(path, 0)
		if err != nil {
			return nil // no Go files here
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		seen[rel] = true
		rule, ok := rs[rel]
		if !ok {
			t.Errorf("%s is not in the package map of docs/architecture.md", rel)
			return nil
		}
		for _, imp := range pkg.Imports {
			if !strings.HasPrefix(imp, module+"/") {
				continue
			}
			own := strings.TrimPrefix(imp, module+"/")
			if !allowed(rule, own) {
				t.Errorf("%s imports %s, which docs/architecture.md does not allow", rel, own)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range slices.Sorted(maps.Keys(rs)) {
		if !seen[p] {
			t.Errorf("docs/architecture.md maps %s, which has no Go files", p)
		}
	}
}

// TestAllowed pins the rule language, so that a map saying "nothing"
// cannot quietly allow everything.
func TestAllowed(t *testing.T) {
	for _, tc := range []struct {
		rule []string
		imp  string
		want bool
	}{
		{nil, "passport", false},
		{[]string{"passport"}, "passport", true},
		{[]string{"passport"}, "authority", false},
		{[]string{"internal/*"}, "internal/redisx", true},
		{[]string{"internal/*"}, "internal/stack", false},
		{[]string{"internal/*"}, "internal/assemble", false},
		{[]string{"internal/*"}, "authority", false},
		{[]string{"*"}, "internal/stack", true},
	} {
		if got := allowed(tc.rule, tc.imp); got != tc.want {
			t.Errorf("allowed(%v, %s) = %v, want %v", tc.rule, tc.imp, got, tc.want)
		}
	}
}
