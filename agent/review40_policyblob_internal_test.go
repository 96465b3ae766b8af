package agent

// Review 40: a signed policy's install across another program's zeroize.
//
// FLAW (failed before the mend): TestReview40PolicyInstallAcrossAZeroizeLeavesItsPolicy.
// Attack (another local process): `provd policy install` reads the state
// (provisioned), then reads the policy counter through the TPM
// (readCounter: TPM2_NV_Read in a session salted to the pinned SRK).
// Another program's zeroize --srk runs to its end right after that read
// (state wiped, SRK evicted). installPolicy then stores the signed policy
// with a plain a.st.Update (policyops.go: "Store first, then revoke"),
// which checks nothing: the blob "policy" is written into the wiped
// state. The install then fails (ErrNotProvisioned from the PK's load),
// but the blob stays in the zeroized directory; a later provision there
// writes only its records and would find it beside them (not exercised
// here: the test checks the wiped state alone) (the
// commit made recordD, moveCounter, commitKey... refuse such writes;
// this one was left out).
// Expected: the wiped state holds nothing. Observed: blob "policy".
// Mend: write the blob with a.updateUnderPK(ctx, st.Name, ...) as the
// other writes after TPM work do.
import (
	"context"
	"encoding/binary"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
)

func TestReview40PolicyInstallAcrossAZeroizeLeavesItsPolicy(t *testing.T) {
	ctx := context.Background()
	st := srkRaceSignedState(t)
	env, b, dir, a, raw := st.env, st.b, st.dir, st.a, st.policy(t, st.counter)
	done := false
	// After the counter's TPM2_NV_Read has its answer, the other
	// program's zeroize --srk runs to its end.
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if done || swtpmtest.CommandCode(cmd) != tpm2.TPMCCNVRead || len(cmd) < 18 ||
			tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[14:18])) != PolicyCounterHandle {
			return nil, nil, false
		}
		done = true
		rsp, err := next.Send(cmd)
		review40Wipe(t, dir, next, true)
		return rsp, err, true
	})
	_, err := a.InstallPolicy(ctx, raw)
	b.Set(nil)
	if !done {
		t.Fatalf("not mounted: no TPM2_NV_Read of the policy counter (%v)", err)
	}
	t.Logf("policy install with zeroize --srk after the counter's read: %v", err)
	review40Empty(t, dir, "a policy install across another program's zeroize")
	if review26SRKThere(env) {
		t.Errorf("the SRK is at 0x81000001 again after another program's zeroize --srk")
	}
}
