// Package budget reads the budgets a policy declares: how many times an
// action may run in a sliding window, per agent, per resource or per
// tenant. Budgets live in the policy's data at data.passport.budgets, so
// security teams edit them like any policy data:
//
//	passport:
//	  budgets:
//	    - name: restarts-per-service
//	      actions: [service.restart]
//	      per: resource
//	      limit: 3
//	      window: 10m
//
// FromData reads them from a loaded policy's data document; CheckFS checks
// a policy directory's data files and names the file of each problem
// (`passport policy check`). The proxy reserves and the library decides on
// them (docs/approvals.md, "Budgets").
package budget

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"path"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/util"

	"github.com/agentpassport/passport/passport"
)

// Per says whose count a budget keeps.
type Per string

// The counts a budget may keep.
const (
	PerAgent    Per = "agent"    // each agent has its own count
	PerResource Per = "resource" // each resource (service) has its own count, whoever acts
	PerTenant   Per = "tenant"   // the whole tenant shares one count
)

// Path is where budgets are declared in the data document.
var Path = []string{"passport", "budgets"}

// Budget is one declared budget.
type Budget struct {
	// Name identifies the budget: the key of input.budgets and part of its
	// Redis keys. Lowercase letters, digits, '-' and '_', starting with a
	// letter, at most 64 bytes; unique in the policy.
	Name string `json:"name"`
	// Actions the budget counts (passport.ValidAction), at least one.
	Actions []string `json:"actions"`
	// Per is whose count it keeps.
	Per Per `json:"per"`
	// Limit is how many calls the window allows, at least 1.
	Limit int `json:"limit"`
	// Window is the sliding window, a positive Go duration ("10m") of at
	// least a millisecond.
	Window time.Duration `json:"window"`
	// RefundOn5xx gives a forwarded call's unit back when the upstream
	// answered 5xx (the action did not happen, as far as the proxy can
	// tell). Default false: every forwarded call counts.
	RefundOn5xx bool `json:"refund_on_5xx,omitempty"`
}

// Matches reports whether the budget counts action.
func (b Budget) Matches(action string) bool { return slices.Contains(b.Actions, action) }

// MarshalJSON writes the window as a Go duration, as it is declared.
func (b Budget) MarshalJSON() ([]byte, error) {
	type plain Budget
	return json.Marshal(struct {
		plain
		Window string `json:"window"`
	}{plain(b), b.Window.String()})
}

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,63}$`)

// FromData reads the budgets declared in a policy's data document (the
// root, "data"): the list at data.passport.budgets, or none when there is
// none. Every problem is reported, each naming the budget by position and
// name.
func FromData(data map[string]any) ([]Budget, error) {
	var v any = data
	for i, k := range Path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("data.%s: want an object", strings.Join(Path[:i], "."))
		}
		if v, ok = m[k]; !ok {
			return nil, nil
		}
	}
	return Parse(v)
}

// Parse reads the value of data.passport.budgets: a list of budget
// objects, with every problem reported.
func Parse(v any) ([]Budget, error) {
	list, ok := v.([]any)
	if !ok {
		if v == nil {
			return nil, nil
		}
		return nil, errors.New("budgets: want a list of {name, actions, per, limit, window}")
	}
	var errs []error
	out := make([]Budget, 0, len(list))
	seen := map[string]int{}
	for i, item := range list {
		b, err := parseOne(item)
		at := fmt.Sprintf("budgets[%d]", i)
		if b.Name != "" {
			at += " (" + b.Name + ")"
		}
		if err != nil {
			errs = append(errs, prefixed(at, err)...)
			continue
		}
		if j, dup := seen[b.Name]; dup {
			errs = append(errs, fmt.Errorf("%s: name also used by budgets[%d]; names must be unique", at, j))
			continue
		}
		seen[b.Name] = i
		out = append(out, b)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

func parseOne(item any) (Budget, error) {
	m, ok := item.(map[string]any)
	if !ok {
		return Budget{}, errors.New("want an object {name, actions, per, limit, window}")
	}
	var b Budget
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch k {
		case "name", "actions", "per", "limit", "window", "refund_on_5xx":
		default:
			bad("unknown key %q (want name, actions, per, limit, window, refund_on_5xx)", k)
		}
	}
	if s, ok := m["name"].(string); !ok || !nameRE.MatchString(s) {
		bad("name: want lowercase letters, digits, '-' or '_', starting with a letter, at most 64 bytes")
	} else {
		b.Name = s
	}
	if acts, ok := m["actions"].([]any); !ok || len(acts) == 0 {
		bad("actions: want a non-empty list of actions")
	} else {
		for _, a := range acts {
			s, ok := a.(string)
			if !ok || !passport.ValidAction(s) {
				bad("actions: %s is not an action (dotted lowercase, like service.restart)", show(a))
				continue
			}
			if !slices.Contains(b.Actions, s) {
				b.Actions = append(b.Actions, s)
			}
		}
	}
	switch p, _ := m["per"].(string); Per(p) {
	case PerAgent, PerResource, PerTenant:
		b.Per = Per(p)
	default:
		bad("per: %s: want agent, resource or tenant", show(m["per"]))
	}
	if n, ok := integer(m["limit"]); !ok || n < 1 {
		bad("limit: %s: want an integer of at least 1", show(m["limit"]))
	} else {
		b.Limit = n
	}
	if v, ok := m["refund_on_5xx"]; ok {
		if r, isBool := v.(bool); isBool {
			b.RefundOn5xx = r
		} else {
			bad("refund_on_5xx: %s: want true or false", show(v))
		}
	}
	if s, ok := m["window"].(string); !ok {
		bad("window: %s: want a Go duration such as \"10m\"", show(m["window"]))
	} else if d, err := time.ParseDuration(s); err != nil || d < time.Millisecond {
		bad("window: %q: want a positive Go duration of at least 1ms, such as \"10m\"", s)
	} else {
		b.Window = d
	}
	return b, errors.Join(errs...)
}

// prefixed puts prefix before each of the problems err joins, so that
// every line of the report says where it is.
func prefixed(prefix string, err error) []error {
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return []error{fmt.Errorf("%s: %w", prefix, err)}
	}
	var out []error
	for _, e := range j.Unwrap() {
		out = append(out, prefixed(prefix, e)...)
	}
	return out
}

// integer reads a whole number from what a JSON or YAML decoder gives.
func integer(v any) (int, bool) {
	var f float64
	switch n := v.(type) {
	case int:
		return n, true
	case int64:
		f = float64(n)
	case float64:
		f = n
	case json.Number:
		i, err := strconv.ParseInt(string(n), 10, 64)
		if err != nil {
			return 0, false
		}
		f = float64(i)
	default:
		return 0, false
	}
	if f != math.Trunc(f) || f > math.MaxInt32 || f < math.MinInt32 {
		return 0, false
	}
	return int(f), true
}

// show renders a value read from a data file for an error message,
// bounded.
func show(v any) string {
	if v == nil {
		return "missing"
	}
	b, err := json.Marshal(v)
	if err != nil || len(b) > 64 {
		return fmt.Sprintf("a %T", v)
	}
	return string(b)
}

// isDataFile reports whether the proxy loads name as data: a .json, .yaml
// or .yml file whose name does not start with a dot (proxy/policy).
func isDataFile(name string) bool {
	switch path.Ext(name) {
	case ".json", ".yaml", ".yml":
		return !strings.HasPrefix(path.Base(name), ".")
	}
	return false
}

// CheckFS checks the budgets declared in a policy directory's data files,
// read as OPA reads them (a file in a subdirectory lands under that
// directory's path), and names the file of every problem. It returns the
// budgets when there is none.
func CheckFS(fsys fs.FS) ([]Budget, error) {
	var (
		out  []Budget
		errs []error
		from string
	)
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != "." && strings.HasPrefix(d.Name(), ".") {
				return fs.SkipDir
			}
			return nil
		}
		if !isDataFile(p) {
			return nil
		}
		raw, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		var doc any
		if err := util.Unmarshal(raw, &doc); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p, err))
			return nil
		}
		// The file's document sits at its directory's path under data.
		prefix := []string{}
		if dir := path.Dir(p); dir != "." {
			prefix = strings.Split(dir, "/")
		}
		v, found, deeper := locate(doc, prefix)
		switch {
		case deeper:
			errs = append(errs, fmt.Errorf("%s: lies under data.%s: budgets must be one list, not a folder", p, strings.Join(Path, ".")))
		case found:
			list, err := Parse(v)
			if err != nil {
				errs = append(errs, prefixed(p, err)...)
				return nil
			}
			if from != "" && len(list) > 0 {
				errs = append(errs, fmt.Errorf("%s: declares budgets, and so does %s: declare them in one file", p, from))
				return nil
			}
			if len(list) > 0 {
				out, from = list, p
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read policy data: %w", err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// locate finds data.passport.budgets in a file whose document sits at
// prefix under data: found when the file declares it, deeper when the
// file sits inside it.
func locate(doc any, prefix []string) (v any, found, deeper bool) {
	if len(prefix) >= len(Path) {
		return nil, false, slices.Equal(prefix[:len(Path)], Path)
	}
	if !slices.Equal(prefix, Path[:len(prefix)]) {
		return nil, false, false
	}
	v = doc
	for _, k := range Path[len(prefix):] {
		m, ok := v.(map[string]any)
		if !ok {
			return nil, false, false
		}
		if v, ok = m[k]; !ok {
			return nil, false, false
		}
	}
	return v, true, false
}
