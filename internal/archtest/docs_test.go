package archtest

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// metric is one Prometheus metric the code declares.
type metric struct {
	name, help, path string
	labels           []string
}

// declaredMetrics parses every non-test Go file under root and returns the
// metrics it declares: the Name of a prometheus.*Opts literal (with its
// Help, and the labels of the *Vec constructor around it) and the first
// argument of prometheus.NewDesc. Parsing, not grepping, so that a
// different layout of the same declaration is still found.
func declaredMetrics(t *testing.T, root string) map[string]metric {
	t.Helper()
	out := map[string]metric{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != root && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if ok {
				if sel, ok := call.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "NewDesc" && len(call.Args) >= 3 {
					if name := stringLit(call.Args[0]); strings.HasPrefix(name, "passport_") {
						out[name] = metric{name: name, help: stringLit(call.Args[1]), labels: stringList(call.Args[2]), path: rel}
					}
				}
				// NewCounterVec(CounterOpts{...}, []string{...}) and the like.
				if len(call.Args) == 2 {
					if m, ok := optsMetric(call.Args[0], rel); ok {
						m.labels = stringList(call.Args[1])
						out[m.name] = m
					}
				}
				return true
			}
			if m, ok := optsMetric(n, rel); ok {
				if _, seen := out[m.name]; !seen {
					out[m.name] = m
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// optsMetric reads a prometheus.*Opts composite literal whose Name is a
// passport_ metric.
func optsMetric(n ast.Node, path string) (metric, bool) {
	lit, ok := n.(*ast.CompositeLit)
	if !ok {
		return metric{}, false
	}
	sel, ok := lit.Type.(*ast.SelectorExpr)
	if !ok || !strings.HasSuffix(sel.Sel.Name, "Opts") {
		return metric{}, false
	}
	m := metric{path: path}
	for _, e := range lit.Elts {
		kv, ok := e.(*ast.KeyValueExpr)
		if !ok {
			continue
		}
		switch k, _ := kv.Key.(*ast.Ident); {
		case k == nil:
		case k.Name == "Name":
			m.name = stringLit(kv.Value)
		case k.Name == "Help":
			m.help = stringLit(kv.Value)
		}
	}
	return m, strings.HasPrefix(m.name, "passport_")
}

func stringLit(e ast.Expr) string {
	if b, ok := e.(*ast.BasicLit); ok && b.Kind == token.STRING {
		s, err := strconv.Unquote(b.Value)
		if err == nil {
			return s
		}
	}
	return ""
}

func stringList(e ast.Expr) []string {
	lit, ok := e.(*ast.CompositeLit)
	if !ok {
		return nil
	}
	var out []string
	for _, el := range lit.Elts {
		out = append(out, stringLit(el))
	}
	return out
}

// TestEveryMetricIsDocumented: every passport_* metric the code declares
// has a row in docs/metrics.md, and every row there names a metric that
// exists, so the page neither lags nor lies.
func TestEveryMetricIsDocumented(t *testing.T) {
	root := filepath.Join("..", "..")
	declared := declaredMetrics(t, root)
	// One metric of each kind of declaration: if the scan misses one, it
	// is out of date and the test would pass on nothing.
	for _, name := range []string{"passport_proxy_requests_total", "passport_tls_certificate_expiry_timestamp_seconds",
		"passport_audit_spool_bytes", "passport_authority_approval_decisions_total", "passport_feed_clients"} {
		if _, ok := declared[name]; !ok {
			t.Errorf("the scan misses %s: it is out of date", name)
		}
	}
	doc, err := os.ReadFile(filepath.Join(root, "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	// A metric's row starts with its name in backquotes.
	rows := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `(passport_[a-z0-9_]+)").FindAllStringSubmatch(string(doc), -1) {
		rows[m[1]] = true
	}
	var missing []string
	for name, m := range declared {
		if !rows[name] {
			missing = append(missing, fmt.Sprintf("| `%s` | %s | %s |   (declared in %s)", name, strings.Join(m.labels, ", "), m.help, m.path))
		}
	}
	slices.Sort(missing)
	for _, row := range missing {
		t.Errorf("docs/metrics.md has no row for this metric:\n%s", row)
	}
	for name := range rows {
		if _, ok := declared[name]; !ok {
			t.Errorf("docs/metrics.md documents %s, which no code declares", name)
		}
	}
}

// TestReadmeFitsOnAScreen: the README is the pitch, the two commands, the
// tour, the commands and links; reference material belongs in docs/.
func TestReadmeFitsOnAScreen(t *testing.T) {
	const limit = 15 * 1024
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > limit {
		t.Fatalf("README.md is %d bytes, over %d: move reference material to docs/", len(b), limit)
	}
	// Every relative link in the README must point at a file that exists.
	for _, m := range regexp.MustCompile(`\]\(([^)#:]+)(?:#[^)]*)?\)`).FindAllStringSubmatch(string(b), -1) {
		if _, err := os.Stat(filepath.Join("..", "..", m[1])); err != nil {
			t.Errorf("README.md links to %s, which does not exist", m[1])
		}
	}
}
