package fleet_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/provd/provd/attest/fleet"
	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/test/swtpmtest"
)

// TestConcurrentReplayRecordsOnce (a reviewer's check of the hot path):
// one genuine evidence sent 16 times at once (fetching): exactly one
// verdict passes and carries deliveries; the others are nonce_unknown and
// carry nothing; one appraisal recorded.
func TestConcurrentReplayRecordsOnce(t *testing.T) {
	env := swtpmtest.Start(t)
	f := newAuthorityFleet(t, env, true)
	d := newReviewDevice(t, env)
	id, err := d.enroll(f.reviewFleet, "gateway", d.certs)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	f.setGolden(t, d, "gateway")
	f.now = f.now.Add(time.Second)
	if err := f.st.PutSecret(ctx, fleet.Secret{Class: "gateway", Name: "wifi", Value: []byte("psk"), UpdatedAt: f.now}); err != nil {
		t.Fatal(err)
	}
	ch, err := f.e.Challenge(ctx, fleetapi.ChallengeRequest{DeviceID: id})
	if err != nil {
		t.Fatal(err)
	}
	req := d.evidence(id, ch)
	req.Fetch = true
	var wg sync.WaitGroup
	var pass, deliv, unknown atomic.Int32
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := f.e.Attest(ctx, req)
			if err != nil {
				t.Error(err)
				return
			}
			if v.Pass {
				pass.Add(1)
			}
			if len(v.Deliveries) > 0 || v.PeerChallenge != nil {
				deliv.Add(1)
			}
			if len(v.Reasons) > 0 && v.Reasons[0].Code == fleet.CodeNonceUnknown {
				unknown.Add(1)
			}
		}()
	}
	wg.Wait()
	h, err := f.st.Appraisals(ctx, id, 100)
	if err != nil {
		t.Fatal(err)
	}
	if pass.Load() != 1 || deliv.Load() != 1 || unknown.Load() != 15 || len(h) != 1 {
		t.Fatal("replay window")
	}
	// Sequentially, within the TTL: refused again.
	if v, err := f.e.Attest(ctx, req); err != nil || v.Pass || len(v.Deliveries) > 0 {
		t.Fatalf("%+v %v", v, err)
	}
}
