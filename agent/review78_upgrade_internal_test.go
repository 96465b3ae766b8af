package agent

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/tpm"
)

// review78HasLegacyT says whether b's state holds the legacy transfer key
// (record or blob), whatever PK it names.
func review78HasLegacyT(t *testing.T, b *Agent) bool {
	t.Helper()
	var has bool
	if err := b.st.View(context.Background(), func(tx *store.Tx) error {
		has = slices.Contains(tx.Objects(), legacyTransferRec) || slices.Contains(tx.Blobs(), legacyTransferRec)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return has
}

// FLAW (failed before the mend: the unused legacy T stayed, and the old
// duplicate opened; mended: peer identity drops a legacy T with no key
// under it, dropLegacyTransfer): a state written by provd of reviews 74 to 76 that already followed
// the documented remedy keeps the legacy transfer key T1 in the live state
// after the upgrade, for good: review 77's mend drops "transfer-legacy"
// only inside key delete, adoption and newTransferKey, and peer identity
// calls newTransferKey only when the current T is not a transfer key. So
// on a device where, before the upgrade, peer identity made T2 (T1 kept),
// the key received under T1 was moved again to T2 and the old copy
// deleted (that provd's key delete did not drop T1), nothing the operator
// runs afterwards removes T1: not `peer identity` (which docs/transfer.md
// and the threat model's review-77 row name as one of the moments it
// goes), not signing, listing or importing. Attacker: A4 on a good boot,
// at any later time, with a copy of the old duplicate file (not secret by
// design): T1 loads under the SRK from the live state, its value
// authorizes TPM2_Rewrap(T1 -> TPM_RH_NULL), its activation gives the
// inner key: the private scalar of the key that now lives under T2, the
// exposure review 77 says is mended. Mend: peer identity (and best every
// operation that writes the state, or Agent.New once) runs
// dropUnusedLegacyTransfer whenever "transfer-legacy" exists, not only
// when it makes a new T; say in docs/transfer.md that an upgraded device
// loses T1 at the next such operation.
func TestReview78UpgradedStateKeepsAnUnusedLegacyT(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	envB, a, b, _, oldDup := review77LegacyReceiver(t)
	// Before the upgrade (reviews 74 to 76): peer identity makes T2 and
	// keeps T1; the key moved again to T2; the old copy deleted by that
	// provd's key delete (record and blob, T1 left).
	peer, err := b.PeerIdentity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dup, err := a.DupExport(ctx, api.DupExportRequest{Name: "k", Peer: peer, Approval: approveDup(t, a, "k", peer), EKCA: caBundle(t, envB)})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.st.Update(ctx, func(tx *store.Tx) error {
		if err := tx.Delete(keyRecName("old")); err != nil {
			return err
		}
		return tx.RemoveBlob(keyRecName("old"))
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.DupImport(ctx, api.DupImportRequest{Name: "k-new", Dup: dup}); err != nil {
		t.Fatal(err)
	}
	if !review78HasLegacyT(t, b) {
		t.Fatal("setup: the pre-review-77 state does not hold T1")
	}

	// After the upgrade: what the operator runs, peer identity first (the
	// doc's promise), then ordinary use.
	if p, err := b.PeerIdentity(ctx); err != nil || p.ParentName != peer.ParentName {
		t.Fatalf("peer identity after the upgrade: %v (%.16s…, want T2 %.16s…)", err, p.ParentName, peer.ParentName)
	}
	review77SignsAs(t, a, "k", b, "k-new")
	if _, err := b.ListKeys(ctx); err != nil {
		t.Fatal(err)
	}
	if !review78HasLegacyT(t, b) {
		return
	}
	t.Errorf("nothing lives under the legacy T1 any more, and after peer identity the upgraded state still holds it (record and blob)")
	sens, err := review74OpenUnder(t, b, legacyTransferRec, oldDup)
	if err != nil {
		t.Logf("the old duplicate does not open: %v", err)
		return
	}
	defer tpm.ClearSensitive(sens)
	pub, err := api.ParsePublicArea(oldDup.Public)
	if err != nil {
		t.Fatal(err)
	}
	if review74IsPrivateOf(t, *pub, sens) {
		t.Errorf("A4 opened the old duplicate with the T1 the upgraded state kept: the private scalar of the key now under T2 (k-new)")
	}
}

// Held: provision --force on a receiver that keeps a legacy transfer key
// with a key under it ("transfer-legacy", T1, and "old" received under
// it) leaves neither T1 nor the current T2 in the state: the zeroize that
// provision --force runs wipes the state (store.Wipe), the legacy record
// and blob included; the old key is gone with its PK (as every key), and
// peer identity then makes a new T for the new PK, with no legacy record
// beside it and no refusal (a stale "transfer-legacy" of the old PK would
// have been found by legacyTransferUsed only under the old PK's name).
func TestReview78ProvisionForceTakesTheLegacyT(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, _, b, t1, _ := review77LegacyReceiver(t)
	t2, err := b.PeerIdentity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !review78HasLegacyT(t, b) {
		t.Fatal("setup: peer identity did not keep T1 with \"old\" under it")
	}
	if _, err := b.Provision(ctx, api.ProvisionRequest{Force: true, Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatalf("provision --force: %v", err)
	}
	if review78HasLegacyT(t, b) {
		t.Errorf("provision --force left the legacy transfer key T1 (%.16s…) in the state", t1)
	}
	if _, _, _, ok, err := b.readTransfer(ctx); err != nil || ok {
		t.Errorf("provision --force left a transfer key of this PK: %v %v", ok, err)
	}
	if _, _, err := b.KeyPublic(ctx, "old"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("the key under T1 after provision --force: %v, want not found", err)
	}
	t3, err := b.PeerIdentity(ctx)
	if err != nil {
		t.Fatalf("peer identity after provision --force: %v", err)
	}
	if t3.ParentName == t1 || t3.ParentName == t2.ParentName {
		t.Errorf("peer identity after provision --force published an old T %.16s…", t3.ParentName)
	}
	if review78HasLegacyT(t, b) {
		t.Error("peer identity after provision --force recorded a legacy transfer key")
	}
}

// Held: a daemon's caches do not keep a transferred key usable once
// another process deleted it and its legacy transfer key went with it.
// The daemon (KeepSession) signs with "old", received under the legacy
// T1 (kept as "transfer-legacy" beside T2), so its object and state are
// cached (a.keys, keyStates); another process's `key delete old`
// (DeleteKey's transaction: the record, the blob, and T1 with the last
// key under it) commits; the daemon's next sign with "old" is refused
// (exit 4, not found: keyStates drops every entry at a new store Version,
// and the key's record is read again), the other key, under T2, still
// signs, and nothing is left in the TPM when the daemon closes.
func TestReview78DaemonCacheAfterTheLegacyTGoes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	envB, a, b, _, _ := review77LegacyReceiver(t)
	peer, err := b.PeerIdentity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k2", Type: "ecc-p256", Extractable: true}); err != nil {
		t.Fatal(err)
	}
	dup, err := a.DupExport(ctx, api.DupExportRequest{Name: "k2", Peer: peer, Approval: approveDup(t, a, "k2", peer), EKCA: caBundle(t, envB)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.DupImport(ctx, api.DupImportRequest{Name: "k2", Dup: dup}); err != nil {
		t.Fatal(err)
	}
	b.Close()
	d, err := New(Config{TPM: envB.TPM, StateDir: b.dir, KeepSession: true})
	if err != nil {
		t.Fatal(err)
	}
	review77SignsAs(t, a, "k", d, "old") // cached, warm
	review77SignsAs(t, a, "k", d, "old")
	if err := d.st.Update(ctx, func(tx *store.Tx) error { return review78OtherDelete(tx, "old") }); err != nil {
		t.Fatal(err)
	}
	if review78HasLegacyT(t, d) {
		t.Fatal("the other process's key delete kept T1")
	}
	dg := [32]byte{1}
	if _, err := d.Sign(ctx, "old", dg[:], api.SignOptions{}); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("the daemon's sign with the key another process deleted (T1 gone with it): %v, want not found", err)
	}
	review77SignsAs(t, a, "k2", d, "k2")
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if left, err := envB.TPM.Leftovers(); err != nil || len(left) != 0 {
		t.Errorf("left in the TPM after the daemon closed: %v (%v)", left, err)
	}
}
