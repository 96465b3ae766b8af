package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/hex"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review75Device provisions a fleet device on env (the test officer,
// signer's signed policy, req's movable fields); keep makes it the
// daemon's (KeepSession). The signed policy is not installed (no D yet).
func review75Device(t *testing.T, env *swtpmtest.Env, signer *ecdsa.PrivateKey, req api.ProvisionRequest, keep bool) (*Agent, uint64) {
	t.Helper()
	req.Officer, req.Signer, req.TrustOnFirstUse = officertest.Public(), signer.Public(), len(req.EKCA) == 0
	a, err := New(Config{TPM: env.TPM, StateDir: t.TempDir() + "/state", KeepSession: keep})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	res, err := a.Provision(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	return a, *res.Counter
}

// review75OlderPK replaces a's movable PK, just provisioned (no D, no
// keys), by one of the same template and authValue with the policy
// provd gave a movable PK before review 70 (pkPolicyBefore70: one use
// branch bound to no command, then the duplication branch): what a device
// provisioned by an earlier provd holds.
func review75OlderPK(t *testing.T, a *Agent) {
	t.Helper()
	ctx := context.Background()
	var in pkInputs
	if err := a.st.View(ctx, func(tx *store.Tx) (err error) {
		in, err = a.readPKInputs(tx)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	rule, err := in.state.rule()
	if err != nil || !rule.set() {
		t.Fatalf("not a movable PK: %v", err)
	}
	old, err := pkPolicyBefore70(in.expr, rule, nil).Digest(tpm2.TPMAlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	srk, err := a.t.SRK()
	if err != nil {
		t.Fatal(err)
	}
	blob, err := a.t.Create(srk, nil, pkTemplate(old, true), tpm.Sensitive{UserAuth: in.auth})
	if err != nil {
		t.Fatal(err)
	}
	name, err := blob.Name()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.st.Update(ctx, func(tx *store.Tx) error {
		st := in.state
		st.Name = hex.EncodeToString(name.Buffer)
		if err := tx.Put(recPK, st); err != nil {
			return err
		}
		return tx.WriteBlob(blobPK, blob.Marshal())
	}); err != nil {
		t.Fatal(err)
	}
	a.pk = nil
}

// review75PKIsOlder says whether a's PK (loaded) has the policy of before
// review 70.
func review75PKIsOlder(t *testing.T, a *Agent) bool {
	t.Helper()
	in, err := a.pkInputs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	rule, _ := in.state.rule()
	older := false
	if err := a.withLoadedPK(in, func(l *loadedPK) error {
		_, older = pkPolicyOf(in.expr, rule, nil, l.pk.Public.AuthPolicy.Buffer)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return older
}

// review75Uses runs every use of a device's PK there is: a policy
// install (which creates D under the PK when it has none), derive, key
// creation (fixed and extractable), each key's sign twice (the second
// warm in the daemon), seal and unseal, status and policy show; it
// returns the sealed blob.
func review75Uses(t *testing.T, a *Agent, signer *ecdsa.PrivateKey, version uint64, prefix string) []byte {
	t.Helper()
	ctx := context.Background()
	installFleetPolicy(t, a, signer, version)
	if _, err := a.DeriveKey(ctx, api.DeriveRequest{Name: prefix + "dk", Label: prefix + "l", Type: "ecc-p256",
		Approval: approveRecipe(t, a, officer.Recipe{Type: "ecc-p256", Label: prefix + "l"})}); err != nil {
		t.Fatalf("derive: %v", err)
	}
	for _, r := range []api.CreateRequest{{Name: prefix + "fixed", Type: "ecc-p256"}, {Name: prefix + "ext", Type: "ecc-p256", Extractable: true}} {
		if _, err := a.CreateKey(ctx, r); err != nil {
			t.Fatalf("create %s: %v", r.Name, err)
		}
	}
	for _, k := range []string{"dk", "fixed", "ext"} {
		for range 2 {
			signVerifies(t, a, a, prefix+k)
		}
	}
	sealed, err := a.Seal(ctx, api.SealRequest{Data: []byte("sealed " + prefix)})
	if err != nil {
		t.Fatalf("seal: %v", err)
	}
	if got, err := a.Unseal(ctx, sealed); err != nil || string(got) != "sealed "+prefix {
		t.Fatalf("unseal: %q %v", got, err)
	}
	st, err := a.Status(ctx)
	if err != nil || st.Policy == nil || !st.Policy.Satisfied {
		t.Fatalf("status: %+v %v", st, err)
	}
	if ps, err := a.ShowPolicy(ctx); err != nil || !ps.Satisfied {
		t.Fatalf("policy show: %+v %v", ps, err)
	}
	return sealed
}

// Held: a movable PK made before review 70 (its policy
// pkPolicyBefore70's: one use branch bound to no command) keeps working
// under this provd, in the daemon (KeepSession, its kept PK context and
// policy session) and one-shot: a signed policy installed (D created
// under it through branch 0), derive, create, sign (warm too), seal and
// unseal, status and policy show; it moves (dup export --pk through its
// branch 1) to a receiver of this provd, which adopts it (pkPolicyOf) and
// uses everything under it, and makes new keys under it there.
func TestReview75OlderMovablePKWorksAndMoves(t *testing.T) {
	t.Parallel()
	envA, envB := swtpmtest.Start(t), swtpmtest.Start(t)
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
	review75OlderPK(t, a)
	if !review75PKIsOlder(t, a) {
		t.Fatal("control: the PK built is not of the older policy")
	}
	sealed := review75Uses(t, a, signer, va, "a-")

	// The same state in a one-shot process.
	one, err := New(Config{TPM: envA.TPM, StateDir: a.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	for _, k := range []string{"a-dk", "a-fixed", "a-ext"} {
		signVerifies(t, a, one, k)
	}
	if got, err := one.Unseal(ctx, sealed); err != nil || string(got) != "sealed a-" {
		t.Fatalf("one-shot unseal: %q %v", got, err)
	}
	one.Close()

	dup, err := a.PKExport(ctx, api.PKExportRequest{Peer: peerB, PeerPK: peerB.PKName, EKCA: rootsB})
	if err != nil {
		t.Fatalf("dup export --pk of an older PK: %v", err)
	}
	if _, err := b.ProvisionFrom(ctx, api.PKAdoptRequest{Dup: dup, Approval: approvePK(t, a, peerB, officertest.Key()), Force: true}); err != nil {
		t.Fatalf("adoption of an older PK by this provd: %v", err)
	}
	if !review75PKIsOlder(t, b) {
		t.Fatal("the adopted PK is not the older one")
	}
	review75OnTheReceiver(t, a, b, sealed)
	// New keys under it on B, and its status.
	if _, err := b.CreateKey(ctx, api.CreateRequest{Name: "b-fixed", Type: "ecc-p256"}); err != nil {
		t.Fatalf("create on B: %v", err)
	}
	d := sha256.Sum256([]byte("b"))
	for _, k := range []string{"b-dk", "b-fixed"} {
		if _, err := b.Sign(ctx, k, d[:], api.SignOptions{}); err != nil {
			t.Fatalf("sign %s on B: %v", k, err)
		}
	}
	if st, err := b.Status(ctx); err != nil || st.Policy == nil || !st.Policy.Satisfied {
		t.Fatalf("B's status: %+v %v", st, err)
	}
}

// review75OnTheReceiver checks, on B after it adopted A's PK, that A's
// keys sign there as A's (twice: loaded, then kept), that A's sealed
// secret unseals, and that a key derives under the PK on B.
func review75OnTheReceiver(t *testing.T, a, b *Agent, sealed []byte) {
	t.Helper()
	ctx := t.Context()
	for _, k := range []string{"a-dk", "a-fixed", "a-ext"} {
		for range 2 {
			signVerifies(t, a, b, k)
		}
	}
	if got, err := b.Unseal(ctx, sealed); err != nil || string(got) != "sealed a-" {
		t.Fatalf("A's sealed secret on B: %q %v", got, err)
	}
	if _, err := b.DeriveKey(ctx, api.DeriveRequest{Name: "b-dk", Label: "b-l", Type: "ecc-p256",
		Approval: approveRecipe(t, b, officer.Recipe{Type: "ecc-p256", Label: "b-l"})}); err != nil {
		t.Fatalf("derive on B: %v", err)
	}
}
