package policy

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
)

// CorruptCache sets the value at path (dotted, below data) in the data
// cache of e's current policy, and nowhere else: a deliberately wrong
// cache, which the differential test must catch. The fast evaluator only.
func CorruptCache(e *Engine, path string, v ast.Value) error {
	p := e.cur.Load()
	if p == nil || p.fast == nil {
		return fmt.Errorf("no fast policy loaded")
	}
	root, err := set(p.fast.data.root, strings.Split(path, "."), v)
	if err != nil {
		return err
	}
	p.fast.data = dataCache{root: root}
	return nil
}

// set returns a copy of obj with v at path (object keys, or array
// indexes); every step on the way must exist.
func set(obj ast.Value, path []string, v ast.Value) (ast.Value, error) {
	var cur *ast.Term
	switch o := obj.(type) {
	case ast.Object:
		cur = o.Get(ast.StringTerm(path[0]))
	case *ast.Array:
		i, err := strconv.Atoi(path[0])
		if err != nil || i < 0 || i >= o.Len() {
			return nil, fmt.Errorf("no index %s", path[0])
		}
		cur = o.Elem(i)
	default:
		return nil, fmt.Errorf("not an object or array at %v", path)
	}
	if cur == nil {
		return nil, fmt.Errorf("no %s", path[0])
	}
	if len(path) > 1 {
		var err error
		if v, err = set(cur.Value, path[1:], v); err != nil {
			return nil, err
		}
	}
	switch o := obj.(type) {
	case ast.Object:
		out := o.Copy()
		out.Insert(ast.StringTerm(path[0]), ast.NewTerm(v))
		return out, nil
	default:
		a := obj.(*ast.Array).Copy()
		i, _ := strconv.Atoi(path[0])
		a.Set(i, ast.NewTerm(v))
		return a, nil
	}
}

// DropCache empties the data cache of e's current policy: every data read
// goes to the store, as without the cache (for BenchmarkDecide/nocache).
func DropCache(e *Engine) {
	if p := e.cur.Load(); p != nil && p.fast != nil {
		p.fast.data = dataCache{}
	}
}

// SetStackGrowth turns the stack growth before each evaluation on or off
// (for the benchmarks that show what it saves), and returns a function
// that restores it.
func SetStackGrowth(on bool) (restore func()) {
	old := growStacks
	growStacks = on
	return func() { growStacks = old }
}

// TamperStage returns a copy of st, from the same load, whose value is
// edit's: a deliberately wrong stage, which the differential test must
// catch.
func TamperStage(st *Stage, edit func(ast.Object) ast.Object) *Stage {
	if st == nil || st.term == nil {
		return st
	}
	obj, ok := st.term.Value.(ast.Object)
	if !ok {
		return st
	}
	return &Stage{load: st.load, term: ast.NewTerm(edit(obj.Copy()))}
}
