package agent

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/store"
	"github.com/provd/provd/tpm"
)

// A4 (write access to the state directory) changes the transfer key's
// authValue in the state to another well-formed value. B's TPM2_Import,
// now authorized by the shared session keyed by that value, is refused
// by the TPM (TPM_RC_BAD_AUTH at session 1): no bus was involved. The
// probe (authorizeChecked's ReadPublic) verifies, which tells a wrong
// value, but importDuplicate's guarded("TPM2_Import", err, 1) has
// already wrapped the refusal as ErrResponseForged, and authorizeChecked
// returns that error unchanged when the probe verifies (fails on f9c6f47:
// exit 15; the salted-session path before it said the same); provd must not report it as a forged TPM answer (exit 15, "the
// TPM's answers are not the TPM's") but as a wrong value (exit 11) or
// tampering (exit 14).
func TestReview2DupImportWrongTransferAuthIsNotForged(t *testing.T) {
	t.Parallel()
	_, _, pb, dup := review2Dup(t)
	ctx := context.Background()
	if err := pb.st.Update(ctx, func(tx *store.Tx) error {
		var tr transferRecord
		if err := tx.Get(transferRec, &tr); err != nil {
			return err
		}
		v := bytes.Repeat([]byte{0x5a}, objectAuthSize)
		tr.Auth = hex.EncodeToString(v)
		return tx.Put(transferRec, tr)
	}); err != nil {
		t.Fatal(err)
	}
	_, err := pb.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup})
	t.Logf("import with a wrong transfer-key value in the state: %v; exit %d", err, api.ExitCode(err))
	if err == nil {
		t.Fatal("imported with a wrong transfer-key value")
	}
	if errors.Is(err, tpm.ErrResponseForged) || api.ExitCode(err) == api.ExitIdentity {
		t.Errorf("a wrong value in the state (no bus involved) reported as a forged TPM answer: exit %d, want %d (wrong value) or %d (tampered)",
			api.ExitCode(err), api.ExitBadAuth, api.ExitTampered)
	}
	nothingImported(t, pb)
}
