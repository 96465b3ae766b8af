package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// A device provisioned for class "prod" takes policies signed for "prod"
// only: a policy the same signer made for "lab" is refused at install, and
// written into the state behind provd's back it unlocks nothing (provd finds
// no policy for this PK; were it sent, the TPM would refuse the signature:
// PolicyAuthorize's aHash covers the policyRef, and a signature over another
// digest is TPM_RC_SIGNATURE, tpm.TestPolicyAuthorizeBadSignatureFlushesKey).
func TestPolicyClassSeparatesFleets(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a := testAgent(t, env, nil)
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	res, err := a.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, Signer: signer.Public(), PolicyClass: "prod"})
	if err != nil {
		t.Fatal(err)
	}
	cur, err := a.t.PCRRead(tpm2.TPMAlgSHA256, []int{7})
	if err != nil {
		t.Fatal(err)
	}
	vals := policy.PCRValues{Bank: policy.BankSHA256, Values: cur}
	signed := func(class string) []byte {
		sp, err := SignPKPolicy(signer, vals, *res.Counter, class, true)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := sp.MarshalJSON()
		return b
	}
	for _, class := range []string{"lab", ""} {
		if _, err := a.InstallPolicy(ctx, signed(class)); !errors.Is(err, api.ErrNotPermitted) {
			t.Errorf("install of a policy for class %q: %v, want not permitted", class, err)
		}
	}
	if r, err := a.InstallPolicy(ctx, signed("prod")); err != nil || !r.Satisfied {
		t.Fatalf("install for prod: %+v %v", r, err)
	}
	if _, err := a.Seal(ctx, api.SealRequest{Data: []byte("s")}); err != nil {
		t.Fatalf("seal under the prod policy: %v", err)
	}
	// Behind provd's back: the lab policy in place of the prod one.
	if err := a.st.Update(ctx, func(tx *store.Tx) error { return tx.WriteBlob(blobPolicy, signed("lab")) }); err != nil {
		t.Fatal(err)
	}
	a.signed.reset()
	// provd refuses it before the TPM does (its policyRef is another
	// class's: tampering, found by the second review of issue 14); the
	// TPM would refuse it too (PolicyAuthorize over another policyRef).
	_, err = a.Seal(ctx, api.SealRequest{Data: []byte("s")})
	if !errors.Is(err, api.ErrTampered) {
		t.Fatalf("seal under a lab policy written into the state: %v, want tampered", err)
	}
	if _, err := PolicyRef("Prod Fleet!"); !errors.Is(err, api.ErrBadInput) {
		t.Errorf("a class with spaces and capitals: %v", err)
	}
}
