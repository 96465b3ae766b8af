package agent_test

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// The audit anchor is defined by its name, not read back (issue 14: a
// define's answer has no HMAC, nor has a read's): A1 answering the new
// anchor's TPM2_NV_DefineSpace with success and dropping it gets no
// record anchored in an index that is not there. The trail's first extend,
// whose proof is bound to the anchor's name, is refused (the index is
// missing); provision fails and says so, and the trail does not verify
// (tampered, exit 14) until `audit reanchor` moves it to a new anchor;
// provision --force then works, its record and the failed one's (waiting
// in audit.pending) are anchored, the trail verifies and nothing is left
// in the TPM. (A1 reached the same state before by answering the read-back
// too: it was the bus's word as well.)
func TestForgedAnchorDefineAnchorsNothing(t *testing.T) {
	x := &zeroizeLiar{naive: true, drop: map[tpm2.TPMCC]bool{tpm2.TPMCCNVDefineSpace: true}}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(x.wrap))
	ctx := context.Background()
	ag := newAgent(t, env, stateDir(t))
	req := api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}}
	x.on.Store(true)
	_, err := ag.Provision(ctx, req)
	x.on.Store(false)
	if x.forged.Load() != 1 {
		t.Fatalf("%d answers forged, want the anchor's define", x.forged.Load())
	}
	if err == nil {
		t.Fatal("provision succeeded with its anchor never defined")
	}
	t.Logf("provision: %v", err)
	if _, err := ag.AuditVerify(ctx); !errors.Is(err, api.ErrTampered) {
		t.Fatalf("verify after the forged define: %v, want tampered", err)
	}
	if _, err := ag.AuditReanchor(ctx); err != nil {
		t.Fatalf("reanchor: %v", err)
	}
	req.Force = true
	if _, err := ag.Provision(ctx, req); err != nil {
		t.Fatalf("provision --force after reanchor: %v", err)
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Fatal(err)
	}
	if left, err := env.TPM.Leftovers(); err != nil || len(left) != 0 {
		t.Fatalf("left in the TPM: %v (%v)", left, err)
	}
}
