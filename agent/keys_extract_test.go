package agent

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
	"github.com/provd/provd/tpm/keyfile"
)

// duplicate tries TPM2_Duplicate of key name to the SRK (inner AES-128-CFB
// wrapper, outer wrapper to the SRK) through the key's duplication branch,
// with the officer's approval of that destination: what an export would do.
func duplicate(t *testing.T, a *Agent, name string) error {
	t.Helper()
	srk, err := a.t.SRK()
	if err != nil {
		return err
	}
	return duplicateTo(t, a, name, srk.Named(), srk.Name.Buffer, officertest.Key())
}

// duplicateTo tries TPM2_Duplicate of key name to newParent through the
// key's duplication branch, satisfied with an approval by approver of the
// destination approvedParent (a name, which need not be newParent's).
func duplicateTo(t *testing.T, a *Agent, name string, newParent tpm2.NamedHandle, approvedParent []byte, approver crypto.Signer) error {
	t.Helper()
	return duplicateApproving(t, a, name, "", newParent, approvedParent, approver)
}

// duplicateToApprovedFor tries TPM2_Duplicate of key name to newParent
// with the officer's approval of duplicating key approvedKey there.
func duplicateToApprovedFor(t *testing.T, a *Agent, name, approvedKey string, newParent tpm2.NamedHandle) error {
	t.Helper()
	return duplicateApproving(t, a, name, approvedKey, newParent, newParent.Name.Buffer, officertest.Key())
}

// duplicateApproving is duplicateTo with the approval made for key
// approvedKey's name ("": name's own).
func duplicateApproving(t *testing.T, a *Agent, name, approvedKey string, newParent tpm2.NamedHandle, approvedParent []byte, approver crypto.Signer) error {
	t.Helper()
	ctx := context.Background()
	ks, err := a.readKeyState(ctx, name, true)
	if err != nil {
		return err
	}
	obj, _, err := a.keyObject(ctx, ks)
	if err != nil {
		return err
	}
	approvedName := obj.Name.Buffer
	if approvedKey != "" {
		other, err := a.readKeyState(ctx, approvedKey, true)
		if err != nil {
			return err
		}
		if approvedName, err = hex.DecodeString(other.rec.Object); err != nil {
			return err
		}
	}
	// The duplication branch as an extractable key has it (with the
	// officer as approver; another approver makes another branch, which
	// the TPM's PolicyOR list cannot hold); a fixed key's policy has no
	// such branch, so the session cannot match it.
	branch := policy.Policy{policy.Authorize{Signer: approver.Public(), PolicyRef: officer.DupRef}, policy.AuthValue{}}
	expr, opts := branch, ks.pk.opts
	if ks.rec.Extractable {
		expr = policy.Policy{policy.Or{Branches: []policy.Policy{useBranch(ks.pk.expr, ks.rec.useCommand()), branch}}}
		opts.Branches = []int{1}
	}
	ap, err := officer.ApproveDuplication(approver, ks.pk.state.Policy.digest(), approvedName, approvedParent)
	if err != nil {
		t.Fatal(err)
	}
	opts.Approved = []policy.Approved{{Policy: officer.DupApprovedExpr(ks.pk.expr, approvedName, approvedParent), Approval: ap}}
	auth, err := ks.objectAuth()
	if err != nil {
		return err
	}
	return a.withPolicySession(ks.pk.state.Policy, expr, opts, auth, func(s tpm2.Session) error {
		_, err := (tpm2.Duplicate{
			ObjectHandle:    obj.Auth(s),
			NewParentHandle: newParent,
			Symmetric: tpm2.TPMTSymDef{
				Algorithm: tpm2.TPMAlgAES,
				KeyBits:   tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(128)),
				Mode:      tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgCFB),
			},
		}).Execute(a.t)
		return tpm.Wrap("TPM2_Duplicate", err)
	})
}

// TestNotExtractableForever: a key created without --extractable cannot be
// duplicated, and editing the state files to make it look extractable makes
// it unloadable instead; an extractable key can be duplicated.
func TestNotExtractableForever(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	dir := t.TempDir() + "/state"
	a, err := New(Config{TPM: env.TPM, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if _, err := a.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	for _, r := range []api.CreateRequest{{Name: "fixed", Type: "ecc-p256"}, {Name: "ext", Type: "ecc-p256", Extractable: true}} {
		if _, err := a.CreateKey(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := duplicate(t, a, "ext"); err != nil {
		t.Fatalf("duplicating the extractable key: %v", err)
	}
	// The fixed key's policy has no Duplicate branch and the TPM demands
	// one for the DUP role (even a session that satisfies the key's own
	// policy fails there), so TPM2_Duplicate fails its authorization:
	// TPM_RC_POLICY_FAIL, before fixedParent (TPM_RC_ATTRIBUTES) is looked at.
	err = duplicate(t, a, "fixed")
	var te *tpm.Error
	if !errors.Is(err, tpm2.TPMRCPolicyFail) || !errors.As(err, &te) || te.Command != "TPM2_Duplicate" {
		t.Fatalf("duplicating a key created without --extractable: %v, want TPM2_Duplicate to fail with TPM_RC_POLICY_FAIL", err)
	}

	// The attacker edits the state (consistently: blob, manifest, record)
	// so that "fixed" looks extractable, with the extractable policy.
	var rec keyRecord
	var raw []byte
	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	var pkIn pkInputs
	if err := st.View(ctx, func(tx *store.Tx) error {
		var err error
		if pkIn, err = a.readPKInputs(tx); err != nil {
			return err
		}
		if err := tx.Get(keyRecName("fixed"), &rec); err != nil {
			return err
		}
		raw, err = tx.ReadBlob(keyRecName("fixed"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	blob, err := tpm.UnmarshalBlob(raw)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := blob.Public.Contents()
	pub.ObjectAttributes.FixedTPM, pub.ObjectAttributes.FixedParent = false, false
	extExpr, err := keyPolicy(pkIn, rec.useCommand(), true)
	if err != nil {
		t.Fatal(err)
	}
	extDigest, _ := extExpr.Digest(tpm2.TPMAlgSHA256)
	pub.AuthPolicy = tpm2.TPM2BDigest{Buffer: extDigest}
	blob.Public = tpm2.New2B(*pub)
	name, _ := blob.Name()
	rec.Extractable, rec.Object, rec.Policy = true, hex.EncodeToString(name.Buffer), hex.EncodeToString(extDigest)
	rec.Public = tpm2.Marshal(blob.Public)
	if err := st.Update(ctx, func(tx *store.Tx) error {
		if err := tx.WriteBlob(keyRecName("fixed"), blob.Marshal()); err != nil {
			return err
		}
		return tx.Put(keyRecName("fixed"), rec)
	}); err != nil {
		t.Fatal(err)
	}
	if err := a.keys.Close(); err != nil { // drop the cached (genuine) copy
		t.Fatal(err)
	}
	err = duplicate(t, a, "fixed")
	if err == nil || !errors.Is(err, tpm2.TPMRCIntegrity) {
		t.Fatalf("duplicating the edited key: %v, want the load to fail with TPM_RC_INTEGRITY", err)
	}
	d := sha256.Sum256(nil)
	if _, err := a.Sign(ctx, "fixed", d[:], api.SignOptions{}); !errors.Is(err, tpm2.TPMRCIntegrity) {
		t.Fatalf("using the edited key: %v", err)
	}

	// The same edit through a key file: refused at import, by the TPM.
	pemData, err := a.ExportKeyBlob(ctx, "fixed")
	if err != nil {
		t.Fatal(err)
	}
	kf, err := keyfile.ParsePEM(pemData)
	if err != nil {
		t.Fatal(err)
	}
	if kf.Parent != keyfile.ParentOwner || !kf.EmptyAuth {
		t.Errorf("key file parent 0x%08x emptyAuth %v", kf.Parent, kf.EmptyAuth)
	}
	if _, err := a.ImportKeyBlob(ctx, "again", pemData); !errors.Is(err, tpm2.TPMRCIntegrity) {
		t.Fatalf("importing the edited key file: %v", err)
	}
	// The extractable key has an authorization value of its own, which a
	// key file cannot carry: no key file (its backup is provd key export).
	if _, err := a.ExportKeyBlob(ctx, "ext"); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("export-blob of an extractable key: %v", err)
	}
	if _, err := a.ExportKeyBlob(ctx, "nope"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("export of a missing key: %v", err)
	}
}
