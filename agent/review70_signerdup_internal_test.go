package agent

// Review 70: operational keys against the holder of the PK's policy
// signer, who is not the crypto officer.

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review70SignedAgent is an agent provisioned with the test officer and a
// signed PK policy (PCR 7 now, installed), and the policy signer.
func review70SignedAgent(t *testing.T, env *swtpmtest.Env) (*Agent, *ecdsa.PrivateKey) {
	t.Helper()
	a := testAgent(t, env, nil)
	res, signed, signer := provisionSignedBy(t, a)
	if r, err := a.InstallPolicy(t.Context(), signed(*res.Counter)); err != nil || !r.Satisfied {
		t.Fatalf("install: %+v %v", r, err)
	}
	return a, signer
}

// review70SignerDup loads key name and runs TPM2_Duplicate to TPM_RH_NULL
// (provd's ExportSensitive: an inner wrapper it opens) in a session that
// satisfies the key's use branch with the policy signer's approval of
// PolicyCommandCode(Duplicate) alone; it returns the private key it got.
func review70SignerDup(t *testing.T, a *Agent, signer *ecdsa.PrivateKey, name string) (*ecdsa.PrivateKey, error) {
	t.Helper()
	ctx := context.Background()
	ks, err := a.readKeyState(ctx, name, true)
	if err != nil {
		t.Fatal(err)
	}
	expr, err := ks.rec.policyUnder(ks.pk, dupRule{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	opts := review70Evil(t, signer, ks.pk.expr)
	if ks.rec.Extractable {
		opts.Branches = []int{0} // the use branch
	}
	var leaked *ecdsa.PrivateKey
	err = review70DupKey(t, a, ks, expr, opts, nil, func(obj tpm.Object, sens *tpm2.TPMTSensitive) error {
		priv, err := catalog.PrivateKey(obj.Public, sens)
		if err != nil {
			return err
		}
		leaked = priv.(*ecdsa.PrivateKey)
		return nil
	})
	return leaked, err
}

// review70DupKey loads ks's key (none resident before) and runs
// TPM2_Duplicate of it in a session that satisfies expr with opts: to
// parent, or to TPM_RH_NULL (ExportSensitive) when parent is nil, then
// got with the sensitive area it gave, if any.
func review70DupKey(t *testing.T, a *Agent, ks keyState, expr policy.Policy, opts policy.ApplyOptions, parent *tpm.Object, got func(obj tpm.Object, sens *tpm2.TPMTSensitive) error) error {
	t.Helper()
	auth, err := ks.objectAuth()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.keys.EvictResident(); err != nil {
		t.Fatal(err)
	}
	obj, _, err := a.keyObject(t.Context(), ks)
	if err != nil {
		t.Fatal(err)
	}
	return a.withFreshSession(a.secretIn, ks.pk.state.Policy, expr, opts, auth, func(s tpm2.Session) error {
		if parent != nil {
			d, err := a.t.Duplicate(obj, s, parent.Named())
			clear(d.InnerKey)
			return err
		}
		sens, err := a.t.ExportSensitive(obj, s)
		if err != nil || got == nil {
			return err
		}
		return got(obj, sens)
	})
}

// FLAW (failed before the mend: useBranch, the use branch bound to the
// key's one command): under a signed PK policy the policy signer, not the crypto
// officer, can approve the duplication of an extractable key. The key's
// use branch is P then PolicyAuthValue, with P =
// PolicyAuthorize(signer, "provd/pk"); the signer approves any digest it
// likes there, and one that holds PolicyCommandCode(Duplicate) leaves the
// session's command code set through PolicyAuthorize, PolicyAuthValue and
// PolicyOR. TPM2_Duplicate's DUP role is then authorized by the use
// branch (docs/architecture.md: "a PK's or key's use branch cannot move
// it"), to any parent, TPM_RH_NULL included: the key's plaintext, with no
// officer approval, no PolicyDuplicationSelect, and (the signed digest
// need not contain PolicyPCR) on any platform state. The attacker: the
// policy signer's holder (an update server, used at every platform
// update, where the officer's key is offline) with the state directory
// and the TPM (A4, or A5 with that signature). The secure behaviour: the
// TPM refuses TPM2_Duplicate through the use branch, whatever the signer
// signed (e.g. the use branch bound to a command other than Duplicate,
// or P moved out of the branch that can carry a command code).
func TestReview70PolicySignerAloneExportsAnExtractableKey(t *testing.T) {
	t.Parallel()
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a, signer := review70SignedAgent(t, env)
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "ext", Type: "ecc-p256", Extractable: true}); err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("control"))
	if _, err := a.Sign(ctx, "ext", d[:], api.SignOptions{}); err != nil {
		t.Fatalf("control, a use of the key: %v", err)
	}
	leaked, err := review70SignerDup(t, a, signer, "ext")
	if err == nil {
		t.Fatalf("the policy signer's approval of PolicyCommandCode(Duplicate), through the key's use branch, took extractable key %q out to TPM_RH_NULL without the crypto officer: its private key (%s) is in the attacker's hands", "ext", leaked.Curve.Params().Name)
	}
	t.Logf("refused: %v", err)
}

// Held: the same signer-approved PolicyCommandCode(Duplicate) through the
// use policy of a key born non-extractable (created, and derived) moves
// nothing: the TPM refuses TPM2_Duplicate of a fixedParent object
// whatever authorized it (TPM_RC_ATTRIBUTES), so the policy signer's
// reach ends at extractable keys.
func TestReview70PolicySignerCannotMoveAFixedKey(t *testing.T) {
	t.Parallel()
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a, signer := review70SignedAgent(t, env)
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "fixed", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	if _, err := officertest.Derive(t, ctx, a, api.DeriveRequest{Name: "der", Label: "review70", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"fixed", "der"} {
		leaked, err := review70SignerDup(t, a, signer, name)
		if err == nil {
			t.Errorf("%s: the signer's approval took the key out (%s)", name, leaked.Curve.Params().Name)
			continue
		}
		if !errors.Is(err, tpm2.TPMRCAttributes) {
			t.Errorf("%s: %v, want the TPM's TPM_RC_ATTRIBUTES (fixedParent)", name, err)
		}
		d := sha256.Sum256([]byte(name))
		if _, err := a.Sign(ctx, name, d[:], api.SignOptions{}); err != nil {
			t.Errorf("%s: the key no longer signs after the attempt: %v", name, err)
		}
	}
}
