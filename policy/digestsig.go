package policy

import (
	"crypto"
	"encoding/json"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// Signatures over a digest by an approved signer (ECDSA P-256/P-384,
// RSASSA-PSS 3072/4096), in the TPMT_SIGNATURE form TPM2_VerifySignature
// takes and the file form signed policies use: one signing and one
// verification path for every signed artefact provd reads (signed
// policies, approvals, firmware manifests).

// SignDigest signs a SHA-256 digest with signer, by its approved scheme.
func SignDigest(signer crypto.Signer, digest []byte) (tpm2.TPMTSignature, error) {
	sch, err := schemeFor(signer.Public())
	if err != nil {
		return tpm2.TPMTSignature{}, err
	}
	return signAHash(signer, sch, digest)
}

// VerifyDigest checks sig over digest with pub, as TPM2_VerifySignature
// would with pub's approved scheme.
func VerifyDigest(pub crypto.PublicKey, digest []byte, sig tpm2.TPMTSignature) error {
	return verifyTPMSignature(pub, digest, sig)
}

// Signature is a TPMT_SIGNATURE in its file form (docs/policy.md:
// {"alg": "ecdsa"|"rsapss", "hash", "r", "s" | "sig"}), decoded strictly.
type Signature struct{ tpm2.TPMTSignature }

// MarshalJSON writes the file form.
func (s Signature) MarshalJSON() ([]byte, error) {
	j, err := signatureToJSON(s.TPMTSignature)
	if err != nil {
		return nil, err
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads the file form strictly.
func (s *Signature) UnmarshalJSON(b []byte) error {
	var j signatureJSON
	if err := decodeStrict(b, &j); err != nil {
		return fmt.Errorf("policy: signature: %w", err)
	}
	sig, err := j.toTPM()
	if err != nil {
		return fmt.Errorf("policy: signature: %w", err)
	}
	s.TPMTSignature = sig
	return nil
}
