package fleet_test

// Found by a third adversarial review of the fleet endpoint; each broke
// it before its fix and is kept as a test.

import (
	"context"
	"crypto/sha256"
	"testing"
	"time"

	"github.com/provd/provd/attest/fleet"
	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/test/swtpmtest"
)

// TestTOFUPassGetsNoSecrets: the operator has put a secret for
// class "gateway" (fleet secret put), no golden values yet. Any genuine TPM
// (here one whose boot changed: PCR 7 extended with "evil") enrolls itself as
// "gateway" (the class is the device's say) and attests first with Fetch: the
// trust-on-first-use verdict counts as a pass, the endpoint seals the secret
// to the attacker's TPM and its evil PCRs, and the attacker unseals it. The
// genuine gateway attesting after it then fails (the evil boot is the
// baseline) and gets nothing.
func TestTOFUPassGetsNoSecrets(t *testing.T) {
	envA, envB := swtpmtest.Start(t), swtpmtest.Start(t)
	f := reviewEndpoint(t, envA, envB)
	ctx := context.Background()
	secret := []byte("gateway wifi psk: correct horse")
	if err := f.st.PutSecret(ctx, fleet.Secret{Class: "gateway", Name: "wifi", Value: secret, UpdatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	evil, good := newReviewDevice(t, envA), newReviewDevice(t, envB)
	evilDigest := sha256.Sum256([]byte("evil bootloader"))
	evil.extend(7, evilDigest[:])
	idEvil, err := evil.enroll(f, "gateway", evil.certs[:1])
	if err != nil {
		t.Fatal(err)
	}
	idGood, err := good.enroll(f, "gateway", good.certs[:1])
	if err != nil {
		t.Fatal(err)
	}
	v := f.attest(t, evil, idEvil, func(r *fleetapi.AttestRequest) { r.Fetch = true })
	t.Logf("attacker's verdict: pass=%v reasons=%+v deliveries=%d", v.Pass, v.Reasons, len(v.Deliveries))
	if !v.Pass || len(v.Deliveries) == 0 {
		t.Logf("held: no delivery on a TOFU verdict")
		return
	}
	got := unsealDelivery(t, evil, v.Deliveries[0])
	vg := f.attest(t, good, idGood, func(r *fleetapi.AttestRequest) { r.Fetch = true })
	t.Logf("genuine gateway afterwards: pass=%v deliveries=%d reasons=%+v", vg.Pass, len(vg.Deliveries), vg.Reasons)
	if string(got) == string(secret) {
		t.Fatalf("BREAK: a TPM with a changed boot (PCR 7 = evil) that enrolled itself into class gateway got and unsealed the class's secret %q on a trust-on-first-use 'pass' (reason %s); the genuine gateway then fails: pass=%v", got, v.Reasons[0].Code, vg.Pass)
	}
}
