package agent

import (
	"context"
	"encoding/hex"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// Held: a legacy transfer key that lives under the PK (made before PKs
// could move: transferRecord.Parent "", the legacy template with the
// activation policy), with a key received under it (as that provd
// recorded it: no parent named), goes through the mend as one under the
// SRK does: the key loads under it through the PK's policy and signs;
// peer identity makes a new T under the SRK and keeps the old one as
// "transfer-legacy" (its Parent kept: under the PK), under which the old
// key still signs; a key sent to the new T signs beside it; a second peer
// identity keeps the same T.
func TestReview77LegacyTransferKeyUnderThePK(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	envA, envB := swtpmtest.Start(t), swtpmtest.Start(t)
	a, b, _ := senderAndPeer(t, envA, envB)
	rootsB := caBundle(t, envB)

	// T1 under the PK, as an earlier provd made it.
	var in pkInputs
	if err := b.st.View(ctx, func(tx *store.Tx) (err error) {
		in, err = b.readPKInputs(tx)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	pkName, _ := hex.DecodeString(in.state.Name)
	auth, err := tpm.RandomAuth(objectAuthSize)
	if err != nil {
		t.Fatal(err)
	}
	var blob tpm.Blob
	if err := b.withLoadedPK(in, func(l *loadedPK) error {
		return b.withPKPolicy(l, tpm2.TPMCCCreate, func(s tpm2.Session) (err error) {
			blob, err = b.t.Create(l.pk, s, catalog.LegacyTransferTemplate(catalog.ActivationPolicy(pkName)), tpm.Sensitive{UserAuth: auth})
			return err
		})
	}); err != nil {
		t.Fatal(err)
	}
	name, err := blob.Name()
	if err != nil {
		t.Fatal(err)
	}
	tr := transferRecord{Name: hex.EncodeToString(name.Buffer), PK: in.state.Name, Auth: hex.EncodeToString(auth), CreatedAt: b.now().UTC()}
	if err := b.updateUnderPK(ctx, in.state.Name, func(tx *store.Tx) error {
		if err := tx.WriteBlob(transferRec, blob.Marshal()); err != nil {
			return err
		}
		return tx.Put(transferRec, tr)
	}); err != nil {
		t.Fatal(err)
	}
	certs, err := b.ekCertificates(ctx)
	if err != nil {
		t.Fatal(err)
	}
	legacy := api.PeerIdentity{Format: api.PeerFormat, EKCertificates: certs, Parent: tpm2.Marshal(blob.Public),
		ParentName: tr.Name, PKName: in.state.Name, PKPolicy: in.state.Policy.Digest, Officer: officerName(in.officer), CreatedAt: b.now().UTC()}

	// A duplicate made for it (as that provd did), imported under it.
	dup, err := a.dupExportChecked(ctx, api.DupExportRequest{Name: "k", Peer: legacy, Approval: approveDup(t, a, "k", legacy), EKCA: rootsB},
		map[string]string{}, legacyPeer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.DupImport(ctx, api.DupImportRequest{Name: "old", Dup: dup}); err != nil {
		t.Fatalf("import under the legacy T under the PK: %v", err)
	}
	if err := b.st.Update(ctx, func(tx *store.Tx) error {
		var r keyRecord
		if err := tx.Get(keyRecName("old"), &r); err != nil {
			return err
		}
		r.Parent = ""
		return tx.Put(keyRecName("old"), r)
	}); err != nil {
		t.Fatal(err)
	}
	if err := review77Sign(t, b, "old"); err != nil {
		t.Fatalf("sign under the legacy T under the PK: %v", err)
	}

	peer, err := b.PeerIdentity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if peer.ParentName == legacy.ParentName {
		t.Fatal("the legacy T is still published")
	}
	_, ltr, _, lok, err := b.readTransferRec(ctx, legacyTransferRec)
	if err != nil || !lok || ltr.Name != legacy.ParentName || ltr.Parent != "" {
		t.Fatalf("transfer-legacy: %+v %v %v", ltr, lok, err)
	}
	if err := review77Sign(t, b, "old"); err != nil {
		t.Errorf("sign under the kept legacy T under the PK: %v", err)
	}
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k2", Type: "ecc-p256", Extractable: true}); err != nil {
		t.Fatal(err)
	}
	dup2, err := a.DupExport(ctx, api.DupExportRequest{Name: "k2", Peer: peer, Approval: approveDup(t, a, "k2", peer), EKCA: rootsB})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.DupImport(ctx, api.DupImportRequest{Name: "k2", Dup: dup2}); err != nil {
		t.Fatalf("import under the new T: %v", err)
	}
	signVerifies(t, a, b, "k2")
	if err := review77Sign(t, b, "old"); err != nil {
		t.Errorf("sign under the legacy T after a key came under the new one: %v", err)
	}
	if again, err := b.PeerIdentity(ctx); err != nil || again.ParentName != peer.ParentName {
		t.Errorf("a second peer identity: %v", err)
	}
	if err := b.keys.EvictResident(); err != nil {
		t.Fatal(err)
	}
	if left, err := envB.TPM.Leftovers(); err != nil || len(left) != 0 {
		t.Errorf("left in the TPM: %v (%v)", left, err)
	}
}
