package e2e

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// module is the import path every package of ours starts with.
const module = "github.com/switchboard-iot/switchboard"

// layers says, for each package (by path below the module; a trailing
// "/..." covers the folders below), which of our packages it may import:
// the picture in the README, kept true. A package's rule is the one that
// names it, else the first folder rule that covers it; a package that matches none fails the test, so a new
// folder takes a place in the picture when it is made. Tests are free to
// import the harness (app/testsys) and test kits: only the packages'
// own imports are checked.
var layers = []layer{
	{"internal/...", []string{"internal/..."}, "leaves: import no tier and no program"},
	{"device/protocol", []string{"internal/..."}, "the frame codec"},
	{"device", []string{"device/protocol", "internal/..."}, "the Go device SDK"},
	{"device/examples/...", []string{"device"}, "programs written with the Go SDK, as its users write them: its public API only"},
	{"db", []string{"device/protocol", "internal/..."}, "the storage tier"},
	{"db/dbtest", []string{"db", "internal/..."}, "a database per test"},
	{"edge", []string{"db", "device/protocol", "internal/..."}, "the HTTP API: not the console, not the nodes"},
	{"console", []string{"db", "device/protocol", "internal/..."}, "the web console: not the API"},
	{"conn-tier", []string{"db", "device/protocol", "internal/..."}, "the connection nodes: not the edge"},
	{"maintenance", []string{"db", "internal/..."}, "the edges' background work"},
	{"app/sim/...", []string{"device", "device/protocol", "internal/..."}, "simulated devices and load, as clients"},
	{"app/...", []string{"..."}, "the composition root, its command line and its test harness"},
	{"app", []string{"db", "edge", "console", "conn-tier", "maintenance", "device/protocol", "internal/..."}, "wires the tiers"},
	{"", []string{"app/cli"}, "main"},
	{"e2e", nil, "system tests (test files only)"},
	{"scripts/...", []string{"app/sim/...", "internal/..."}, "the scripts' programs"},
}

type layer struct {
	pkg   string   // a package, or a folder and those below it ("app/...")
	may   []string // what it may import, in the same words
	about string
}

// layerOf returns the rule of the package at rel: the one that names it,
// else the first folder rule that covers it.
func layerOf(rel string) (layer, bool) {
	for _, l := range layers {
		if l.pkg == rel {
			return l, true
		}
	}
	for _, l := range layers {
		if strings.HasSuffix(l.pkg, "/...") && matches(l.pkg, rel) {
			return l, true
		}
	}
	return layer{}, false
}

// matches reports whether the package at rel (below the module) is named
// by pattern.
func matches(pattern, rel string) bool {
	switch {
	case pattern == "...":
		return true
	case strings.HasSuffix(pattern, "/..."):
		base := strings.TrimSuffix(pattern, "/...")
		return rel == base || strings.HasPrefix(rel, base+"/")
	}
	return rel == pattern
}

// TestLayers fails when a package imports one of ours that its layer may
// not: a leaf under internal/ that reaches up into a tier, the edge that
// imports the console, one tier that imports another.
func TestLayers(t *testing.T) {
	out, err := exec.Command("go", "list", "-json=ImportPath,Imports", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	seen := 0
	for dec.More() {
		var p struct {
			ImportPath string
			Imports    []string
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		seen++
		rel := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		rule, ok := layerOf(rel)
		if !ok {
			t.Errorf("package %q has no place in the layers: add it to the table in layers_test.go (and to the README's map)", rel)
			continue
		}
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, module+"/") && imp != module {
				continue
			}
			dep := strings.TrimPrefix(strings.TrimPrefix(imp, module), "/")
			if !slices.ContainsFunc(rule.may, func(pattern string) bool { return matches(pattern, dep) }) {
				t.Errorf("%s imports %s: %s (%s) may import only %v", orRoot(rel), dep, orRoot(rule.pkg), rule.about, rule.may)
			}
		}
	}
	if seen < 20 {
		t.Fatalf("go list named %d packages: the check read too little", seen)
	}
}

func orRoot(rel string) string {
	if rel == "" {
		return "the root package"
	}
	return rel
}
