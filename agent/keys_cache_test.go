package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm/objcache"
)

// checkCache fails t unless the cache holds at most one resident key, and
// k1 and k2 once each.
func checkCache(t *testing.T, a *Agent) {
	t.Helper()
	names := a.keys.Names()
	slices.Sort(names)
	if a.keys.Resident() > objcache.DefaultMaxResident || !slices.Equal(names, []string{"k1", "k2"}) {
		t.Errorf("key cache: %d resident, names %v", a.keys.Resident(), names)
	}
}

// TestCacheReplacedRecordFlushes: when a key's record is replaced behind the
// cache's back (another process deleted the key and made another of the same
// name) while the old key is resident, the next use flushes the old handle
// instead of leaking it, and uses the new key. Without the flush the
// derivation that follows needs a fourth object slot: TPM_RC_OBJECT_MEMORY.
func TestCacheReplacedRecordFlushes(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a := testAgent(t, env, &api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
	for _, n := range []string{"k1", "k2"} {
		if _, err := officertest.Derive(t, ctx, a, api.DeriveRequest{Name: n, Label: n, Type: "ecc-p256"}); err != nil {
			t.Fatal(err)
		}
	}
	d := sha256.Sum256([]byte("m"))
	if _, err := a.Sign(ctx, "k1", d[:], api.SignOptions{}); err != nil { // k1 resident
		t.Fatal(err)
	}
	// Another process replaces k1 by another key (here: k2's recipe).
	if err := a.st.Update(ctx, func(tx *store.Tx) error {
		var r keyRecord
		if err := tx.Get(keyRecName("k2"), &r); err != nil {
			return err
		}
		r.Name = "k1"
		return tx.Put(keyRecName("k1"), r)
	}); err != nil {
		t.Fatal(err)
	}
	sig, err := a.Sign(ctx, "k1", d[:], api.SignOptions{})
	if err != nil {
		t.Fatalf("sign with the replaced key: %v", err)
	}
	pub, _, err := a.KeyPublic(ctx, "k2")
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), d[:], sig) {
		t.Error("the signature is not by the key the record now names")
	}
	checkCache(t, a)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if left, err := env.TPM.Leftovers(); err != nil || len(left) > 0 {
		t.Errorf("after Close: handles %x left in the TPM (%v)", left, err)
	}
}

// TestSignedPolicyParsedOnce: key uses under a signed PK policy reuse the
// parsed, verified policy while its blob is unchanged, and see a newly
// installed one at once.
func TestSignedPolicyParsedOnce(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a := testAgent(t, env, nil)
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	res, err := a.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, Signer: signer.Public()})
	if err != nil {
		t.Fatal(err)
	}
	cur, err := a.t.PCRRead(tpm2.TPMAlgSHA256, []int{7})
	if err != nil {
		t.Fatal(err)
	}
	install := func(v uint64) {
		t.Helper()
		sp, err := SignPKPolicy(signer, policy.PCRValues{Bank: policy.BankSHA256, Values: cur}, v, "", true)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := sp.MarshalJSON()
		if r, err := a.InstallPolicy(ctx, b); err != nil || !r.Satisfied {
			t.Fatalf("install: %+v %v", r, err)
		}
	}
	install(*res.Counter)
	if _, err := officertest.Derive(t, ctx, a, api.DeriveRequest{Name: "k", Label: "k", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	signed := func() *policy.SignedPolicy {
		t.Helper()
		d := sha256.Sum256(nil)
		if _, err := a.Sign(ctx, "k", d[:], api.SignOptions{}); err != nil {
			t.Fatal(err)
		}
		ks, err := a.readKeyState(ctx, "k", true)
		if err != nil || len(ks.pk.opts.Signed) != 1 {
			t.Fatalf("%+v %v", ks.pk.opts, err)
		}
		return ks.pk.opts.Signed[0]
	}
	first := signed()
	if again := signed(); again != first {
		t.Error("the same installed policy was parsed and verified again")
	}
	install(*res.Counter + 1)
	if next := signed(); next == first || next.Version != *res.Counter+1 {
		t.Errorf("after install: version %d, want %d", next.Version, *res.Counter+1)
	}
}
