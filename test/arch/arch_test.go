// Package arch tests provd's architecture: the import arrows of ARCHITECTURE.md
// point one way, and the edges (cobra, go-systemd) stay at the edge.
package arch

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/provd/provd"

// deps lists the transitive imports of each package matching pattern.
func deps(t *testing.T, pattern string) map[string][]string {
	t.Helper()
	out, err := exec.Command("go", "list", "-json=ImportPath,Deps", pattern).Output()
	if err != nil {
		t.Fatalf("go list %s: %v", pattern, err)
	}
	res := map[string][]string{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p struct {
			ImportPath string
			Deps       []string
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		res[p.ImportPath] = p.Deps
	}
	if len(res) == 0 {
		t.Fatalf("go list %s: no packages", pattern)
	}
	return res
}

func TestTPMImportsNothingOfOurs(t *testing.T) {
	for pkg, ds := range deps(t, module+"/tpm/...") {
		for _, d := range ds {
			if strings.HasPrefix(d, module+"/") && !strings.HasPrefix(d, module+"/tpm") {
				t.Errorf("%s imports %s: tpm must import nothing of provd's", pkg, d)
			}
		}
	}
}

func TestPolicyHasNoTPMIO(t *testing.T) {
	for pkg, ds := range deps(t, module+"/policy/...") {
		for _, d := range ds {
			if strings.HasPrefix(d, module+"/") && !strings.HasPrefix(d, module+"/internal/") {
				t.Errorf("%s imports %s: policy computes digests without a TPM", pkg, d)
			}
		}
	}
}

func TestCoreHasNoCLIOrSystemd(t *testing.T) {
	forbidden := []string{"github.com/spf13/cobra", "github.com/spf13/pflag", "github.com/coreos/go-systemd"}
	for _, pattern := range []string{"agent/...", "tpm/...", "attest/...", "policy/..."} {
		pkgs, err := exec.Command("go", "list", module+"/"+pattern).Output()
		if err != nil || len(strings.TrimSpace(string(pkgs))) == 0 {
			continue // package not written yet
		}
		for pkg, ds := range deps(t, module+"/"+pattern) {
			for _, d := range ds {
				for _, f := range forbidden {
					if strings.HasPrefix(d, f) {
						t.Errorf("%s imports %s: only cmd and systemd may", pkg, d)
					}
				}
				if strings.HasPrefix(d, module+"/cmd") || d == module+"/systemd" {
					t.Errorf("%s imports %s: arrows point from cmd to the core, never back", pkg, d)
				}
			}
		}
	}
}
