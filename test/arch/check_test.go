package arch

// The checker: a pure function from (module path, import graph, rule) to
// findings. It knows nothing about `go list`; load_test.go builds the real
// graph, selfcheck_test.go builds synthetic ones with planted violations.

import (
	"fmt"
	"slices"
	"strings"
)

// node is one package of the graph, with the field names of `go list -json`.
type node struct {
	Imports      []string // direct imports of the package's non-test files
	TestImports  []string // direct imports of its _test.go files in package foo
	XTestImports []string // direct imports of its _test.go files in package foo_test
}

// graph maps an import path to its package. It holds the module's packages and
// every package they reach, test imports included; a path missing from the map
// (the standard library in synthetic graphs) is a leaf.
type graph map[string]*node

// rule is one arrow the layout forbids. Patterns are package paths relative to
// the module ("tpm", "agent/...", "..." for the whole module), or full import
// paths of other modules, recognised by a dot in their first element
// ("gopkg.in/yaml.v3/..."). A trailing "/..." means the package and everything
// below it. Relative patterns only ever match the module's own packages, so
// "internal/..." does not match the standard library's internal packages.
type rule struct {
	name string
	// from are the packages the rule constrains. Each pattern must match at
	// least one package of the module: a rule about nothing is a stale rule
	// (or a package that moved), and fails rather than passing silently.
	from []string
	// fromExcept are packages matched by from that the rule leaves alone.
	fromExcept []string
	// forbid are the packages from must not depend on, directly or through
	// any chain of imports.
	forbid []string
	// allow are exceptions to forbid, for all files.
	allow []string
	// testAllow are further exceptions for _test.go files only (both package
	// foo and package foo_test). Listing a forbid pattern here makes the ban
	// apply to non-test files only.
	testAllow []string
	why       string
}

// finding is one violation of a rule, or a rule that cannot be applied.
type finding struct {
	rule string
	pkg  string   // the constrained package; "" when the rule itself is at fault
	test bool     // the import chain starts in pkg's _test.go files
	dep  string   // the forbidden package reached
	path []string // pkg (or its test label), then each import down to dep
	msg  string   // set when the rule itself is at fault
	why  string
}

func (f finding) String() string {
	if f.msg != "" {
		return fmt.Sprintf("rule %s: %s", f.rule, f.msg)
	}
	who := f.pkg + " imports"
	if f.test {
		who = "test files of " + f.pkg + " import"
	}
	return fmt.Sprintf("rule %s: %s %s (%s): %s",
		f.rule, who, f.dep, strings.Join(f.path, " → "), f.why)
}

// match reports whether pattern p (see rule) matches import path path.
func match(module, p, path string) bool {
	full := p
	if !external(p) {
		if p == "..." {
			full = module + "/..."
		} else {
			full = module + "/" + p
		}
	}
	if base, ok := strings.CutSuffix(full, "/..."); ok {
		return path == base || strings.HasPrefix(path, base+"/")
	}
	return path == full
}

// external reports whether pattern p names another module's packages.
func external(p string) bool {
	if p == "..." {
		return false
	}
	first, _, _ := strings.Cut(p, "/")
	return strings.Contains(first, ".")
}

// malformed says what is wrong with pattern p, or "".
func malformed(p string) string {
	switch {
	case p == "":
		return "empty pattern"
	case p == "...":
		return ""
	case strings.HasPrefix(p, "/"), strings.HasSuffix(p, "/"), strings.HasPrefix(p, "."):
		return fmt.Sprintf("pattern %q: want a path like agent/server or agent/...", p)
	case strings.Contains(strings.TrimSuffix(p, "/..."), "..."):
		return fmt.Sprintf("pattern %q: ... only as the whole pattern or a trailing /...", p)
	}
	return ""
}

func matchAny(module string, patterns []string, path string) bool {
	return slices.ContainsFunc(patterns, func(p string) bool { return match(module, p, path) })
}

// rel shortens the module's own import paths for messages.
func rel(module, path string) string {
	if r, ok := strings.CutPrefix(path, module+"/"); ok {
		return r
	}
	return path
}

// check applies rule r to every package of the module in g.
func check(module string, g graph, r rule) []finding {
	var out []finding
	fail := func(format string, args ...any) {
		out = append(out, finding{rule: r.name, msg: fmt.Sprintf(format, args...)})
	}
	if len(r.from) == 0 || len(r.forbid) == 0 || r.why == "" {
		fail("needs from, forbid and why")
	}
	for _, ps := range [][]string{r.from, r.fromExcept, r.forbid, r.allow, r.testAllow} {
		for _, p := range ps {
			if m := malformed(p); m != "" {
				fail("%s", m)
			}
		}
	}
	if len(out) > 0 {
		return out
	}

	// The module's packages, sorted for stable output.
	var ours []string
	for path := range g {
		if match(module, "...", path) {
			ours = append(ours, path)
		}
	}
	slices.Sort(ours)

	// Every from pattern must match something: no silent skip.
	for _, p := range r.from {
		if !slices.ContainsFunc(ours, func(path string) bool { return match(module, p, path) }) {
			fail("pattern %s matches no package", p)
		}
	}

	forbidden := func(dep string) bool {
		return matchAny(module, r.forbid, dep) && !matchAny(module, r.allow, dep)
	}
	testForbidden := func(dep string) bool {
		return forbidden(dep) && !matchAny(module, r.testAllow, dep)
	}
	for _, pkg := range ours {
		if !matchAny(module, r.from, pkg) || matchAny(module, r.fromExcept, pkg) {
			continue
		}
		n := g[pkg]
		name := rel(module, pkg)
		report := func(test bool, hits map[string][]string) {
			deps := make([]string, 0, len(hits))
			for dep := range hits {
				deps = append(deps, dep)
			}
			slices.Sort(deps)
			for _, dep := range deps {
				path := hits[dep]
				for i := range path {
					path[i] = rel(module, path[i])
				}
				out = append(out, finding{rule: r.name, pkg: name, test: test,
					dep: rel(module, dep), path: path, why: r.why})
			}
		}
		report(false, reach(g, pkg, []start{{name, n.Imports}}, forbidden))
		// Test files: the closure of their imports. The chain does not go
		// through pkg itself (package foo_test may import foo): pkg's own
		// imports are checked above, against the stricter non-test ban.
		report(true, reach(g, pkg, []start{
			{name + " [test]", n.TestImports},
			{name + "_test", n.XTestImports},
		}, testForbidden))
	}
	return out
}

// start is where a walk begins: a label for the importing files and what
// they import.
type start struct {
	label   string
	imports []string
}

// reach walks the import graph breadth first from starts, never through
// self, and returns each bad package it reaches with the shortest import
// chain to it. It does not walk through a bad package: what lies behind it is
// reported once the first one is gone, so one wrong import is one finding,
// not one per package it drags in.
func reach(g graph, self string, starts []start, bad func(string) bool) map[string][]string {
	hits := map[string][]string{}
	seen := map[string]bool{self: true}
	type item struct {
		pkg  string
		path []string
	}
	var queue []item
	for _, s := range starts {
		for _, imp := range s.imports {
			queue = append(queue, item{imp, []string{s.label, imp}})
		}
	}
	for len(queue) > 0 {
		it := queue[0]
		queue = queue[1:]
		if seen[it.pkg] {
			continue
		}
		seen[it.pkg] = true
		if bad(it.pkg) {
			hits[it.pkg] = it.path
			continue
		}
		if n := g[it.pkg]; n != nil {
			for _, imp := range n.Imports {
				queue = append(queue, item{imp, append(slices.Clip(it.path), imp)})
			}
		}
	}
	return hits
}
