package agent

import (
	"context"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// Held: a movable PK of this provd (one use branch per command, pkUses)
// does every use in the daemon (KeepSession: its kept PK context and
// policy session): policy install (D created under it: Create), derive
// (D's load: Load), key create and use (Create, Load), seal and unseal
// (Create; Load in the unseal's one session), status and policy show; a
// key duplicated to its transfer key from a fleet device is taken (dup
// import: PolicySecret(PK) in T's policy) and signs, warm too; the PK
// moves (dup export --pk: its last branch) to a daemon of this provd,
// which adopts it and uses everything under it, and makes a new key
// there. No operation authorizes the PK with a command outside pkUses.
func TestReview75MovablePKInTheDaemon(t *testing.T) {
	t.Parallel()
	envA, envB, envC := swtpmtest.Start(t), swtpmtest.Start(t), swtpmtest.Start(t)
	ctx := context.Background()
	signer := fleetSigner(t)
	b, vb := review75Device(t, envB, signer, api.ProvisionRequest{}, true)
	installFleetPolicy(t, b, signer, vb)
	peerB, err := b.PeerIdentity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rootsB := caBundle(t, envB)
	a, va := review75Device(t, envA, signer, api.ProvisionRequest{DuplicableTo: &peerB, PeerPK: peerB.PKName,
		Residency: provenTo(t, b, peerB, rootsB), EKCA: append(caBundle(t, envA), rootsB...)}, true)
	if review75PKIsOlder(t, a) {
		t.Fatal("a PK provisioned now has the older policy")
	}
	sealed := review75Uses(t, a, signer, va, "a-")

	// A key from a fleet device, duplicated to A's transfer key.
	c := fleetDevice(t, envC, signer, api.ProvisionRequest{})
	if _, err := c.CreateKey(ctx, api.CreateRequest{Name: "ck", Type: "ecc-p256", Extractable: true}); err != nil {
		t.Fatal(err)
	}
	peerA, err := a.PeerIdentity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kdup, err := c.DupExport(ctx, api.DupExportRequest{Name: "ck", Peer: peerA, Approval: approveDup(t, c, "ck", peerA), EKCA: caBundle(t, envA)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.DupImport(ctx, api.DupImportRequest{Name: "ck", Dup: kdup}); err != nil {
		t.Fatalf("dup import under a movable PK (PolicySecret through its branch): %v", err)
	}
	for range 2 {
		signVerifies(t, c, a, "ck")
	}

	dup, err := a.PKExport(ctx, api.PKExportRequest{Peer: peerB, PeerPK: peerB.PKName, EKCA: rootsB})
	if err != nil {
		t.Fatalf("dup export --pk in the daemon: %v", err)
	}
	if _, err := b.ProvisionFrom(ctx, api.PKAdoptRequest{Dup: dup, Approval: approvePK(t, a, peerB, officertest.Key()), Force: true}); err != nil {
		t.Fatalf("adoption in the daemon: %v", err)
	}
	review75OnTheReceiver(t, a, b, sealed)
	if _, err := b.CreateKey(ctx, api.CreateRequest{Name: "b-ext", Type: "ecc-p256", Extractable: true}); err != nil {
		t.Fatalf("create on B: %v", err)
	}
	for _, k := range []string{"b-dk", "b-ext"} {
		for range 2 {
			signVerifies(t, b, b, k)
		}
	}
	if st, err := b.Status(ctx); err != nil || st.Policy == nil || !st.Policy.Satisfied {
		t.Fatalf("B's status: %+v %v", st, err)
	}
}
