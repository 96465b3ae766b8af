package agent

// Review 41: the exit codes of the new refusals.
//
// HELD: TestReview41DaemonKeyCreateAcrossZeroizeExitCode (in
// review41_refusals_internal_test.go): another process's zeroize --srk
// during a daemon's key create gives ErrNotProvisioned, exit 13, as
// docs/exit-codes.md says since d51414f; so does provision --from across
// a zeroize (TestReview41DaemonAdoptAcrossZeroizeKeepsNoAdoptedPKContext).
//
// FLAW (low; failed before the mend): TestReview41ReplacedPKExitCode.
// Attack (another local process): provision --force in another process
// while a key is created under the old PK (one-shot and daemon, the
// same path: updateUnderPK). The refusal is errors.New("the state's
// provisioning key was replaced while the operation ran (provision --force
// in another process); nothing recorded: run the command again"): no
// sentinel, so api.ExitCode gives 1 ("anything not listed below"), and
// the daemon sends it as a plain error (no kind). Expected: a listed code
// a script can act on, as the zeroize case got 13 (d51414f): the advice
// is "run the command again", which is exit 8's ("another provd
// meanwhile ... run it again") or 13's family; docs/exit-codes.md does
// not mention a replaced PK. Observed: exit 1. The same for
// updatePinned's callers? No: they only refuse a wiped state (13); an AK
// or a delivery made across another process's provision --force is
// recorded in the new state (docs/threat-model.md).
// Suggested mend: wrap a sentinel (e.g. api.ErrNotProvisioned with the
// "replaced" text, or a new kind "state_replaced" with exit 8 or 12) and
// list it in api.Kinds and docs/exit-codes.md.
// Mended: api.ErrStateChanged, kind state_changed, exit 8.
import (
	"context"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

func TestReview41ReplacedPKExitCode(t *testing.T) {
	for _, daemon := range []bool{false, true} {
		t.Run(review26Mode(daemon), func(t *testing.T) {
			b := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(b))
			s := &review32Steps{t: t, env: env, b: b, dir: t.TempDir() + "/state", daemon: daemon}
			s.open()
			if _, err := s.a.Provision(context.Background(), review8Req()); err != nil {
				t.Fatal(err)
			}
			done := false
			s.b.Set(srkRaceReplacePK(t, s.dir, tpm2.TPMCCCreate, &done, nil))
			_, err := s.a.CreateKey(context.Background(), review41KeyReq("k"))
			s.b.Set(nil)
			if !done {
				t.Fatalf("not mounted: no TPM2_Create (%v)", err)
			}
			code := api.ExitCode(err)
			t.Logf("key create across another process's provision --force: %v (exit %d)", err, code)
			if err == nil {
				t.Fatal("recorded under a replaced PK")
			}
			if code == api.ExitError {
				t.Errorf("exit %d (ExitError, \"anything not listed\") for a PK replaced by another process; docs/exit-codes.md lists no code for it", code)
			}
		})
	}
}
