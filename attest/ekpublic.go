package attest

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/rsa"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// EKPublic is the public area of the TCG EK that holds key, made from the
// low-range templates L-1 (RSA 2048) or L-2 (ECC P-256) with the
// certificate's key: what a credential is made to (TPM2_MakeCredential
// encrypts its seed to it) and what names the EK. Nothing of it comes from
// the TPM or the bus. Other keys are ErrUnsupportedAlgorithm: their EKs'
// policies are not PolicySecret(endorsement) alone, which credential
// activation here relies on.
func EKPublic(key crypto.PublicKey) (tpm2.TPMTPublic, error) {
	switch k := key.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() != 2048 || k.E != 65537 {
			break
		}
		pub := tpm2.RSAEKTemplate
		pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: k.N.FillBytes(make([]byte, 256))})
		return pub, nil
	case *ecdsa.PublicKey:
		ek, err := k.ECDH()
		if err != nil || ek.Curve() != ecdh.P256() {
			break
		}
		raw := ek.Bytes() // 04 || X || Y
		pub := tpm2.ECCEKTemplate
		pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: raw[1:33]}, Y: tpm2.TPM2BECCParameter{Buffer: raw[33:]}})
		return pub, nil
	}
	return tpm2.TPMTPublic{}, fmt.Errorf("%w: an EK of %T other than RSA 2048 or ECC P-256", ErrUnsupportedAlgorithm, key)
}
