package cli_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/swtpmtest"
)

// `provd tpm identity`: exit 15 with nothing to verify the EK with, the
// verified identity with the manufacturer's certificates, and trust on
// first use said in the output.
func TestTPMIdentityCommand(t *testing.T) {
	c := newCLIEnv(t)
	ca := ekCAFile(t, c.swtpm)
	if _, stderr, code := c.run("tpm", "identity"); code != api.ExitIdentity {
		t.Errorf("without --ek-ca: exit %d (%s), want %d", code, stderr, api.ExitIdentity)
	}
	for _, tc := range []struct {
		args  []string
		trust string
	}{
		{[]string{"--ek-ca", ca}, api.TrustManufacturer},
		{[]string{"--trust-on-first-use"}, api.TrustOnFirstUse},
	} {
		var id api.Identity
		out := c.must(append([]string{"tpm", "identity", "-o", "json"}, tc.args...)...)
		if err := json.Unmarshal([]byte(out), &id); err != nil || id.Trust != tc.trust || id.SRKName == "" {
			t.Errorf("%v: %s (%v)", tc.args, out, err)
		}
	}
	if _, _, code := c.run("tpm", "identity", "--ek-ca", filepath.Join(t.TempDir(), "missing.pem")); code != api.ExitUsage {
		t.Errorf("a missing --ek-ca file: exit %d, want 2", code)
	}

	// Through the ECC P-384 EK, its certificate given as a file.
	c.swtpm.Reopen()
	der, err := c.swtpm.TPM.ReadNV(0x01c00016)
	c.swtpm.CloseTPM()
	if err != nil {
		t.Fatal(err)
	}
	cert := filepath.Join(t.TempDir(), "ek384.der")
	if err := os.WriteFile(cert, der, 0o600); err != nil {
		t.Fatal(err)
	}
	var id api.Identity
	out := c.must("tpm", "identity", "-o", "json", "--ek-ca", ca, "--ek-cert", cert)
	if err := json.Unmarshal([]byte(out), &id); err != nil || id.Trust != api.TrustManufacturer || id.EKKey != "ECC P-384" || id.EKCertSource != "file" {
		t.Errorf("--ek-cert with the P-384 EK's certificate: %s (%v)", out, err)
	}
}

// A provisioned state without its identity record refuses to seal (exit
// 15) and says how to get out; status still works and says it is not
// pinned; provision --force with --ek-ca pins the TPM, and sealing works
// again.
func TestUnpinnedStateWayOut(t *testing.T) {
	c := newCLIEnv(t)
	ca := ekCAFile(t, c.swtpm)
	c.must("provision", "--pcrs", "7", "--ek-ca", ca)
	st, err := store.Open(c.dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Update(context.Background(), func(tx *store.Tx) error { return tx.Delete("identity") }); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("s"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := c.run("seal", "--in", secret, "--out", secret+".sealed"); code != api.ExitIdentity || !strings.Contains(stderr, "provision --force") {
		t.Errorf("seal on the unpinned state: exit %d (%s), want %d naming provision --force", code, stderr, api.ExitIdentity)
	}
	if out := c.must("status"); !strings.Contains(out, "identity NOT pinned") || !strings.Contains(out, "not checked") {
		t.Errorf("status on the unpinned state:\n%s", out)
	}
	c.must("provision", "--pcrs", "7", "--force", "--ek-ca", ca)
	var s api.Status
	if err := json.Unmarshal([]byte(c.must("status", "-o", "json")), &s); err != nil || s.TPMTrust != api.TrustManufacturer || s.Policy == nil {
		t.Fatalf("status after provision --force: %+v %v", s, err)
	}
	c.must("seal", "--in", secret, "--out", secret+".sealed")
}

// provision pins the TPM it established; a state pinned to another TPM is
// refused on that TPM with exit 15, before anything is sent to it.
func TestProvisionPinsTheTPM(t *testing.T) {
	c := newCLIEnv(t)
	if _, _, code := c.run("provision", "--pcrs", "7"); code != api.ExitIdentity {
		t.Errorf("provision with nothing to trust the EK by: exit %d, want %d", code, api.ExitIdentity)
	}
	// Golden values are read authenticated only once the TPM is pinned
	// (found by review: an interposer chose the values an operator signed).
	if _, _, code := c.run("tpm", "pcr", "read", "--pcrs", "7", "-o", "json"); code != api.ExitIdentity {
		t.Errorf("pcr read -o json with nothing pinned: exit %d, want %d", code, api.ExitIdentity)
	}
	c.must("tpm", "pcr", "read", "--pcrs", "7", "-o", "json", "--unauthenticated")
	c.must("provision", "--pcrs", "7", "--ek-ca", ekCAFile(t, c.swtpm))
	if out := c.must("tpm", "pcr", "read", "--pcrs", "7", "-o", "json"); !strings.Contains(out, `"7"`) {
		t.Errorf("pcr read -o json after provisioning: %s", out)
	}
	var st api.Status
	if err := json.Unmarshal([]byte(c.must("status", "-o", "json")), &st); err != nil || st.TPMTrust != api.TrustManufacturer {
		t.Fatalf("status after provision: %+v %v", st, err)
	}
	// provision --force keeps the pin: no EK trust needed again.
	c.must("provision", "--pcrs", "7", "--force")

	// The same state on another TPM (a swap, or an interposer answering
	// with another key): the persistent SRK is not the pinned one.
	other := swtpmtest.Start(t) // a distinct TPM: the harness manufactures it afresh
	other.CloseTPM()
	t.Cleanup(other.Reopen)
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("s"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := run(t, nil, "--tpm", other.Spec, "--state-dir", c.dir, "seal", "--in", secret, "--out", secret+".sealed"); code != api.ExitIdentity {
		t.Errorf("the state on another TPM: exit %d (%s), want %d", code, stderr, api.ExitIdentity)
	}
}
