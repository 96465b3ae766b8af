package agent

import (
	"context"
	"crypto/sha256"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/swtpmtest"
)

// review77LegacyReceiver is B holding a key ("old") received under a
// legacy transfer key T1 (as a provd before review 74 made and filled
// it), its current T; it returns B's TPM, the sender A (its key "k" went
// to B as "old", in duplicate file dup), B and T1's name. B's swtpm is
// started with optsB.
func review77LegacyReceiver(t *testing.T, optsB ...swtpmtest.Option) (envB *swtpmtest.Env, a, b *Agent, t1 string, dup api.DupFile) {
	t.Helper()
	ctx := context.Background()
	envA := swtpmtest.Start(t)
	envB = swtpmtest.Start(t, optsB...)
	a, b, _ = senderAndPeer(t, envA, envB)
	legacy := legacyTransferKey(t, b)
	dup, err := a.dupExportChecked(ctx, api.DupExportRequest{Name: "k", Peer: legacy, Approval: approveDup(t, a, "k", legacy), EKCA: caBundle(t, envB)},
		map[string]string{}, legacyPeer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.DupImport(ctx, api.DupImportRequest{Name: "old", Dup: dup}); err != nil {
		t.Fatalf("import under the legacy T: %v", err)
	}
	if err := review77Sign(t, b, "old"); err != nil {
		t.Fatalf("sign with the key received under the legacy T: %v", err)
	}
	return envB, a, b, legacy.ParentName, dup
}

// review77Sign signs with key name on b, loaded afresh (under its T).
func review77Sign(t *testing.T, b *Agent, name string) error {
	t.Helper()
	if err := b.keys.Drop(name); err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte(name))
	_, err := b.Sign(context.Background(), name, d[:], api.SignOptions{})
	return err
}

// FLAW (failed before the mend: "transfer-legacy" named T2, the key under
// T1 lost; mended: newTransferKey records its T only in place of the one
// it read, else the other process's stands and is published, and never
// writes over a kept legacy T with keys under it): two `provd peer identity` runs on a device whose transfer key is
// still a legacy one (made before review 74, with keys received under it)
// lose that legacy T for good, and with it every key received under it.
// peerIdentity decides that the current T is legacy (keepLegacy) from a
// read outside the transaction, then creates the new T in the TPM, and
// newTransferKey's transaction copies whatever the "transfer" record holds
// *then* into "transfer-legacy", overwriting what is there, without
// checking that the record is still the legacy T it read. Attacker (or
// just an operator and a provisioning script, or the daemon and the CLI,
// both processes on the same state, which updateUnderPK says may happen):
// process 1 reads T1 (legacy) and goes to the TPM to create its T3;
// process 2's peer identity commits in that window (T2 current, T1 kept
// as "transfer-legacy"); process 1 then commits: "transfer-legacy" := T2
// (a new T, not the legacy one), "transfer" := T3. T1's blob, a fixedTPM
// key's only copy, is gone from the state: the key received under it no
// longer loads (TPM_RC_INTEGRITY under T2, or no T at all) and can never be
// recovered on this device. Here process 2's commit is made by the test
// in process 1's window (on its TPM2_Create of T3), with exactly the
// records newTransferKey writes (a real new T2 made in the same TPM).
// Mend: in the transaction, re-read "transfer" and keep it as legacy only
// if it is still the legacy T read before (same name), else refuse with
// ErrStateChanged (nothing recorded); never overwrite an existing
// "transfer-legacy" of this PK.
func TestReview77ConcurrentPeerIdentityLosesTheLegacyTransferKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bus := &swtpmtest.Bus{}
	_, _, b, t1, _ := review77LegacyReceiver(t, swtpmtest.WithBus(bus))

	// What the other process's peer identity makes: T2 in this TPM.
	pk, cur, _, ok, err := b.readTransfer(ctx)
	if err != nil || !ok || cur.Name != t1 {
		t.Fatalf("the current T: %+v %v %v", cur, ok, err)
	}
	t2, t2Raw, err := b.createTransferKey(pk, false)
	if err != nil {
		t.Fatal(err)
	}

	// Process 1's peer identity; process 2's commits while process 1 makes
	// its T in the TPM (the same transaction newTransferKey makes).
	done := false
	var otherErr error
	bus.Set(swtpmtest.BeforeOnce(swtpmtest.Code(tpm2.TPMCCCreate), &done, func(transport.TPM) {
		otherErr = b.st.Update(ctx, func(tx *store.Tx) error {
			_, _, err := recordTransferKey(tx, t2, t2Raw, cur.Name, true)
			return err
		})
	}))
	peer, err := b.PeerIdentity(ctx)
	bus.Set(nil)
	if !done || otherErr != nil {
		t.Fatalf("the other process's commit: ran %v, %v", done, otherErr)
	}
	// The mend: the transfer key the other process recorded stands, and
	// process 1 publishes it (its own T is not recorded).
	if err != nil || peer.ParentName != t2.Name {
		t.Errorf("process 1's peer identity: %v, published %.16s…, want the other process's T2 %.16s…", err, peer.ParentName, t2.Name)
	}

	_, ltr, _, lok, err := b.readTransferRec(ctx, legacyTransferRec)
	if err != nil {
		t.Fatal(err)
	}
	if !lok || ltr.Name != t1 {
		t.Errorf("the state's transfer-legacy record names %.16s… (present %v), want the legacy T %.16s…: its blob is gone", ltr.Name, lok, t1)
	}
	if err := review77Sign(t, b, "old"); err != nil {
		t.Errorf("the key received under the legacy T after two peer identities: %v (lost for good)", err)
	}
}
