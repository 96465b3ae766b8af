// Package arch tests provd's architecture: the import arrows of
// docs/architecture.md point one way, the wire contract and the pure layers
// stay free of the agent, and the edges (cobra, go-systemd, the YAML config)
// stay at the edge. Nothing in the compiler enforces a layering; without this
// test one convenient import in a _test.go file quietly ties the TPM layer to
// the agent, or the client to the daemon.
//
// The test sees everything: non-test and test imports (package foo and
// package foo_test), followed transitively through the module and through
// other modules, and a rule whose packages do not exist fails instead of
// passing over nothing.
//
// The rules are data (rules, below); the checker is a pure function over an
// in-memory import graph (check_test.go); the real graph comes from go list
// (load_test.go); and the checker itself is tested on synthetic graphs with
// planted violations (selfcheck_test.go), so a checker that sees nothing
// cannot pass for a clean tree.
package arch

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/provd/provd"

// Patterns shared by several rules.
var (
	cliAndSystemd = []string{
		"github.com/spf13/cobra/...",
		"github.com/spf13/pflag/...",
		"github.com/coreos/go-systemd/...",
		"systemd",
	}
	yaml = "gopkg.in/yaml.v3/..."
)

// rules is the target layout after the architecture refactor: api (the wire
// contract), audit, store and catalog at the top level, tpm/keyfile and
// tpm/objcache beside tpm, the fleet endpoint under attest. While packages
// move, a rule that names a package not yet in place fails with "matches no
// package": that is the point, not a bug.
var rules = []rule{
	{
		name:      "tpm-stands-alone",
		from:      []string{"tpm/..."},
		forbid:    []string{"..."},
		allow:     []string{"tpm/...", "internal/..."},
		testAllow: []string{"test/swtpmtest"},
		why: "tpm is the only package that talks to the TPM and imports nothing of provd's outside tpm/... " +
			"but internal/... (parsers of the standard library's alone); " +
			"its tests may use the swtpm harness (test/swtpmtest) and nothing else of provd's",
	},
	{
		name:   "internal-is-a-leaf",
		from:   []string{"internal/..."},
		forbid: []string{"..."},
		allow:  []string{"internal/..."},
		why: "internal/... holds small pieces that the standard library alone builds (strict JSON, one PEM block, " +
			"the path walk, the safe file opener, the token bucket): " +
			"tpm, policy and firmware import them, so they import nothing of provd's",
	},
	{
		name:      "policy-is-offline",
		from:      []string{"policy/..."},
		forbid:    []string{"..."},
		allow:     []string{"policy/...", "internal/...", "catalog/..."},
		testAllow: []string{"test/swtpmtest", "tpm/..."},
		why: "policy computes digests offline from the key catalog, with no TPM I/O; " +
			"only its tests use a TPM, to compare digests with a real one",
	},
	{
		name:   "officer-without-the-agent",
		from:   []string{"officer/..."},
		forbid: []string{"agent/...", "cmd/...", "systemd", yaml},
		why: "what the crypto officer approves is computed offline, on the officer's host as on the device, " +
			"by a tool or a fleet service that links neither the agent nor the CLI",
	},
	{
		name:   "api-is-the-wire-contract",
		from:   []string{"api/..."},
		forbid: []string{"agent/...", "cmd/...", "systemd", yaml},
		why: "api is the wire contract between the daemon, its clients and the fleet endpoint; " +
			"it must not pull in the agent, the CLI, systemd or the daemon's YAML config",
	},
	{
		name:   "client-without-server",
		from:   []string{"agent/client"},
		forbid: []string{"agent/server/..."},
		why:    "a client of the daemon links without the daemon, tests included: they talk to it over the api",
	},
	{
		name:      "client-without-yaml",
		from:      []string{"agent/client"},
		forbid:    []string{yaml},
		testAllow: []string{yaml}, // a ban on non-test files only
		why:       "YAML is the daemon's config format; the client speaks the JSON wire contract",
	},
	{
		name:      "attest-is-pure",
		from:      []string{"attest/..."},
		forbid:    []string{"agent/...", "tpm/..."},
		testAllow: []string{"tpm/..."}, // and test/swtpmtest, which is not forbidden and brings only tpm/...
		why: "attest (the fleet endpoint under attest/fleet) verifies what devices send, with no TPM I/O " +
			"and without the agent; its tests may use a TPM (tpm, test/swtpmtest) to produce evidence",
	},
	{
		name:      "officer-is-pure",
		from:      []string{"officer"},
		forbid:    []string{"agent/...", "tpm/...", "cmd/...", "systemd"},
		testAllow: []string{"tpm/..."}, // its tests check approvals on a TPM
		why: "what the crypto officer (or the fleet endpoint as the duplication authority) approves is computed " +
			"offline, with no TPM and no state: the fleet endpoint signs approvals with it",
	},
	{
		name:   "keywrap-is-pure",
		from:   []string{"keywrap/..."},
		forbid: []string{"..."},
		allow:  []string{"keywrap/..."},
		why: "key wrap, KCVs and key components are computed the same on the device and on an air-gapped " +
			"recovery host (provd key recover), with the standard library alone",
	},
	{
		name:   "firmware-before-the-agent",
		from:   []string{"firmware/..."},
		forbid: []string{"..."},
		allow:  []string{"firmware/...", "policy/...", "catalog/...", "internal/..."},
		why: "the boot hook authenticates firmware before the daemon starts, on a device that may never have " +
			"been provisioned: the manifest and its check need the signer's key and the images, nothing of the agent or its state",
	},
	{
		name:      "boot-hook-without-the-agent",
		from:      []string{"fwhook/..."},
		forbid:    []string{"agent/...", "cmd/...", "officer/...", "systemd", yaml},
		testAllow: []string{"test/swtpmtest"},
		why: "provd fw verify runs at boot before the daemon, on a device that may never have been provisioned: " +
			"it reads the TPM's anchor and counter, the manifest and the images, and nothing of the agent or its state",
	},
	{
		name:   "below-the-agent",
		from:   []string{"audit/...", "store/...", "catalog/..."},
		forbid: []string{"agent/...", "cmd/...", "systemd", "api/..."},
		why: "audit, store and catalog sit below the agent, so that a fleet endpoint or a tool imports them " +
			"without the agent, the CLI, systemd or the wire contract",
	},
	{
		name: "device-binary-without-the-endpoint",
		from: []string{"cmd/provd", "cmd/provd/cli"},
		forbid: []string{"attest/fleet/...", "cmd/provd/cli/fleetserver",
			"github.com/jackc/...", "modernc.org/...", "github.com/prometheus/...", "github.com/spf13/cobra/doc"},
		testAllow: []string{"attest/fleet/...", "cmd/provd/cli/fleetserver",
			"github.com/jackc/...", "modernc.org/...", "github.com/prometheus/...", "github.com/spf13/cobra/doc"}, // a ban on non-test files only
		why: "provd is the binary every device runs (daemon, boot hook, one-shot commands): it links no database " +
			"driver, metrics or man-page writer, and hands fleet serve and man to provd-fleet (cmd/provd-fleet); " +
			"the device starts faster and keeps less resident (docs/benchmarks.md)",
	},
	{
		name:       "cmd-is-the-top",
		from:       []string{"..."},
		fromExcept: []string{"cmd/..."},
		forbid:     []string{"cmd/..."},
		why: "arrows point from cmd to the core, never back, tests included: " +
			"a test that needs the CLI lives under cmd/",
	},
	{
		name: "core-without-cli-or-systemd",
		from: []string{"agent/...", "tpm/...", "attest/...", "policy/...",
			"api/...", "audit/...", "store/...", "catalog/...", "officer/...", "firmware/...", "fwhook/..."},
		forbid: cliAndSystemd,
		why:    "only cmd and systemd use cobra and go-systemd; the core runs under any front end, tests included",
	},
}

// TestArchitecture applies every rule to the real import graph, one subtest
// per rule (go test -run TestArchitecture/tpm-stands-alone).
func TestArchitecture(t *testing.T) {
	touchSources(t, filepath.Join("..", ".."))
	g, problems, err := load(module)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Error(p)
	}
	for _, r := range rules {
		t.Run(r.name, func(t *testing.T) {
			for _, f := range check(module, g, r) {
				t.Error(f)
			}
		})
	}
}

// touchSources opens every directory and Go file of the module below root.
// The graph comes from `go list`, a child process whose reads go test cannot
// see; opening the files here makes them inputs of this test, so a cached
// pass is not reused after a source file or a directory changed.
func touchSources(t *testing.T, root string) {
	t.Helper()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || strings.HasPrefix(d.Name(), ".")) && p != root {
			return filepath.SkipDir
		}
		if d.IsDir() || strings.HasSuffix(p, ".go") || d.Name() == "go.mod" {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			return f.Close()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
