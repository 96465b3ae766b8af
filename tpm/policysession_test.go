package tpm_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// A failing policy step leaves no session behind: more failures than the TPM
// has session slots, each closed, then a clean leak check by the harness.
func TestPolicySessionFailureFlushes(t *testing.T) {
	env := swtpmtest.Start(t)
	tp := env.TPM
	wrong := sha256.Sum256([]byte("not the PCR values"))
	sel := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(16),
	}}}
	for range 5 {
		ps, err := tp.StartPolicySession(false)
		if err != nil {
			t.Fatal(err)
		}
		err = ps.PolicyPCR(sel, wrong[:])
		if !errors.Is(err, tpm.ErrPolicyNotSatisfied) || !errors.Is(err, tpm2.TPMRCValue) {
			t.Fatalf("PolicyPCR with a wrong digest: %v, want ErrPolicyNotSatisfied", err)
		}
		if err := ps.Close(); err != nil {
			t.Fatal(err)
		}
		if err := ps.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	}
	// A trial session does not compare: the same step passes.
	ps, err := tp.StartPolicySession(true)
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	if err := ps.PolicyPCR(sel, wrong[:]); err != nil {
		t.Fatalf("trial PolicyPCR: %v", err)
	}
}

// PolicyAuthorize flushes the signer key it loaded when the signature is
// refused, and reports the refusal as a policy not satisfied.
func TestPolicyAuthorizeBadSignatureFlushesKey(t *testing.T) {
	env := swtpmtest.Start(t)
	tp := env.TPM
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ek, err := k.PublicKey.ECDH()
	if err != nil {
		t.Fatal(err)
	}
	point := ek.Bytes() // 04 || X || Y
	// The signer's public area, written here by hand: tpm's tests import
	// nothing of provd's above tpm (policy.SignerPublic builds the same).
	pub := tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgECC,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{SignEncrypt: true, UserWithAuth: true},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme: tpm2.TPMTECCScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
			CurveID: tpm2.TPMECCNistP256,
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: point[1:33]},
			Y: tpm2.TPM2BECCParameter{Buffer: point[33:]},
		}),
	}
	approved := sha256.Sum256([]byte("approved"))
	other := sha256.Sum256([]byte("something else"))
	r, s, err := ecdsa.Sign(rand.Reader, k, other[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := tpm2.TPMTSignature{
		SigAlg: tpm2.TPMAlgECDSA,
		Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
			Hash:       tpm2.TPMAlgSHA256,
			SignatureR: tpm2.TPM2BECCParameter{Buffer: r.FillBytes(make([]byte, 32))},
			SignatureS: tpm2.TPM2BECCParameter{Buffer: s.FillBytes(make([]byte, 32))},
		}),
	}
	for _, trial := range []bool{false, true} {
		ps, err := tp.StartPolicySession(trial)
		if err != nil {
			t.Fatal(err)
		}
		err = ps.PolicyAuthorize(pub, approved[:], nil, sig)
		if cerr := ps.Close(); cerr != nil {
			t.Fatal(cerr)
		}
		if !errors.Is(err, tpm.ErrPolicyNotSatisfied) || !errors.Is(err, tpm2.TPMRCSignature) {
			t.Fatalf("trial=%v: PolicyAuthorize with a bad signature: %v", trial, err)
		}
		left, err := tp.Leftovers()
		if err != nil || len(left) != 0 {
			t.Fatalf("trial=%v: left %x (%v)", trial, left, err)
		}
	}
}
