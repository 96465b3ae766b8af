package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// TestExportIsTheTPMsToRefuse goes around provd's own checks and asks the
// TPM directly, as root with the state would: TPM2_Duplicate to TPM_RH_NULL
// (an export) of a key imported without --extractable fails even with the
// officer's approval; an extractable key's export fails with an approval by
// anyone but the officer, with the officer's approval of another key, or of
// another destination; the same call with the right approval succeeds.
func TestExportIsTheTPMsToRefuse(t *testing.T) {
	t.Parallel()
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a := testAgent(t, env, &api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
	req, _ := kekRequest(t, "kek", "", 32)
	if _, err := a.ImportKEK(ctx, req); err != nil {
		t.Fatal(err)
	}
	for _, r := range []api.CreateRequest{{Name: "ext", Type: "ecc-p256", Extractable: true}, {Name: "other", Type: "ecc-p256", Extractable: true}} {
		if _, err := a.CreateKey(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	wrapped, err := a.ExportKey(ctx, api.KeyExportRequest{Name: "ext", KEK: "kek", Approval: officertest.ApproveExport(t, ctx, a, "ext", "kek")})
	if err != nil {
		t.Fatal(err)
	}
	req.Name, req.Usage = "kek-u", "unwrap" // the same components, the other direction
	if _, err := a.ImportKEK(ctx, req); err != nil {
		t.Fatal(err)
	}
	if _, err := a.ImportKey(ctx, api.KeyImportRequest{Name: "fixed", KEK: "kek-u", Wrapped: wrapped}); err != nil {
		t.Fatal(err)
	}
	null := tpm2.NamedHandle{Handle: tpm2.TPMRHNull, Name: tpm2.TPM2BName{Buffer: officer.ExportParent}}
	srk, err := a.t.SRK()
	if err != nil {
		t.Fatal(err)
	}
	mallory, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	refused := []struct {
		what           string
		key            string
		parent         tpm2.NamedHandle
		approvedParent []byte
		approver       *ecdsa.PrivateKey
	}{
		{"a key imported without --extractable, with the officer's approval", "fixed", null, officer.ExportParent, officertest.Key()},
		{"an approval by another key than the officer's", "ext", null, officer.ExportParent, mallory},
		{"the officer's approval of the SRK as destination, used for an export", "ext", null, srk.Name.Buffer, officertest.Key()},
		{"the officer's approval of an export, used for the SRK", "ext", srk.Named(), officer.ExportParent, officertest.Key()},
	}
	for _, r := range refused {
		err := duplicateTo(t, a, r.key, r.parent, r.approvedParent, r.approver)
		if err == nil || !errors.Is(err, tpm2.TPMRCPolicyFail) && !errors.Is(err, tpm2.TPMRCValue) && !errors.Is(err, tpm2.TPMRCSignature) {
			t.Errorf("%s: %v, want the TPM to refuse", r.what, err)
		}
	}
	// The officer's approval of another key's export: the TPM's
	// PolicyDuplicationSelect names the object, so it fails too.
	if err := duplicateToApprovedFor(t, a, "ext", "other", null); !errors.Is(err, tpm2.TPMRCPolicyFail) {
		t.Errorf("another key's approval: %v, want TPM_RC_POLICY_FAIL", err)
	}
	if err := duplicateTo(t, a, "ext", null, officer.ExportParent, officertest.Key()); err != nil {
		t.Fatalf("the right approval: %v", err)
	}
}
