package policy_test

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha512"
	"errors"
	"math/big"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review71RSAKey makes an RSA key of bits with public exponent e (crypto/rsa
// makes only 65537).
func review71RSAKey(t *testing.T, bits, e int) *rsa.PrivateKey {
	t.Helper()
	if e == 65537 {
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	one := big.NewInt(1)
	be := big.NewInt(int64(e))
	for {
		p, err := rand.Prime(rand.Reader, bits/2)
		if err != nil {
			t.Fatal(err)
		}
		q, err := rand.Prime(rand.Reader, bits/2)
		if err != nil {
			t.Fatal(err)
		}
		n := new(big.Int).Mul(p, q)
		if p.Cmp(q) == 0 || n.BitLen() != bits {
			continue
		}
		pm, qm := new(big.Int).Sub(p, one), new(big.Int).Sub(q, one)
		phi := new(big.Int).Mul(pm, qm)
		d := new(big.Int).ModInverse(be, phi)
		if d == nil {
			continue
		}
		k := &rsa.PrivateKey{PublicKey: rsa.PublicKey{N: n, E: e}, D: d, Primes: []*big.Int{p, q}}
		k.Precompute()
		if err := k.Validate(); err != nil {
			t.Fatal(err)
		}
		return k
	}
}

// review71SignedUnseal signs the current PCRs 0 and 7 with s and runs
// the Authorize step in a real session to unseal a secret sealed to it.
func review71SignedUnseal(t *testing.T, env *swtpmtest.Env, s *rsa.PrivateKey) error {
	t.Helper()
	tp := env.TPM
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	ref := []byte("provd/pk")
	counter := defineCounter(t, tp, counterHandle)
	if err := tp.Increment(counterHandle); err != nil {
		t.Fatal(err)
	}
	sp, err := policy.SignPolicy(s, currentValues(t, tp, 0, 7), readCounter(t, tp, counterHandle), ref, counter)
	if err != nil {
		t.Fatalf("SignPolicy (provd approves this signer): %v", err)
	}
	authz := policy.Policy{policy.Authorize{Signer: s.Public(), PolicyRef: ref}}
	d, err := authz.Digest(tpm2.TPMAlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("sealed to a signer provd approves")
	blob, err := tp.Seal(srk, nil, secret, d)
	if err != nil {
		t.Fatal(err)
	}
	got, err := unseal(tp, srk, blob, authz, policy.ApplyOptions{Signed: []*policy.SignedPolicy{sp}}, nil)
	if err == nil && !bytes.Equal(got, secret) {
		t.Fatalf("unsealed %q", got)
	}
	return err
}

// Held: an RSA-3072 signer whose public exponent is not 65537 (65539:
// approved by schemeFor and written into the signer's TPMT_PUBLIC, so its
// name differs from the 65537 form) is loaded and verified by the TPM as
// provd computed it: the secret sealed to PolicyAuthorize(that signer)
// unseals with its signed policy.
func TestReview71RSAExponentSignerWorksInTheTPM(t *testing.T) {
	env := swtpmtest.Start(t)
	if err := review71SignedUnseal(t, env, review71RSAKey(t, 3072, 65539)); err != nil {
		t.Fatalf("signed policy of an RSA-3072 e=65539 signer: %v", err)
	}
}

// FLAW (failed before the mend, which is the agent's: provision asks the
// TPM, TPM2_TestParms, agent.TestReview71RSA4096PolicySignerLocksThePK):
// docs/policy.md names RSA-PSS with a 4096-bit modulus an approved policy
// signer, and policy.SignerPublic / SignPolicy / ParsePublicKeyPEM take it
// (so `provision --policy-signer` did, binding the PK's authPolicy to its
// name), but the TPM provd runs on (swtpm's libtpms, like many hardware
// TPMs limited to RSA 2048/3072) cannot load it: TPM2_LoadExternal refuses
// the key size, so no signed policy of that signer can ever be used, and
// every key under a PK provisioned with it was lost. The policy package is
// offline and cannot know a TPM's algorithms; what this asserts now is
// that the TPM's own answer, which provision asks before anything is bound
// to the signer, is the truth: TPM2_TestParms refuses the signer exactly
// when a signed policy of it cannot be used.
func TestReview71RSA4096SignerWorksInTheTPM(t *testing.T) {
	env := swtpmtest.Start(t)
	key := review71RSAKey(t, 4096, 65537)
	pub, err := policy.SignerPublic(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	terr := env.TPM.TestParms(pub)
	var fe tpm2.TPMFmt1Error
	if terr != nil && !errors.As(terr, &fe) {
		t.Fatalf("TPM2_TestParms: %v", terr)
	}
	err = review71SignedUnseal(t, env, key)
	switch {
	case terr == nil && err != nil:
		t.Fatalf("TPM2_TestParms took the RSA-4096 signer, and its signed policy is unusable: %v", err)
	case terr != nil && err == nil:
		t.Fatalf("TPM2_TestParms refused the RSA-4096 signer (%v), and its signed policy works", terr)
	}
	t.Logf("TestParms: %v; the signed policy: %v", terr, err)
}

// Held: SHA-384 golden values (a SHA-384 bank) in a SHA-256 session: the
// TPM's trial digest equals Policy.Digest, for the PCR step alone and for
// the approved policy of a signed policy, and a real session over the
// current SHA-384 values unseals while a changed value does not
// (TPM_RC_VALUE).
func TestReview71SHA384BankMatchesTheTPM(t *testing.T) {
	env := swtpmtest.Start(t)
	env.RequireSimulator()
	swtpmtest.AllocatePCRs(t, env.TPM, []tpm2.TPMAlgID{tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA384}, nil)
	env.Restart(false)
	tp := env.TPM
	banks, err := tp.PCRBanks()
	if err != nil || !bytes.Contains(u16s(banks), []byte{0x00, 0x0c}) {
		t.Fatalf("banks after allocation: %v %v", banks, err)
	}
	d := sha512.Sum384([]byte("sha384 event"))
	if err := tp.PCRExtend(7, tpm2.TPMAlgSHA384, d[:]); err != nil {
		t.Fatal(err)
	}
	vals, err := tp.PCRRead(tpm2.TPMAlgSHA384, []int{0, 7, 15})
	if err != nil {
		t.Fatal(err)
	}
	cur := policy.PCRValues{Bank: policy.BankSHA384, Values: vals}
	counter := defineCounter(t, tp, counterHandle)
	if err := tp.Increment(counterHandle); err != nil {
		t.Fatal(err)
	}
	for name, p := range map[string]policy.Policy{
		"pcr":      {policy.PCR{Values: cur}},
		"approved": policy.ApprovedPolicy(cur, readCounter(t, tp, counterHandle), counter),
	} {
		want, err := p.Digest(tpm2.TPMAlgSHA256)
		if err != nil {
			t.Fatal(err)
		}
		if got := trialDigest(t, tp, p, policy.ApplyOptions{}); !bytes.Equal(got, want) {
			t.Errorf("%s: TPM trial digest %x, Policy.Digest %x", name, got, want)
		}
	}
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	p := policy.Policy{policy.PCR{Values: cur}}
	dg, _ := p.Digest(tpm2.TPMAlgSHA256)
	secret := []byte("sha384 golden values")
	blob, err := tp.Seal(srk, nil, secret, dg)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := unseal(tp, srk, blob, p, policy.ApplyOptions{}, nil); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("unseal with the current SHA-384 values: %q %v", got, err)
	}
	if err := tp.PCRExtend(15, tpm2.TPMAlgSHA384, d[:]); err != nil {
		t.Fatal(err)
	}
	if _, err := unseal(tp, srk, blob, p, policy.ApplyOptions{}, nil); !errors.Is(err, tpm.ErrPolicyNotSatisfied) {
		t.Fatalf("unseal after PCR 15 changed: %v, want ErrPolicyNotSatisfied", err)
	}
}

func u16s(algs []tpm2.TPMIAlgHash) []byte {
	var out []byte
	for _, a := range algs {
		out = append(out, byte(a>>8), byte(a))
	}
	return out
}
