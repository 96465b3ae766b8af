package officer

import (
	"crypto"
	"crypto/sha256"
	"encoding/json"
	"fmt"

	"github.com/provd/provd/api/errkind"
	"github.com/provd/provd/internal/strictjson"
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

// ExportApproval is the crypto officer's approval of one backup: the key's
// duplication to ExportParent, which the TPM checks, and the KEK it goes
// under, which provd checks.
type ExportApproval struct {
	Duplication *policy.Approval
	KEK         *policy.Approval
}

// ApproveExport is the crypto officer's approval to export the extractable
// key with TPM name objectName, under a PK with policy digest pkPolicy, as a
// backup (provd key export) under the KEK with TPM name kekName, and under
// no other.
func ApproveExport(officer crypto.Signer, pkPolicy, objectName, kekName []byte) (*ExportApproval, error) {
	if err := CheckName(objectName); err != nil {
		return nil, fmt.Errorf("the key's TPM name: %w", err)
	}
	if err := CheckName(kekName); err != nil {
		return nil, fmt.Errorf("the KEK's TPM name: %w", err)
	}
	dup, err := ApproveDuplication(officer, pkPolicy, objectName, ExportParent)
	if err != nil {
		return nil, err
	}
	kek, err := policy.ApproveDigest(officer, ExportKEKApproved(pkPolicy, objectName, kekName), ExportKEKRef)
	if err != nil {
		return nil, err
	}
	return &ExportApproval{Duplication: dup, KEK: kek}, nil
}

// CheckName refuses what is not an object's TPM name of provd's objects:
// nameAlg SHA-256 (0x000b) and its 32-byte digest.
func CheckName(name []byte) error {
	if len(name) != 2+sha256.Size || name[0] != 0 || name[1] != 0x0b {
		return fmt.Errorf("%w: a TPM name here is 0x000b and a SHA-256 digest, 34 bytes (68 hex digits), not %d bytes", errkind.ErrBadInput, len(name))
	}
	return nil
}

// ExportApprovalFormat is the "format" value of the export approval files
// this package writes and the only one it reads.
const ExportApprovalFormat = 1

// exportApprovalJSON is the file form; see docs/formats.md.
type exportApprovalJSON struct {
	Format      int             `json:"format"`
	Duplication json.RawMessage `json:"duplication"`
	KEK         json.RawMessage `json:"kek"`
}

// MarshalJSON writes the form UnmarshalJSON reads.
func (ea *ExportApproval) MarshalJSON() ([]byte, error) {
	if ea.Duplication == nil || ea.KEK == nil {
		return nil, fmt.Errorf("officer: an export approval has two parts, the duplication's and the KEK's")
	}
	dup, err := ea.Duplication.MarshalJSON()
	if err != nil {
		return nil, err
	}
	kek, err := ea.KEK.MarshalJSON()
	if err != nil {
		return nil, err
	}
	return json.Marshal(exportApprovalJSON{Format: ExportApprovalFormat, Duplication: dup, KEK: kek})
}

// UnmarshalJSON parses an export approval strictly (format 1, both parts,
// no unknown or duplicate fields), each part as policy.Approval reads one
// (verified against its embedded key: intact, not yet trusted; the device
// checks both against its officer).
func (ea *ExportApproval) UnmarshalJSON(data []byte) error {
	var raw exportApprovalJSON
	if err := strictjson.Decode(data, &raw); err != nil {
		if new(policy.Approval).UnmarshalJSON(data) == nil {
			return fmt.Errorf("officer: this is the approval of a key's duplication alone, which names no KEK; an export approval names the KEK the backup goes under too (provd key approve --export --kek-object-name)")
		}
		return fmt.Errorf("officer: export approval: %w", err)
	}
	if raw.Format != ExportApprovalFormat {
		return fmt.Errorf("officer: export approval format %d, this provd reads format %d (an approval that names no KEK is refused: provd key approve --export --kek-object-name)", raw.Format, ExportApprovalFormat)
	}
	if raw.Duplication == nil || raw.KEK == nil {
		return fmt.Errorf("officer: export approval: duplication and kek are required (an approval that names no KEK is refused: provd key approve --export --kek-object-name)")
	}
	var out ExportApproval
	out.Duplication, out.KEK = new(policy.Approval), new(policy.Approval)
	if err := out.Duplication.UnmarshalJSON(raw.Duplication); err != nil {
		return fmt.Errorf("officer: export approval: duplication: %w", err)
	}
	if err := out.KEK.UnmarshalJSON(raw.KEK); err != nil {
		return fmt.Errorf("officer: export approval: kek: %w", err)
	}
	*ea = out
	return nil
}
