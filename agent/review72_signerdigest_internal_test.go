package agent

// Review 72: the mend of review 70 (a duplicable object's use branch bound
// to its one command) against the policy signer's other digests, and
// against A4 editing the record that says which policy a key has.

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/swtpmtest"
)

// review72SignerDup is review70SignerDup with the signer's approved digest
// evil, run in the key's use branch (expr, or when nil the policy provd
// applies for the key's record as read now): TPM2_Duplicate of the key to
// TPM_RH_NULL, its plaintext opened in software. It returns the TPM's
// answer (nil: the key left).
func review72SignerDup(t *testing.T, a *Agent, signer crypto.Signer, name string, evil, expr policy.Policy) error {
	t.Helper()
	ctx := context.Background()
	ks, err := a.readKeyState(ctx, name, true)
	if err != nil {
		t.Fatal(err)
	}
	var ref []byte
	for _, st := range ks.pk.expr {
		if au, ok := st.(policy.Authorize); ok {
			ref = au.PolicyRef
		}
	}
	if ref == nil {
		t.Fatalf("the PK's policy %#v has no PolicyAuthorize", ks.pk.expr)
	}
	digest, err := evil.Digest(tpm2.TPMAlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	ap, err := policy.ApproveDigest(signer, digest, ref)
	if err != nil {
		t.Fatal(err)
	}
	if expr == nil {
		if expr, err = ks.rec.policyUnder(ks.pk, dupRule{}, nil); err != nil {
			return err
		}
	}
	opts := policy.ApplyOptions{Approved: []policy.Approved{{Policy: evil, Approval: ap}}}
	if _, isOr := expr[0].(policy.Or); isOr {
		opts.Branches = []int{0} // the use branch
	}
	return review70DupKey(t, a, ks, expr, opts, nil, nil)
}

// Held: the policy signer's approved digest can hold more than
// PolicyCommandCode(Duplicate), and none of it takes an extractable key
// out through its bound use branch (P, PolicyCommandCode(Sign),
// PolicyAuthValue): PolicyDuplicationSelect naming TPM_RH_NULL and the key
// (it sets the session's command code to Duplicate and its nameHash:
// TPM_RC_VALUE at the branch's PolicyCommandCode); the use command's own
// code (the branch then holds Sign twice, which the TPM accepts, and
// TPM2_Duplicate meets TPM_RC_POLICY_CC); PolicyAuthValue alone (no code
// from the signer: the branch's Sign code stands); another ADMIN command's
// code (ObjectChangeAuth). Nor does the pre-review-70 policy (no command
// code), applied to the new key, satisfy its authPolicy. The key signs
// afterwards.
func TestReview72SignerDigestsDoNotMoveABoundKey(t *testing.T) {
	t.Parallel()
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a, signer := review70SignedAgent(t, env)
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "ext", Type: "ecc-p256", Extractable: true}); err != nil {
		t.Fatal(err)
	}
	ks, err := a.readKeyState(ctx, "ext", true)
	if err != nil {
		t.Fatal(err)
	}
	objName, err := hex.DecodeString(ks.rec.Object)
	if err != nil {
		t.Fatal(err)
	}
	null := binary.BigEndian.AppendUint32(nil, uint32(tpm2.TPMRHNull))
	// The policy provd gave such a key before review 70: PolicyOR(P then
	// PolicyAuthValue, the officer's duplication branch).
	dup, err := dupBranch(dupRule{}, ks.pk.officer, nil)
	if err != nil {
		t.Fatal(err)
	}
	old := policy.Policy{policy.Or{Branches: []policy.Policy{officer.ObjectPolicy(ks.pk.expr), dup}}}
	cases := []struct {
		what string
		evil policy.Policy
		expr policy.Policy
	}{
		{"PolicyDuplicationSelect(TPM_RH_NULL, the key)", policy.Policy{policy.DuplicationSelect{NewParentName: null, ObjectName: objName, IncludeObject: true}}, nil},
		{"PolicyDuplicationSelect(TPM_RH_NULL) without the object", policy.Policy{policy.DuplicationSelect{NewParentName: null, ObjectName: objName}}, nil},
		{"PolicyCommandCode(Sign)", policy.Policy{policy.CommandCode{CC: tpm2.TPMCCSign}}, nil},
		{"PolicyAuthValue", policy.Policy{policy.AuthValue{}}, nil},
		{"PolicyCommandCode(ObjectChangeAuth)", policy.Policy{policy.CommandCode{CC: tpm2.TPMCCObjectChangeAuth}}, nil},
		{"PolicyCommandCode(Duplicate) through the pre-review-70 policy", policy.Policy{policy.CommandCode{CC: tpm2.TPMCCDuplicate}}, old},
	}
	for _, c := range cases {
		err := review72SignerDup(t, a, signer, "ext", c.evil, c.expr)
		if err == nil {
			t.Errorf("%s: the signer's approval took the extractable key to TPM_RH_NULL", c.what)
			continue
		}
		t.Logf("%s: refused: %v", c.what, err)
	}
	d := sha256.Sum256([]byte("after"))
	if _, err := a.Sign(ctx, "ext", d[:], api.SignOptions{}); err != nil {
		t.Fatalf("the key no longer signs after the attempts: %v", err)
	}
}

// Held: A4 with the state directory cannot downgrade a key made now to
// the policy provd gave such keys before review 70 (the fallback of
// keyPolicyMatching, which chooses by the record's policy digest and
// shape). Edited records: an extractable key's policy field set to the
// pre-review-70 digest (provd then applies the old policy), and a key
// imported without --extractable relabelled kind "created" (its shape then
// says fixedParent, and provd applies the unbound ObjectPolicy(P)). The
// policy signer's PolicyCommandCode(Duplicate) through what provd now
// applies is refused by the TPM (TPM_RC_POLICY_FAIL: the object's
// authPolicy is the bound one, whatever the record says), and provd's own
// sign with the lying record does not succeed either (how it fails is
// TestReview72RelabelledKindIsNotReportedTampered's).
func TestReview72EditedRecordDoesNotDowngradeAKey(t *testing.T) {
	t.Parallel()
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a, signer := review70SignedAgent(t, env)
	review70Imported(t, a, "imp")
	ks, err := a.readKeyState(ctx, "ext", true)
	if err != nil {
		t.Fatal(err)
	}
	dup, err := dupBranch(dupRule{}, ks.pk.officer, nil)
	if err != nil {
		t.Fatal(err)
	}
	oldDigest, err := policy.Policy{policy.Or{Branches: []policy.Policy{officer.ObjectPolicy(ks.pk.expr), dup}}}.Digest(tpm2.TPMAlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	edit := func(name string, fn func(r *keyRecord)) {
		t.Helper()
		if err := a.st.Update(ctx, func(tx *store.Tx) error {
			var rec keyRecord
			if err := tx.Get(keyRecName(name), &rec); err != nil {
				return err
			}
			fn(&rec)
			return tx.Put(keyRecName(name), rec)
		}); err != nil {
			t.Fatal(err)
		}
	}
	edit("ext", func(r *keyRecord) { r.Policy = hex.EncodeToString(oldDigest) })
	edit("imp", func(r *keyRecord) { r.Kind = api.KindCreated })
	for _, name := range []string{"ext", "imp"} {
		ks, err := a.readKeyState(ctx, name, true)
		if err != nil {
			t.Fatal(err)
		}
		expr, err := ks.rec.policyUnder(ks.pk, dupRule{}, nil)
		if err != nil {
			t.Logf("%s: provd refuses the edited record: %v", name, err)
			continue
		}
		err = review72SignerDup(t, a, signer, name, policy.Policy{policy.CommandCode{CC: tpm2.TPMCCDuplicate}}, expr)
		if err == nil {
			t.Errorf("%s: with its record edited, the signer's approval took the key to TPM_RH_NULL", name)
			continue
		}
		if !errors.Is(err, tpm2.TPMRCPolicyFail) && !errors.Is(err, tpm2.TPMRCPolicyCC) && !errors.Is(err, tpm2.TPMRCValue) {
			t.Errorf("%s: %v, want the TPM's refusal", name, err)
		}
		t.Logf("%s: refused: %v", name, err)
		d := sha256.Sum256([]byte(name))
		if _, err := a.Sign(ctx, name, d[:], api.SignOptions{}); err == nil {
			t.Errorf("%s: provd signed with a record that lies about the key's policy", name)
		} else {
			t.Logf("%s: sign with the edited record: %v", name, err)
		}
	}
}

// FLAW (failed before the mend: keyState.usePolicy): A4 relabelling a key imported without --extractable as kind
// "created" in its record (the policy digest beside it left true) is not
// reported as tampering. useKeyIn checks the object's authPolicy against
// the record's policy field only, not the policy it computes from the
// record's shape (keyPolicyMatching: a created non-extractable key gets
// the unbound ObjectPolicy(P)), so provd sends the TPM a policy that is
// not the key's and reports the TPM's TPM_RC_POLICY_FAIL, which reads as
// a platform/policy failure, not ErrTampered as the same key with its
// policy field edited is ("has another policy than recorded"). Nothing
// leaves (the Held test beside this one); the operator is misled about
// why the key stopped working. The secure behaviour: a record whose
// shape gives a policy other than its recorded digest is ErrTampered
// before any TPM command.
func TestReview72RelabelledKindIsNotReportedTampered(t *testing.T) {
	t.Parallel()
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a, _ := review70SignedAgent(t, env)
	review70Imported(t, a, "imp")
	d := sha256.Sum256([]byte("control"))
	if _, err := a.Sign(ctx, "imp", d[:], api.SignOptions{}); err != nil {
		t.Fatalf("control: %v", err)
	}
	if err := a.st.Update(ctx, func(tx *store.Tx) error {
		var rec keyRecord
		if err := tx.Get(keyRecName("imp"), &rec); err != nil {
			return err
		}
		rec.Kind = api.KindCreated
		return tx.Put(keyRecName("imp"), rec)
	}); err != nil {
		t.Fatal(err)
	}
	_, err := a.Sign(ctx, "imp", d[:], api.SignOptions{})
	if !errors.Is(err, api.ErrTampered) {
		t.Fatalf("a key record relabelled imported -> created: sign says %v (%T), want ErrTampered", err, err)
	}
}
