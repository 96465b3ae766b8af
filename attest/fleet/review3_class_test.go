package fleet_test

// Found by a third adversarial review of the fleet endpoint; each broke
// it before its fix and is kept as a test.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"testing"
	"time"

	"github.com/provd/provd/attest/fleet"
	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/test/swtpmtest"
)

// TestHookSkippedGetsNoSecrets: a class policy of firmware manifests
// only (fleet policy set --manifest M, as docs/attestation.md shows). An OS
// that skipped the boot hook (PCR 12 still zero; PCRs 0-7 of another boot)
// extends the good value into PCR 12 by hand (locality 0) and sends a log of
// the one verified event it read from an earlier boot's measurements.log:
// the appraisal passes and the class's secret is delivered, sealed to this
// unhooked boot.
func TestHookSkippedGetsNoSecrets(t *testing.T) {
	env := swtpmtest.Start(t)
	f := reviewEndpoint(t, env)
	ctx := context.Background()
	d := newReviewDevice(t, env)
	manifest := sha256.Sum256([]byte("the allowed release"))
	if err := f.st.SetPolicy(ctx, fleet.Policy{Class: "gateway", PCRs: map[string]map[int]string{}, Manifests: []string{hex.EncodeToString(manifest[:])}}); err != nil {
		t.Fatal(err)
	}
	if err := f.st.PutSecret(ctx, fleet.Secret{Class: "gateway", Name: "wifi", Value: []byte("psk"), UpdatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	id, err := d.enroll(f, "gateway", d.certs[:1])
	if err != nil {
		t.Fatal(err)
	}
	evilKernel := sha256.Sum256([]byte("a kernel without the hook"))
	d.extend(4, evilKernel[:])
	ev := verifiedEvent(fleet.HookPCR, "gateway", manifest[:])
	d.extend(fleet.HookPCR, ev.Digests[0].Digest) // by hand, as root
	v := f.attest(t, d, id, func(r *fleetapi.AttestRequest) {
		r.MeasurementLog = logOf(t, ev)
		r.Fetch = true
	})
	if v.Pass && len(v.Deliveries) > 0 {
		t.Fatalf("BREAK: with a manifests-only policy, an OS that skipped the hook (PCR 4 changed, PCR 12 extended by hand) passes and gets %q sealed to PCRs %v of that boot (quoted PCR 4 %s…)", v.Deliveries[0].Name, v.Deliveries[0].PCRs, hex.EncodeToString(d.pcr(4))[:12])
	}
	t.Logf("held: %+v", v)
}
