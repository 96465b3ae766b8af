package agent

import (
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// key list marks the keys made before review 70 that the PK's policy
// signer can move (their use branch bound to no command: keys the TPM
// could duplicate, under a signed PK policy), so that an operator finds
// and replaces them; keys made now, and keys the TPM cannot duplicate,
// are not marked.
func TestKeyListMarksKeysTheSignerCanMove(t *testing.T) {
	t.Parallel()
	env := swtpmtest.Start(t)
	ctx := t.Context()
	a, _ := review70SignedAgent(t, env)
	review75OldKey(t, a, "old-extractable", api.KindCreated, true, "")
	review75OldKey(t, a, "old-imported", api.KindImported, false, "")
	review75OldKey(t, a, "old-fixed", api.KindCreated, false, "")
	for _, r := range []api.CreateRequest{{Name: "new-extractable", Type: "ecc-p256", Extractable: true}, {Name: "new-fixed", Type: "ecc-p256"}} {
		if _, err := a.CreateKey(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	review70Imported(t, a, "new-imported")
	keys, err := a.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"old-extractable": true, "old-imported": true}
	seen := 0
	for _, k := range keys {
		if k.SignerCanMove != want[k.Name] {
			t.Errorf("%s (%s, extractable %v): signer_can_move %v, want %v", k.Name, k.Kind, k.Extractable, k.SignerCanMove, want[k.Name])
		}
		seen++
	}
	if seen < 7 {
		t.Errorf("%d keys listed", seen)
	}
}

// Under a PCR policy no key is marked: without PolicyAuthorize in the PK's
// policy there is no signer to approve a command code.
func TestKeyListMarksNothingUnderAPCRPolicy(t *testing.T) {
	t.Parallel()
	env := swtpmtest.Start(t)
	ctx := t.Context()
	a := testAgent(t, env, &api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
	review75OldKey(t, a, "old-extractable", api.KindCreated, true, "")
	keys, err := a.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if k.SignerCanMove {
			t.Errorf("%s marked under a PCR policy", k.Name)
		}
	}
}
