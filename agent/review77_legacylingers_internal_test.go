package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/tpm"
)

// FLAW (failed before the mend: "transfer-legacy" kept after its last key
// was deleted, and the old duplicate opened; mended: the legacy T's record
// and blob go with the last key under it, dropUnusedLegacyTransfer, at key
// delete, peer identity and adoption): the legacy transfer key T1 stays in the live state (record
// "transfer-legacy": its blob and authValue) for as long as the device
// lives, even once nothing is under it any more, so the remedy
// docs/transfer.md gives for a key received under it ("replaced by moving
// it again from its origin, to the new T") ends no exposure. The key
// moved again is the same key; its old duplicate file, made for T1, still
// opens on this device for root on a good boot (A4) at any later time
// (not only with "a copy of the state from before"): T1 loads under the
// SRK from the current state, its value authorizes TPM2_Rewrap(T1 ->
// TPM_RH_NULL) (userWithAuth), its ADMIN role (PolicySecret(PK), the same
// PK) gives the inner key. Steps: a key received under T1; peer identity
// makes T2 and keeps T1; the officer moves the key again to T2 ("k-new")
// and the operator deletes the old copy ("old"), as the doc says; later,
// root with a copy of the old duplicate file (it crossed the network and
// sat in a directory, and a duplicate is not secret by design) opens it
// with T1 from the state: the private scalar of the key that now lives
// under T2. Mend: remove "transfer-legacy" (record and blob) when the last
// key (and PK) under it is deleted or replaced (key delete, dup import of
// the same key, adoption, provision --force), or give the operator a
// command that drops it, and say in the doc that moving the same key
// again helps only once T1 is gone; only a new key helps against a copy
// of the state from before.
func TestReview77LegacyTransferKeyOutlivesWhatCameUnderIt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	envB, a, b, t1, oldDup := review77LegacyReceiver(t)
	peer, err := b.PeerIdentity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The remedy: the same key moved again, to the new T, and the old
	// copy deleted.
	dup, err := a.DupExport(ctx, api.DupExportRequest{Name: "k", Peer: peer, Approval: approveDup(t, a, "k", peer), EKCA: caBundle(t, envB)})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.DeleteKey(ctx, "old"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.DupImport(ctx, api.DupImportRequest{Name: "k-new", Dup: dup}); err != nil {
		t.Fatal(err)
	}
	review77SignsAs(t, a, "k", b, "k-new")

	_, ltr, _, lok, err := b.readTransferRec(ctx, legacyTransferRec)
	if err != nil {
		t.Fatal(err)
	}
	if lok {
		t.Errorf("nothing lives under the legacy T any more, and the state still holds it (%.16s…, its blob and value)", ltr.Name)
	}
	if lok && ltr.Name != t1 {
		t.Fatalf("the legacy record names %s, not T1 %s", ltr.Name, t1)
	}
	// A4 later, with a copy of the old duplicate file.
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
		t.Errorf("A4 opened the old duplicate with the legacy T kept in the live state, after the documented remedy: the private scalar (%d bytes) of the key now under the new T (k-new) is in root's hands", len(mustECC(t, sens)))
	}
}

// review77SignsAs checks that key onName on on signs as key fromName of
// from (the same key, moved).
func review77SignsAs(t *testing.T, from *Agent, fromName string, on *Agent, onName string) {
	t.Helper()
	ctx := context.Background()
	pub, _, err := from.KeyPublic(ctx, fromName)
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte(onName))
	sig, err := on.Sign(ctx, onName, d[:], api.SignOptions{})
	if err != nil {
		t.Fatalf("sign with %s: %v", onName, err)
	}
	if !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), d[:], sig) {
		t.Fatalf("%s does not sign as %s", onName, fromName)
	}
}
