//go:build ignore

// testprogress turns `go test -json ./...` on stdin into one line per
// package as each finishes, with the elapsed time, a line every 30 s of
// silence naming what is still running, and the whole output of every
// package that failed. It exits 1 when any package failed or nothing was
// tested, so `go test -json ... | go run scripts/testprogress.go` fails as
// `go test` would.
//
//	go test -race -json ./... | go run scripts/testprogress.go -expect "about 7 minutes on two cores"
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"
)

type event struct {
	Action     string
	Package    string
	Test       string
	Output     string
	Elapsed    float64
	ImportPath string // build-output and build-fail events
}

func main() {
	expect := flag.String("expect", "", "how long the run usually takes, printed at the start")
	flag.Parse()
	start := time.Now()
	total := countPackages()
	if *expect != "" {
		fmt.Printf("go test: %d packages, %s; a line per package as each finishes\n", total, *expect)
	}

	var (
		mu      sync.Mutex
		running = map[string]time.Time{}
		output  = map[string]*strings.Builder{}
		done    int
		failed  []string
		last    = time.Now()
	)
	module := modulePath()
	short := func(p string) string {
		if s := strings.TrimPrefix(p, module+"/"); s != p {
			return s
		}
		if p == module {
			return "."
		}
		return p
	}
	stamp := func() string {
		return fmt.Sprintf("[%s, %d/%d]", time.Since(start).Round(time.Second), done, total)
	}
	go func() { // a line every 30 s of silence, so the terminal never looks stuck
		for range time.Tick(5 * time.Second) {
			mu.Lock()
			if time.Since(last) >= 30*time.Second {
				names := make([]string, 0, len(running))
				for p := range running {
					names = append(names, short(p))
				}
				slices.Sort(names)
				what := "building the test binaries"
				if len(names) > 0 {
					what = "running " + strings.Join(names, ", ")
				}
				fmt.Printf("  ...   %s %s\n", what, stamp())
				last = time.Now()
			}
			mu.Unlock()
		}
	}()

	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var ev event
		if json.Unmarshal(line, &ev) != nil || (ev.Package == "" && ev.ImportPath == "") {
			fmt.Println(string(line)) // not a test event: show it as go test would
			continue
		}
		pkg := ev.Package
		if pkg == "" { // "example.com/m/p [example.com/m/p.test]" or "example.com/m/p.test"
			pkg, _, _ = strings.Cut(ev.ImportPath, " ")
			pkg = strings.TrimSuffix(pkg, ".test")
		}
		mu.Lock()
		if output[pkg] == nil {
			output[pkg] = &strings.Builder{}
		}
		switch {
		case ev.Action == "start":
			running[pkg] = time.Now()
		case ev.Action == "output" || ev.Action == "build-output":
			output[pkg].WriteString(ev.Output)
		case ev.Test == "" && (ev.Action == "pass" || ev.Action == "fail" || ev.Action == "skip"):
			delete(running, pkg)
			done++
			switch ev.Action {
			case "pass":
				fmt.Printf("  ok    %-28s %6.1fs %s\n", short(pkg), ev.Elapsed, stamp())
			case "skip":
				// no test files: counted, not shown
			case "fail":
				failed = append(failed, short(pkg))
				fmt.Printf("  FAIL  %-28s %6.1fs %s\n%s\n", short(pkg), ev.Elapsed, stamp(), output[pkg].String())
			}
			delete(output, pkg)
			last = time.Now()
		}
		mu.Unlock()
	}
	mu.Lock()
	defer mu.Unlock()
	for pkg, out := range output { // build failures of packages that never ran
		if strings.TrimSpace(out.String()) != "" && !slices.Contains(failed, short(pkg)) {
			failed = append(failed, short(pkg))
			fmt.Printf("  FAIL  %s\n%s\n", short(pkg), out.String())
		}
	}
	elapsed := time.Since(start).Round(time.Second)
	switch {
	case len(failed) > 0:
		fmt.Printf("go test: %d of %d packages FAILED in %s: %s\n", len(failed), done, elapsed, strings.Join(failed, " "))
		os.Exit(1)
	case done == 0:
		fmt.Printf("go test: nothing was tested (see the errors above)\n")
		os.Exit(1)
	}
	fmt.Printf("go test: %d packages ok in %s\n", done, elapsed)
}

func countPackages() int {
	out, err := exec.Command("go", "list", "./...").Output()
	if err != nil {
		return 0
	}
	return strings.Count(string(out), "\n")
}

func modulePath() string {
	out, err := exec.Command("go", "list", "-m").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
