package agent

// Review 38: other loads under the SRK in a running daemon whose SRK
// another program evicted mid-life, and the post-load PersistSRK of
// 8230484 refused.
//
// FLAW (failed before the mend): none in this file (see
// review38_daemonpeer_internal_test.go).
//
// HELD: TestReview38DaemonPolicyInstallWithTheSRKEvictedMidLife — a warm
// daemon (the PK's context kept) installs a signed policy after another
// program evicted the SRK: the counter gate's load under the cached SRK
// goes to a transient copy (gate + copy, then the audit gate), and the
// install succeeds with nothing left loaded that the agent does not hold.
//
// HELD: TestReview38DaemonPKLoadWithTheSRKPersistRefused — a daemon whose
// PK context is not kept creates a key after another program evicted the
// SRK, with every EvictControl of the SRK refused (NV full): the PK's load
// goes to a transient copy, the post-load PersistSRK fails, and key create
// fails with the PK and the copy flushed, the SRK not put back; it works
// once the persist is allowed.
import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/officertest"
)

func TestReview38DaemonPolicyInstallWithTheSRKEvictedMidLife(t *testing.T) {
	ctx := context.Background()
	env, b, a := review35Daemon(t, false)
	signer, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	req := api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, Signer: signer.Public()}
	if _, err := a.Provision(ctx, req); err != nil {
		t.Fatal(err)
	}
	cur, err := env.TPM.PCRRead(tpm2.TPMAlgSHA256, []int{7})
	if err != nil {
		t.Fatal(err)
	}
	signed := func(v uint64) []byte {
		sp, err := SignPKPolicy(signer, policy.PCRValues{Bank: policy.BankSHA256, Values: cur}, v, "", true)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := sp.MarshalJSON()
		return b
	}
	c, err := env.TPM.ReadCounter(PolicyCounterHandle)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.InstallPolicy(ctx, signed(c+1)); err != nil {
		t.Fatalf("policy install before the eviction: %v", err)
	}
	if _, err := a.Seal(ctx, api.SealRequest{Data: []byte("x")}); err != nil {
		t.Fatalf("seal before the eviction: %v", err)
	}
	review31EvictSRK(t, env, b)
	_, err = a.InstallPolicy(ctx, signed(c+2))
	t.Logf("policy install with the SRK evicted under the daemon: %v (SRK persisted again: %v)", err, review26SRKThere(env))
	review32Unheld(t, env, a, "policy install")
	if err != nil {
		t.Fatalf("policy install to the running daemon after another program evicted the SRK: %v", err)
	}
	if got, err := env.TPM.ReadCounter(PolicyCounterHandle); err != nil || got != c+2 {
		t.Errorf("the policy counter is at %d (%v), want %d", got, err, c+2)
	}
}

func TestReview38DaemonPKLoadWithTheSRKPersistRefused(t *testing.T) {
	ctx := context.Background()
	env, b, a := review35Daemon(t, false)
	if _, err := a.Provision(ctx, review8Req()); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("m"))
	if _, err := a.Sign(ctx, "k", d[:], api.SignOptions{}); err != nil {
		t.Fatalf("sign before the eviction: %v", err)
	}
	if err := a.keys.EvictResident(); err != nil {
		t.Fatal(err)
	}
	a.pk = nil // the kept context dropped (as any failure with it does): the PK loads from its blob
	review31EvictSRK(t, env, b)
	refused := 0
	b.Set(review35RefuseSRKPersist(&refused))
	_, err := a.CreateKey(ctx, api.CreateRequest{Name: "k2", Type: "ecc-p256"})
	b.Set(nil)
	t.Logf("key create with the SRK evicted under the daemon and its persist refused (%d refusals): %v", refused, err)
	if refused == 0 {
		t.Fatalf("not mounted: no EvictControl of the SRK (key create: %v)", err)
	}
	if err == nil {
		t.Errorf("key create went on with the SRK's persist refused after the PK's load")
	}
	if review26SRKThere(env) {
		t.Errorf("the SRK is at 0x81000001 after its persist was refused")
	}
	review32Unheld(t, env, a, "the key create with the persist refused")
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k2", Type: "ecc-p256"}); err != nil {
		t.Errorf("key create again, the persist allowed: %v", err)
	}
	if !review26SRKThere(env) {
		t.Errorf("the key create again left the SRK unpersisted")
	}
	review32Unheld(t, env, a, "key create again")
}
