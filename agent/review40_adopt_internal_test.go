package agent

// Review 40: a moved PK's adoption (provision --from, agent/pkmove.go)
// across another program's zeroize.
//
// FLAW (failed before the mend): TestReview40AdoptAcrossAZeroizeBringsAPKBack.
// Attack (another local process): `provd provision --from FILE --force`
// reads the state (readTransfer: the PK's inputs and the transfer key),
// then works in the TPM (activation, TPM2_Import of the PK under T, the
// PK's and D's loads). Another program's zeroize --srk wipes the state
// meanwhile (here before the PK's TPM2_Import). provisionFrom's last
// write is a plain a.st.Update that checks only that no key record
// appeared: it writes the moved PK's record, its blob, D and the moved
// keys into the wiped state, and reports success (readIdentity finds no
// identity and is not an error). The zeroized directory reads as
// provisioned again (a PK record, no identity record: by requirePinned,
// every later use is refused as "provisioned but pins no TPM identity"
// until provision --force; not exercised here), and the PK's use
// persisted the SRK again, which evictSRKUnowed keeps: the state it reads
// now has a PK. updateUnderPK was added to the other
// writes after TPM work; this one was left out.
// Expected: nothing recorded (ErrNotProvisioned), the state empty, the
// SRK evicted. Observed: nil error, records ["pk"] and blobs ["d" "pk"]
// in the wiped state, and the SRK at 0x81000001.
// Mend: the final write checks, under the lock, that the state still
// names the PK it read (in.state.Name) and still pins the TPM
// (updateUnderPK with in.state.Name), as recordD's does.
import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// review40AdoptAcrossZeroize runs device B's provision --from of device
// A's movable PK (kept: B as the daemon, keeping its PK's context) with
// another program's zeroize --srk of B's state before the PK's
// TPM2_Import: B's TPM, B, the moved PK's file and the adoption's error.
func review40AdoptAcrossZeroize(t *testing.T, kept bool) (*swtpmtest.Env, *Agent, api.DupFile, error) {
	t.Helper()
	ctx := context.Background()
	bus := &swtpmtest.Bus{}
	envA, envB := swtpmtest.Start(t), swtpmtest.Start(t, swtpmtest.WithBus(bus))
	a, b, peerB, rootsB := movablePair(t, envA, envB)
	b.keepOp = kept // the daemon's PK context keeping (Config.KeepSession)
	dup, err := a.PKExport(ctx, api.PKExportRequest{Peer: peerB, PeerPK: peerB.PKName, EKCA: rootsB})
	if err != nil {
		t.Fatal(err)
	}
	ap := approvePK(t, a, peerB, officertest.Key())
	done := false
	bus.Set(review39ZeroizeOnce(t, b.dir, tpm2.TPMCCImport, &done))
	_, err = b.ProvisionFrom(ctx, api.PKAdoptRequest{Dup: dup, Approval: ap, Force: true})
	bus.Set(nil)
	if !done {
		t.Fatalf("not mounted: no TPM2_Import (%v)", err)
	}
	return envB, b, dup, err
}

func TestReview40AdoptAcrossAZeroizeBringsAPKBack(t *testing.T) {
	t.Parallel()
	envB, b, _, err := review40AdoptAcrossZeroize(t, false)
	t.Logf("provision --from with zeroize --srk before the PK's TPM2_Import: %v", err)
	if !errors.Is(err, api.ErrNotProvisioned) {
		t.Errorf("provision --from across another program's zeroize: %v, want ErrNotProvisioned", err)
	}
	review40Empty(t, b.dir, "provision --from across another program's zeroize")
	if review26SRKThere(envB) {
		t.Errorf("the SRK is at 0x81000001 again after another program's zeroize --srk")
	}
}
