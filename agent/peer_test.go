package agent

import (
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// approveDup is the officer's approval to duplicate key name of a to the
// peer's transfer key.
func approveDup(t *testing.T, a *Agent, name string, peer api.PeerIdentity) *policy.Approval {
	t.Helper()
	ks, err := a.readKeyState(context.Background(), name, true)
	if err != nil {
		t.Fatal(err)
	}
	obj, _ := hex.DecodeString(ks.rec.Object)
	parent, _ := hex.DecodeString(peer.ParentName)
	ap, err := officer.ApproveDuplication(officertest.Key(), ks.pk.state.Policy.digest(), obj, parent)
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

func provisioned(t *testing.T, env *swtpmtest.Env) *Agent {
	return testAgent(t, env, &api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
}

// senderAndPeer provisions A on envA and B on envB, and creates A's
// extractable P-256 key "k": the start of every test that moves a key
// module to module. It returns both agents and B's peer identity.
func senderAndPeer(t *testing.T, envA, envB *swtpmtest.Env) (a, b *Agent, peer api.PeerIdentity) {
	t.Helper()
	ctx := context.Background()
	a, b = provisioned(t, envA), provisioned(t, envB)
	peer, err := b.PeerIdentity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256", Extractable: true}); err != nil {
		t.Fatal(err)
	}
	return a, b, peer
}

// TestDupToAPeer: an extractable key moves from TPM A to TPM B, module to
// module, and signs there with the same public key; nothing of it crosses
// either bus in the clear. A peer whose EK certificate does not chain to
// the roots given is refused before anything is wrapped (exit 15); the
// duplicate imports on no other TPM; a key not born extractable does not
// go; the officer's approval is of this key to this peer only.
func TestDupToAPeer(t *testing.T) {
	t.Parallel()
	recA, recB := new(swtpmtest.Recorder), new(swtpmtest.Recorder)
	envA := swtpmtest.Start(t, swtpmtest.WithRecorder(recA))
	envB := swtpmtest.Start(t, swtpmtest.WithRecorder(recB))
	envC := swtpmtest.Start(t)
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
	if again, err := b.PeerIdentity(ctx); err != nil || again.ParentName != peerB.ParentName {
		t.Fatalf("a second peer identity names another transfer key: %v", err)
	}
	for _, r := range []api.CreateRequest{{Name: "p256", Type: "ecc-p256", Extractable: true}, {Name: "rsa", Type: "rsa-2048", Extractable: true}, {Name: "fixed", Type: "ecc-p256"}} {
		if _, err := a.CreateKey(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	rootsB := caBundle(t, envB)

	// Refusals before anything is wrapped.
	ap := approveDup(t, a, "p256", peerB)
	if _, err := a.DupExport(ctx, api.DupExportRequest{Name: "p256", Peer: peerB, Approval: ap}); !errors.Is(err, api.ErrUntrustedTPM) || api.ExitCode(err) != api.ExitIdentity {
		t.Fatalf("no roots: %v", err)
	}
	if _, err := a.DupExport(ctx, api.DupExportRequest{Name: "p256", Peer: peerB, Approval: ap, EKCA: caBundle(t, envA)}); !errors.Is(err, api.ErrUntrustedTPM) || api.ExitCode(err) != api.ExitIdentity {
		t.Fatalf("a peer whose EK does not chain to the roots given: %v", err)
	}
	if _, err := a.DupExport(ctx, api.DupExportRequest{Name: "fixed", Peer: peerB, Approval: approveDup(t, a, "fixed", peerB), EKCA: rootsB}); !errors.Is(err, api.ErrNotExtractable) {
		t.Fatalf("a key not born extractable: %v", err)
	}
	if _, err := a.DupExport(ctx, api.DupExportRequest{Name: "p256", Peer: peerC, Approval: ap, EKCA: caBundle(t, envC)}); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("B's approval used for C: %v", err)
	}
	if _, err := a.DupExport(ctx, api.DupExportRequest{Name: "p256", Peer: peerB, EKCA: rootsB}); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("no approval: %v", err)
	}
	// Around provd, to the TPM itself: the officer's approval of B's
	// transfer key does not take the key to C's; the TPM refuses at
	// TPM2_Duplicate (PolicyDuplicationSelect names B's).
	cParent := loadPeerParent(t, envA, peerC)
	bName, _ := hex.DecodeString(peerB.ParentName)
	err = duplicateTo(t, a, "p256", cParent.Named(), bName, officertest.Key())
	envA.TPM.Flush(cParent.Handle)
	if !errors.Is(err, tpm2.TPMRCPolicyFail) {
		t.Fatalf("duplicating to C with the approval of B: %v, want the TPM to refuse (TPM_RC_POLICY_FAIL)", err)
	}

	for _, name := range []string{"p256", "rsa"} {
		recA.Reset()
		recB.Reset()
		dup, err := a.DupExport(ctx, api.DupExportRequest{Name: name, Peer: peerB, Approval: approveDup(t, a, name, peerB), EKCA: rootsB})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		// C cannot take what was made for B, not even as C's own transfer key.
		if _, err := c.DupImport(ctx, api.DupImportRequest{Name: name, Dup: dup}); !errors.Is(err, api.ErrNotPermitted) {
			t.Fatalf("%s imported on C: %v", name, err)
		}
		info, err := b.DupImport(ctx, api.DupImportRequest{Name: name, Dup: dup})
		if err != nil {
			t.Fatalf("%s on B: %v", name, err)
		}
		if info.Kind != api.KindTransferred || !info.Extractable {
			t.Fatalf("%+v", info)
		}
		pubA, _, err := a.KeyPublic(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		d := sha256.Sum256([]byte("signed on B"))
		sig, err := b.Sign(ctx, name, d[:], api.SignOptions{})
		if err != nil {
			t.Fatalf("%s: sign on B: %v", name, err)
		}
		switch p := pubA.(type) {
		case *ecdsa.PublicKey:
			if !ecdsa.VerifyASN1(p, d[:], sig) {
				t.Fatal("B's signature does not verify with A's public key")
			}
		case *rsa.PublicKey:
			if err := rsa.VerifyPKCS1v15(p, crypto.SHA256, d[:], sig); err != nil {
				t.Fatal("B's signature does not verify with A's public key")
			}
		}
		ks, _ := a.readKeyState(ctx, name, true)
		keyAuth, _ := ks.objectAuth()
		for who, rec := range map[string]*swtpmtest.Recorder{"A": recA, "B": recB} {
			if off := rec.Leak(keyAuth); off >= 0 {
				t.Fatalf("%s: the key's authValue crossed %s's bus in the clear", name, who)
			}
		}
	}
	// Once more: the key moved, and B can move it on only with an approval.
	if _, err := b.DupImport(ctx, api.DupImportRequest{Name: "p256", Dup: api.DupFile{Format: 1}}); !errors.Is(err, api.ErrKeyExists) {
		t.Fatalf("a name taken: %v", err)
	}
}

// TestDupToAForgedTransferKey: someone between the devices replaces the
// peer identity's transfer key with a key of their own, made to look like
// B's transfer key (its policy names B's PK), and gets the officer to
// approve it. The sender wraps (the EK certificate is genuine), and the
// attacker can open the outer wrapper; the inner wrapper's key is a
// credential to B's EK for the forged key's name, and B's TPM releases it to
// nobody: not for the public area loaded alone, not with the private part
// (a fixedTPM key cannot be loaded from outside), not for a look-alike
// with fixedTPM clear (another name), and not for a real look-alike that
// another process made in B's TPM under the SRK (found by the second
// review, when a transfer key was activated with its own authValue): the
// policy wants PolicySecret(B's PK), which only B's provd can give.
func TestDupToAForgedTransferKey(t *testing.T) {
	t.Parallel()
	envA, envB := swtpmtest.Start(t), swtpmtest.Start(t)
	ctx := context.Background()
	a, b, peer := senderAndPeer(t, envA, envB)
	evil, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	evilDH, _ := evil.ECDH()
	pt := evilDH.PublicKey().Bytes()
	pkB, _ := hex.DecodeString(peer.PKName)
	fake := catalog.TransferTemplate(catalog.TransferPolicy(pkB))
	fake.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{X: tpm2.TPM2BECCParameter{Buffer: pt[1:33]}, Y: tpm2.TPM2BECCParameter{Buffer: pt[33:]}})
	fakeName, _ := tpm2.ObjectName(&fake)
	forged := peer
	forged.Parent = tpm2.Marshal(tpm2.New2B(fake))
	forged.ParentName = hex.EncodeToString(fakeName.Buffer)
	dup, err := a.DupExport(ctx, api.DupExportRequest{Name: "k", Peer: forged, Approval: approveDup(t, a, "k", forged), EKCA: caBundle(t, envB)})
	if err != nil {
		t.Fatalf("the sender wraps to a genuine EK: %v", err)
	}
	// The attacker, with B's TPM at hand (the EK's policy is anyone's).
	tp := envB.TPM
	cert, err := b.ekCertBySum(ctx, dup.EKCertSHA256)
	if err != nil {
		t.Fatal(err)
	}
	h, ekPub, ekTmpl, _, err := ekPublic(cert)
	if err != nil {
		t.Fatal(err)
	}
	ek, flushEK, err := tp.EK(h, ekPub, ekTmpl)
	if err != nil {
		t.Fatal(err)
	}
	defer flushEK()
	// What the attacker can put in the ADMIN session: the command code, and
	// anything else but PolicySecret(B's PK); or the object's authValue.
	activate := func(what string, obj tpm.Object, auth []byte) {
		t.Helper()
		defer tp.Flush(obj.Handle)
		ps, err := tp.StartPolicySession(false)
		if err != nil {
			t.Fatal(err)
		}
		defer ps.Close()
		if err := ps.PolicyCommandCode(tpm2.TPMCCActivateCredential); err != nil {
			t.Fatal(err)
		}
		for i, s := range []tpm2.Session{ps.Session(), tpm2.PasswordAuth(auth)} {
			if secret, err := tp.ActivateCredential(obj, s, ek, dup.CredentialBlob, dup.CredentialSecret); err == nil {
				t.Fatalf("%s: B's TPM released the credential (%d bytes)", what, len(secret))
			} else {
				t.Logf("%s (%s): %v", what, []string{"policy without the PK", "authValue"}[i], err)
			}
		}
	}
	// 1. The forged public area alone: no authValue to authorize ADMIN.
	o, err := tp.LoadPublic(fake)
	if err != nil {
		t.Fatal(err)
	}
	activate("public area alone", o, nil)
	// 2. With its private part: a fixedTPM key cannot come from outside.
	sens := &tpm2.TPMTSensitive{SensitiveType: tpm2.TPMAlgECC, AuthValue: tpm2.TPM2BAuth{Buffer: []byte("x")},
		Sensitive: tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgECC, &tpm2.TPM2BECCParameter{Buffer: ecdhBytes(t, evilDH)})}
	nonRestricted := fake
	if _, err := (tpm2.LoadExternal{InPublic: tpm2.New2B(fake), InPrivate: tpm2.New2B(*sens), Hierarchy: tpm2.TPMRHNull}).Execute(tp); err == nil {
		t.Fatal("a fixedTPM key loaded with its private part from outside")
	}
	// 3. fixedTPM clear (so it loads): another name, the credential does
	// not open for it.
	nonRestricted.ObjectAttributes.FixedTPM, nonRestricted.ObjectAttributes.FixedParent = false, false
	nonRestricted.ObjectAttributes.Restricted = false
	nonRestricted.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull}, Scheme: tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
		CurveID: tpm2.TPMECCNistP256, KDF: tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull}})
	rsp, err := (tpm2.LoadExternal{InPublic: tpm2.New2B(nonRestricted), InPrivate: tpm2.New2B(*sens), Hierarchy: tpm2.TPMRHNull}).Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	activate("a look-alike with fixedTPM clear", tpm.Object{Handle: rsp.ObjectHandle, Name: rsp.Name, Public: nonRestricted}, []byte("x"))
	// 4. Another process on B makes a real look-alike in B's TPM (the
	// SRK's authorization is empty), with an authValue of its own, and
	// that is what the swapped peer file names.
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	mine := []byte("another process's authValue")
	tb, err := tp.Create(srk, nil, catalog.TransferTemplate(catalog.TransferPolicy(pkB)), tpm.Sensitive{UserAuth: mine})
	if err != nil {
		t.Fatal(err)
	}
	tObj, err := tp.Load(srk, nil, tb)
	if err != nil {
		t.Fatal(err)
	}
	theirs := peer
	theirs.Parent = tpm2.Marshal(tb.Public)
	theirs.ParentName = hex.EncodeToString(tObj.Name.Buffer)
	dup, err = a.DupExport(ctx, api.DupExportRequest{Name: "k", Peer: theirs, Approval: approveDup(t, a, "k", theirs), EKCA: caBundle(t, envB)})
	if err != nil {
		tp.Flush(tObj.Handle)
		t.Fatalf("the sender wraps to a genuine EK: %v", err)
	}
	activate("a look-alike another process made in B's TPM", tObj, mine)
	// And B itself refuses it: not its transfer key.
	if _, err := b.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup}); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("B imported a duplicate for another transfer key: %v", err)
	}
}

// ecdhBytes is an ECDH private key's scalar.
func ecdhBytes(t *testing.T, k *ecdh.PrivateKey) []byte {
	t.Helper()
	return k.Bytes()
}

// loadPeerParent loads a peer's transfer key's public area into env's TPM,
// as a new parent for TPM2_Duplicate; the caller flushes it.
func loadPeerParent(t *testing.T, env *swtpmtest.Env, peer api.PeerIdentity) tpm.Object {
	t.Helper()
	pub, _, err := checkPeer(peer)
	if err != nil {
		t.Fatal(err)
	}
	o, err := env.TPM.LoadPublic(pub)
	if err != nil {
		t.Fatal(err)
	}
	return o
}
