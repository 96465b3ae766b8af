package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// dupThrough asks the TPM directly, around provd's checks, to duplicate key
// name to newParent through the key's duplication branch as its rule has
// it, with approval (nil: none) of approvedParent.
func dupThrough(t *testing.T, a *Agent, name string, newParent tpm2.NamedHandle, approval *policy.Approval, approvedParent []byte) error {
	t.Helper()
	ctx := context.Background()
	ks, err := a.readKeyState(ctx, name, true)
	if err != nil {
		t.Fatal(err)
	}
	rule, err := ks.rec.rule()
	if err != nil {
		t.Fatal(err)
	}
	objName, _ := hex.DecodeString(ks.rec.Object)
	expr, err := ks.rec.policyUnder(ks.pk, rule, objName)
	if err != nil {
		t.Fatal(err)
	}
	opts := ks.pk.opts
	opts.Branches = []int{1}
	if approval != nil {
		opts.Approved = []policy.Approved{{Policy: officer.DupApprovedExpr(ks.pk.expr, objName, approvedParent), Approval: approval}}
	}
	auth, _ := ks.objectAuth()
	obj, _, err := a.keyObject(ctx, ks)
	if err != nil {
		t.Fatal(err)
	}
	return a.withPolicySession(ks.pk.state.Policy, expr, opts, auth, func(s tpm2.Session) error {
		d, err := a.t.Duplicate(obj, s, newParent)
		clear(d.InnerKey)
		return err
	})
}

func signVerifies(t *testing.T, from, on *Agent, name string) {
	t.Helper()
	ctx := context.Background()
	pub, _, err := from.KeyPublic(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("moved"))
	sig, err := on.Sign(ctx, name, d[:], api.SignOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), d[:], sig) {
		t.Fatal("the moved key's signature does not verify with the origin's public key")
	}
}

// TestKeyBoundAtBirth: a key created --duplicable-to B goes to B with no
// approval, and the TPM sends it nowhere else: not to C, not as a backup
// (TPM_RH_NULL), whatever provd is asked; a peer whose EK does not chain is
// refused at birth.
func TestKeyBoundAtBirth(t *testing.T) {
	t.Parallel()
	envA, envB, envC := swtpmtest.Start(t), swtpmtest.Start(t), swtpmtest.Start(t)
	ctx := context.Background()
	a, b, c := provisioned(t, envA), provisioned(t, envB), provisioned(t, envC)
	peerB, err := b.PeerIdentity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	peerC, err := c.PeerIdentity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "bound", Type: "ecc-p256", DuplicableTo: &peerB, PeerPK: peerB.PKName, EKCA: caBundle(t, envA)}); !errors.Is(err, api.ErrUntrustedTPM) {
		t.Fatalf("bound to a peer whose EK does not chain: %v", err)
	}
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "bound", Type: "ecc-p256", DuplicableTo: &peerB, PeerPK: peerC.PKName, EKCA: caBundle(t, envB)}); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("bound to a peer file that is not the enrolled PK's: %v", err)
	}
	// Not without proof that B's transfer key lives in B's TPM.
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "bound", Type: "ecc-p256", DuplicableTo: &peerB, PeerPK: peerB.PKName, EKCA: caBundle(t, envB)}); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("bound without a residency proof: %v", err)
	}
	info, err := a.CreateKey(ctx, api.CreateRequest{Name: "bound", Type: "ecc-p256", DuplicableTo: &peerB, PeerPK: peerB.PKName, EKCA: caBundle(t, envB),
		Residency: provenTo(t, b, peerB, caBundle(t, envB))})
	if err != nil {
		t.Fatal(err)
	}
	if !info.Extractable {
		t.Fatalf("%+v", info)
	}
	d := sha256.Sum256([]byte("used at home"))
	if _, err := a.Sign(ctx, "bound", d[:], api.SignOptions{}); err != nil {
		t.Fatalf("use on the origin: %v", err)
	}
	if _, err := a.DupExport(ctx, api.DupExportRequest{Name: "bound", Peer: peerC, EKCA: caBundle(t, envC)}); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("to C: %v", err)
	}
	// An approval of the officer's (its KEK part names the key itself: the
	// device has no KEK, and a bound key is refused before one is read).
	if _, err := a.ExportKey(ctx, api.KeyExportRequest{Name: "bound", KEK: "kek", Approval: officertest.ApproveExport(t, ctx, a, "bound", "bound")}); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("a backup: %v", err)
	}
	// Around provd: the TPM refuses C's transfer key and TPM_RH_NULL.
	cParent := loadPeerParent(t, envA, peerC)
	err = dupThrough(t, a, "bound", cParent.Named(), nil, nil)
	envA.TPM.Flush(cParent.Handle)
	if !errors.Is(err, tpm2.TPMRCPolicyFail) {
		t.Fatalf("to C's transfer key, around provd: %v, want TPM_RC_POLICY_FAIL", err)
	}
	null := tpm2.NamedHandle{Handle: tpm2.TPMRHNull, Name: tpm2.TPM2BName{Buffer: officer.ExportParent}}
	if err := dupThrough(t, a, "bound", null, nil, nil); err == nil {
		t.Fatal("the TPM duplicated a bound key to TPM_RH_NULL")
	}
	// To B: no approval needed.
	dup, err := a.DupExport(ctx, api.DupExportRequest{Name: "bound", Peer: peerB, EKCA: caBundle(t, envB)})
	if err != nil {
		t.Fatal(err)
	}
	// B takes it only with its officer's approval of this key to its
	// transfer key (the file carries none: a bound key needs none to go).
	if _, err := b.DupImport(ctx, api.DupImportRequest{Name: "bound", Dup: dup}); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("import without the receiver's officer's approval: %v", err)
	}
	if _, err := b.DupImport(ctx, api.DupImportRequest{Name: "bound", Dup: dup, Approval: approveDup(t, a, "bound", peerB)}); err != nil {
		t.Fatal(err)
	}
	signVerifies(t, a, b, "bound")
}

// TestKeyApprovedByAnAuthority: a key created --duplicable-by AUTHORITY
// goes to a peer with the authority's approval, not the officer's; and
// never as a backup, even with the authority's approval of one (the TPM
// refuses TPM_RH_NULL for encryptedDuplication keys).
func TestKeyApprovedByAnAuthority(t *testing.T) {
	t.Parallel()
	envA, envB := swtpmtest.Start(t), swtpmtest.Start(t)
	ctx := context.Background()
	a, b := provisioned(t, envA), provisioned(t, envB)
	peer, err := b.PeerIdentity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	authority, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(authority.Public())
	authPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256", DuplicableBy: authPEM}); err != nil {
		t.Fatal(err)
	}
	ks, _ := a.readKeyState(ctx, "k", true)
	obj, _ := hex.DecodeString(ks.rec.Object)
	tName, _ := hex.DecodeString(peer.ParentName)
	pk := ks.pk.state.Policy.digest()
	byOfficer, _ := officer.ApproveDuplication(officertest.Key(), pk, obj, tName)
	byAuthority, _ := officer.ApproveDuplication(authority, pk, obj, tName)
	if _, err := a.DupExport(ctx, api.DupExportRequest{Name: "k", Peer: peer, Approval: byOfficer, EKCA: caBundle(t, envB)}); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("with the officer's approval: %v", err)
	}
	// A backup, with the authority's approval of TPM_RH_NULL, around provd.
	nullApproval, _ := officer.ApproveDuplication(authority, pk, obj, officer.ExportParent)
	null := tpm2.NamedHandle{Handle: tpm2.TPMRHNull, Name: tpm2.TPM2BName{Buffer: officer.ExportParent}}
	if err := dupThrough(t, a, "k", null, nullApproval, officer.ExportParent); err == nil {
		t.Fatal("the TPM duplicated an encryptedDuplication key to TPM_RH_NULL")
	} else if !errors.Is(err, tpm2.TPMRCHierarchy) {
		t.Logf("to TPM_RH_NULL: %v", err)
	}
	dup, err := a.DupExport(ctx, api.DupExportRequest{Name: "k", Peer: peer, Approval: byAuthority, EKCA: caBundle(t, envB)})
	if err != nil {
		t.Fatal(err)
	}
	// The authority's approval sends it; B's officer's takes it.
	if _, err := b.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup}); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("import with the authority's approval alone: %v", err)
	}
	if _, err := b.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup, Approval: byOfficer}); err != nil {
		t.Fatal(err)
	}
	signVerifies(t, a, b, "k")
}
