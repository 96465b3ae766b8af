package api

import (
	"encoding/json"
	"fmt"

	"github.com/provd/provd/internal/strictjson"
	"github.com/provd/provd/policy"
)

// ExportApproval is the crypto officer's approval of one backup (provd key
// approve --export, officer.ApproveExport): Duplication, of the key's
// duplication to TPM_RH_NULL, which the TPM checks in the key's duplication
// branch, and KEK, of the KEK it goes under by its TPM name
// (officer.ExportKEKApproved), which provd checks: the TPM hands the key's
// private part to provd for the wrap, so no TPM policy can name the KEK.
type ExportApproval struct {
	Duplication *policy.Approval
	KEK         *policy.Approval
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
		return nil, fmt.Errorf("api: an export approval has two parts, the duplication's and the KEK's")
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
			return fmt.Errorf("api: this is the approval of a key's duplication alone, which names no KEK; an export approval names the KEK the backup goes under too (provd key approve --export --kek-object-name)")
		}
		return fmt.Errorf("api: export approval: %w", err)
	}
	if raw.Format != ExportApprovalFormat {
		return fmt.Errorf("api: export approval format %d, this provd reads format %d (an approval that names no KEK is refused: provd key approve --export --kek-object-name)", raw.Format, ExportApprovalFormat)
	}
	if raw.Duplication == nil || raw.KEK == nil {
		return fmt.Errorf("api: export approval: duplication and kek are required (an approval that names no KEK is refused: provd key approve --export --kek-object-name)")
	}
	var out ExportApproval
	out.Duplication, out.KEK = new(policy.Approval), new(policy.Approval)
	if err := out.Duplication.UnmarshalJSON(raw.Duplication); err != nil {
		return fmt.Errorf("api: export approval: duplication: %w", err)
	}
	if err := out.KEK.UnmarshalJSON(raw.KEK); err != nil {
		return fmt.Errorf("api: export approval: kek: %w", err)
	}
	*ea = out
	return nil
}
