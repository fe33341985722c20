package policy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"path"
	"slices"
	"strings"
	"testing/fstest"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/loader"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
)

// Files is a policy as read from its files. Load is the one loader of
// policies: the engine, `passport policy test|check` (package policies)
// and the replay tool read a policy only through it, so what the tests
// and the checks pass is what gets enforced.
type Files struct {
	// Modules are the parsed Rego files (Rego v1, annotations
	// processed), by path inside the policy.
	Modules map[string]*ast.Module
	// Data is the merged content of every .json, .yaml and .yml file,
	// rooted at data; a file in a subdirectory lands under that
	// directory's path, as with `opa test DIR`.
	Data map[string]any
	// Revision is a hash of the names and contents of the files read:
	// it changes exactly when what would be compiled changes.
	Revision string
}

// IsTestFile reports whether name is a Rego test file (*_test.rego).
func IsTestFile(name string) bool { return strings.HasSuffix(path.Base(name), "_test.rego") }

// IsPolicyFile reports whether name is part of a policy: a Rego file or a
// data file (.json, .yaml, .yml). Tests are policy files too; Load leaves
// them out unless asked.
func IsPolicyFile(name string) bool {
	switch path.Ext(name) {
	case ".rego", ".json", ".yaml", ".yml":
		return true
	}
	return false
}

// Load reads the policy of fsys as `opa test` reads a directory: every
// .rego file (the *_test.rego ones only when tests is set) and every data
// file, recursively. Hidden files and directories (editors, version
// control, a ConfigMap's internals) and any other file are left out and
// never opened. A directory on disk is read with ReadDir first.
func Load(fsys fs.FS, tests bool) (*Files, error) {
	contents := fstest.MapFS{}
	var names []string
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != "." && strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if d.IsDir() || !IsPolicyFile(p) || !tests && IsTestFile(p) {
			return nil
		}
		b, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		contents[p] = &fstest.MapFile{Data: b, Mode: 0o444}
		names = append(names, p)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read policy files: %w", err)
	}
	if !slices.ContainsFunc(names, func(n string) bool { return path.Ext(n) == ".rego" }) {
		return nil, errors.New("no .rego files")
	}
	slices.Sort(names)
	// The loader reads the copy just taken, so the revision is the hash of
	// exactly what is parsed.
	res, err := loader.NewFileLoader().
		WithFS(contents).
		WithRegoVersion(ast.RegoV1).
		WithProcessAnnotation(true).
		All([]string{"."})
	if err != nil {
		return nil, err // loader errors name file and line
	}
	data := res.Documents
	if data == nil {
		data = map[string]any{}
	}
	return &Files{Modules: res.ParsedModules(), Data: data, Revision: revisionOf(contents, names)}, nil
}

// revisionOf hashes names and contents.
func revisionOf(contents fstest.MapFS, names []string) string {
	h := sha256.New()
	for _, n := range names {
		fmt.Fprintf(h, "%s\x00%d\x00", n, len(contents[n].Data))
		h.Write(contents[n].Data)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// sortedModules returns the modules in path order.
func (f *Files) sortedModules() []*ast.Module {
	out := make([]*ast.Module, 0, len(f.Modules))
	for _, k := range slices.Sorted(maps.Keys(f.Modules)) {
		out = append(out, f.Modules[k])
	}
	return out
}

// LoadTimeAnnotation is the key, under an annotation's custom section, by
// which a policy declares a load-time document: a rule that reads data
// only, which the engine evaluates once per load and stores as a base
// document at the path given, where the decision rules read it instead of
// evaluating the rule again on every call:
//
//	# METADATA
//	# custom:
//	#   load_time: data.passport.loaded.clearances
//	clearances := {...}
//
// The engine knows no rule or path of the library: it evaluates whatever
// the policy declares.
const LoadTimeAnnotation = "load_time"

// LoadTimeDocument is a load-time document a policy declares.
type LoadTimeDocument struct {
	// Rule is the annotated rule, e.g. data.passport.authz.clearances.
	Rule ast.Ref
	// Path is where its value is stored, e.g. data.passport.loaded.clearances.
	Path ast.Ref
	// Location is the annotation's.
	Location *ast.Location
}

// LoadTimeDocuments returns the load-time documents the modules declare
// (LoadTimeAnnotation), by path. A declaration must annotate a rule that
// is not a function, and name a path of data (data.a.b, string keys only,
// not under data.system) that no other declaration names, contains or is
// contained in.
func (f *Files) LoadTimeDocuments() ([]LoadTimeDocument, error) {
	as, errs := ast.BuildAnnotationSet(f.sortedModules())
	if len(errs) > 0 {
		return nil, errs
	}
	var docs []LoadTimeDocument
	for _, a := range as.Flatten() {
		v, ok := a.Annotations.Custom[LoadTimeAnnotation]
		if !ok {
			continue
		}
		loc := a.Annotations.Location
		rule := a.GetRule()
		if rule == nil || a.Annotations.Scope != "rule" {
			return nil, fmt.Errorf("%v: %s annotates a rule (scope rule), not a %s", loc, LoadTimeAnnotation, a.Annotations.Scope)
		}
		if len(rule.Head.Args) > 0 {
			return nil, fmt.Errorf("%v: %s annotates a function; a load-time document is a rule without arguments", loc, LoadTimeAnnotation)
		}
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("%v: %s: want a path of data such as data.x.y, got %v", loc, LoadTimeAnnotation, v)
		}
		p, err := dataPath(s)
		if err != nil {
			return nil, fmt.Errorf("%v: %s: %w", loc, LoadTimeAnnotation, err)
		}
		docs = append(docs, LoadTimeDocument{Rule: a.Path, Path: p, Location: loc})
	}
	slices.SortFunc(docs, func(a, b LoadTimeDocument) int { return a.Path.Compare(b.Path) })
	for i := 1; i < len(docs); i++ {
		if docs[i].Path.HasPrefix(docs[i-1].Path) {
			return nil, fmt.Errorf("%v: %s: %v overlaps %v, declared at %v", docs[i].Location, LoadTimeAnnotation,
				docs[i].Path, docs[i-1].Path, docs[i-1].Location)
		}
	}
	return docs, nil
}

// dataPath parses a path of data below its root: data.a.b, string keys.
func dataPath(s string) (ast.Ref, error) {
	r, err := ast.ParseRef(s)
	if err != nil || len(r) < 2 || !r[0].Equal(ast.DefaultRootDocument) {
		return nil, fmt.Errorf("%q is not a path of data such as data.x.y", s)
	}
	for _, t := range r[1:] {
		if _, ok := t.Value.(ast.String); !ok {
			return nil, fmt.Errorf("%q is not a path of data such as data.x.y (string keys only)", s)
		}
	}
	if r[1].Equal(ast.InternedTerm(string(ast.SystemDocumentKey))) {
		return nil, fmt.Errorf("%q is under data.system, which OPA keeps for itself", s)
	}
	return r, nil
}

// loadTimeTimeout bounds the evaluation of the load-time documents: a rule
// that takes longer fails the load, and the last good policy stays.
const loadTimeTimeout = 10 * time.Second

// EngineData returns a copy of the policy's data as the engine holds it:
// with the value of each load-time document (LoadTimeDocuments) stored at
// its path. Each is evaluated over the data files alone, without input
// and without the other load-time documents; one that is undefined stores
// nothing. Data that already holds a declared path, or an evaluation
// error, fails the load. caps nil means this OPA version's capabilities.
func (f *Files) EngineData(ctx context.Context, caps *ast.Capabilities) (map[string]any, error) {
	decls, err := f.LoadTimeDocuments()
	if err != nil {
		return nil, err
	}
	data, err := copyData(f.Data)
	if err != nil {
		return nil, err
	}
	if len(decls) == 0 {
		return data, nil
	}
	if caps == nil {
		caps = ast.CapabilitiesForThisVersion()
	}
	ctx, cancel := context.WithTimeout(ctx, loadTimeTimeout)
	defer cancel()
	modules := f.sortedModules()
	values := make([]any, len(decls))
	for i, d := range decls {
		if taken(data, d.Path) {
			return nil, fmt.Errorf("%v is reserved for the value of %v (declared at %v)", d.Path, d.Rule, d.Location)
		}
		opts := []func(*rego.Rego){
			rego.Query(d.Rule.String()),
			rego.Capabilities(caps),
			rego.StrictBuiltinErrors(true),
			rego.SetRegoVersion(ast.RegoV1),
			rego.Store(inmem.NewFromObject(f.Data)),
		}
		for _, m := range modules {
			opts = append(opts, rego.ParsedModule(m))
		}
		rs, err := rego.New(opts...).Eval(ctx)
		if err != nil {
			return nil, fmt.Errorf("evaluate %v: %w", d.Rule, err)
		}
		if len(rs) == 1 && len(rs[0].Expressions) == 1 {
			values[i] = rs[0].Expressions[0].Value
		}
	}
	for i, d := range decls {
		if values[i] == nil {
			continue // undefined: nothing is stored
		}
		parent := data
		for _, k := range d.Path[1 : len(d.Path)-1] {
			key := string(k.Value.(ast.String))
			next, ok := parent[key].(map[string]any)
			if !ok {
				next = map[string]any{}
				parent[key] = next
			}
			parent = next
		}
		parent[string(d.Path[len(d.Path)-1].Value.(ast.String))] = values[i]
	}
	return data, nil
}

// copyData is a deep copy of data, as JSON would give it.
func copyData(data map[string]any) (map[string]any, error) {
	b, err := json.Marshal(data)
	if err != nil {
		return nil, fmt.Errorf("policy data: %w", err)
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("policy data: %w", err)
	}
	if out == nil {
		out = map[string]any{}
	}
	return out, nil
}

// taken reports whether data has a value at p (a path of data), or a value
// that is not an object on the way to it.
func taken(data map[string]any, p ast.Ref) bool {
	cur := data
	for i, t := range p[1:] {
		v, ok := cur[string(t.Value.(ast.String))]
		if !ok {
			return false
		}
		if i == len(p)-2 {
			return true
		}
		if cur, ok = v.(map[string]any); !ok {
			return true
		}
	}
	return false
}
