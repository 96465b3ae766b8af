package agent

import (
	"context"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// A trail begun before first contact has a gate made through the SRK the bus
// named (an interposer could have changed that creation); provisioning, once
// the identity is pinned, moves the trail to a gate made through the pinned
// SRK, and the trail still verifies.
func TestGateRemadeThroughThePinnedSRK(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a := testAgent(t, env, nil)
	if _, err := a.Provision(ctx, api.ProvisionRequest{PCRs: []int{7}}); !errors.Is(err, api.ErrUntrustedTPM) {
		t.Fatalf("provision without EK trust: %v", err)
	}
	before, err := a.trailAnchor().gate()
	if err != nil || before == nil || before.SRK != "" {
		t.Fatalf("gate of a trail begun before first contact: %+v %v, want one with no pinned SRK", before, err)
	}
	if _, err := a.Provision(ctx, api.ProvisionRequest{PCRs: []int{7}, TrustOnFirstUse: true}); err != nil {
		t.Fatal(err)
	}
	after, err := a.trailAnchor().gate()
	if err != nil || after == nil || after.SRK != hex.EncodeToString(a.t.PinnedSRKName()) || after.Name == before.Name {
		t.Fatalf("gate after provisioning: %+v %v, want a new one through the pinned SRK", after, err)
	}
	if rep, err := a.AuditVerify(ctx); err != nil {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}
