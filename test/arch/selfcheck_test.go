package arch

// A test of the test: the rules and the checker on synthetic graphs. A clean
// graph of the target layout must give no finding; each planted violation must
// be found. Without this, a checker that sees nothing (say, one that ignores
// test imports, or skips a rule whose packages moved) would pass for a clean
// tree.

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
)

// fake is the synthetic graphs' module path: the rules are relative to the
// module, so they must hold for any module path.
const fake = "example.com/fake"

// spec is one package of a synthetic graph: space-separated imports of its
// non-test files, of its package foo test files and of its package foo_test
// files. Paths are relative to the module unless they name another module (a
// dot in the first element). The standard library is left out: no rule is
// about it, and a path missing from the graph is a leaf.
type spec struct{ imports, test, xtest string }

// target is the layout the rules describe, clean, with the imports the rules
// allow but that look close to a violation (commented).
func target() map[string]*spec {
	return map[string]*spec{
		"internal/strictjson":       {},
		"internal/pemblock":         {},
		"catalog":                   {imports: "internal/strictjson"},
		"keywrap":                   {xtest: "keywrap"},
		"tpm/swtpm":                 {},
		"tpm":                       {imports: "tpm/swtpm github.com/google/go-tpm/tpm2", xtest: "tpm test/swtpmtest"}, // the harness in tests
		"tpm/keyfile":               {imports: "tpm internal/pemblock", xtest: "tpm/keyfile test/swtpmtest"},
		"tpm/objcache":              {imports: "tpm", test: "test/swtpmtest"},
		"test/swtpmtest":            {imports: "tpm tpm/swtpm"},
		"policy":                    {imports: "internal/strictjson catalog", xtest: "policy tpm test/swtpmtest"}, // a real TPM in tests
		"api":                       {imports: "firmware", xtest: "api"},
		"firmware":                  {imports: "policy catalog internal/strictjson"},
		"fwhook":                    {imports: "api firmware attest catalog policy store tpm", xtest: "fwhook test/swtpmtest"},
		"audit":                     {imports: "internal/strictjson"},
		"store":                     {imports: "internal/strictjson", test: "audit"},
		"attest":                    {imports: "api policy catalog", xtest: "attest tpm test/swtpmtest"}, // evidence from a TPM in tests
		"attest/fleetapi":           {},
		"attest/fleet":              {imports: "attest attest/fleetapi api audit store github.com/jackc/pgx/v5/stdlib"},
		"officer":                   {imports: "api catalog policy"},
		"test/officertest":          {imports: "officer api policy"},
		"agent":                     {imports: "api audit store catalog officer policy tpm tpm/keyfile tpm/objcache", test: "test/swtpmtest test/officertest"},
		"agent/client":              {imports: "api", test: "api gopkg.in/yaml.v3", xtest: "agent/client"}, // yaml in tests, foo_test imports foo
		"agent/server":              {imports: "agent api gopkg.in/yaml.v3", xtest: "agent/server agent/client test/swtpmtest"},
		"agent/tpmkey":              {imports: "agent"},
		"systemd":                   {imports: "github.com/coreos/go-systemd/v22/daemon"},
		"cmd/provd/cli":             {imports: "agent agent/client agent/server attest/fleetapi systemd github.com/spf13/cobra", xtest: "cmd/provd/cli cmd/provd/cli/fleetserver attest/fleet"}, // the endpoint in tests
		"cmd/provd/cli/fleetserver": {imports: "cmd/provd/cli attest/fleet github.com/spf13/cobra/doc"},
		"cmd/provd":                 {imports: "cmd/provd/cli", test: "cmd/provd/cli test/swtpmtest"}, // cmd may import cmd
		"cmd/provd-fleet":           {imports: "cmd/provd/cli cmd/provd/cli/fleetserver"},
		"test/arch":                 {},
		// Other modules.
		"github.com/spf13/cobra":                  {imports: "github.com/spf13/pflag"},
		"github.com/spf13/cobra/doc":              {imports: "github.com/spf13/cobra"},
		"github.com/spf13/pflag":                  {},
		"github.com/coreos/go-systemd/v22/daemon": {},
		"github.com/google/go-tpm/tpm2":           {},
		"github.com/jackc/pgx/v5/stdlib":          {},
		"gopkg.in/yaml.v3":                        {},
		"example.org/helper":                      {},
	}
}

// build turns specs into a graph of full import paths.
func build(specs map[string]*spec) graph {
	full := func(s string) []string {
		var out []string
		for _, p := range strings.Fields(s) {
			if !external(p) {
				p = fake + "/" + p
			}
			out = append(out, p)
		}
		return out
	}
	g := graph{}
	for path, s := range specs {
		if !external(path) {
			path = fake + "/" + path
		}
		g[path] = &node{Imports: full(s.imports), TestImports: full(s.test), XTestImports: full(s.xtest)}
	}
	return g
}

// checkAll applies rs to g.
func checkAll(g graph, rs []rule) []finding {
	var out []finding
	for _, r := range rs {
		out = append(out, check(fake, g, r)...)
	}
	return out
}

// key is a finding in the short form the cases below spell out.
func key(f finding) string {
	switch {
	case f.msg != "":
		return f.rule + ": " + f.msg
	case f.test:
		return fmt.Sprintf("%s: test files of %s import %s", f.rule, f.pkg, f.dep)
	}
	return fmt.Sprintf("%s: %s imports %s", f.rule, f.pkg, f.dep)
}

func TestCleanTargetLayoutPasses(t *testing.T) {
	for _, f := range checkAll(build(target()), rules) {
		t.Errorf("clean graph: %s", f)
	}
}

func TestPlantedViolationsAreFound(t *testing.T) {
	add := func(field *string, imps string) { *field = strings.TrimSpace(*field + " " + imps) }
	for _, tc := range []struct {
		name  string
		plant func(map[string]*spec)
		to    string   // the planted import's target: on every finding's chain
		want  []string // findings that must be among those reported
	}{{
		name:  "tpm imports agent",
		plant: func(s map[string]*spec) { add(&s["tpm"].imports, "agent") },
		to:    "agent",
		want: []string{
			"tpm-stands-alone: tpm imports agent",
			"tpm-stands-alone: tpm/keyfile imports agent", // through tpm
			"policy-is-offline: test files of policy import agent",
			"attest-is-pure: test files of attest import agent",
		},
	}, {
		name:  "tpm test imports policy",
		plant: func(s map[string]*spec) { add(&s["tpm"].xtest, "policy") },
		to:    "policy",
		want:  []string{"tpm-stands-alone: test files of tpm import policy"},
	}, {
		name:  "agent/client test file imports agent/server",
		plant: func(s map[string]*spec) { add(&s["agent/client"].test, "agent/server") },
		to:    "agent/server",
		want:  []string{"client-without-server: test files of agent/client import agent/server"},
	}, {
		name:  "agent/client imports yaml through another package",
		plant: func(s map[string]*spec) { add(&s["api"].imports, "gopkg.in/yaml.v3") },
		to:    "gopkg.in/yaml.v3",
		want: []string{
			"client-without-yaml: agent/client imports gopkg.in/yaml.v3", // via api
			"api-is-the-wire-contract: api imports gopkg.in/yaml.v3",
		},
	}, {
		name:  "attest test imports agent",
		plant: func(s map[string]*spec) { add(&s["attest"].xtest, "agent") },
		to:    "agent",
		want:  []string{"attest-is-pure: test files of attest import agent"},
	}, {
		name:  "attest/fleet imports tpm/keyfile",
		plant: func(s map[string]*spec) { add(&s["attest/fleet"].imports, "tpm/keyfile") },
		to:    "tpm/keyfile",
		want:  []string{"attest-is-pure: attest/fleet imports tpm/keyfile"},
	}, {
		name:  "policy imports tpm outside its tests",
		plant: func(s map[string]*spec) { add(&s["policy"].imports, "tpm") },
		to:    "tpm",
		want:  []string{"policy-is-offline: policy imports tpm"},
	}, {
		name:  "store test imports the agent",
		plant: func(s map[string]*spec) { add(&s["store"].test, "agent") },
		to:    "agent",
		want:  []string{"below-the-agent: test files of store import agent"},
	}, {
		name:  "agent/server test imports cmd/provd/cli",
		plant: func(s map[string]*spec) { add(&s["agent/server"].xtest, "cmd/provd/cli") },
		to:    "cmd/provd/cli",
		want: []string{
			"cmd-is-the-top: test files of agent/server import cmd/provd/cli",
			"core-without-cli-or-systemd: test files of agent/server import github.com/spf13/cobra",
			"core-without-cli-or-systemd: test files of agent/server import systemd",
		},
	}, {
		name:  "the device's binary links the endpoint",
		plant: func(s map[string]*spec) { add(&s["cmd/provd/cli"].imports, "attest/fleet") },
		to:    "attest/fleet",
		want: []string{
			"device-binary-without-the-endpoint: cmd/provd/cli imports attest/fleet",
			"device-binary-without-the-endpoint: cmd/provd imports attest/fleet", // through cli
		},
	}, {
		name: "agent reaches cobra through another module",
		plant: func(s map[string]*spec) {
			add(&s["agent"].imports, "example.org/helper")
			add(&s["example.org/helper"].imports, "github.com/spf13/cobra")
		},
		to: "github.com/spf13/cobra",
		want: []string{
			"core-without-cli-or-systemd: agent imports github.com/spf13/cobra",
			"core-without-cli-or-systemd: agent/tpmkey imports github.com/spf13/cobra",
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			specs := target()
			tc.plant(specs)
			got := map[string]finding{}
			for _, f := range checkAll(build(specs), rules) {
				got[key(f)] = f
				if f.msg != "" || !slices.Contains(f.path, tc.to) || f.path[len(f.path)-1] != f.dep {
					t.Errorf("unexpected finding: %s", f)
				}
			}
			for _, w := range tc.want {
				if _, ok := got[w]; !ok {
					t.Errorf("missing %q; got %q", w, slices.Sorted(maps.Keys(got)))
				}
			}
		})
	}
}

func TestPatternMatchingNothingFails(t *testing.T) {
	specs := target()
	delete(specs, "catalog") // moved away, or never written
	extra := rule{name: "foo", from: []string{"agent/foo/..."}, forbid: []string{"cmd/..."}, why: "test"}
	var got []string
	for _, f := range checkAll(build(specs), append(slices.Clone(rules), extra)) {
		got = append(got, key(f))
	}
	slices.Sort(got)
	want := []string{
		"below-the-agent: pattern catalog/... matches no package",
		"core-without-cli-or-systemd: pattern catalog/... matches no package",
		"foo: pattern agent/foo/... matches no package",
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

// TestXTestMayImportItsPackage: package foo_test importing foo is no
// violation, even for a rule whose from also matches what it forbids; and
// foo's own imports, which foo_test gets through foo, are reported once, as
// foo's, not again for its tests.
func TestXTestMayImportItsPackage(t *testing.T) {
	r := rule{name: "x", from: []string{"agent/..."}, forbid: []string{"agent/server"}, why: "w"}
	specs := target() // agent/server_test imports agent/server; agent/client_test agent/client
	if fs := check(fake, build(specs), r); len(fs) != 0 {
		t.Errorf("clean: %v", fs)
	}
	specs["agent/client"].imports += " agent/server"
	var got []string
	for _, f := range check(fake, build(specs), r) {
		got = append(got, key(f))
	}
	if want := []string{"x: agent/client imports agent/server"}; !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestMalformedRuleFails(t *testing.T) {
	g := build(target())
	for _, r := range []rule{
		{name: "r", from: []string{"agent/"}, forbid: []string{"cmd/..."}, why: "w"},
		{name: "r", from: []string{"agent"}, forbid: []string{"./cmd"}, why: "w"},
		{name: "r", from: []string{"agent"}, forbid: []string{"cmd/.../x"}, why: "w"},
		{name: "r", from: []string{"agent"}, forbid: []string{"cmd"}},
		{name: "r", from: []string{"agent"}},
	} {
		if fs := check(fake, g, r); len(fs) == 0 {
			t.Errorf("%+v: no finding", r)
		}
	}
}

func TestRulesTable(t *testing.T) {
	names := map[string]bool{}
	for _, r := range rules {
		if r.name == "" || names[r.name] || strings.ContainsAny(r.name, " /") {
			t.Errorf("rule %q: want a unique name usable with go test -run", r.name)
		}
		names[r.name] = true
	}
}

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, path string
		want          bool
	}{
		{"agent/...", fake + "/agent", true},
		{"agent/...", fake + "/agent/server", true},
		{"agent/...", fake + "/agentx", false},
		{"agent", fake + "/agent/server", false},
		{"agent/server", fake + "/agent/server", true},
		{"...", fake + "/cmd/provd", true},
		{"...", "gopkg.in/yaml.v3", false},
		{"internal/...", "internal/abi", false}, // the standard library's internal is not ours
		{"internal/...", fake + "/internal/strictjson", true},
		{"systemd", "github.com/coreos/go-systemd/v22/daemon", false},
		{"github.com/coreos/go-systemd/...", "github.com/coreos/go-systemd/v22/daemon", true},
		{"gopkg.in/yaml.v3/...", "gopkg.in/yaml.v3", true},
		{"github.com/spf13/cobra/...", "github.com/spf13/cobrax", false},
	} {
		if got := match(fake, tc.pattern, tc.path); got != tc.want {
			t.Errorf("match(%q, %q) = %v, want %v", tc.pattern, tc.path, got, tc.want)
		}
	}
}
