package arch

// The loader: the real import graph from two `go list` calls.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strings"
)

// listed is one package of `go list -json` output.
type listed struct {
	ImportPath   string
	Imports      []string
	TestImports  []string
	XTestImports []string
	Deps         []string
	// IgnoredGoFiles are files a build constraint leaves out of the
	// default build, whose imports these rules would not see.
	IgnoredGoFiles []string
	Error          *struct{ Err string }
	DepsErrors     []struct{ Err string }
}

// goList runs `go list -e -json=fields args...` and decodes its stream of
// JSON objects. With -e a broken package (say, an import of a package that
// has just moved) is listed with its Error instead of stopping the listing.
func goList(fields string, args ...string) ([]listed, error) {
	cmd := exec.Command("go", append([]string{"list", "-e", "-json=" + fields}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list %s: %v\n%s", strings.Join(args, " "), err, stderr.Bytes())
	}
	var pkgs []listed
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p listed
		if err := dec.Decode(&p); err == io.EOF {
			return pkgs, nil
		} else if err != nil {
			return nil, fmt.Errorf("go list %s: decoding: %v", strings.Join(args, " "), err)
		}
		pkgs = append(pkgs, p)
	}
}

// load builds the import graph of module: its packages with their non-test,
// test and x-test imports, and every package outside the module that any of
// them reaches, with its own imports, so that check can follow any chain to
// its end. problems are what stops the graph from being the whole truth:
// packages go list could not load, or a package whose import closure in the
// graph differs from the Deps go list computed for it.
//
// Two calls, each a fraction of a second:
//  1. go list -test=false on module/... for ImportPath, Imports, TestImports,
//     XTestImports and Deps. -test=false (the default, spelled out): the
//     module's packages once each, not their test variants; test imports are
//     fields of the package.
//  2. go list -deps on every outside package those import, non-test or test,
//     for ImportPath and Imports. Test-only imports (say a mocking library)
//     are in no package's Deps, which is why call 1 alone is not enough.
func load(module string) (graph, []string, error) {
	ours, err := goList("ImportPath,Imports,TestImports,XTestImports,Deps,IgnoredGoFiles,Error,DepsErrors",
		"-test=false", module+"/...")
	if err != nil {
		return nil, nil, err
	}
	if len(ours) == 0 {
		return nil, nil, fmt.Errorf("go list %s/...: no packages", module)
	}
	g := graph{}
	var problems []string
	noteErrors := func(p listed) {
		if p.Error != nil {
			problems = append(problems, fmt.Sprintf("go list: %s: %s", p.ImportPath, p.Error.Err))
		}
		for _, e := range p.DepsErrors {
			problems = append(problems, fmt.Sprintf("go list: %s: dependency: %s", p.ImportPath, e.Err))
		}
	}
	listedHere := map[string]bool{}
	for _, p := range ours {
		listedHere[p.ImportPath] = true
	}
	outside := map[string]bool{}
	for _, p := range ours {
		noteErrors(p)
		// A file behind a build constraint (a tag, another OS) is not in
		// the default build, and its imports are in no field above.
		for _, f := range p.IgnoredGoFiles {
			problems = append(problems, fmt.Sprintf("graph: %s: %s is left out by a build constraint, so these rules cannot see its imports", p.ImportPath, f))
		}
		g[p.ImportPath] = &node{
			Imports:      cgo(p.Imports),
			TestImports:  cgo(p.TestImports),
			XTestImports: cgo(p.XTestImports),
		}
		for _, imps := range [][]string{p.Imports, p.TestImports, p.XTestImports} {
			for _, imp := range cgo(imps) {
				if !match(module, "...", imp) {
					outside[imp] = true
				} else if !listedHere[imp] {
					// module/... does not list testdata or _-prefixed
					// directories: a package there is a way around the
					// rules, and it is refused as such.
					problems = append(problems, fmt.Sprintf("graph: %s imports %s, which %s/... does not list (testdata or _ directory): the rules cannot see it", p.ImportPath, imp, module))
					outside[imp] = true
				}
			}
		}
	}
	if len(outside) > 0 {
		args := []string{"-deps"}
		for imp := range outside {
			args = append(args, imp)
		}
		slices.Sort(args[1:])
		theirs, err := goList("ImportPath,Imports,Error,DepsErrors", args...)
		if err != nil {
			return nil, nil, err
		}
		for _, p := range theirs {
			noteErrors(p)
			if g[p.ImportPath] == nil {
				g[p.ImportPath] = &node{Imports: cgo(p.Imports)}
			}
		}
	}

	// Cross-check: for each of our packages, the closure of Imports through
	// the graph must be exactly go list's Deps. If it is not, the graph is
	// missing edges and the checker would be blind to them.
	for _, p := range ours {
		got := closureOf(g, p.Imports)
		want := map[string]bool{}
		for _, d := range p.Deps {
			want[d] = true
		}
		for d := range want {
			if !got[d] {
				problems = append(problems, fmt.Sprintf("graph: %s: go list Deps has %s, the import closure does not", p.ImportPath, d))
			}
		}
		for d := range got {
			if !want[d] {
				problems = append(problems, fmt.Sprintf("graph: %s: the import closure has %s, go list Deps does not", p.ImportPath, d))
			}
		}
	}
	slices.Sort(problems)
	return g, problems, nil
}

// closureOf is the set of packages reachable from imports in g.
func closureOf(g graph, imports []string) map[string]bool {
	seen := map[string]bool{}
	stack := slices.Clone(imports)
	for len(stack) > 0 {
		p := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[p] {
			continue
		}
		seen[p] = true
		if n := g[p]; n != nil {
			stack = append(stack, n.Imports...)
		}
	}
	return seen
}

// cgo replaces the pseudo-import "C" with runtime/cgo, the package the go
// command links into every package that imports "C" (and lists in its Deps).
func cgo(imports []string) []string {
	i := slices.Index(imports, "C")
	if i < 0 {
		return imports
	}
	out := slices.Clone(imports)
	out[i] = "runtime/cgo"
	return out
}
