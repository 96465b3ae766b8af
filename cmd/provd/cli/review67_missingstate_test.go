package cli_test

// Review 67: resolvedStateDir's "the path as given while it does not
// exist" branch, for the commands that run on a never-provisioned device.

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/provd/provd/fwhook"
	"github.com/provd/provd/test/swtpmtest"
)

// fwVerifyOnce runs the boot hook against a manifest that is missing (a
// measured failure: the hook still extends and logs) with --state-dir
// state, and returns the exit code.
func fwVerifyOnce(t *testing.T, state string) int {
	t.Helper()
	env := swtpmtest.Start(t)
	env.CloseTPM() // the CLI connects itself
	t.Cleanup(env.Reopen)
	images := t.TempDir()
	out, stderr, code := run(t, nil, "--tpm", env.Spec, "--state-dir", state, "fw", "verify", "--manifest", filepath.Join(images, "missing.manifest"), "--root", images)
	t.Logf("fw verify --state-dir %s: exit %d\n%s%s", state, code, out, stderr)
	return code
}

// Held: the boot hook on a device never provisioned, whose state directory
// does not exist yet (resolvedStateDir gives the path as given): the
// failed measurement is logged in the state directory the store makes
// later, where fw log finds it.
func TestReview67FWVerifyOnANeverProvisionedDevice(t *testing.T) {
	state := filepath.Join(t.TempDir(), "var", "lib", "provd")
	if code := fwVerifyOnce(t, state); code == 0 {
		t.Fatalf("fw verify of a missing manifest: exit 0, want a measured failure")
	}
	if fi, err := os.Lstat(filepath.Join(state, fwhook.LogName)); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("the hook's log at %s: %v", filepath.Join(state, fwhook.LogName), err)
	}
}

// FLAW (failed before the mend): review 66 resolved the state path for fw verify
// (resolvedStateDir), but while the state directory does not exist yet,
// which is every boot of a never-provisioned device and the first one of
// every device, resolvedStateDir hands back the text as given, and fw
// verify joins measurements.log to it (filepath.Join cleans "lnk/../state"
// to "state" beside lnk) and fwhook.measure makes its directory with
// os.MkdirAll, unwalked, as root: the log goes to pub/state, a directory
// the kernel's reading of the path (pub/real/state, where provision and
// the store will make the state) never reaches, so fw log and attest later
// find no log, or the one a user who could create pub/state (a sticky
// /tmp, a shared parent) put there; and MkdirAll follows a link planted at
// a missing component after the walk (the very thing review 66 took out
// of fwStateDir). Attacker: none for the split; a user who may create the
// cleaned name, or race a link into a missing component, for the rest.
// Gain: the boot hook's log lives outside the state, in a directory
// another user may own. Suggested fix: fw verify (which writes) takes its
// directory from fwStateDir (store.MakeStateDir, which walks, refuses ".."
// after a missing directory, and makes one component at a time), and
// resolvedStateDir never returns unresolved text: resolve the existing
// prefix with trustedpath.Walk and append the missing rest, refusing ".."
// in it, as trustedpath.Mkdir does.
func TestReview67FWVerifyOnAMissingStateDirCleansThePath(t *testing.T) {
	base := t.TempDir()
	pub := filepath.Join(base, "pub")
	if err := os.MkdirAll(filepath.Join(pub, "real", "inner"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("real/inner", filepath.Join(pub, "lnk")); err != nil { // root's link
		t.Fatal(err)
	}
	raw := filepath.Join(pub, "lnk") + "/../state" // the kernel: pub/real/state, missing
	fwVerifyOnce(t, raw)
	if _, err := os.Lstat(filepath.Join(pub, "state")); err == nil {
		t.Errorf("fw verify made %s, the cleaned text of %s, which the kernel does not reach", filepath.Join(pub, "state"), raw)
	}
	if _, err := os.Lstat(filepath.Join(pub, "real", "state", fwhook.LogName)); err != nil {
		t.Errorf("the hook's log is not in %s, where the store makes the state: %v", filepath.Join(pub, "real", "state"), err)
	}
}
