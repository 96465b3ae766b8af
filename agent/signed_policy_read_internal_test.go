package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// Found by the second review of issue 14: under a signed policy the values
// status compares the PCRs with come from the installed policy blob, which
// was verified only against the signer key it carries. A4 writing a policy
// of its own (its own key, the current bad PCRs, the counter's version)
// over the installed one made status and policy show say "satisfied" while
// the TPM refused every key. The blob read from the state is now checked
// as install checks it (the PK's signer, its policyRef, provd's counter):
// status, policy show and every key use refuse it as tampered.
func TestInstalledPolicyIsCheckedOnEveryRead(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a, err := New(Config{TPM: env.TPM, StateDir: t.TempDir() + "/state", KeepSession: true})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	res, err := a.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, Signer: signer.Public(), AllowResettable: true})
	if err != nil {
		t.Fatal(err)
	}
	pcrs := []int{7, 16}
	read := func() policy.PCRValues {
		cur, err := env.TPM.PCRReadAuthenticated(tpm2.TPMAlgSHA256, pcrs)
		if err != nil {
			t.Fatal(err)
		}
		return policy.PCRValues{Bank: policy.BankSHA256, Values: cur}
	}
	sign := func(k *ecdsa.PrivateKey, v policy.PCRValues, version uint64) []byte {
		sp, err := SignPKPolicy(k, v, version, "", true)
		if err != nil {
			t.Fatal(err)
		}
		b, err := sp.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if r, err := a.InstallPolicy(ctx, sign(signer, read(), *res.Counter)); err != nil || !r.Satisfied {
		t.Fatalf("install: %+v %v", r, err)
	}
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	// The bad boot.
	bad := sha256.Sum256([]byte("bad boot"))
	if err := env.TPM.PCRExtend(16, tpm2.TPMAlgSHA256, bad[:]); err != nil {
		t.Fatal(err)
	}
	st, err := a.Status(ctx)
	if err != nil || st.Policy == nil || st.Policy.Satisfied {
		t.Fatalf("control: status on the bad boot: %v %+v", err, st.Policy)
	}
	// A4 writes a policy of its own over the installed one.
	evil, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	forged := sign(evil, read(), *res.Counter)
	if err := a.st.Update(ctx, func(tx *store.Tx) error { return tx.WriteBlob(blobPolicy, forged) }); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Status(ctx); !errors.Is(err, api.ErrTampered) {
		t.Fatalf("status over a policy signed by another key: %v, want tampered", err)
	}
	if _, err := a.ShowPolicy(ctx); !errors.Is(err, api.ErrTampered) {
		t.Fatalf("policy show over a policy signed by another key: %v, want tampered", err)
	}
	d := sha256.Sum256([]byte("x"))
	if _, err := a.Sign(ctx, "k", d[:], api.SignOptions{}); !errors.Is(err, api.ErrTampered) {
		t.Fatalf("sign over a policy signed by another key: %v, want tampered", err)
	}
}
