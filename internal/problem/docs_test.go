package problem

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// codePatterns find the problem codes the project writes: arguments of
// problem.Answer and of the authority's writeProblem, code fields of
// problem documents, the proxy's refusals (and its upstream errors) and
// the dashboard's, and the witness's refusal codes.
var codePatterns = []*regexp.Regexp{
	regexp.MustCompile(`problem\.Answer\(w, [^,]+, "([a-z_]+)"`),
	regexp.MustCompile(`writeProblem\(w, [^,]+, "([a-z_]+)"`),
	regexp.MustCompile(`\bCode: +(?:or\(code, )?"([a-z_]+)"`),
	regexp.MustCompile(`refusal\{status: [^,]+, code: "([a-z_]+)"`),
	regexp.MustCompile(`status, code, detail :?= [^,]+, "([a-z_]+)"`),
	regexp.MustCompile(`\bRefused[A-Za-z]+ += "([a-z_]+)"`),
}

// TestEveryCodeHasItsEntry: every problem's type URI names its code's
// entry in docs/problems.md, so every code written must have one.
func TestEveryCodeHasItsEntry(t *testing.T) {
	root := filepath.Join("..", "..")
	doc, err := os.ReadFile(filepath.Join(root, "docs", "problems.md"))
	if err != nil {
		t.Fatal(err)
	}
	entries := map[string]bool{}
	for _, line := range strings.Split(string(doc), "\n") {
		if code, ok := strings.CutPrefix(line, "### "); ok {
			entries[code] = true
		}
	}
	// Only packages that answer problems (a package with a file that
	// imports this one, and the witness's refusal codes): the pattern for
	// code fields would match unrelated structs elsewhere.
	sources := map[string]string{}
	answering := map[string]bool{}
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) && path != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		sources[path] = string(b)
		if strings.Contains(string(b), `"github.com/agentpassport/passport/internal/problem"`) ||
			filepath.Base(path) == "witnessstate.go" {
			answering[filepath.Dir(path)] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]string{}
	for path, src := range sources {
		if !answering[filepath.Dir(path)] {
			continue
		}
		for _, re := range codePatterns {
			for _, m := range re.FindAllStringSubmatch(src, -1) {
				found[m[1]] = path
			}
		}
	}
	// One code of each writer: if the scan misses one, its patterns are
	// out of date and the test would pass on nothing.
	for _, code := range []string{"policy_denied", "bad_path", "upstream_timeout", "agent_not_found", "invalid_filter", "action_failed",
		"incident_not_found", "fork"} {
		if _, ok := found[code]; !ok {
			t.Errorf("the scan misses %q: its patterns are out of date", code)
		}
	}
	// The proxy's 401 codes come from the verifier's errors (RFC 6750).
	found["passport_required"], found["invalid_token"] = "proxy/answer.go", "passport/verify.go"
	for code, path := range found {
		if !entries[code] {
			t.Errorf("%s writes problem code %q, which has no entry (### %s) in docs/problems.md", path, code, code)
		}
	}
}
