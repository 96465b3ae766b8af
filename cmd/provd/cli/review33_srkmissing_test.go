// Review 33: the CLI's one-shot commands (TransientSRKOnly since review 31)
// on a state whose SRK is missing.
//
// FLAW: (none found)
//
// HELD: TestReview33CLIOneShotsWithTheSRKMissing — on a fresh TPM with no
// state, and on a provisioned state whose SRK another program evicted,
// tpm info, tpm identity, tpm pcr read (-o json where pinned), status (on
// the fresh TPM) and fw anchor show leave 0x81000001 empty and nothing
// loaded; status, seal and unseal on the provisioned state persist it again
// (the PK's load: a provisioned state heals, as designed) and work.
package cli_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provd/provd/tpm"
)

func TestReview33CLIOneShotsWithTheSRKMissing(t *testing.T) {
	c := newCLIEnv(t)
	// srkState reports whether 0x81000001 holds a key, and fails t for a
	// transient handle a command left (the open flushes a dead client's
	// leftovers: StaleFlushed counts them).
	srkState := func(after string) bool {
		t.Helper()
		c.swtpm.Reopen()
		defer c.swtpm.CloseTPM()
		if n := c.swtpm.TPM.StaleFlushed(); n != 0 {
			t.Errorf("after %s: %d transient handles left in the TPM", after, n)
		}
		_, err := c.swtpm.TPM.ReadPublic(tpm.SRKHandle)
		if err != nil && !errors.Is(err, tpm.ErrNotFound) {
			t.Fatal(err)
		}
		return err == nil
	}
	evict := func() {
		t.Helper()
		c.swtpm.Reopen()
		defer c.swtpm.CloseTPM()
		if err := c.swtpm.TPM.Evict(tpm.SRKHandle); err != nil && !errors.Is(err, tpm.ErrNotFound) {
			t.Fatal(err)
		}
	}
	readOnly := [][]string{
		{"tpm", "info"},
		{"tpm", "identity", "--ek-ca", ekCAFile(t, c.swtpm)},
		{"tpm", "pcr", "read", "--pcrs", "7", "--unauthenticated", "-o", "json"},
		{"status"},
		{"fw", "anchor", "show"},
	}
	run := func(phase string) {
		for _, args := range readOnly {
			_, stderr, code := c.run(args...)
			t.Logf("%s: provd %s: exit %d %s", phase, strings.Join(args, " "), code, strings.TrimSpace(stderr))
			if srkState(phase + ": " + strings.Join(args, " ")) {
				t.Errorf("%s: provd %s persisted the SRK", phase, strings.Join(args, " "))
				evict()
			}
		}
	}
	evict()
	run("fresh TPM, no state")

	c.must("provision", "--pcrs", "7", "--ek-ca", ekCAFile(t, c.swtpm))
	evict()
	readOnly[2] = []string{"tpm", "pcr", "read", "--pcrs", "7", "-o", "json"}
	readOnly = append(readOnly[:3], readOnly[4:]...) // status loads the PK (its policy check): below
	run("provisioned, SRK evicted")
	// status checks the policy with the PK loaded: the PK's load persists
	// the SRK it lives under (a provisioned state heals, as designed).
	c.must("status")
	if !srkState("status (provisioned)") {
		t.Errorf("status on the provisioned state did not persist the SRK its PK's load needs")
	}
	evict()

	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("review 33"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.must("seal", "--in", secret, "--out", secret+".sealed")
	if !srkState("seal") {
		t.Errorf("seal on the provisioned state did not persist the SRK its PK lives under")
	}
	evict()
	c.must("unseal", "--in", secret+".sealed", "--out", secret+".out")
	if b, err := os.ReadFile(secret + ".out"); err != nil || string(b) != "review 33" {
		t.Errorf("unseal with the SRK evicted: %q %v", b, err)
	}
	if !srkState("unseal") {
		t.Errorf("unseal did not persist the SRK its PK's load needs")
	}
}
