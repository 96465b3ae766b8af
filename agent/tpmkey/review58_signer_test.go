package tpmkey

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"testing"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// review58Agent is a provisioned agent on a fresh swtpm with the created
// keys asked for (name -> type, usage).
func review58Agent(t *testing.T, keys map[string][2]string) *agent.Agent {
	t.Helper()
	env := swtpmtest.Start(t)
	ctx := context.Background()
	ag, err := agent.New(agent.Config{TPM: env.TPM, StateDir: t.TempDir() + "/state"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ag.Close() })
	if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	for name, tu := range keys {
		if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: name, Type: tu[0], Usage: tu[1]}); err != nil {
			t.Fatal(err)
		}
	}
	return ag
}

// FLAW (failed before the mend): crypto.Signer's opts.HashFunc() == 0 means "the message was not
// hashed" (what rsa.PrivateKey.Sign then signs as a raw PKCS#1 v1.5 block,
// with no DigestInfo). Key.SignContext passes the 0 on, and the agent reads
// 0 as "the key's default hash": 32 bytes the caller said were not a
// digest are signed as a SHA-256 digest (DigestInfo for SHA-256 added),
// and a P-384 key signs 48 such bytes as SHA-384. The package says RSA
// signs PKCS#1 v1.5 of the digest under opts' hash, and approved mode
// refuses every hash but SHA-256/384; "no hash" is neither. Attacker: a
// peer protocol or library driving the Signer with unhashed input (a
// crypto.Signer consumer that signs prehashed-elsewhere or raw data with
// crypto.Hash(0)): it gets a signature over a "SHA-256 digest" whose
// preimage nobody knows instead of a refusal, and a verifier of what it
// asked for (hash 0) rejects it. Fix: in SignContext refuse
// opts.HashFunc() == 0 (api.ErrNotPermitted) before calling the backend
// (and the agent should not default a zero hash from an API caller who
// did not choose one, or at least not from this path).
func TestReview58SignWithoutAHashIsSignedAsSHA256(t *testing.T) {
	ag := review58Agent(t, map[string][2]string{"rsa": {"rsa-2048", catalog.UsageSign}})
	ctx := context.Background()
	k, err := New(ctx, ag, "rsa")
	if err != nil {
		t.Fatal(err)
	}
	raw := bytes.Repeat([]byte{0x5a}, 32) // not a digest, says the caller
	sig, err := k.Sign(rand.Reader, raw, crypto.Hash(0))
	if err == nil {
		pub := k.Public().(*rsa.PublicKey)
		asSHA256 := rsa.VerifyPKCS1v15(pub, crypto.SHA256, raw, sig) == nil
		asRaw := rsa.VerifyPKCS1v15(pub, crypto.Hash(0), raw, sig) == nil
		t.Errorf("Sign with no hash gave a signature (verifies as SHA-256: %v, as unhashed: %v); want a refusal", asSHA256, asRaw)
	}
}

// review58Backend is a Backend that holds an RSA key and signs nothing.
type review58Backend struct{ pub crypto.PublicKey }

func (b review58Backend) KeyPublic(context.Context, string) (crypto.PublicKey, api.KeyInfo, error) {
	return b.pub, api.KeyInfo{}, nil
}

func (review58Backend) Sign(context.Context, string, []byte, api.SignOptions) ([]byte, error) {
	return nil, errors.New("refused by the backend")
}

func (review58Backend) Decrypt(context.Context, string, []byte, crypto.Hash) ([]byte, error) {
	return nil, errors.New("refused by the backend")
}

// FLAW (failed before the mend): Sign with *rsa.PSSOptions whose Hash is 0 (or any value
// crypto.Hash does not know) and an explicit salt length panics in the
// caller's goroutine: the salt-length switch evaluates so.Hash.Size(), and
// crypto.Hash.Size panics for an unknown hash. rsa.PrivateKey.Sign with
// the same opts returns an error. Attacker: whatever chooses the Signer's
// opts (a library or protocol layer handed the Key; a JWS "alg" mapped to
// PSS with a salt length but no hash): a panic takes down the process
// (a TLS server's handshake goroutine, the CLI) instead of an error;
// ARCHITECTURE: "Bad input never panics". Fix: check
// catalog.HashOf(opts.HashFunc()) before the salt-length switch and refuse
// an unapproved or zero hash with api.ErrNotPermitted.
func TestReview58PSSWithoutAHashPanics(t *testing.T) {
	r, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	k, err := New(context.Background(), review58Backend{&r.PublicKey}, "k")
	if err != nil {
		t.Fatal(err)
	}
	for _, opts := range []*rsa.PSSOptions{{SaltLength: 32}, {SaltLength: 32, Hash: crypto.Hash(99)}} {
		func() {
			defer func() {
				if p := recover(); p != nil {
					t.Errorf("Sign with PSS salt %d, hash %d panicked: %v", opts.SaltLength, opts.Hash, p)
				}
			}()
			if _, err := k.Sign(rand.Reader, make([]byte, 32), opts); err == nil {
				t.Errorf("PSS with hash %d: signed", opts.Hash)
			}
		}()
	}
}

// Held: the Signer signs with the hash and scheme asked for, refuses what
// approved mode does not allow, and a CSR states the key that signed it.
// Tried on swtpm: SHA-1, SHA-224, SHA-512 and MD5 refused; a digest whose
// length is not its hash's refused; PSS with a salt length other than the
// hash's refused, PSS with the hash's salt length verifies with exactly
// that salt length (what the docs say the TPM uses), under SHA-256 and
// SHA-384; a P-384 key signing a SHA-256 digest gives a signature over that
// digest; a decrypt key does not sign, and decrypts only RSA-OAEP without a
// label; the CSR of an RSA and a P-384 key carries the key's public key and
// a signature that verifies under it.
func TestReview58SignerHoldsItsOpts(t *testing.T) {
	ag := review58Agent(t, map[string][2]string{
		"rsa":  {"rsa-2048", catalog.UsageSign},
		"p384": {"ecc-p384", catalog.UsageSign},
		"dec":  {"rsa-2048", catalog.UsageDecrypt},
	})
	ctx := context.Background()
	keys := map[string]*Key{}
	for _, n := range []string{"rsa", "p384", "dec"} {
		k, err := New(ctx, ag, n)
		if err != nil {
			t.Fatal(err)
		}
		keys[n] = k
	}
	rk, ek, dk := keys["rsa"], keys["p384"], keys["dec"]
	msg := []byte("review 58")
	d256 := sha256.Sum256(msg)
	d384 := sha512.Sum384(msg)

	for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA224, crypto.SHA512, crypto.MD5} {
		d := make([]byte, h.Size())
		if _, err := rk.Sign(rand.Reader, d, h); err == nil {
			t.Errorf("rsa signed a %v digest", h)
		}
		if _, err := ek.Sign(rand.Reader, d, h); err == nil {
			t.Errorf("p384 signed a %v digest", h)
		}
	}
	if _, err := rk.Sign(rand.Reader, d384[:], crypto.SHA256); err == nil {
		t.Error("a 48-byte digest signed as SHA-256")
	}
	if _, err := rk.Sign(rand.Reader, d256[:], &rsa.PSSOptions{SaltLength: 20, Hash: crypto.SHA256}); err == nil {
		t.Error("PSS with a 20-byte salt")
	}
	for _, tc := range []struct {
		h crypto.Hash
		d []byte
	}{{crypto.SHA256, d256[:]}, {crypto.SHA384, d384[:]}} {
		sig, err := rk.Sign(rand.Reader, tc.d, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: tc.h})
		if err != nil {
			t.Fatalf("PSS %v: %v", tc.h, err)
		}
		if err := rsa.VerifyPSS(rk.Public().(*rsa.PublicKey), tc.h, tc.d, sig, &rsa.PSSOptions{SaltLength: tc.h.Size()}); err != nil {
			t.Errorf("PSS %v: the salt is not the hash's size: %v", tc.h, err)
		}
		sig, err = rk.Sign(rand.Reader, tc.d, tc.h)
		if err != nil || rsa.VerifyPKCS1v15(rk.Public().(*rsa.PublicKey), tc.h, tc.d, sig) != nil {
			t.Errorf("PKCS#1 v1.5 %v: %v", tc.h, err)
		}
	}
	sig, err := ek.Sign(rand.Reader, d256[:], crypto.SHA256)
	if err != nil || !ecdsa.VerifyASN1(ek.Public().(*ecdsa.PublicKey), d256[:], sig) {
		t.Errorf("p384 over SHA-256: %v", err)
	}
	if _, err := dk.Sign(rand.Reader, d256[:], crypto.SHA256); err == nil {
		t.Error("a decrypt key signed")
	}
	ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, dk.Public().(*rsa.PublicKey), msg, []byte("label"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dk.Decrypt(rand.Reader, ct, &rsa.OAEPOptions{Hash: crypto.SHA256, Label: []byte("label")}); err == nil {
		t.Error("OAEP with a label decrypted")
	}
	//lint:ignore SA1019 the refusal of PKCS#1 v1.5 decryption is what is tested
	if _, err := dk.Decrypt(rand.Reader, ct, &rsa.PKCS1v15DecryptOptions{}); err == nil {
		t.Error("PKCS#1 v1.5 decryption")
	}
	if _, err := dk.Decrypt(rand.Reader, ct, nil); err == nil {
		t.Error("nil opts decrypted")
	}

	for _, k := range []*Key{rk, ek} {
		der, err := CSR(ctx, k, pkix.Name{CommonName: "device-58"}, []string{"device-58.example"})
		if err != nil {
			t.Fatal(err)
		}
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			t.Fatal(err)
		}
		if err := csr.CheckSignature(); err != nil {
			t.Errorf("%s CSR: %v", k.name, err)
		}
		if !csr.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(k.Public()) {
			t.Errorf("%s CSR: another public key", k.name)
		}
		if k == ek && csr.SignatureAlgorithm != x509.ECDSAWithSHA384 {
			t.Errorf("p384 CSR signed with %v", csr.SignatureAlgorithm)
		}
	}
}
