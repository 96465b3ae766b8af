package fleet_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/provd/provd/attest/fleet"
	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/catalog"
)

// TestRegistrationBindsThePolicyVersion (found by review): a challenge
// issued by a replica whose clock runs 50 s ahead dated its registration
// 50 s late, so a policy change made on a correct replica within those
// 50 s did not void it. The registration keeps the policy version the
// answer bound, and an approval needs that version to be the current one:
// no clock decides.
func TestRegistrationBindsThePolicyVersion(t *testing.T) {
	p := newPeerFixture(t)
	f, d, id, tk := p.authorityFleet, p.d, p.id, p.tk
	ctx := context.Background()
	real := f.now
	f.setGolden(t, d, "gateway") // boot A's values, at real
	// Issued and answered on a replica 50s ahead, at real+1s.
	f.now = real.Add(51 * time.Second)
	peer := peerFileFor(t, d.certs, tk.pub, tk.pkName.Buffer)
	pc, secret := f.answer(t, d, id, tk, peer)
	if _, err := f.e.ProvePeer(ctx, fleetapi.PeerProveRequest{DeviceID: id, Peer: peer, ExpiresAt: pc.ExpiresAt, Answer: secret[len(catalog.ChallengePrefix):]}); err != nil {
		t.Fatal(err)
	}
	// Real time real+10s, on a correct replica: boot A's values withdrawn.
	f.now = real.Add(10 * time.Second)
	d.extend(7, make([]byte, 32))
	f.setGolden(t, d, "gateway")
	// The device attests under the new values (a correct replica), later.
	f.now = real.Add(60 * time.Second)
	if v := f.attest(t, d, id, nil); !v.Pass {
		t.Fatalf("%+v", v)
	}
	f.now = f.now.Add(time.Second)
	_, err := f.e.ApproveDuplication(ctx, id, fleetapi.DupApprovalRequest{ObjectName: "000b" + "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"})
	if !errors.Is(err, fleet.ErrRejected) || !strings.Contains(err.Error(), "after it registered") {
		t.Fatalf("an approval over a transfer key vouched for under withdrawn golden values: %v", err)
	}
}
