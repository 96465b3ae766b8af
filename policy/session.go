package policy

import "github.com/google/go-tpm/tpm2"

// Session is the part of a TPM policy session that Policy.Apply drives.
// Package tpm implements it over a real policy (or trial) session; Recorder
// implements it in software for tests. It is kept to exactly the commands the
// step kinds of this package need, so that every implementation can be
// checked against Digest.
//
// The interface is unchanged from the design brief. The one thing Apply needs
// that it does not carry is the session's hash algorithm (PolicyPCR's
// pcrDigest and the approved policy of PolicyAuthorize are computed with it).
// Rather than widen the interface, Apply takes it from ApplyOptions.HashAlg,
// or from an optional HashAlg() method (see SessionHashAlg) when the session
// has one, or defaults to SHA-256, provd's key nameAlg.
type Session interface {
	PolicyPCR(sel tpm2.TPMLPCRSelection, pcrDigest []byte) error
	PolicyOR(digests [][]byte) error
	PolicyCommandCode(cc tpm2.TPMCC) error
	PolicyDuplicationSelect(objectName, newParentName []byte, includeObject bool) error
	PolicyNV(index tpm2.TPMHandle, indexName []byte, operandB []byte, offset uint16, op tpm2.TPMEO) error
	// PolicyTemplate binds the session to the one creation template whose
	// digest (with the session's hash) is templateHash.
	PolicyTemplate(templateHash []byte) error
	// PolicyAuthValue requires the authorized object's authValue in the
	// session's HMAC: whoever uses the object must know it.
	PolicyAuthValue() error
	// PolicyAuthorize loads signer into the owner hierarchy, verifies sig over
	// aHash = H_nameAlg(approvedPolicy || policyRef) with TPM2_VerifySignature
	// and runs TPM2_PolicyAuthorize with the ticket.
	PolicyAuthorize(signer tpm2.TPMTPublic, approvedPolicy, policyRef []byte, sig tpm2.TPMTSignature) error
}

// SessionHashAlg is optionally implemented by a Session that knows its own
// hash algorithm. Apply uses it when ApplyOptions.HashAlg is zero, and refuses
// a mismatch when both are given.
type SessionHashAlg interface {
	HashAlg() tpm2.TPMIAlgHash
}
