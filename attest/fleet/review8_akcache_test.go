package fleet

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/attest"
)

// TestAKCacheSharedReadOnly (a reviewer's check): the parsed AK shared by every goroutine that appraises the
// device is only read (VerifyQuote, Marshal, ObjectName), under -race.
func TestAKCacheSharedReadOnly(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecdh, _ := k.PublicKey.ECDH()
	raw := ecdh.Bytes()
	ak := tpm2.TPMTPublic{Type: tpm2.TPMAlgECC, NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true, Restricted: true, SignEncrypt: true},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Scheme:  tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256})},
			CurveID: tpm2.TPMECCNistP256}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{X: tpm2.TPM2BECCParameter{Buffer: raw[1:33]}, Y: tpm2.TPM2BECCParameter{Buffer: raw[33:]}})}
	stored := tpm2.Marshal(ak)
	name, _ := tpm2.ObjectName(&ak)
	nonce := make([]byte, 32)
	a := tpm2.TPMSAttest{Magic: tpm2.TPMGeneratedValue, Type: tpm2.TPMSTAttestQuote, QualifiedSigner: *name,
		ExtraData: tpm2.TPM2BData{Buffer: nonce},
		Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, &tpm2.TPMSQuoteInfo{
			PCRSelect: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: []byte{0xff, 0, 0}}}},
			PCRDigest: tpm2.TPM2BDigest{Buffer: make([]byte, 32)}})}
	ab := tpm2.Marshal(a)
	d := sha256.Sum256(ab)
	r, s, _ := ecdsa.Sign(rand.Reader, k, d[:])
	sig := tpm2.Marshal(tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgECDSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
		Hash: tpm2.TPMAlgSHA256, SignatureR: tpm2.TPM2BECCParameter{Buffer: r.FillBytes(make([]byte, 32))}, SignatureS: tpm2.TPM2BECCParameter{Buffer: s.FillBytes(make([]byte, 32))}})})

	e := &Endpoint{}
	input := append([]byte(nil), stored...)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				pub, err := e.akPublic(input)
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := attest.VerifyQuote(pub, ab, sig, nonce, attest.Options{}); err != nil {
					t.Error(err)
					return
				}
				_ = tpm2.Marshal(pub)
				_, _ = tpm2.ObjectName(&pub)
			}
		}()
	}
	wg.Wait()
	// The caller's bytes are not aliased by the cached parse.
	for i := range input {
		input[i] ^= 0xff
	}
	pub, err := e.akPublic(stored)
	if err != nil {
		t.Fatal(err)
	}
	if got := tpm2.Marshal(pub); string(got) != string(stored) {
		t.Fatal("cached AK changed with its input bytes")
	}
}
