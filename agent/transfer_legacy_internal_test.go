package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// legacyTransferKey gives b the transfer key provd made before review 74
// (catalog.LegacyTransferTemplate: its USER role its authValue), as its
// current one, and returns the peer identity that names it.
func legacyTransferKey(t *testing.T, b *Agent) api.PeerIdentity {
	t.Helper()
	ctx := context.Background()
	pk, _, _, _, err := b.readTransfer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tr, raw, err := b.createTransferKey(pk, true)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := tpm.UnmarshalBlob(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.updateUnderPK(ctx, pk.state.Name, func(tx *store.Tx) error {
		if err := tx.WriteBlob(transferRec, raw); err != nil {
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
	return api.PeerIdentity{Format: api.PeerFormat, EKCertificates: certs, Parent: tpm2.Marshal(blob.Public),
		ParentName: tr.Name, PKName: pk.state.Name, PKPolicy: pk.state.Policy.Digest, Officer: officerName(pk.officer), CreatedAt: b.now().UTC()}
}

// legacyPeer is checkPeer as a provd before review 74 checked a peer file:
// a legacy transfer key of the PK it names is one.
func legacyPeer(p api.PeerIdentity) (tpm2.TPMTPublic, []byte, error) {
	pub, err := api.ParsePublicArea(p.Parent)
	if err != nil {
		return tpm2.TPMTPublic{}, nil, err
	}
	pkName, _ := hex.DecodeString(p.PKName)
	name, err := tpm2.ObjectName(pub)
	if err != nil || !catalog.IsLegacyTransferKey(*pub, pkName) || hex.EncodeToString(name.Buffer) != p.ParentName {
		return tpm2.TPMTPublic{}, nil, errors.New("not a legacy transfer key")
	}
	return *pub, name.Buffer, nil
}

// A device made its transfer key T before review 74, and received a key
// under it. After the mend: no sender sends to such a T (provd dup export
// refuses the peer file, exit 2); the key received under it still loads
// and signs, before and after peer identity makes the new T (which keeps
// the old one for it); a key sent to the new T signs beside it; and the
// new T's identity is a transfer key, the old one's is not.
func TestLegacyTransferKeyKeepsWhatCameUnderIt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	envA, envB := swtpmtest.Start(t), swtpmtest.Start(t)
	a, b, _ := senderAndPeer(t, envA, envB)
	legacy := legacyTransferKey(t, b)
	rootsB := caBundle(t, envB)

	// A sender refuses the legacy T before anything is wrapped.
	if _, err := a.DupExport(ctx, api.DupExportRequest{Name: "k", Peer: legacy, Approval: approveDup(t, a, "k", legacy), EKCA: rootsB}); !errors.Is(err, api.ErrBadInput) {
		t.Fatalf("dup export to a legacy transfer key: %v, want refused as no transfer key", err)
	}
	// A duplicate made for it before the mend (as that provd did).
	dup, err := a.dupExportChecked(ctx, api.DupExportRequest{Name: "k", Peer: legacy, Approval: approveDup(t, a, "k", legacy), EKCA: rootsB},
		map[string]string{}, legacyPeer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.DupImport(ctx, api.DupImportRequest{Name: "old", Dup: dup}); err != nil {
		t.Fatalf("import under the legacy T: %v", err)
	}
	// As an earlier provd recorded it: no parent named.
	if err := b.st.Update(ctx, func(tx *store.Tx) error {
		var r keyRecord
		if err := tx.Get(keyRecName("old"), &r); err != nil {
			return err
		}
		if r.Parent != legacy.ParentName {
			t.Errorf("the key's parent recorded: %q, want the legacy T %q", r.Parent, legacy.ParentName)
		}
		r.Parent = ""
		return tx.Put(keyRecName("old"), r)
	}); err != nil {
		t.Fatal(err)
	}
	sign := func(name string) {
		t.Helper()
		if err := b.keys.Drop(name); err != nil { // loaded afresh, under its T
			t.Fatal(err)
		}
		d := sha256.Sum256([]byte(name))
		if _, err := b.Sign(ctx, name, d[:], api.SignOptions{}); err != nil {
			t.Errorf("sign with %s: %v", name, err)
		}
	}
	sign("old")

	// peer identity makes the new T and keeps the old one.
	peer, err := b.PeerIdentity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if peer.ParentName == legacy.ParentName {
		t.Fatal("peer identity kept publishing the legacy transfer key")
	}
	if _, _, err := checkPeer(peer); err != nil {
		t.Fatalf("the new identity: %v", err)
	}
	np, _ := api.ParsePublicArea(peer.Parent)
	if np.ObjectAttributes.UserWithAuth {
		t.Error("the new transfer key has userWithAuth")
	}
	if again, err := b.PeerIdentity(ctx); err != nil || again.ParentName != peer.ParentName {
		t.Fatalf("a second peer identity names another transfer key: %v", err)
	}
	sign("old")
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
	sign("k2")
	sign("old")
	// A duplicate made for the legacy T is refused once T is the new one.
	if _, err := b.DupImport(ctx, api.DupImportRequest{Name: "old2", Dup: dup}); !errors.Is(err, api.ErrNotPermitted) {
		t.Errorf("the old duplicate after the new T: %v, want refused as made for another transfer key", err)
	}
}

// A device adopted a moved PK under its transfer key made before review 74
// (provision --from): the PK lives under that legacy T, and its record
// names no PK for T's policy. After the mend the adopted PK still loads
// (by T's value) and its keys sign, before and after peer identity makes
// the new T.
func TestLegacyTransferKeyKeepsAnAdoptedPK(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	envA, envB := swtpmtest.Start(t), swtpmtest.Start(t)
	signer, authority := fleetSigner(t), fleetSigner(t)
	authPEM, err := policy.MarshalPublicKeyPEM(authority.Public())
	if err != nil {
		t.Fatal(err)
	}
	b := fleetDevice(t, envB, signer, api.ProvisionRequest{})
	legacy := legacyTransferKey(t, b)
	a := fleetDevice(t, envA, signer, api.ProvisionRequest{DuplicableBy: string(authPEM)})
	if _, err := a.DeriveKey(ctx, api.DeriveRequest{Name: "dk", Label: "fleet", Type: "ecc-p256",
		Approval: approveRecipe(t, a, officer.Recipe{Type: "ecc-p256", Label: "fleet"})}); err != nil {
		t.Fatal(err)
	}
	req := api.PKExportRequest{Peer: legacy, PeerPK: legacy.PKName, EKCA: caBundle(t, envB), Approval: approvePK(t, a, legacy, authority)}
	if _, err := a.PKExport(ctx, req); !errors.Is(err, api.ErrBadInput) {
		t.Fatalf("dup export --pk to a legacy transfer key: %v, want refused as no transfer key", err)
	}
	dup, err := a.pkExportChecked(ctx, req, map[string]string{}, legacyPeer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.ProvisionFrom(ctx, api.PKAdoptRequest{Dup: dup, Approval: approvePK(t, a, legacy, officertest.Key()), Force: true}); err != nil {
		t.Fatalf("adoption under the legacy T: %v", err)
	}
	// As an earlier provd recorded it: no PK named for T's policy.
	if err := b.st.Update(ctx, func(tx *store.Tx) error {
		var st pkState
		if err := tx.Get(recPK, &st); err != nil {
			return err
		}
		if st.Parent == nil || st.Parent.Name != legacy.ParentName || st.Parent.PK == "" {
			t.Errorf("the adopted PK's parent recorded: %+v, want the legacy T with its PK", st.Parent)
		}
		st.Parent.PK = ""
		return tx.Put(recPK, st)
	}); err != nil {
		t.Fatal(err)
	}
	b.forgetStatePK()
	signVerifies(t, a, b, "dk")
	if _, err := b.PeerIdentity(ctx); err != nil {
		t.Fatal(err)
	}
	b.forgetStatePK()
	signVerifies(t, a, b, "dk")
}

// The legacy transfer key stays while a key may live under it: a key
// record that does not read might be one (dropping T would lose it for
// good); once it is gone, the next key delete takes T along.
func TestLegacyTransferKeyStaysForARecordThatDoesNotRead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, _, b, t1, _ := review77LegacyReceiver(t)
	if _, err := b.PeerIdentity(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.CreateKey(ctx, api.CreateRequest{Name: "c", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	kept := func() bool {
		t.Helper()
		_, ltr, _, ok, err := b.readTransferRec(ctx, legacyTransferRec)
		if err != nil {
			t.Fatal(err)
		}
		return ok && ltr.Name == t1
	}
	if !kept() {
		t.Fatal("the legacy T was not kept for the key under it")
	}
	if err := b.st.Update(ctx, func(tx *store.Tx) error { return tx.Put(keyRecName("garbled"), []int{1}) }); err != nil {
		t.Fatal(err)
	}
	if err := b.DeleteKey(ctx, "old"); err != nil {
		t.Fatal(err)
	}
	if !kept() {
		t.Error("the legacy T dropped beside a key record that does not read")
	}
	if err := b.st.Update(ctx, func(tx *store.Tx) error { return tx.Delete(keyRecName("garbled")) }); err != nil {
		t.Fatal(err)
	}
	if err := b.DeleteKey(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	if kept() {
		t.Error("the legacy T kept with no key under it")
	}
}
