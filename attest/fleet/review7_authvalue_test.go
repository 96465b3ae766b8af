package fleet_test

import (
	"context"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/attest/fleet"
	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/policy"
)

// TestStoredAuthValuePKPolicyRefused (found by review): PolicyAuthValue's
// digest, in a class policy stored before PUT /v1/policies refused it (or
// by any other writer of the store), registers nothing and gets no
// approval: registration and approval refuse it too.
func TestStoredAuthValuePKPolicyRefused(t *testing.T) {
	p := newPeerFixture(t)
	f, d, id, tk := p.authorityFleet, p.d, p.id, p.tk
	ctx := context.Background()
	weak, _ := policy.Policy{policy.AuthValue{}}.Digest(tpm2.TPMAlgSHA256)
	vals := map[int]string{}
	for i := 0; i <= 7; i++ {
		vals[i] = hex.EncodeToString(d.pcr(i))
	}
	// As an older endpoint stored it.
	if err := f.st.SetPolicy(ctx, fleet.Policy{Class: "gateway", PCRs: map[string]map[int]string{"sha256": vals}, PKPolicies: []string{hex.EncodeToString(weak)}, UpdatedAt: f.now}); err != nil {
		t.Fatal(err)
	}
	f.now = f.now.Add(time.Second)
	peer := peerFileWith(t, d.certs, tk.pub, hex.EncodeToString(tk.pkName.Buffer), hex.EncodeToString(weak))
	if v := f.attestPeer(t, d, id, peer, peer); !v.Pass || v.PeerChallenge != nil || !hasReason(v, fleetapi.CodePeerRefused) {
		t.Fatalf("a registration over PolicyAuthValue's digest, stored by an older endpoint: %+v", v)
	}
	if _, err := f.e.ApproveDuplication(ctx, id, fleetapi.DupApprovalRequest{ObjectName: "000b" + strings.Repeat("5a", 32)}); !errors.Is(err, fleet.ErrRejected) {
		t.Fatalf("an approval: %v", err)
	}
}
