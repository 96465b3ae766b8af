package cli_test

import (
	"os"
	"path/filepath"
	"testing"
)

// FLAW (failed before the mend): openTPM now hands tpm.Open the resolved state directory, but
// while the state directory does not exist yet (the demo's first command
// on a fresh --state-dir, every "provd --tpm sim provision") it hands the
// text as given, and tpm.Open puts the simulator at
// filepath.Abs(filepath.Join(StateDir, "swtpm")): "lnk/../state" cleaned
// to a "state" beside lnk, where the kernel (and the store, which then
// makes the state) reads pub/real/state. The first command manufactures a
// TPM at pub/state/swtpm; once the state exists every later command
// resolves it and manufactures another TPM, with another EK and seeds, at
// pub/real/state/swtpm: the state provisioned on the first TPM is then
// refused on the second (a different identity), for good. Attacker: none
// for the split; a user who may create the cleaned name (a sticky /tmp,
// a shared parent) owns the first TPM's state (its seeds: every key it
// wrapped). Gain: a sim state split from its TPM; the TPM's secrets in a
// directory another user may own. Suggested fix: resolve the missing
// state path as trustedpath.Mkdir would (the existing prefix walked, the
// rest appended, ".." refused), and have tpm.Open use StateDir as given,
// never filepath.Abs(Join(...)) of it.
func TestReview67SimDirOnAMissingStateDirCleansThePath(t *testing.T) {
	base := t.TempDir()
	pub := filepath.Join(base, "pub")
	if err := os.MkdirAll(filepath.Join(pub, "real", "inner"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("real/inner", filepath.Join(pub, "lnk")); err != nil { // root's link
		t.Fatal(err)
	}
	raw := filepath.Join(pub, "lnk") + "/../state" // the kernel: pub/real/state, missing
	env := map[string]string{"PROVD_TPM": "sim", "PROVD_STATE_DIR": raw}
	if _, stderr, code := run(t, env, "tpm", "info"); code != 0 {
		t.Fatalf("tpm info on the sim, state missing: exit %d: %s", code, stderr)
	}
	if _, err := os.Lstat(filepath.Join(pub, "state")); err == nil {
		t.Errorf("the sim's first run made %s, the cleaned text of %s, which the kernel does not reach", filepath.Join(pub, "state"), raw)
	}
	// The state is made where the kernel reads the path, as provision's
	// store makes it; the next command resolves it.
	// (Since the mend the sim's first run made it there itself.)
	if err := os.Mkdir(filepath.Join(pub, "real", "state"), 0o700); err != nil && !os.IsExist(err) {
		t.Fatal(err)
	}
	if _, stderr, code := run(t, env, "tpm", "info"); code != 0 {
		t.Fatalf("tpm info on the sim, state present: exit %d: %s", code, stderr)
	}
	_, e1 := os.Lstat(filepath.Join(pub, "state", "swtpm"))
	_, e2 := os.Lstat(filepath.Join(pub, "real", "state", "swtpm"))
	if e1 == nil && e2 == nil {
		t.Errorf("two simulated TPMs for one state: %s and %s", filepath.Join(pub, "state", "swtpm"), filepath.Join(pub, "real", "state", "swtpm"))
	}
}
