package firmware

import (
	"crypto"

	"github.com/provd/provd/policy"
)

func signDigestForTest(k crypto.Signer, payload []byte) (policy.Signature, error) {
	sig, err := policy.SignDigest(k, signedDigest(payload))
	return policy.Signature{TPMTSignature: sig}, err
}
