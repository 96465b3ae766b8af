package agent

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// Held: A1 on the receiver's bus during an adoption (provision --from)
// under the new T, whose TPM2_Import of the PK and the PK's proving load
// under T now go through T's policy session. A forged TPM_RC_RETRY after
// the TPM ran the Import, then one after it ran the PK's Load under T:
// each time provd sends the command again, the TPM refuses the spent
// policy session (TPM_RC_POLICY_FAIL), and the adoption fails as a forged
// answer (ErrResponseForged, exit 15), not as a platform failing a policy
// (exit 3); nothing is adopted (B keeps its own PK), nothing is left in
// the TPM; the genuine adoption then works and the adopted PK's key signs
// on B (the PK loading under T through T's Load branch).
func TestReview77ForgedRetryInAnAdoption(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bus := &swtpmtest.Bus{}
	envA, envB := swtpmtest.Start(t), swtpmtest.Start(t, swtpmtest.WithBus(bus))
	signer := fleetSigner(t)
	b := fleetDevice(t, envB, signer, api.ProvisionRequest{})
	peerB, err := b.PeerIdentity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rootsA, rootsB := caBundle(t, envA), caBundle(t, envB)
	a := fleetDevice(t, envA, signer, api.ProvisionRequest{DuplicableTo: &peerB, PeerPK: peerB.PKName, Residency: provenTo(t, b, peerB, rootsB),
		EKCA: append(append([]byte(nil), rootsA...), rootsB...)})
	if _, err := a.DeriveKey(ctx, api.DeriveRequest{Name: "dk", Label: "fleet", Type: "ecc-p256",
		Approval: approveRecipe(t, a, officer.Recipe{Type: "ecc-p256", Label: "fleet"})}); err != nil {
		t.Fatal(err)
	}
	dup, err := a.PKExport(ctx, api.PKExportRequest{Peer: peerB, PeerPK: peerB.PKName, EKCA: rootsB})
	if err != nil {
		t.Fatal(err)
	}
	stB, err := b.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	adopt := func() error {
		_, err := b.ProvisionFrom(ctx, api.PKAdoptRequest{Dup: dup, Approval: approvePK(t, a, peerB, officertest.Key()), Force: true})
		return err
	}
	forged := func(what string, match func([]byte) bool) {
		t.Helper()
		ran, done := 0, false
		bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
			if !match(cmd) {
				return nil, nil, false
			}
			ran++
			if done {
				return nil, nil, false
			}
			done = true
			if _, err := next.Send(cmd); err != nil {
				return nil, err, true
			}
			return swtpmtest.ErrorAnswer(tpm2.TPMRCRetry), nil, true
		})
		err := adopt()
		bus.Set(nil)
		t.Logf("%s sent %d: %v (exit %d)", what, ran, err, api.ExitCode(err))
		if ran < 2 {
			t.Fatalf("%s: not sent again (%d): %v", what, ran, err)
		}
		if !errors.Is(err, tpm.ErrResponseForged) || api.ExitCode(err) != api.ExitIdentity {
			t.Errorf("%s: forged RETRY: %v (exit %d), want ErrResponseForged (exit %d)", what, err, api.ExitCode(err), api.ExitIdentity)
		}
		if st, err := b.Status(ctx); err != nil || st.PKName != stB.PKName {
			t.Errorf("%s: B's PK after the failed adoption: %s (%v), want its own %s", what, st.PKName, err, stB.PKName)
		}
		if err := b.keys.EvictResident(); err != nil {
			t.Fatal(err)
		}
		if left, err := envB.TPM.Leftovers(); err != nil || len(left) != 0 {
			t.Errorf("%s: left in the TPM: %v (%v)", what, left, err)
		}
	}
	forged("TPM2_Import under T", swtpmtest.Code(tpm2.TPMCCImport))
	forged("the PK's TPM2_Load under T", review77LoadUnderT)
	if err := adopt(); err != nil {
		t.Fatalf("the genuine adoption: %v", err)
	}
	for range 2 {
		signVerifies(t, a, b, "dk")
	}
}
