package agent

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review78NewT makes, in b's TPM, the T another process's peer identity
// makes (catalog.TransferTemplate under the SRK), and returns its record
// and blob, as newTransferKey would record them.
func review78NewT(t *testing.T, b *Agent) (transferRecord, []byte) {
	t.Helper()
	pk, _, _, _, err := b.readTransfer(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	tr, raw, err := b.createTransferKey(pk, false)
	if err != nil {
		t.Fatal(err)
	}
	return tr, raw
}

// review78OtherPeerIdentity is the transaction another process's `provd
// peer identity` commits on a state whose current T is a legacy one
// (newTransferKey with keepLegacy, as of review 77): the legacy T kept as
// "transfer-legacy", the new T current, then dropUnusedLegacyTransfer.
func review78OtherPeerIdentity(tx *store.Tx, t2 transferRecord, t2Raw []byte) error {
	var cur transferRecord
	if err := tx.Get(transferRec, &cur); err != nil {
		return err
	}
	_, _, err := recordTransferKey(tx, t2, t2Raw, cur.Name, true)
	return err
}

// review78OtherDelete is the transaction another process's `provd key
// delete NAME` commits (DeleteKey, as of review 77).
func review78OtherDelete(tx *store.Tx, name string) error { return deleteKeyIn(tx, name) }

// review78ImportOrNothing fails t unless b's dup import of name (result
// err) either recorded nothing or recorded a key that loads and signs.
func review78ImportOrNothing(t *testing.T, b *Agent, name string, err error) {
	t.Helper()
	ctx := context.Background()
	r, rerr := b.keyRecord(ctx, name)
	if err != nil {
		if rerr == nil {
			t.Errorf("dup import failed (%v) and still recorded %q", err, name)
		}
		if !errors.Is(err, api.ErrStateChanged) {
			t.Errorf("dup import refused: %v (exit %d), want state_changed (exit 8): the transfer key replaced meanwhile", err, api.ExitCode(err))
		}
		return
	}
	if rerr != nil {
		t.Fatalf("dup import succeeded and %q is not recorded: %v", name, rerr)
	}
	_, ltr, _, lok, lerr := b.readTransferRec(ctx, legacyTransferRec)
	if lerr != nil {
		t.Fatal(lerr)
	}
	if err := review77Sign(t, b, name); err != nil {
		t.Errorf("dup import of %q reported success (exit 0), and the key never loads: %v (its record names parent %.16s…; the state's legacy T: present %v, %.16s…); the T its blob was imported under is gone from the state for good",
			name, err, r.Parent, lok, ltr.Name)
	}
}

// FLAW (failed before the mend: the key recorded under a T gone from the
// state, exit 0, and never loaded; mended: commitKey records a transferred
// key only while its T is in the state, else state_changed, exit 8):
// review 77's dropUnusedLegacyTransfer drops the legacy transfer key
// T1 while a dup import under it is in flight in another process, and the
// import then records (exit 0) a key whose only parent is gone: the key
// can never be loaded on this device again. Before review 77 the legacy T
// was always kept, and the same race lost nothing. Setting: a receiver
// upgraded past review 74 whose current T1 is still a legacy one with no
// key under it yet, and a duplicate an older sender made for T1 (in
// flight when the sender was upgraded: docs/transfer.md says such a file
// is imported as long as T1 is current). Process 1 (the operator's `provd
// dup import`) reads "transfer" (T1), checks the file against it, and
// goes to the TPM: activation, TPM2_Import under T1. In that window
// process 2 (the daemon serving a `peer identity`, or a provisioning
// script) commits its new T2: T1 goes to "transfer-legacy", and since no
// key names it yet, dropUnusedLegacyTransfer removes it at once (record
// and blob: a fixedTPM key's only copy). Process 1's commitKey checks only
// that the PK is the same (updateUnderPK) and records the key with Parent
// T1. Every later load: "lives under the transfer key, which the state no
// longer has" (exit 4); the sender's officer must approve a new move to
// T2, if the sender still has the key at all. Here process 2's commit is
// made by the test on process 1's TPM2_Import, with exactly the
// transaction newTransferKey commits (a real T2 in the same TPM). Mend:
// commitKey of a transferred key re-reads, in its transaction, that the T
// it names (rec.Parent) is still "transfer" or "transfer-legacy" of this
// PK, and refuses otherwise (ErrStateChanged, nothing recorded; the
// operator asks for a new duplicate); or peer identity and key delete keep
// a legacy T that a transaction in flight may still use (e.g. drop only
// through a store generation check that no import started since).
func TestReview78LegacyTDroppedUnderAnImportInFlight(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bus := &swtpmtest.Bus{}
	envA := swtpmtest.Start(t)
	envB := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	a, b, _ := senderAndPeer(t, envA, envB)
	legacy := legacyTransferKey(t, b)
	dup, err := a.dupExportChecked(ctx, api.DupExportRequest{Name: "k", Peer: legacy, Approval: approveDup(t, a, "k", legacy), EKCA: caBundle(t, envB)},
		map[string]string{}, legacyPeer)
	if err != nil {
		t.Fatal(err)
	}
	t2, t2Raw := review78NewT(t, b)

	done := false
	var otherErr error
	bus.Set(swtpmtest.BeforeOnce(swtpmtest.Code(tpm2.TPMCCImport), &done, func(transport.TPM) {
		otherErr = b.st.Update(ctx, func(tx *store.Tx) error { return review78OtherPeerIdentity(tx, t2, t2Raw) })
	}))
	_, err = b.DupImport(ctx, api.DupImportRequest{Name: "new", Dup: dup})
	bus.Set(nil)
	if !done || otherErr != nil {
		t.Fatalf("the other process's peer identity: ran %v, %v", done, otherErr)
	}
	review78ImportOrNothing(t, b, "new", err)
}

// FLAW (failed before the mend, as the one above; mended the same way):
// the same loss through `provd key delete`. The receiver holds "old"
// under its legacy T1 (current), and a second duplicate an older sender
// made for T1 ("k2"). Process 1 imports it (dup import: T1 read, TPM2_Import
// under T1); meanwhile process 2's peer identity keeps T1 as
// "transfer-legacy" ("old" lives under it) and makes T2, and process 3's
// `key delete old` (the documented remedy: the key moved again to T2, the
// old copy deleted) takes T1 with it (dropUnusedLegacyTransfer: no key
// names T1 any more, the one in flight is not recorded yet). Process 1
// then records "new" with Parent T1 (exit 0): it never loads again.
// Attacker: none needed (an operator, a script and the daemon on one
// state); A2 with the daemon's socket and key-delete rights can time it.
// Mend: as TestReview78LegacyTDroppedUnderAnImportInFlight (commitKey
// checks, in its transaction, that the T the key names is still there).
func TestReview78KeyDeleteDropsLegacyTUnderAnImportInFlight(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bus := &swtpmtest.Bus{}
	envB, a, b, t1, _ := review77LegacyReceiver(t, swtpmtest.WithBus(bus))
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k2", Type: "ecc-p256", Extractable: true}); err != nil {
		t.Fatal(err)
	}
	// The peer file of T1, as an older provd published it.
	pk, cur, raw, ok, err := b.readTransfer(ctx)
	if err != nil || !ok || cur.Name != t1 {
		t.Fatalf("the current T: %+v %v %v", cur, ok, err)
	}
	blob, err := tpm.UnmarshalBlob(raw)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := b.ekCertificates(ctx)
	if err != nil {
		t.Fatal(err)
	}
	legacy := api.PeerIdentity{Format: api.PeerFormat, EKCertificates: certs, Parent: tpm2.Marshal(blob.Public),
		ParentName: t1, PKName: pk.state.Name, PKPolicy: pk.state.Policy.Digest, Officer: officerName(pk.officer), CreatedAt: b.now().UTC()}
	dup, err := a.dupExportChecked(ctx, api.DupExportRequest{Name: "k2", Peer: legacy, Approval: approveDup(t, a, "k2", legacy), EKCA: caBundle(t, envB)},
		map[string]string{}, legacyPeer)
	if err != nil {
		t.Fatal(err)
	}
	t2, t2Raw := review78NewT(t, b)

	done := false
	var otherErr error
	bus.Set(swtpmtest.BeforeOnce(swtpmtest.Code(tpm2.TPMCCImport), &done, func(transport.TPM) {
		otherErr = b.st.Update(ctx, func(tx *store.Tx) error { return review78OtherPeerIdentity(tx, t2, t2Raw) })
		if otherErr != nil {
			return
		}
		var lok bool
		if otherErr = b.st.View(ctx, func(tx *store.Tx) error {
			lok = slices.Contains(tx.Objects(), legacyTransferRec)
			return nil
		}); otherErr == nil && !lok {
			t.Error("the other process's peer identity dropped T1 with \"old\" under it")
		}
		if otherErr == nil {
			otherErr = b.st.Update(ctx, func(tx *store.Tx) error { return review78OtherDelete(tx, "old") })
		}
	}))
	_, err = b.DupImport(ctx, api.DupImportRequest{Name: "new", Dup: dup})
	bus.Set(nil)
	if !done || otherErr != nil {
		t.Fatalf("the other processes' peer identity and key delete: ran %v, %v", done, otherErr)
	}
	review78ImportOrNothing(t, b, "new", err)
}
