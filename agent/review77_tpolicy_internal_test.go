package agent

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/tpm"
)

// Held: root on the receiver on a good boot (A4: T's authValue, the PK's
// authValue and policy, the TPM) authorizes through T's new policy no
// command but the three it is for. Through the value branches (Import,
// Load), in a session keyed by T's value with every step right:
// TPM2_Create under T, TPM2_ObjectChangeAuth of T, TPM2_Certify of T and
// TPM2_PolicySecret naming T are refused (TPM_RC_POLICY_CC). Through the
// activation branch (PolicySecret(PK) + CC(ActivateCredential)), which A4
// satisfies: TPM2_Certify of T is refused (TPM_RC_POLICY_CC). The same
// branch does authorize T in the USER role of TPM2_ActivateCredential,
// as the credential's decryption key (keyHandle), not only as the object
// activated for: the control (a credential made in software to T's own
// public key, for T's name) opens. That is no way into a duplicate: the duplicate's
// outer wrapper has the credential's shape (HMAC over the ciphertext and
// the name, AES-CFB), but its seed is encrypted to T under the label
// "DUPLICATE", a credential's under "IDENTITY": a duplicate file's
// duplicate and seed given to ActivateCredential with T as keyHandle are
// refused (TPM_RC_SIZE: an ID object holds a digest, not a sensitive
// area), and a duplicate to T as small as a credential, for T's name,
// fails its integrity check (TPM_RC_INTEGRITY). A copy of T's public area with a private key of
// root's own (TPM2_LoadExternal), to which TPM2_Duplicate of the moved PK
// or a key bound to T could then go, is refused (fixedTPM).
func TestReview77TransferKeyPolicyAuthorizesNothingElse(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, b, _, _, dup := movedKey(t)
	if _, err := b.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup}); err != nil {
		t.Fatal(err)
	}
	if err := b.keys.EvictResident(); err != nil {
		t.Fatal(err)
	}
	pk, tr, raw, ok, err := b.readTransfer(ctx)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	srk, err := b.t.SRK()
	if err != nil {
		t.Fatal(err)
	}
	refused := func(what string, err error, rcs ...tpm2.TPMRC) {
		t.Helper()
		for _, rc := range rcs {
			if errors.Is(err, rc) {
				t.Logf("%s: refused: %v", what, err)
				return
			}
		}
		t.Errorf("%s: %v, want %v", what, err, rcs)
	}
	err = b.withTransfer(pk, tr, raw, true, func(l *loadedPK, tk transferKey) error {
		T := tk.Object
		if tk.user.Branch == nil {
			t.Fatal("the current T is a legacy one")
		}
		byValue := func(cc tpm2.TPMCC) *tpm.PolicySession {
			t.Helper()
			ps, err := b.t.StartSaltedPolicySession(tk.user.Value)
			if err != nil {
				t.Fatal(err)
			}
			if err := tk.user.Branch(ps, cc); err != nil {
				t.Fatal(err)
			}
			return ps
		}
		activation := func() *tpm.PolicySession {
			t.Helper()
			ps, err := b.t.StartSaltedPolicySession(nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := b.withPKPolicy(l, tpm2.TPMCCPolicySecret, func(s tpm2.Session) error { return ps.PolicySecretOf(l.pk, s) }); err != nil {
				t.Fatal(err)
			}
			if err := ps.PolicyCommandCode(tpm2.TPMCCActivateCredential); err != nil {
				t.Fatal(err)
			}
			if err := ps.PolicyOR(tk.branches); err != nil {
				t.Fatal(err)
			}
			return ps
		}
		for _, cc := range []tpm2.TPMCC{tpm2.TPMCCImport, tpm2.TPMCCLoad} {
			ps := byValue(cc)
			_, err := (tpm2.Create{ParentHandle: T.Auth(ps.Session()), InPublic: tpm2.New2B(catalog.TransferTemplate(nil))}).Execute(b.t)
			refused("TPM2_Create under T through branch "+fmt.Sprintf("%#x", uint32(cc)), err, tpm2.TPMRCPolicyCC)
			ps.Close()

			ps = byValue(cc)
			_, err = (tpm2.ObjectChangeAuth{ObjectHandle: T.Auth(ps.Session()), ParentHandle: srk.Named(), NewAuth: tpm2.TPM2BAuth{Buffer: []byte("root's")}}).Execute(b.t)
			refused("TPM2_ObjectChangeAuth of T through branch "+fmt.Sprintf("%#x", uint32(cc)), err, tpm2.TPMRCPolicyCC, tpm2.TPMRCAuthUnavailable)
			ps.Close()

			ps = byValue(cc)
			_, err = (tpm2.Certify{ObjectHandle: T.Auth(ps.Session()), SignHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHNull, Auth: tpm2.PasswordAuth(nil)}}).Execute(b.t)
			refused("TPM2_Certify of T through branch "+fmt.Sprintf("%#x", uint32(cc)), err, tpm2.TPMRCPolicyCC, tpm2.TPMRCAuthUnavailable)
			ps.Close()

			ps = byValue(cc)
			target, err := b.t.StartPolicySession(false)
			if err != nil {
				t.Fatal(err)
			}
			_, err = (tpm2.PolicySecret{AuthHandle: T.Auth(ps.Session()), PolicySession: target.Handle()}).Execute(b.t)
			refused("TPM2_PolicySecret naming T through branch "+fmt.Sprintf("%#x", uint32(cc)), err, tpm2.TPMRCPolicyCC)
			target.Close()
			ps.Close()
		}
		ps := activation()
		_, err := (tpm2.Certify{ObjectHandle: T.Auth(ps.Session()), SignHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHNull, Auth: tpm2.PasswordAuth(nil)}}).Execute(b.t)
		refused("TPM2_Certify of T through the activation branch", err, tpm2.TPMRCPolicyCC)
		ps.Close()

		// T as a credential's decryption key (its USER role), activated
		// for T itself (its ADMIN role): both through the activation
		// branch.
		encap, err := tpm2.ImportEncapsulationKey(&T.Public)
		if err != nil {
			t.Fatal(err)
		}
		secret := []byte("root's control secret")
		blob, seed, err := tpm2.CreateCredential(rand.Reader, encap, T.Name.Buffer, secret)
		if err != nil {
			t.Fatal(err)
		}
		activate := func(blob, seed []byte) ([]byte, error) {
			admin := activation()
			defer admin.Close()
			user := activation()
			defer user.Close()
			rsp, err := (tpm2.ActivateCredential{ActivateHandle: T.Auth(admin.Session()), KeyHandle: T.Auth(user.Session()),
				CredentialBlob: tpm2.TPM2BIDObject{Buffer: blob}, Secret: tpm2.TPM2BEncryptedSecret{Buffer: seed}}).Execute(b.t)
			if err != nil {
				return nil, err
			}
			return rsp.CertInfo.Buffer, nil
		}
		if got, err := activate(blob, seed); err != nil || string(got) != string(secret) {
			t.Fatalf("control: a credential to T through the activation branch: %q %v", got, err)
		}
		// The duplicate's outer wrapper as a credential to T: too big
		// for one (an ID object holds a digest).
		if got, err := activate(dup.Duplicate, dup.Seed); err == nil {
			t.Errorf("the duplicate's outer wrapper opened as a credential to T: %x", got)
		} else {
			t.Logf("the duplicate as a credential to T: %v", err)
		}
		// A duplicate to T as small as a credential, for T's name (the
		// shape ActivateCredential takes): its seed is encrypted under
		// "DUPLICATE", and the TPM decrypts a credential's under
		// "IDENTITY", so it does not open: no duplicate's seed is used
		// by ActivateCredential.
		dBlob, dSeed, err := tpm2.CreateDuplicate(rand.Reader, encap, T.Name.Buffer, secret)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := activate(dBlob, dSeed); err == nil {
			t.Errorf("a duplicate to T opened as a credential to T: %q", got)
		} else if !errors.Is(err, tpm2.TPMRCIntegrity) && !errors.Is(err, tpm2.TPMRCSize) && !errors.Is(err, tpm2.TPMRCValue) {
			t.Errorf("a duplicate to T as a credential: %v, want its integrity refused", err)
		} else {
			t.Logf("a duplicate to T as a credential to T: %v", err)
		}

		// T's public area with root's private key, in the NULL hierarchy.
		k, err := ecdh.P256().GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		sens := tpm2.TPMTSensitive{SensitiveType: tpm2.TPMAlgECC,
			Sensitive: tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgECC, &tpm2.TPM2BECCParameter{Buffer: k.Bytes()})}
		lr, err := (tpm2.LoadExternal{InPublic: tpm2.New2B(T.Public), InPrivate: tpm2.New2B(sens), Hierarchy: tpm2.TPMRHNull}).Execute(b.t)
		if err == nil {
			b.t.Flush(lr.ObjectHandle)
			t.Error("T's public area loaded with a private key of root's own")
		} else {
			t.Logf("T's public area with root's private key: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
