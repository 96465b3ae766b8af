package cli_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
)

// Another process replaces the audit anchor (the owner hierarchy is open on
// swtpm): audited commands exit 14 and say what to do; audit reanchor --help
// teaches it; audit reanchor -o json records what it found and anchors anew;
// the commands work again. A fresh state directory provisions all the same.
func TestAuditReanchorWayOut(t *testing.T) {
	c := newCLIEnv(t)
	c.must("provision", "--pcrs", "7", "--trust-on-first-use")
	secret := filepath.Join(t.TempDir(), "s")
	os.WriteFile(secret, []byte("x"), 0o600)

	// The intruder, as tpm2_nvundefine and tpm2_nvdefine would.
	c.swtpm.Reopen()
	tp := c.swtpm.TPM
	h := agent.AuditAnchorHandle
	old, err := tp.ReadNVPublic(h)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.NVUndefineSpace{AuthHandle: tpm2.TPMRHOwner, NVIndex: tpm2.NamedHandle{Handle: h, Name: old.Name}}).Execute(tp); err != nil {
		t.Fatal(err)
	}
	if _, err := tp.DefineExtendIndex(h); err != nil { // ungated
		t.Fatal(err)
	}
	if err := tp.NVExtend(h, []byte("mine")); err != nil {
		t.Fatal(err)
	}
	c.swtpm.CloseTPM()

	_, stderr, code := c.run("seal", "--in", secret, "--out", secret+".sealed")
	if code != api.ExitTampered || !strings.Contains(stderr, "audit reanchor") {
		t.Fatalf("seal with the anchor replaced: exit %d, want %d naming audit reanchor: %s", code, api.ExitTampered, stderr)
	}
	if _, _, code := c.run("audit", "verify"); code != api.ExitTampered {
		t.Fatalf("audit verify: exit %d", code)
	}
	help := c.must("audit", "reanchor", "--help")
	for _, want := range []string{"crypto officer", "audit-anchor", "owner password"} {
		if !strings.Contains(help, want) {
			t.Errorf("audit reanchor --help does not say %q:\n%s", want, help)
		}
	}
	out := c.must("audit", "reanchor", "-o", "json")
	var res api.AuditReanchorResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("reanchor -o json: %v\n%s", err, out)
	}
	if res.Found == "" || res.Record.Op != "audit-anchor" || res.Record.Objects["replaced_nv_value"] == "" {
		t.Fatalf("reanchor result: %s", out)
	}
	c.must("seal", "--in", secret, "--out", secret+".sealed")
	c.must("audit", "verify")

	// Another state directory on the same TPM does not end this trail
	// unless told --force.
	fresh := &cliEnv{t: t, swtpm: c.swtpm, dir: filepath.Join(t.TempDir(), "state2")}
	if _, stderr, code := fresh.run("provision", "--pcrs", "7", "--trust-on-first-use"); code != api.ExitConflict || !strings.Contains(stderr, "--force") {
		t.Fatalf("provision in a fresh state directory over another's trail: exit %d, want %d naming --force: %s", code, api.ExitConflict, stderr)
	}
	c.must("audit", "verify")
	fresh.must("provision", "--pcrs", "7", "--trust-on-first-use", "--force")
	fresh.must("audit", "verify")
}
