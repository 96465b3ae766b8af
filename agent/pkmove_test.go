package agent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/keywrap"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// provenTo is the residency of peer's transfer key, as a verifier that
// trusts roots challenges it and rcv (the peer) proves it.
func provenTo(t testing.TB, rcv *Agent, peer api.PeerIdentity, roots []byte) *api.Residency {
	t.Helper()
	c, err := NewPeerChallenge(peer, roots, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	p, err := rcv.PeerProve(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	return &api.Residency{Challenge: c, Proof: p}
}

// fleetSigner is the policy signer of the fleet in these tests.
func fleetSigner(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// fleetDevice provisions a device of the fleet signed by signer (with the
// test officer), with req's movable fields, and installs a signed policy
// over its PCR 7, which creates D.
func fleetDevice(t testing.TB, env *swtpmtest.Env, signer *ecdsa.PrivateKey, req api.ProvisionRequest) *Agent {
	t.Helper()
	req.Officer, req.Signer, req.TrustOnFirstUse = officertest.Public(), signer.Public(), len(req.EKCA) == 0
	a := testAgent(t, env, nil)
	res, err := a.Provision(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	installFleetPolicy(t, a, signer, *res.Counter)
	return a
}

func installFleetPolicy(t testing.TB, a *Agent, signer crypto.Signer, version uint64) {
	t.Helper()
	cur, err := a.t.PCRRead(tpm2.TPMAlgSHA256, []int{7})
	if err != nil {
		t.Fatal(err)
	}
	sp, err := SignPKPolicy(signer, policy.PCRValues{Bank: policy.BankSHA256, Values: cur}, version, "", false)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := sp.MarshalJSON()
	if r, err := a.InstallPolicy(context.Background(), b); err != nil || !r.Satisfied {
		t.Fatalf("install: %+v %v", r, err)
	}
}

// approveRecipe is the officer's approval of a recipe on a, movable or not
// as a's PK is.
func approveRecipe(t testing.TB, a *Agent, r officer.Recipe) *policy.Approval {
	t.Helper()
	st, err := a.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	d, _ := hex.DecodeString(st.PolicyDigest)
	r.Movable = st.Movable != ""
	ap, err := officer.ApproveDerive(officertest.Key(), d, r)
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

// approvePK is the officer's approval of a's PK to the peer's transfer key.
func approvePK(t testing.TB, a *Agent, peer api.PeerIdentity, by crypto.Signer) *policy.Approval {
	t.Helper()
	st, err := a.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	d, _ := hex.DecodeString(st.PolicyDigest)
	pk, _ := hex.DecodeString(st.PKName)
	parent, _ := hex.DecodeString(peer.ParentName)
	ap, err := officer.ApproveDuplication(by, d, pk, parent)
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

// duplicatePK tries TPM2_Duplicate of a's PK to newParent through its
// duplication branch, around provd (what root with the state could do),
// with approval for a PK approved by an authority.
func duplicatePK(t *testing.T, a *Agent, newParent tpm2.NamedHandle, approval *policy.Approval, approvedParent []byte) error {
	t.Helper()
	return duplicatePKBranch(t, a, newParent, approval, approvedParent, len(pkUses))
}

// duplicatePKBranch is duplicatePK through branch of the PK's policy.
func duplicatePKBranch(t *testing.T, a *Agent, newParent tpm2.NamedHandle, approval *policy.Approval, approvedParent []byte, branch int) error {
	t.Helper()
	var in pkInputs
	if err := a.st.View(context.Background(), func(tx *store.Tx) (err error) {
		in, err = a.readPKInputs(tx)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	rule, err := in.state.rule()
	if err != nil {
		t.Fatal(err)
	}
	pkName, _ := hex.DecodeString(in.state.Name)
	opts := in.opts
	opts.Branches = []int{branch}
	if approval != nil {
		opts.Approved = []policy.Approved{{Policy: officer.DupApprovedExpr(in.expr, pkName, approvedParent), Approval: approval}}
	}
	if err := a.keys.EvictResident(); err != nil {
		t.Fatal(err)
	}
	return a.withLoadedPK(in, func(l *loadedPK) error {
		return a.withPolicySession(in.state.Policy, pkPolicy(in.expr, rule, pkName), opts, in.auth, func(s tpm2.Session) error {
			d, err := a.t.Duplicate(l.pk, s, newParent)
			clear(d.InnerKey)
			return err
		})
	})
}

// TestMovablePK: a PK provisioned --duplicable-to B moves from A to B with
// everything under it, and on B the same labels derive the same keys, the
// keys born on A sign there with A's public keys, and what A sealed
// unseals. It goes nowhere else: not to another peer's transfer key nor
// to TPM_RH_NULL (the TPM refuses both at TPM2_Duplicate), and a key born
// under it not extractable cannot be duplicated on its own. B adopts it
// only with its officer's approval, only when it holds no keys, and not
// when the sealed state was changed; each refusal leaves B as it was.
func TestMovablePK(t *testing.T) {
	t.Parallel()
	envA, envB, envC := swtpmtest.Start(t), swtpmtest.Start(t), swtpmtest.Start(t)
	ctx := context.Background()
	signer := fleetSigner(t)
	b := fleetDevice(t, envB, signer, api.ProvisionRequest{})
	c := fleetDevice(t, envC, signer, api.ProvisionRequest{})
	peerB, err := b.PeerIdentity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	peerC, err := c.PeerIdentity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rootsA, rootsB := caBundle(t, envA), caBundle(t, envB)

	// Only with a signed policy and an officer.
	authPEM, _ := policy.MarshalPublicKeyPEM(officertest.Public())
	bad := testAgent(t, envA, nil)
	for _, req := range []api.ProvisionRequest{
		{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}, DuplicableBy: string(authPEM)},
		{Signer: signer.Public(), TrustOnFirstUse: true, DuplicableBy: string(authPEM)},
	} {
		if _, err := bad.Provision(ctx, req); !errors.Is(err, api.ErrNotPermitted) {
			t.Fatalf("a movable PK without a signed policy or an officer: %v", err)
		}
	}
	bad.Close()

	// The refused provisions began a trail in bad's state directory: A's
	// own replaces its anchor (--force).
	a := fleetDevice(t, envA, signer, api.ProvisionRequest{Force: true, DuplicableTo: &peerB, PeerPK: peerB.PKName, Residency: provenTo(t, b, peerB, rootsB),
		EKCA: append(append([]byte(nil), rootsA...), rootsB...)})
	stA, err := a.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if stA.Movable != "to "+peerB.ParentName {
		t.Fatalf("status movable %q", stA.Movable)
	}
	// What enrollment checks: the PK's public area, whose name is the PK
	// name, says it moves and to where (its policy).
	pkPub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](stA.PKPublic)
	if err != nil {
		t.Fatal(err)
	}
	pkContents, _ := pkPub.Contents()
	if n, _ := tpm2.ObjectName(pkContents); hex.EncodeToString(n.Buffer) != stA.PKName || pkContents.ObjectAttributes.FixedTPM || !pkContents.ObjectAttributes.EncryptedDuplication {
		t.Fatalf("status pk_public: %+v", pkContents.ObjectAttributes)
	}
	// Keys of every kind under it.
	if _, err := a.DeriveKey(ctx, api.DeriveRequest{Name: "dk", Label: "telemetry", Type: "ecc-p256",
		Approval: approveRecipe(t, a, officer.Recipe{Type: "ecc-p256", Label: "telemetry"})}); err != nil {
		t.Fatal(err)
	}
	for _, r := range []api.CreateRequest{{Name: "fixed", Type: "ecc-p256"}, {Name: "ext", Type: "ecc-p256", Extractable: true}} {
		if _, err := a.CreateKey(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	sealed, err := a.Seal(ctx, api.SealRequest{Data: []byte("sealed on A")})
	if err != nil {
		t.Fatal(err)
	}
	// Under a movable PK every key carries encryptedDuplication: no
	// backup as PKCS#8 (the TPM would refuse TPM_RH_NULL), so no KEK
	// either; the PK is the keys' backup.
	movableRefusal := func(err error) bool {
		return errors.Is(err, api.ErrNotPermitted) && strings.Contains(err.Error(), "movable")
	}
	if _, err := a.ExportKey(ctx, api.KeyExportRequest{Name: "ext", KEK: "none"}); !movableRefusal(err) {
		t.Fatalf("a backup of a key under a movable PK: %v", err)
	}
	if _, err := a.ImportKey(ctx, api.KeyImportRequest{Name: "imp", KEK: "none", Wrapped: make([]byte, 40)}); !movableRefusal(err) {
		t.Fatalf("a backup imported under a movable PK: %v", err)
	}
	comps := [][]byte{bytes.Repeat([]byte{0x5a}, 16), bytes.Repeat([]byte{0x3c}, 16)}
	kek := api.KEKImportRequest{Name: "kek", Components: comps}
	for _, c := range comps {
		k, _ := keywrap.KCV(c)
		kek.KCVs = append(kek.KCVs, hex.EncodeToString(k[:]))
	}
	combined, _ := keywrap.Combine(comps)
	kcv, _ := keywrap.KCV(combined)
	kek.KCV = hex.EncodeToString(kcv[:])
	if _, err := a.ImportKEK(ctx, kek); !movableRefusal(err) {
		t.Fatalf("a KEK under a movable PK: %v", err)
	}

	// The TPM itself, around provd: the PK's branch names B's transfer
	// key; C's and TPM_RH_NULL are refused at TPM2_Duplicate.
	cParent := loadPeerParent(t, envA, peerC)
	err = duplicatePK(t, a, cParent.Named(), nil, nil)
	envA.TPM.Flush(cParent.Handle)
	if !errors.Is(err, tpm2.TPMRCPolicyFail) {
		t.Fatalf("the PK duplicated to C's transfer key: %v, want TPM_RC_POLICY_FAIL", err)
	}
	// The use branches (P, the command code of one use, PolicyAuthValue)
	// do not authorize TPM2_Duplicate to a parent of root's choosing: each
	// is bound to its command (review 70).
	srkA, _ := a.t.SRK()
	for b := range pkUses {
		if err := duplicatePKBranch(t, a, srkA.Named(), nil, nil, b); !errors.Is(err, tpm2.TPMRCPolicyCC) {
			t.Fatalf("the PK duplicated through its use branch %d: %v, want TPM_RC_POLICY_CC", b, err)
		}
	}
	null := tpm2.NamedHandle{Handle: tpm2.TPMRHNull, Name: tpm2.HandleName(tpm2.TPMRHNull)}
	if err := duplicatePK(t, a, null, nil, nil); err == nil {
		t.Fatal("the PK duplicated to TPM_RH_NULL")
	}
	// A key not born extractable stays with its PK: the TPM refuses to
	// duplicate it, with its policy satisfied.
	ks, err := a.readKeyState(ctx, "fixed", true)
	if err != nil {
		t.Fatal(err)
	}
	obj, _, err := a.keyObject(ctx, ks)
	if err != nil {
		t.Fatal(err)
	}
	srk, _ := a.t.SRK()
	err = a.withPolicySession(ks.pk.state.Policy, officer.ObjectPolicy(ks.pk.expr), ks.pk.opts, ks.pk.auth, func(s tpm2.Session) error {
		_, err := a.t.Duplicate(obj, s, srk.Named())
		return err
	})
	// Its policy has no duplication branch (TPM_RC_POLICY_FAIL), and it is
	// fixedParent (TPM_RC_ATTRIBUTES): either is the TPM's refusal.
	if !errors.Is(err, tpm2.TPMRCPolicyFail) && !errors.Is(err, tpm2.TPMRCAttributes) {
		t.Fatalf("duplicating a non-extractable key of a movable PK: %v, want the TPM to refuse", err)
	}
	// provd refuses C, and a peer it cannot verify.
	if _, err := a.PKExport(ctx, api.PKExportRequest{Peer: peerC, PeerPK: peerC.PKName, EKCA: caBundle(t, envC)}); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("PK export to C: %v", err)
	}
	if _, err := a.PKExport(ctx, api.PKExportRequest{Peer: peerB, PeerPK: peerB.PKName, EKCA: rootsA}); !errors.Is(err, api.ErrUntrustedTPM) {
		t.Fatalf("PK export to a B whose EK does not chain: %v", err)
	}

	dup, err := a.PKExport(ctx, api.PKExportRequest{Peer: peerB, PeerPK: peerB.PKName, EKCA: rootsB})
	if err != nil {
		t.Fatal(err)
	}
	stB, err := b.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	unchanged := func(what string) {
		t.Helper()
		now, err := b.Status(ctx)
		if err != nil || now.PKName != stB.PKName || now.Keys != stB.Keys {
			t.Fatalf("%s changed B: %+v %v", what, now, err)
		}
	}
	// Adopting replaces B's own PK: only with --force.
	if _, err := b.ProvisionFrom(ctx, api.PKAdoptRequest{Dup: dup, Approval: approvePK(t, a, peerB, officertest.Key())}); !errors.Is(err, api.ErrAlreadyProvisioned) {
		t.Fatalf("adopted without force: %v", err)
	}
	// B takes it only with its officer's approval of this PK to its T.
	if _, err := b.ProvisionFrom(ctx, api.PKAdoptRequest{Dup: dup, Force: true}); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("adopted without the officer's approval: %v", err)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := b.ProvisionFrom(ctx, api.PKAdoptRequest{Dup: dup, Approval: approvePK(t, a, peerB, other), Force: true}); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("adopted with another key's approval: %v", err)
	}
	unchanged("refused adoptions")
	ap := approvePK(t, a, peerB, officertest.Key())
	// C cannot take what was made for B.
	if _, err := c.ProvisionFrom(ctx, api.PKAdoptRequest{Dup: dup, Approval: approvePK(t, a, peerC, officertest.Key()), Force: true}); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("C adopted B's PK: %v", err)
	}
	// A changed state is refused after activation, and nothing changes.
	forged := dup
	forged.State = bytes.Clone(dup.State)
	forged.State[len(forged.State)/2] ^= 1
	if _, err := b.ProvisionFrom(ctx, api.PKAdoptRequest{Dup: forged, Approval: ap, Force: true}); !errors.Is(err, api.ErrTampered) {
		t.Fatalf("a changed state: %v", err)
	}
	unchanged("a changed state")
	// B must hold no keys of its own.
	if _, err := b.CreateKey(ctx, api.CreateRequest{Name: "mine", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.ProvisionFrom(ctx, api.PKAdoptRequest{Dup: dup, Approval: ap, Force: true}); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("adopted over keys of its own: %v", err)
	}
	if err := b.DeleteKey(ctx, "mine"); err != nil {
		t.Fatal(err)
	}

	res, err := b.ProvisionFrom(ctx, api.PKAdoptRequest{Dup: dup, Approval: ap, Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.PKName != stA.PKName || res.DName != stA.DName || !res.Adopted {
		t.Fatalf("adopted %+v, A is %+v", res, stA)
	}
	// The same keys on B: derived again from the same label, born on A,
	// and a new recipe derived on both.
	for _, name := range []string{"dk", "fixed", "ext"} {
		signVerifies(t, a, b, name)
	}
	for _, dev := range []*Agent{a, b} {
		if _, err := dev.DeriveKey(ctx, api.DeriveRequest{Name: "later", Label: "later", Type: "ecc-p256",
			Approval: approveRecipe(t, dev, officer.Recipe{Type: "ecc-p256", Label: "later"})}); err != nil {
			t.Fatal(err)
		}
	}
	pa, _, err := a.KeyPublic(ctx, "later")
	if err != nil {
		t.Fatal(err)
	}
	pb, _, err := b.KeyPublic(ctx, "later")
	if err != nil {
		t.Fatal(err)
	}
	if !pa.(*ecdsa.PublicKey).Equal(pb) {
		t.Fatal("the same label derives another key on B")
	}
	got, err := b.Unseal(ctx, sealed)
	if err != nil || string(got) != "sealed on A" {
		t.Fatalf("A's sealed secret on B: %q %v", got, err)
	}
	// B receives keys again, under a transfer key bound to the PK it has
	// now, and its trail verifies.
	if p, err := b.PeerIdentity(ctx); err != nil || p.PKName != stA.PKName || p.ParentName == peerB.ParentName {
		t.Fatalf("B's peer identity after adoption: %+v %v", p, err)
	}
	if rep, err := b.AuditVerify(ctx); err != nil {
		t.Fatalf("B's audit trail: %+v %v", rep, err)
	}
	// A second adoption of the same file: B has keys now.
	if _, err := b.ProvisionFrom(ctx, api.PKAdoptRequest{Dup: dup, Approval: ap, Force: true}); err == nil {
		t.Fatal("adopted twice")
	}
	d := sha256.Sum256([]byte("x"))
	if _, err := b.Sign(ctx, "dk", d[:], api.SignOptions{}); err != nil {
		t.Fatalf("B after a refused second adoption: %v", err)
	}
	// Zeroization takes the adopted PK, its parent and every key.
	if _, err := b.Zeroize(ctx, api.ZeroizeOptions{}); err != nil {
		t.Fatal(err)
	}
	if st, err := b.Status(ctx); err != nil || st.Provisioned {
		t.Fatalf("B after zeroize: %+v %v", st, err)
	}
}

// TestMovablePKByAuthority: a PK provisioned --duplicable-by an authority
// moves to the peer the authority approves, one at a time: without an
// approval provd refuses, and with the approval of one peer the TPM
// refuses another. A PK provisioned without either flag never leaves.
func TestMovablePKByAuthority(t *testing.T) {
	t.Parallel()
	envA, envB, envC := swtpmtest.Start(t), swtpmtest.Start(t), swtpmtest.Start(t)
	ctx := context.Background()
	signer, authority := fleetSigner(t), fleetSigner(t)
	authPEM, err := policy.MarshalPublicKeyPEM(authority.Public())
	if err != nil {
		t.Fatal(err)
	}
	b := fleetDevice(t, envB, signer, api.ProvisionRequest{})
	c := fleetDevice(t, envC, signer, api.ProvisionRequest{})
	peerB, err := b.PeerIdentity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	peerC, err := c.PeerIdentity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rootsC := caBundle(t, envC)
	// B's PK was provisioned without the flags: it never leaves.
	if _, err := b.PKExport(ctx, api.PKExportRequest{Peer: peerC, PeerPK: peerC.PKName, EKCA: rootsC}); !errors.Is(err, api.ErrNotExtractable) {
		t.Fatalf("a PK not provisioned movable: %v", err)
	}
	// Around provd, to the TPM itself, with the PK's policy satisfied: it
	// is fixedTPM and fixedParent, and its policy has no duplication
	// branch; TPM2_Duplicate refuses.
	var inB pkInputs
	if err := b.st.View(ctx, func(tx *store.Tx) (err error) {
		inB, err = b.readPKInputs(tx)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	cParentB := loadPeerParent(t, envB, peerC)
	err = b.withLoadedPK(inB, func(l *loadedPK) error {
		return b.withPKPolicy(l, tpm2.TPMCCLoad, func(s tpm2.Session) error {
			_, err := b.t.Duplicate(l.pk, s, cParentB.Named())
			return err
		})
	})
	envB.TPM.Flush(cParentB.Handle)
	if !errors.Is(err, tpm2.TPMRCPolicyFail) && !errors.Is(err, tpm2.TPMRCAttributes) {
		t.Fatalf("TPM2_Duplicate of a PK not provisioned movable: %v, want the TPM to refuse", err)
	}
	a := fleetDevice(t, envA, signer, api.ProvisionRequest{DuplicableBy: string(authPEM)})
	if _, err := a.DeriveKey(ctx, api.DeriveRequest{Name: "dk", Label: "fleet", Type: "ecc-p256",
		Approval: approveRecipe(t, a, officer.Recipe{Type: "ecc-p256", Label: "fleet"})}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.PKExport(ctx, api.PKExportRequest{Peer: peerC, PeerPK: peerC.PKName, EKCA: rootsC}); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("no approval: %v", err)
	}
	if _, err := a.PKExport(ctx, api.PKExportRequest{Peer: peerC, PeerPK: peerC.PKName, EKCA: rootsC, Approval: approvePK(t, a, peerC, officertest.Key())}); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("the officer's approval where the authority's is needed: %v", err)
	}
	toB := approvePK(t, a, peerB, authority)
	cParent := loadPeerParent(t, envA, peerC)
	bName, _ := hex.DecodeString(peerB.ParentName)
	err = duplicatePK(t, a, cParent.Named(), toB, bName)
	envA.TPM.Flush(cParent.Handle)
	if !errors.Is(err, tpm2.TPMRCPolicyFail) {
		t.Fatalf("the PK duplicated to C with the approval of B: %v, want TPM_RC_POLICY_FAIL", err)
	}
	dup, err := a.PKExport(ctx, api.PKExportRequest{Peer: peerC, PeerPK: peerC.PKName, EKCA: rootsC, Approval: approvePK(t, a, peerC, authority)})
	if err != nil {
		t.Fatal(err)
	}
	// The file carries the authority's approval; C wants its officer's.
	if _, err := c.ProvisionFrom(ctx, api.PKAdoptRequest{Dup: dup, Force: true}); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("adopted on the authority's approval alone: %v", err)
	}
	if _, err := c.ProvisionFrom(ctx, api.PKAdoptRequest{Dup: dup, Approval: approvePK(t, a, peerC, officertest.Key()), Force: true}); err != nil {
		t.Fatal(err)
	}
	signVerifies(t, a, c, "dk")
}

// TestUnprovenTransferKeyIsNotBound: a peer file with the peer's genuine
// EK certificates and PK name around a transfer key of someone else's (a
// software key whose private part they hold) passes every check a file
// alone allows; bound to it, a PK or key would go where root on the
// sender, choosing the inner key, opens it in software (found by review:
// the PK's private key and then every key under it). So nothing is bound
// to a transfer key that was not proven resident: the peer's TPM does not
// answer a challenge for the forged key, and its answer for its own does
// not prove the forged one.
func TestUnprovenTransferKeyIsNotBound(t *testing.T) {
	t.Parallel()
	envA, envB := swtpmtest.Start(t), swtpmtest.Start(t)
	ctx := context.Background()
	signer := fleetSigner(t)
	b := fleetDevice(t, envB, signer, api.ProvisionRequest{})
	peerB, err := b.PeerIdentity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rootsB := caBundle(t, envB)
	forged, _ := forgedPeer(t, peerB)
	a := testAgent(t, envA, nil)
	req := api.ProvisionRequest{Officer: officertest.Public(), Signer: signer.Public(), TrustOnFirstUse: true,
		DuplicableTo: &forged, PeerPK: peerB.PKName, EKCA: append(caBundle(t, envA), rootsB...)}
	if _, err := a.Provision(ctx, req); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("bound without proof: %v", err)
	}
	chal, err := NewPeerChallenge(forged, rootsB, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.PeerProve(ctx, chal); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("B proved a transfer key it does not hold: %v", err)
	}
	// B's genuine proof, for its own key, does not prove the forged one.
	req.Residency = provenTo(t, b, peerB, rootsB)
	if _, err := a.Provision(ctx, req); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("bound with the proof of another transfer key: %v", err)
	}
	if st, err := a.Status(ctx); err != nil || st.Provisioned {
		t.Fatalf("a refused provisioning left %+v %v", st, err)
	}
	// B's TPM is no oracle: a credential that is not a challenge (a
	// duplicate's: an inner key and an authValue) is not answered.
	dupLike, err := NewPeerChallenge(peerB, rootsB, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	ekPub, _, err := peerEK(peerB.EKCertificates, rootsB, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	encap, _ := tpm2.ImportEncapsulationKey(&ekPub)
	tName, _ := hex.DecodeString(peerB.ParentName)
	secret := bytes.Repeat([]byte{0x42}, len(api.ChallengePrefix)+api.ChallengeAnswerSize)
	dupLike.CredentialBlob, dupLike.CredentialSecret, err = tpm2.CreateCredential(rand.Reader, encap, tName, secret)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.PeerProve(ctx, dupLike); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("B answered a credential that is not a challenge: %v", err)
	}
}

// movablePair is a fleet device on envB and one on envA whose PK is
// movable, bound to B's proven transfer key: A, B, B's peer identity and
// B's EK roots.
func movablePair(t testing.TB, envA, envB *swtpmtest.Env) (a, b *Agent, peerB api.PeerIdentity, rootsB []byte) {
	t.Helper()
	a, b, peerB, rootsB, _ = movablePairSigned(t, envA, envB)
	return a, b, peerB, rootsB
}

// movablePairSigned is movablePair, with the fleet's policy signer.
func movablePairSigned(t testing.TB, envA, envB *swtpmtest.Env) (a, b *Agent, peerB api.PeerIdentity, rootsB []byte, signer *ecdsa.PrivateKey) {
	t.Helper()
	signer = fleetSigner(t)
	b = fleetDevice(t, envB, signer, api.ProvisionRequest{})
	peerB, err := b.PeerIdentity(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	rootsB = caBundle(t, envB)
	a = fleetDevice(t, envA, signer, api.ProvisionRequest{DuplicableTo: &peerB, PeerPK: peerB.PKName, Residency: provenTo(t, b, peerB, rootsB),
		EKCA: append(caBundle(t, envA), rootsB...)})
	return a, b, peerB, rootsB, signer
}

// TestMovablePKStaysOnABadBoot: after a bad boot nothing under the PK
// loads, and the PK does not leave either: its bound branch starts with
// the platform policy (found by review: without it, TPM2_Duplicate through
// branch 1, around provd, and dup export --pk moved the PK on a bad boot,
// and its keys signed on the peer).
func TestMovablePKStaysOnABadBoot(t *testing.T) {
	t.Parallel()
	envA, envB := swtpmtest.Start(t), swtpmtest.Start(t)
	ctx := context.Background()
	a, _, peerB, rootsB := movablePair(t, envA, envB)
	// Control on a good boot: the TPM duplicates it to B's T.
	parent := loadPeerParent(t, envA, peerB)
	if err := duplicatePK(t, a, parent.Named(), nil, nil); err != nil {
		t.Fatalf("control: %v", err)
	}
	m := sha256.Sum256([]byte("bad boot"))
	if err := envA.TPM.PCRExtend(7, tpm2.TPMAlgSHA256, m[:]); err != nil {
		t.Fatal(err)
	}
	err := duplicatePK(t, a, parent.Named(), nil, nil)
	envA.TPM.Flush(parent.Handle)
	if !errors.Is(err, tpm.ErrPolicyNotSatisfied) && !errors.Is(err, tpm2.TPMRCPolicyFail) && !errors.Is(err, tpm2.TPMRCValue) {
		t.Fatalf("TPM2_Duplicate of the bound PK on a bad boot: %v, want the TPM to refuse", err)
	}
	if _, err := a.PKExport(ctx, api.PKExportRequest{Peer: peerB, PeerPK: peerB.PKName, EKCA: rootsB}); api.ExitCode(err) != api.ExitPolicy {
		t.Fatalf("dup export --pk on a bad boot: %v, want exit %d", err, api.ExitPolicy)
	}
}

// BenchmarkPKMove: a movable PK with one derived key sent to a peer
// (tpm-cmds/op, the origin's), and its adoption there
// (adopt-tpm-cmds/op, measured once: a device adopts a PK once).
func BenchmarkPKMove(b *testing.B) {
	envA, envB := swtpmtest.Start(b), swtpmtest.Start(b)
	ctx := context.Background()
	a, rcv, peer, rootsB := movablePair(b, envA, envB)
	if _, err := a.DeriveKey(ctx, api.DeriveRequest{Name: "dk", Label: "l", Type: "ecc-p256",
		Approval: approveRecipe(b, a, officer.Recipe{Type: "ecc-p256", Label: "l"})}); err != nil {
		b.Fatal(err)
	}
	var dup api.DupFile
	var err error
	before := envA.TPM.Stats()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if dup, err = a.PKExport(ctx, api.PKExportRequest{Peer: peer, PeerPK: peer.PKName, EKCA: rootsB}); err != nil {
			b.Fatal(err)
		}
	}
	d := envA.TPM.Stats().Sub(before)
	b.StopTimer()
	b.ReportMetric(float64(d.Commands)/float64(b.N), "tpm-cmds/op")
	b.ReportMetric(float64(d.Wait.Microseconds())/float64(b.N), "tpm-µs/op")
	ap := approvePK(b, a, peer, officertest.Key())
	before = envB.TPM.Stats()
	if _, err := rcv.ProvisionFrom(ctx, api.PKAdoptRequest{Dup: dup, Approval: ap, Force: true}); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(envB.TPM.Stats().Sub(before).Commands), "adopt-tpm-cmds/op")
}
