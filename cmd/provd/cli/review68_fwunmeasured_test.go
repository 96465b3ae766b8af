package cli_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/test/swtpmtest"
)

// FLAW (failed before the mend): review 67 made fw verify make its state directory with
// store.MakeStateDir before anything else, and return its error before the
// TPM is opened. The boot hook's rule (TestFWVerifyUnreadableManifest,
// docs: "On any failure it extends a fixed 'verification failed'
// measurement instead") is that no failure leaves PCR 12 at its reset
// value; now every state-directory failure does: a state directory of
// mode 0755 (a restored copy, A6, or an installer's umask; checkPrivate
// refuses it), one owned by another uid, a state path through a dangling
// link (/var/lib/provd -> /data/provd before /data is mounted), a
// read-only root where it is missing. fw verify exits before the TPM, PCR
// 12 stays all zeros, and a tss-group user (or anything that runs later
// in the boot) extends the good anchor and manifest measurements by hand,
// both public, so keys sealed to the good value unseal on firmware that
// was never verified. Attacker: whoever can spoil the state directory
// (A6), plus a TPM user to extend. Suggested fix: open the TPM first and
// treat a state directory that cannot be made or trusted as a measured
// failure (extend the failed measurement, then exit), or measure without
// a log when the state is unusable; never return before the extend.
func TestReview68FWVerifyStateDirFailureLeavesPCR12Unmeasured(t *testing.T) {
	for _, tc := range []struct {
		name  string
		state func(base string) string
	}{
		{"mode 0755", func(base string) string {
			s := filepath.Join(base, "provd")
			if err := os.Mkdir(s, 0o755); err != nil {
				t.Fatal(err)
			}
			return s
		}},
		{"dangling link", func(base string) string {
			s := filepath.Join(base, "provd")
			if err := os.Symlink(filepath.Join(base, "data", "provd"), s); err != nil {
				t.Fatal(err)
			}
			return s
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := swtpmtest.Start(t)
			env.CloseTPM() // the CLI connects itself
			state := tc.state(t.TempDir())
			images := t.TempDir()
			out, stderr, code := run(t, nil, "--tpm", env.Spec, "--state-dir", state, "fw", "verify", "--manifest", filepath.Join(images, "missing.manifest"), "--root", images)
			t.Logf("fw verify: exit %d\n%s%s", code, out, stderr)
			if code == 0 {
				t.Errorf("fw verify of a missing manifest: exit 0")
			}
			env.Reopen()
			v, err := env.TPM.PCRRead(tpm2.TPMAlgSHA256, []int{12})
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Equal(v[12], make([]byte, 32)) {
				t.Errorf("fw verify (%s state) exited %d and left PCR 12 at its reset value: a hand extend of the good measurements reaches the good value", tc.name, code)
			}
		})
	}
}
