package officer

import (
	"crypto"
	"crypto/sha256"
	"fmt"

	"github.com/provd/provd/api/errkind"
	"github.com/provd/provd/policy"
)

// An export (provd key export) is a key's duplication to TPM_RH_NULL, which
// hands its private part to provd, and then provd's wrap of it under a KEK
// in the TPM. The TPM checks the first (the key's duplication branch needs
// the officer's approval of it); no TPM policy can name the KEK, since the
// wrap is provd's doing after the TPM is done. So the officer signs both:
// the duplication, and which KEK the backup goes under, by the KEK's TPM
// name (which binds the key the custodians entered: its unique field is
// the TPM's digest of it under a seed only the TPM chose). provd refuses an
// export whose KEK the officer did not name (found by review 45: with the
// duplication's approval alone, a caller of the officer role entered a KEK
// of its own components and opened the backup in software).

// ExportKEKRef is the policyRef of the officer's signature of an export's
// KEK. No TPM policy has a PolicyAuthorize with it: provd checks it, and a
// signature made for a derivation or a duplication (DeriveRef, DupRef)
// cannot pass for one, nor this one for theirs.
var ExportKEKRef = []byte("provd/export-kek")

// ExportKEKApproved is the digest the officer signs, with ExportKEKRef, to
// let the export of the key with TPM name objectName (under a PK with
// policy digest pkPolicy) go under the KEK with TPM name kekName:
// SHA-256(DupApproved(pkPolicy, objectName, ExportParent) || kekName). It
// binds that one export approval, so it serves no other key or PK policy.
func ExportKEKApproved(pkPolicy, objectName, kekName []byte) []byte {
	h := sha256.New()
	h.Write(DupApproved(pkPolicy, objectName, ExportParent))
	h.Write(kekName)
	return h.Sum(nil)
}

// ApproveExport is the crypto officer's approval to export the extractable
// key with TPM name objectName, under a PK with policy digest pkPolicy, as a
// backup (provd key export) under the KEK with TPM name kekName, and under
// no other: dup, the approval of the key's duplication to ExportParent,
// which the TPM checks, and kek, of that KEK (ExportKEKApproved), which
// provd checks (api.ExportApproval carries both).
func ApproveExport(officer crypto.Signer, pkPolicy, objectName, kekName []byte) (dup, kek *policy.Approval, err error) {
	if err := CheckName(objectName); err != nil {
		return nil, nil, fmt.Errorf("the key's TPM name: %w", err)
	}
	if err := CheckName(kekName); err != nil {
		return nil, nil, fmt.Errorf("the KEK's TPM name: %w", err)
	}
	if dup, err = ApproveDuplication(officer, pkPolicy, objectName, ExportParent); err != nil {
		return nil, nil, err
	}
	if kek, err = policy.ApproveDigest(officer, ExportKEKApproved(pkPolicy, objectName, kekName), ExportKEKRef); err != nil {
		return nil, nil, err
	}
	return dup, kek, nil
}

// CheckName refuses what is not an object's TPM name of provd's objects:
// nameAlg SHA-256 (0x000b) and its 32-byte digest.
func CheckName(name []byte) error {
	if len(name) != 2+sha256.Size || name[0] != 0 || name[1] != 0x0b {
		return fmt.Errorf("%w: a TPM name here is 0x000b and a SHA-256 digest, 34 bytes (68 hex digits), not %d bytes", errkind.ErrBadInput, len(name))
	}
	return nil
}
