package agent

// Review 37: c35f235 and the SRK's resend (tpm.TPM.Send's srkGone branch,
// srkAgain) under a running daemon.
//
// FLAW (failed before the mend): TestReview37DaemonAttestSecretWithTheSRKEvictedMidLife.
// A warm daemon (KeepSession) on a provisioned, enrolled, activated device
// with a delivered secret installed; another program evicts the SRK while
// it runs (the threat model's row names this attacker); then `attest
// secret` to the daemon. withAttestKey calls tpm.PersistSRK, which answers
// the persistent SRK the connection cached without a command; the first
// command naming 0x81000001 in the operation meets TPM_RC_HANDLE and
// srkAgain, under the agent's TransientSRKOnly, makes a transient copy
// (srkCopy) and holds it for the whole operation: copy + AK + EK + the
// delivered object are four objects (review 31's flaw, mended for a new
// process by PersistSRK before the AK's load, is back for the daemon).
// c35f235 persists a copy made during a PK use at its end; the AK's use
// (and every other use that asked PersistSRK) does not.
//
// HELD: nothing is left loaded that the agent does not hold after the
// request (checked in the same test).
import (
	"context"
	"testing"

	"github.com/provd/provd/api"
)

func TestReview37DaemonAttestSecretWithTheSRKEvictedMidLife(t *testing.T) {
	ctx := context.Background()
	env, b, a := review35Daemon(t, false)
	if _, err := a.Provision(ctx, review8Req()); err != nil {
		t.Fatal(err)
	}
	review31Delivered(t, env, func(_ string, fn func(*Agent) error) error { return fn(a) })
	if got, err := a.AttestSecret(ctx, api.AttestSecretRequest{Name: "wifi"}); err != nil || string(got.Secret) != "psk" {
		t.Fatalf("attest secret before the eviction: %q %v", got.Secret, err)
	}
	// Another program evicts the SRK while the daemon runs.
	review31EvictSRK(t, env, b)
	got, err := a.AttestSecret(ctx, api.AttestSecretRequest{Name: "wifi"})
	t.Logf("attest secret with the SRK evicted under the daemon: %v (SRK persisted again: %v)", err, review26SRKThere(env))
	review32Unheld(t, env, a, "attest secret")
	if err != nil {
		t.Fatalf("FLAW: attest secret to the running daemon after another program evicted the SRK: %v "+
			"(srkAgain's transient copy is held beside the AK, the EK and the delivered object; a new process persists the SRK before the AK's load)", err)
	}
	if string(got.Secret) != "psk" {
		t.Fatalf("attest secret: %q", got.Secret)
	}
}
