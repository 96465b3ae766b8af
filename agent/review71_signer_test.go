package agent

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/swtpmtest"
)

// FLAW (failed before the mend: checkKeysLoad, TPM2_TestParms at provision): `provision --policy-signer` took an RSA-4096 key (docs/policy.md:
// approved signers include RSA-PSS with a 4096-bit modulus) and binds the
// PK's authPolicy to PolicyAuthorize(its name) without asking the TPM
// whether it can load such a key. swtpm's TPM (like many hardware TPMs)
// cannot: TPM2_LoadExternal answers TPM_RC_VALUE, so no signed policy of
// that signer is ever usable and the PK, with every key made under it, is
// lost from the first install. Worse, `policy install` and `policy show`
// decide "satisfied" from authenticated PCR and counter reads alone, so
// they report the policy in force and satisfied while every PK use fails.
// Attacker: none needed (an operator following the docs); loss: the PK and
// everything under it, with status saying all is well. The secure behaviour
// asserted: provision refuses a signer the TPM cannot use (exit 5), or,
// having taken it, the PK works whenever status says "satisfied".
func TestReview71RSA4096PolicySignerLocksThePK(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a := testAgent(t, env, nil)
	signer, err := rsa.GenerateKey(rand.Reader, 4096)
	if err != nil {
		t.Fatal(err)
	}
	res, err := a.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, Signer: signer.Public()})
	if errors.Is(err, api.ErrNotPermitted) {
		return // refused before anything was bound to it: the secure outcome
	}
	if err != nil {
		t.Fatal(err)
	}
	cur, err := a.t.PCRRead(tpm2.TPMAlgSHA256, []int{7})
	if err != nil {
		t.Fatal(err)
	}
	sp, err := SignPKPolicy(signer, policy.PCRValues{Bank: policy.BankSHA256, Values: cur}, *res.Counter, "", false)
	if err != nil {
		t.Fatal(err)
	}
	b, err := sp.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	ir, err := a.InstallPolicy(ctx, b)
	if err != nil {
		t.Fatalf("install: %v", err)
	}
	ps, err := a.ShowPolicy(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, serr := a.Seal(ctx, api.SealRequest{Data: []byte("a secret under the PK"), Bank: policy.BankSHA256, PCRs: []int{7}})
	if serr != nil {
		t.Fatalf("provision took an RSA-4096 policy signer; install said satisfied=%v, policy show satisfied=%v, "+
			"yet the PK cannot be used: seal: %v", ir.Satisfied, ps.Satisfied, serr)
	}
}
