package tpm_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"math/big"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// guardedSetup makes, under the pinned SRK, what a key use loads: a
// storage key whose policy is PolicyAuthValue (as the PK's policy ends in
// it) with authValue auth, and an ECC signing key under it with the same
// policy and authValue.
func guardedSetup(t *testing.T, tp *tpm.TPM) (srk tpm.Object, parent, child tpm.Blob, auth []byte) {
	t.Helper()
	srk, _, _ = pinnedGateBlob(t, tp)
	auth = newGateAuth(t)
	pt := policyAuthValueTemplate()
	var err error
	if parent, err = tp.Create(srk, nil, pt, tpm.Sensitive{UserAuth: auth}); err != nil {
		t.Fatal(err)
	}
	p, err := tp.Load(srk, nil, parent)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Flush(p.Handle)
	ps, err := tp.StartSaltedPolicySession(auth)
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	if err := ps.PolicyAuthValue(); err != nil {
		t.Fatal(err)
	}
	ct := tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, SignEncrypt: true,
		},
		AuthPolicy: pt.AuthPolicy,
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			CurveID: tpm2.TPMECCNistP256,
			Scheme:  tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
	}
	if child, err = tp.Create(p, ps.Session(), ct, tpm.Sensitive{UserAuth: auth}); err != nil {
		t.Fatal(err)
	}
	return srk, parent, child, auth
}

// One policy session guards the parent's load under the SRK (its extra
// session, keyed by its salt alone) and then authorizes the child's load
// under it and the child's use (keyed by the salt and the authValue):
// StartAuthSession, Load, PolicyAuthValue, Load, PolicyAuthValue, Sign,
// where a separate guard for the first load added a StartAuthSession and
// a FlushContext (issue 14). The TPM accepts each role's HMACs; the
// signature verifies; the parent's private area crossed the bus encrypted.
func TestOnePolicySessionGuardsThenAuthorizes(t *testing.T) {
	bus := &swtpmtest.Bus{}
	rec := &swtpmtest.Recorder{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus), swtpmtest.WithRecorder(rec))
	tp := env.TPM
	srk, parentBlob, childBlob, auth := guardedSetup(t, tp)
	wantParent, err := parentBlob.Name()
	if err != nil {
		t.Fatal(err)
	}

	log := &swtpmtest.CommandLog{}
	bus.Set(log.Answered)
	log.Start()
	rec.Reset()
	ps, err := tp.StartGuardingPolicySession(auth)
	if err != nil {
		t.Fatal(err)
	}
	parent, err := tp.LoadGuarded(srk, parentBlob, ps.Guard())
	if err != nil {
		t.Fatalf("guarded load: %v", err)
	}
	if !bytes.Equal(parent.Name.Buffer, wantParent.Buffer) {
		t.Fatalf("loaded %x, want %x", parent.Name.Buffer, wantParent.Buffer)
	}
	if err := ps.PolicyAuthValue(); err != nil {
		t.Fatal(err)
	}
	child, err := tp.Load(parent, ps.Session(), childBlob)
	if err != nil {
		t.Fatalf("the child's load in the same session: %v", err)
	}
	if err := ps.PolicyAuthValue(); err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("guarded"))
	sig, err := tp.Sign(child, ps.Session(), digest[:], tpm2.TPMTSigScheme{
		Scheme:  tpm2.TPMAlgECDSA,
		Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256}),
	})
	cmds := log.Stop()
	bus.Set(nil)
	if err != nil {
		t.Fatalf("sign in the same session: %v", err)
	}
	if w := []tpm2.TPMCC{tpm2.TPMCCStartAuthSession, tpm2.TPMCCLoad, tpm2.TPMCCPolicyAuthValue, tpm2.TPMCCLoad, tpm2.TPMCCPolicyAuthValue, tpm2.TPMCCSign}; !slices.Equal(cmds, w) {
		t.Errorf("sent %v, want %v", cmds, w)
	}
	if !ecdsaVerifies(t, child.Public, digest[:], sig) {
		t.Error("the signature does not verify")
	}
	if off := rec.Leak(parentBlob.Private.Buffer); off >= 0 {
		t.Errorf("the parent's private area crossed the bus as stored, at %d: the guard did not encrypt it", off)
	}
	if err := errors.Join(tp.Flush(child.Handle), tp.Flush(parent.Handle), ps.Close()); err != nil {
		t.Fatal(err)
	}
	nothingLeft(t, tp, "after the use")
}

// A1 on the guarded load: every change to the command or its answer that
// the guard's HMACs cover is refused as forged (the TPM checks the command
// HMAC of a session that does not authorize: a changed public area fails
// there, not at the private area's integrity), and nothing stays loaded
// once the sweep provd asks for has run. The session is not used again
// after a failure (the agent flushes it).
func TestGuardedLoadChangedOnTheBusIsForged(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	tp := env.TPM
	srk, parentBlob, _, auth := guardedSetup(t, tp)
	want, err := parentBlob.Name()
	if err != nil {
		t.Fatal(err)
	}
	for name, tamper := range map[string]func(cmd, rsp []byte) (newCmd, newRsp []byte){
		"the public area changed on its way in": func(cmd, _ []byte) ([]byte, []byte) {
			cmd = bytes.Clone(cmd)
			cmd[len(cmd)-1] ^= 1
			return cmd, nil
		},
		"the encrypted private area changed on its way in": func(cmd, _ []byte) ([]byte, []byte) {
			cmd = bytes.Clone(cmd)
			// The parameters follow the sessions: TPM2B_PRIVATE first;
			// its last byte is within the ciphertext.
			i := swtpmtest.ParamsOffset(cmd, 1)
			cmd[i+2+int(cmd[i])<<8|int(cmd[i+1])-1] ^= 1
			return cmd, nil
		},
		"the guard's decrypt bit cleared": func(cmd, _ []byte) ([]byte, []byte) {
			cmd = bytes.Clone(cmd)
			cmd[swtpmtest.SessionAttrOffset(cmd, 1, 1)] &^= 0x20
			return cmd, nil
		},
		"the name changed in the answer": func(_, rsp []byte) ([]byte, []byte) {
			rsp = bytes.Clone(rsp)
			i := bytes.Index(rsp, want.Buffer)
			if i < 0 {
				return nil, rsp
			}
			rsp[i+len(want.Buffer)-1] ^= 1
			return nil, rsp
		},
		"the guard's continueSession cleared in the answer": func(_, rsp []byte) ([]byte, []byte) {
			if rsp == nil {
				return nil, nil
			}
			rsp = bytes.Clone(rsp)
			// The last session in the answer is the guard's: nonce,
			// attributes, HMAC (32 bytes).
			rsp[len(rsp)-2-32-1] &^= 0x01
			return nil, rsp
		},
	} {
		t.Run(name, func(t *testing.T) {
			ps, err := tp.StartGuardingPolicySession(auth)
			if err != nil {
				t.Fatal(err)
			}
			ran := false
			bus.Set(tamperOn(tpm2.TPMCCLoad, tamper, &ran))
			obj, err := tp.LoadGuarded(srk, parentBlob, ps.Guard())
			bus.Set(nil)
			if !ran {
				t.Fatal("the attack did not run")
			}
			if !errors.Is(err, tpm.ErrResponseForged) && !(name == "the guard's decrypt bit cleared" && errors.Is(err, tpm2.TPMRCAttributes)) {
				// A session that neither authorizes, audits nor
				// encrypts is refused before its HMAC is checked
				// (TPM_RC_ATTRIBUTES); every other change fails an
				// HMAC: forged.
				t.Errorf("LoadGuarded: %v (0x%08x), want forged", err, uint32(obj.Handle))
			}
			if err == nil {
				t.Errorf("a changed load was answered: 0x%08x", uint32(obj.Handle))
			}
			if err := ps.Close(); err != nil {
				t.Fatal(err)
			}
			sweptAsAsked(t, tp)
		})
	}
}

// Only a session started to guard has a guard role, and a load is never
// left unguarded for want of one.
func TestOnlyAGuardingSessionGuards(t *testing.T) {
	env := swtpmtest.Start(t)
	tp := env.TPM
	srk, parentBlob, _, auth := guardedSetup(t, tp)
	ps, err := tp.StartSaltedPolicySession(auth)
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	if g := ps.Guard(); g != nil {
		t.Fatalf("a session started without a cipher has a guard role: %T", g)
	}
	if obj, err := tp.LoadGuarded(srk, parentBlob, nil); err == nil {
		t.Fatalf("loaded 0x%08x with no guard", uint32(obj.Handle))
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// A secret session (StartSecretPolicySession) guards its parent's load,
// then authorizes the sealed object's load and the unseal, and decrypts the
// secret the TPM encrypted on its way out, keyed by the session key and the
// authValue without its trailing zeros as the TPM keys it: for authValues
// with trailing zeros, a zero inside, all zeros, and none.
func TestSecretSessionGuardsThenUnseals(t *testing.T) {
	rec := &swtpmtest.Recorder{}
	env := swtpmtest.Start(t, swtpmtest.WithRecorder(rec))
	tp := env.TPM
	srk, _, _ := pinnedGateBlob(t, tp)
	secret := []byte("sealed under a parent with an odd authValue")
	for name, auth := range map[string][]byte{
		"random":         newGateAuth(t),
		"trailing zeros": {1, 2, 3, 0, 0},
		"a zero inside":  {1, 0, 2, 3},
		"all zeros":      {0, 0, 0},
		"empty":          {},
	} {
		t.Run(name, func(t *testing.T) {
			pt := policyAuthValueTemplate()
			parentBlob, err := tp.Create(srk, nil, pt, tpm.Sensitive{UserAuth: auth})
			if err != nil {
				t.Fatal(err)
			}
			p, err := tp.Load(srk, nil, parentBlob)
			if err != nil {
				t.Fatal(err)
			}
			ps, err := tp.StartSaltedPolicySession(auth)
			if err != nil {
				t.Fatal(err)
			}
			if err := ps.PolicyAuthValue(); err != nil {
				t.Fatal(err)
			}
			sealed, err := tp.Create(p, ps.Session(), tpm.SealTemplate(pt.AuthPolicy.Buffer), tpm.Sensitive{UserAuth: auth, Data: secret})
			if err := errors.Join(err, ps.Close(), tp.Flush(p.Handle)); err != nil {
				t.Fatal(err)
			}

			rec.Reset()
			ps, err = tp.StartSecretPolicySession(tpm.EncryptOut, auth)
			if err != nil {
				t.Fatal(err)
			}
			defer ps.Close()
			if p, err = tp.LoadGuarded(srk, parentBlob, ps.Guard()); err != nil {
				t.Fatalf("guarded load: %v", err)
			}
			defer tp.Flush(p.Handle)
			if err := ps.PolicyAuthValue(); err != nil {
				t.Fatal(err)
			}
			obj, err := tp.Load(p, ps.Session(), sealed)
			if err != nil {
				t.Fatalf("the sealed object's load: %v", err)
			}
			defer tp.Flush(obj.Handle)
			if err := ps.PolicyAuthValue(); err != nil {
				t.Fatal(err)
			}
			got, err := tp.UnsealWith(obj, ps.Session())
			if err != nil || !bytes.Equal(got, secret) {
				t.Fatalf("unseal: %q, %v", got, err)
			}
			if off := rec.Leak(secret); off >= 0 {
				t.Errorf("the secret crossed the bus in the clear at %d", off)
			}
		})
	}
}

// ecdsaVerifies reports whether sig is an ECDSA signature of digest by the
// ECC key pub.
func ecdsaVerifies(t *testing.T, pub tpm2.TPMTPublic, digest []byte, sig tpm2.TPMTSignature) bool {
	t.Helper()
	key, err := tpm2.ECDSAPub(must(pub.Parameters.ECCDetail()), must(pub.Unique.ECC()))
	if err != nil {
		t.Fatal(err)
	}
	e := must(sig.Signature.ECDSA())
	return ecdsa.Verify(key, digest, new(big.Int).SetBytes(e.SignatureR.Buffer), new(big.Int).SetBytes(e.SignatureS.Buffer))
}
