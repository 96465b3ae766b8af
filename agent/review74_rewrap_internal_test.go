package agent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review74Rewrap sends TPM2_Rewrap (go-tpm v0.9.8 has no command for it)
// with oldParent authorized by its authValue in a password session, as
// anyone holding that value does: inDuplicate, the object's name and
// inSymSeed in, outDuplicate and outSymSeed back. newParent is
// TPM_RH_NULL or a loaded object's handle (no authorization).
func review74Rewrap(tp transport.TPM, oldParent tpm2.TPMHandle, oldAuth []byte, newParent tpm2.TPMHandle, dup, name, seed []byte) (outDup, outSeed []byte, err error) {
	var b []byte
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMSTSessions))
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(tpm2.TPMCCRewrap))
	b = binary.BigEndian.AppendUint32(b, uint32(oldParent))
	b = binary.BigEndian.AppendUint32(b, uint32(newParent))
	b = binary.BigEndian.AppendUint32(b, uint32(4+2+1+2+len(oldAuth)))
	b = binary.BigEndian.AppendUint32(b, uint32(tpm2.TPMRSPW))
	b = append(b, 0, 0, 1) // empty nonce, continueSession
	b = binary.BigEndian.AppendUint16(b, uint16(len(oldAuth)))
	b = append(b, oldAuth...)
	for _, p := range [][]byte{dup, name, seed} {
		b = binary.BigEndian.AppendUint16(b, uint16(len(p)))
		b = append(b, p...)
	}
	binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
	return review74RewrapAnswer(tp.Send(b))
}

// review74RewrapAnswer reads TPM2_Rewrap's answer: outDuplicate and
// outSymSeed, or the TPM's refusal.
func review74RewrapAnswer(rsp []byte, err error) (outDup, outSeed []byte, _ error) {
	if err != nil {
		return nil, nil, err
	}
	if len(rsp) < 10 {
		return nil, nil, errors.New("TPM2_Rewrap: short answer")
	}
	if rc := tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10])); rc != tpm2.TPMRCSuccess {
		return nil, nil, fmt.Errorf("TPM2_Rewrap: %w", rc)
	}
	// parameterSize, then TPM2B_PRIVATE outDuplicate, TPM2B_ENCRYPTED_SECRET outSymSeed.
	p := rsp[14:]
	read := func() ([]byte, error) {
		if len(p) < 2 || len(p) < 2+int(binary.BigEndian.Uint16(p)) {
			return nil, errors.New("TPM2_Rewrap: malformed answer")
		}
		n := int(binary.BigEndian.Uint16(p))
		v := bytes.Clone(p[2 : 2+n])
		p = p[2+n:]
		return v, nil
	}
	if outDup, err = read(); err != nil {
		return nil, nil, err
	}
	if outSeed, err = read(); err != nil {
		return nil, nil, err
	}
	return outDup, outSeed, nil
}

// review74OpenOnTheReceiver is A4 on the receiver B (root on a good boot:
// B's state directory and TPM) with a copy of a duplicate file made for
// B's transfer key T. It runs provd's own activation (T's ADMIN role:
// PolicySecret(B's PK), which B's PK policy and the state's object
// authValue satisfy on a good boot, then CC(ActivateCredential)), which
// gives the inner wrapper's key; then TPM2_Rewrap with oldParent T (its
// USER role: T's authValue from the state) and newParent TPM_RH_NULL,
// which strips the outer wrapper; then the inner wrapper is opened in
// software. It returns the duplicated object's sensitive area, or the
// step that failed.
func review74OpenOnTheReceiver(t *testing.T, b *Agent, dup api.DupFile) (*tpm2.TPMTSensitive, error) {
	t.Helper()
	return review74OpenUnder(t, b, transferRec, dup)
}

// review74OpenUnder is review74OpenOnTheReceiver with the transfer key of
// state record rec (transferRec, or legacyTransferRec: review 77).
func review74OpenUnder(t *testing.T, b *Agent, rec string, dup api.DupFile) (*tpm2.TPMTSensitive, error) {
	t.Helper()
	ctx := context.Background()
	pk, tr, traw, ok, err := b.readTransferRec(ctx, rec)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		return nil, fmt.Errorf("no transfer key %q in the state", rec)
	}
	cert, err := b.ekCertBySum(ctx, dup.EKCertSHA256)
	if err != nil {
		t.Fatal(err)
	}
	ekHandle, ekPub, ekTmpl, _, err := ekPublic(cert)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := api.ParsePublicArea(dup.Public)
	if err != nil {
		t.Fatal(err)
	}
	name, err := tpm2.ObjectName(pub)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.keys.EvictResident(); err != nil {
		t.Fatal(err)
	}
	tauth, err := tr.auth()
	if err != nil {
		t.Fatal(err)
	}
	var sens *tpm2.TPMTSensitive
	err = b.withTransfer(pk, tr, traw, true, func(l *loadedPK, tk transferKey) error {
		tobj := tk.Object
		secret, err := b.activate(l, tk, ekHandle, ekPub, ekTmpl, dup)
		if err != nil {
			return fmt.Errorf("activation: %w", err)
		}
		defer clear(secret)
		inner := secret[:16]
		stripped, seed, err := review74Rewrap(b.t, tobj.Handle, tauth, tpm2.TPMRHNull, dup.Duplicate, name.Buffer, dup.Seed)
		if err != nil {
			// By T's value in a password session: refused (userWithAuth
			// clear). Then through T's policy, each branch its value
			// satisfies, in a session of root's own making, and one for
			// Rewrap itself (no such branch: PolicyOR refuses).
			errs := []error{err}
			for _, cc := range []tpm2.TPMCC{tpm2.TPMCCImport, tpm2.TPMCCLoad, tpm2.TPMCCRewrap} {
				stripped, seed, err = review74RewrapByPolicy(t, b.t, tobj, tauth, cc, tk.branches, tpm2.TPMRHNull, dup.Duplicate, name.Buffer, dup.Seed)
				if err == nil {
					break
				}
				errs = append(errs, fmt.Errorf("through T's branch for %v: %w", cc, err))
			}
			if err != nil {
				return errors.Join(errs...)
			}
		}
		if len(seed) != 0 {
			return fmt.Errorf("TPM2_Rewrap to TPM_RH_NULL gave a seed of %d bytes", len(seed))
		}
		sens, err = tpm.OpenInnerDuplicate(inner, name.Buffer, stripped)
		if err != nil {
			return fmt.Errorf("the inner wrapper: %w", err)
		}
		return nil
	})
	return sens, err
}

// review74RewrapByPolicy sends TPM2_Rewrap with oldParent (T) authorized
// through T's policy as root can satisfy it with T's authValue: a policy
// session of its own (unsalted, unbound: its HMAC key is the authValue
// alone), PolicyAuthValue, PolicyCommandCode(cc), PolicyOR(branches), and
// the command's HMAC computed as the TPM checks it (Part 1, 19.6).
func review74RewrapByPolicy(t *testing.T, tp transport.TPM, oldParent tpm.Object, auth []byte, cc tpm2.TPMCC, branches [][]byte, newParent tpm2.TPMHandle, dup, name, seed []byte) (outDup, outSeed []byte, err error) {
	t.Helper()
	nonce := make([]byte, 16)
	sas, err := (tpm2.StartAuthSession{TPMKey: tpm2.TPMRHNull, Bind: tpm2.TPMRHNull, NonceCaller: tpm2.TPM2BNonce{Buffer: nonce},
		SessionType: tpm2.TPMSEPolicy, Symmetric: tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull}, AuthHash: tpm2.TPMAlgSHA256}).Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	h := sas.SessionHandle
	defer (tpm2.FlushContext{FlushHandle: h}).Execute(tp)
	if _, err := (tpm2.PolicyAuthValue{PolicySession: h}).Execute(tp); err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.PolicyCommandCode{PolicySession: h, Code: cc}).Execute(tp); err != nil {
		t.Fatal(err)
	}
	var or tpm2.TPMLDigest
	for _, d := range branches {
		or.Digests = append(or.Digests, tpm2.TPM2BDigest{Buffer: d})
	}
	if _, err := (tpm2.PolicyOr{PolicySession: h, PHashList: or}).Execute(tp); err != nil {
		return nil, nil, fmt.Errorf("TPM2_PolicyOR: %w", err)
	}
	var params []byte
	for _, p := range [][]byte{dup, name, seed} {
		params = binary.BigEndian.AppendUint16(params, uint16(len(p)))
		params = append(params, p...)
	}
	cp := sha256.New()
	cp.Write(binary.BigEndian.AppendUint32(nil, uint32(tpm2.TPMCCRewrap)))
	cp.Write(oldParent.Name.Buffer)
	cp.Write(binary.BigEndian.AppendUint32(nil, uint32(newParent))) // a permanent handle's name
	cp.Write(params)
	caller := []byte("root's own nonce")
	const attrs = 1                 // continueSession
	m := hmac.New(sha256.New, auth) // sessionKey (none: unsalted, unbound) || authValue
	m.Write(cp.Sum(nil))
	m.Write(caller)
	m.Write(sas.NonceTPM.Buffer)
	m.Write([]byte{attrs})
	mac := m.Sum(nil)
	var b []byte
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMSTSessions))
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(tpm2.TPMCCRewrap))
	b = binary.BigEndian.AppendUint32(b, uint32(oldParent.Handle))
	b = binary.BigEndian.AppendUint32(b, uint32(newParent))
	b = binary.BigEndian.AppendUint32(b, uint32(4+2+len(caller)+1+2+len(mac)))
	b = binary.BigEndian.AppendUint32(b, uint32(h))
	b = binary.BigEndian.AppendUint16(b, uint16(len(caller)))
	b = append(b, caller...)
	b = append(b, attrs)
	b = binary.BigEndian.AppendUint16(b, uint16(len(mac)))
	b = append(b, mac...)
	b = append(b, params...)
	binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
	return review74RewrapAnswer(tp.Send(b))
}

// review74IsPrivateOf reports whether sens holds the private key of the
// ECC P-256 public area pub (the scalar gives the point).
func review74IsPrivateOf(t *testing.T, pub tpm2.TPMTPublic, sens *tpm2.TPMTSensitive) bool {
	t.Helper()
	d, err := sens.Sensitive.ECC()
	if err != nil {
		t.Fatalf("the sensitive area holds no ECC scalar: %v", err)
	}
	pk, err := catalog.PublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	want, err := pk.(*ecdsa.PublicKey).ECDH()
	if err != nil {
		t.Fatal(err)
	}
	priv, err := ecdh.P256().NewPrivateKey(d.Buffer)
	if err != nil {
		return false
	}
	return priv.PublicKey().Equal(want)
}

// FLAW (failed before the mend: TPM2_Rewrap(T -> TPM_RH_NULL) by T's
// authValue stripped the outer wrapper; mended: T's USER role is its
// policy's, one branch each for TPM2_Import and TPM2_Load, so Rewrap is
// refused by value, TPM_RC_AUTH_UNAVAILABLE, and through either branch,
// TPM_RC_POLICY_CC; review74RewrapByPolicy tries both): an extractable
// key moved module to module (dup export with the
// officer's approval of B's transfer key T, as TestDupToAPeer moves it)
// is opened in software by root on the receiving device on a good boot
// (A4: B's state directory, B's TPM) from the duplicate file: provd's own
// activation gives the inner wrapper's key (T's ADMIN role is
// PolicySecret(B's PK), which B's PK policy and the state's object
// authValue satisfy), and TPM2_Rewrap(oldParent T, authorized in its USER
// role by T's authValue from the state; newParent TPM_RH_NULL) strips the
// outer wrapper: the TPM never sees the object's public area in Rewrap,
// so neither the key's policy nor its attributes are asked. The key's
// private scalar is then in A4's hands, against "A4 on the receiver gets
// the key into the TPM, as provd does, and no further" (docs/transfer.md).
// The attack must fail.
func TestReview74ReceiverRootRewrapsADuplicateOpen(t *testing.T) {
	t.Parallel()
	_, b, _, _, dup := movedKey(t)
	pub, err := api.ParsePublicArea(dup.Public)
	if err != nil {
		t.Fatal(err)
	}
	sens, err := review74OpenOnTheReceiver(t, b, dup)
	if err == nil {
		defer tpm.ClearSensitive(sens)
		if review74IsPrivateOf(t, *pub, sens) {
			t.Errorf("A4 on the receiver (T's authValue and B's PK policy, from B's state, on a good boot) opened the duplicate in software: activation gave the inner key, TPM2_Rewrap(T -> TPM_RH_NULL) stripped the outer wrapper; the moved key's private scalar (%d bytes) is in root's hands", len(mustECC(t, sens)))
		} else {
			t.Errorf("the duplicate opened, but its sensitive area is not the key's")
		}
	} else {
		t.Logf("refused: %v", err)
	}
	// The genuine import still works after: nothing in the attack left a
	// mark provd would see.
	if _, err := b.DupImport(context.Background(), api.DupImportRequest{Name: "k", Dup: dup}); err != nil {
		t.Errorf("the genuine import after the attack: %v", err)
	}
}

func mustECC(t *testing.T, s *tpm2.TPMTSensitive) []byte {
	t.Helper()
	d, err := s.Sensitive.ECC()
	if err != nil {
		t.Fatal(err)
	}
	return d.Buffer
}

// review74OpenBlob opens in software a blob under a storage parent whose
// seedValue is seed (TPM 2.0 Part 1, 23.3.2: symKey = KDFa(SHA-256,
// seed, "STORAGE", name, "", 128), AES-128-CFB with the IV the blob
// carries after its integrity digest (the reference code's
// SensitiveToPrivate: useIV); the integrity HMAC under KDFa(seed,
// "INTEGRITY") over the IV, ciphertext and name is checked), as root does
// with a PK's private area: the child's sensitive area.
func review74OpenBlob(seed []byte, blob tpm.Blob) (*tpm2.TPMTSensitive, error) {
	pub, err := blob.Public.Contents()
	if err != nil {
		return nil, err
	}
	name, err := tpm2.ObjectName(pub)
	if err != nil {
		return nil, err
	}
	priv := blob.Private.Buffer
	if len(priv) < 2+sha256.Size || int(binary.BigEndian.Uint16(priv)) != sha256.Size {
		return nil, errors.New("not a SHA-256 protected blob")
	}
	integrity, enc := priv[2:2+sha256.Size], priv[2+sha256.Size:]
	hk := tpm2.KDFa(crypto.SHA256, seed, "INTEGRITY", nil, nil, 256)
	m := hmac.New(sha256.New, hk)
	m.Write(enc)
	m.Write(name.Buffer)
	if !hmac.Equal(m.Sum(nil), integrity) {
		return nil, errors.New("the blob's integrity does not verify under this seed")
	}
	if len(enc) < 2+aes.BlockSize || int(binary.BigEndian.Uint16(enc)) != aes.BlockSize {
		return nil, errors.New("the blob carries no IV")
	}
	iv, enc := enc[2:2+aes.BlockSize], enc[2+aes.BlockSize:]
	sk := tpm2.KDFa(crypto.SHA256, seed, "STORAGE", name.Buffer, nil, 128)
	c, err := aes.NewCipher(sk)
	if err != nil {
		return nil, err
	}
	plain := make([]byte, len(enc))
	defer clear(plain)
	//lint:ignore SA1019 the TPM's storage wrapper is AES-CFB (Part 1, 23.3.2)
	cipher.NewCFBDecrypter(c, iv).XORKeyStream(plain, enc)
	s2b, err := tpm2.Unmarshal[tpm2.TPM2BSensitive](plain)
	if err != nil {
		return nil, err
	}
	return s2b.Contents()
}

// FLAW (failed before the mend, as the key's above; mended the same way):
// a movable PK moved to its peer (provision --duplicable-to B on A,
// dup export --pk, as TestMovablePK moves it) is opened in software by
// root on the receiving device on a good boot (A4: B's state directory
// and TPM) from the PK's duplicate file, the same way as a key
// (TestReview74ReceiverRootRewrapsADuplicateOpen): provd's activation
// gives the inner key, TPM2_Rewrap(T -> TPM_RH_NULL) strips the outer
// wrapper. The PK's encryptedDuplication does not stop it: it is checked
// at TPM2_Duplicate and TPM2_Import, and TPM2_Rewrap never sees the
// public area. With the PK's seedValue every blob under the PK opens in
// software: here the private scalar of a key created on A without
// --extractable ("never leaves its TPM"), from its blob. The attack must
// fail.
func TestReview74ReceiverRootRewrapsAMovedPKOpen(t *testing.T) {
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
	a := fleetDevice(t, envA, signer, api.ProvisionRequest{DuplicableTo: &peerB, PeerPK: peerB.PKName, Residency: provenTo(t, b, peerB, rootsB),
		EKCA: append(caBundle(t, envA), rootsB...)})
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "fixed", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	ks, err := a.readKeyState(ctx, "fixed", true)
	if err != nil {
		t.Fatal(err)
	}
	if ks.rec.Extractable {
		t.Fatal("the fixed key is extractable")
	}
	fixedBlob, err := tpm.UnmarshalBlob(ks.keyBlob)
	if err != nil {
		t.Fatal(err)
	}
	fixedPub, err := fixedBlob.Public.Contents()
	if err != nil {
		t.Fatal(err)
	}
	dup, err := a.PKExport(ctx, api.PKExportRequest{Peer: peerB, PeerPK: peerB.PKName, EKCA: rootsB})
	if err != nil {
		t.Fatal(err)
	}
	pkPub, err := api.ParsePublicArea(dup.Public)
	if err != nil {
		t.Fatal(err)
	}
	if !pkPub.ObjectAttributes.EncryptedDuplication {
		t.Fatal("the movable PK has no encryptedDuplication")
	}

	pkSens, err := review74OpenOnTheReceiver(t, b, dup)
	if err == nil {
		defer tpm.ClearSensitive(pkSens)
		if review74IsPrivateOf(t, *pkPub, pkSens) {
			t.Errorf("A4 on the receiver opened the moved PK's duplicate in software (activation, then TPM2_Rewrap(T -> TPM_RH_NULL)): the PK's private scalar and seedValue (%d bytes) are in root's hands, encryptedDuplication notwithstanding", len(pkSens.SeedValue.Buffer))
		}
		fixed, err := review74OpenBlob(pkSens.SeedValue.Buffer, fixedBlob)
		if err == nil {
			defer tpm.ClearSensitive(fixed)
			if review74IsPrivateOf(t, *fixedPub, fixed) {
				t.Errorf("with the PK's seedValue, the blob of a key created without --extractable opened in software: its private scalar is in root's hands")
			}
		} else {
			t.Logf("the fixed key's blob: %v", err)
		}
	} else {
		t.Logf("refused: %v", err)
	}
	// The genuine adoption still works after.
	if _, err := b.ProvisionFrom(ctx, api.PKAdoptRequest{Dup: dup, Approval: approvePK(t, a, peerB, officertest.Key()), Force: true}); err != nil {
		t.Errorf("the genuine adoption after the attack: %v", err)
	}
}

// The harness's control: review74RewrapByPolicy's session and HMAC are
// right, so its refusals above are the transfer key's policy, not a
// malformed attack. A storage key of root's own whose policy has a branch
// PolicyAuthValue + PolicyCommandCode(TPM2_Rewrap) passes the TPM's
// authorization with it (the Rewrap then fails on the seed, made for
// another key: TPM_RC_INTEGRITY or another parameter's error), and a
// wrong value does not (TPM_RC_AUTH_FAIL, TPM_RC_BAD_AUTH).
func TestReview74RewrapHarnessPassesAuthorization(t *testing.T) {
	t.Parallel()
	_, b, _, _, dup := movedKey(t)
	pub, err := api.ParsePublicArea(dup.Public)
	if err != nil {
		t.Fatal(err)
	}
	name, err := tpm2.ObjectName(pub)
	if err != nil {
		t.Fatal(err)
	}
	byValue := func(cc tpm2.TPMCC) []byte {
		d, err := policy.Policy{policy.AuthValue{}, policy.CommandCode{CC: cc}}.Digest(tpm2.TPMAlgSHA256)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	branches := [][]byte{byValue(tpm2.TPMCCRewrap), byValue(tpm2.TPMCCImport)}
	or, err := policy.Policy{policy.Or{Branches: []policy.Policy{
		{policy.AuthValue{}, policy.CommandCode{CC: tpm2.TPMCCRewrap}},
		{policy.AuthValue{}, policy.CommandCode{CC: tpm2.TPMCCImport}}}}}.Digest(tpm2.TPMAlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	auth := []byte("root's own key's value")
	if err := b.keys.EvictResident(); err != nil {
		t.Fatal(err)
	}
	srk, err := b.t.SRK()
	if err != nil {
		t.Fatal(err)
	}
	kb, err := b.t.Create(srk, nil, catalog.TransferTemplate(or), tpm.Sensitive{UserAuth: auth})
	if err != nil {
		t.Fatal(err)
	}
	k, err := b.t.Load(srk, nil, kb)
	if err != nil {
		t.Fatal(err)
	}
	defer b.t.Flush(k.Handle)
	_, _, err = review74RewrapByPolicy(t, b.t, k, auth, tpm2.TPMCCRewrap, branches, tpm2.TPMRHNull, dup.Duplicate, name.Buffer, dup.Seed)
	for _, rc := range []tpm2.TPMRC{tpm2.TPMRCAuthFail, tpm2.TPMRCBadAuth, tpm2.TPMRCPolicyFail, tpm2.TPMRCPolicyCC, tpm2.TPMRCAuthUnavailable} {
		if errors.Is(err, rc) {
			t.Fatalf("the harness's Rewrap through a Rewrap branch failed authorization: %v", err)
		}
	}
	if err == nil {
		t.Fatal("TPM2_Rewrap of a duplicate made for another key's seed succeeded")
	}
	t.Logf("authorized, then: %v", err)
	_, _, err = review74RewrapByPolicy(t, b.t, k, []byte("a wrong value"), tpm2.TPMCCRewrap, branches, tpm2.TPMRHNull, dup.Duplicate, name.Buffer, dup.Seed)
	if !errors.Is(err, tpm2.TPMRCAuthFail) && !errors.Is(err, tpm2.TPMRCBadAuth) {
		t.Errorf("the harness's Rewrap with a wrong value: %v, want TPM_RC_AUTH_FAIL or TPM_RC_BAD_AUTH", err)
	}
}
