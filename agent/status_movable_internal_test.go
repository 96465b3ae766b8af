package agent

import (
	"context"
	"crypto/sha256"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/swtpmtest"
)

// The authPolicy check in status (issue 14's second review) gives no false
// "tampered" on a
// legitimate movable PK (duplicable by an authority) under an installed
// signed policy, with two keys resident in the cache.
func TestStatusOfAMovablePKUnderASignedPolicy(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	signer, authority := fleetSigner(t), fleetSigner(t)
	authPEM, err := policy.MarshalPublicKeyPEM(authority.Public())
	if err != nil {
		t.Fatal(err)
	}
	a := fleetDevice(t, env, signer, api.ProvisionRequest{DuplicableBy: string(authPEM)})
	for _, n := range []string{"k1", "k2"} {
		if _, err := a.CreateKey(ctx, api.CreateRequest{Name: n, Type: "ecc-p256"}); err != nil {
			t.Fatal(err)
		}
	}
	d := sha256.Sum256([]byte("x"))
	for _, n := range []string{"k1", "k2"} {
		if _, err := a.Sign(ctx, n, d[:], api.SignOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	st, err := a.Status(ctx)
	if err != nil {
		t.Fatalf("status on a movable PK with a signed policy: %v", err)
	}
	if st.Policy == nil || !st.Policy.Satisfied {
		t.Fatalf("status: %+v", st.Policy)
	}
	t.Logf("status %+v, movable %q", *st.Policy, st.Movable)
}
