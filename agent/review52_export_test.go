package agent_test

// Review 52: the export approval's KEK part (api.ExportApproval,
// agent.checkExportKEK), attacked by an officer-role daemon caller (A3)
// holding the officer's approval of one backup under the custodians' KEK.

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/keywrap"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// review52Ceremony enters KEK name of usage from components on ag and
// returns the combined key.
func review52Ceremony(t *testing.T, ag *agent.Agent, name, usage string, components ...[]byte) []byte {
	t.Helper()
	var kcvs []string
	for _, c := range components {
		k, err := keywrap.KCV(c)
		if err != nil {
			t.Fatal(err)
		}
		kcvs = append(kcvs, hex.EncodeToString(k[:]))
	}
	key, err := keywrap.Combine(components)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ag.ImportKEK(context.Background(), api.KEKImportRequest{Name: name, Usage: usage, Components: components, KCVs: kcvs, KCV: review45KCV(t, key)}); err != nil {
		t.Fatalf("kek import %s: %v", name, err)
	}
	return key
}

// review52Names is every key's TPM name on svc, and the PK's policy digest.
func review52Names(t *testing.T, svc api.Service) (map[string][]byte, []byte) {
	t.Helper()
	ctx := context.Background()
	st, err := svc.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := hex.DecodeString(st.PolicyDigest)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := svc.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string][]byte{}
	for _, k := range keys {
		if names[k.Name], err = hex.DecodeString(k.ObjectName); err != nil {
			t.Fatal(err)
		}
	}
	return names, pk
}

// exportRefused asserts that the export of key under kek with ap is
// refused as not permitted, gives no bytes that the key opens, and that its
// audit record shows no KEK loaded.
func exportRefused(t *testing.T, ag *agent.Agent, what, key, kek string, ap *api.ExportApproval, own []byte) {
	t.Helper()
	ctx := context.Background()
	wrapped, err := ag.ExportKey(ctx, api.KeyExportRequest{Name: key, KEK: kek, Approval: ap})
	if !errors.Is(err, api.ErrNotPermitted) {
		t.Errorf("%s: %v, want it refused as not permitted", what, err)
	}
	if err == nil {
		if der, err := keywrap.Unwrap(own, wrapped); err == nil {
			if _, err := x509.ParsePKCS8PrivateKey(der); err == nil {
				t.Errorf("%s: the caller opened the backup: the key's plaintext", what)
			}
		}
		return
	}
	recs, err := ag.AuditRecords(ctx)
	if err != nil {
		t.Fatal(err)
	}
	last := recs[len(recs)-1]
	if last.Op != "key-export" || last.Objects["kek_object"] != "" {
		t.Errorf("%s: the refused export's audit record %+v: the KEK was loaded", what, last)
	}
}

// Held: approvals cannot be confused. A3 holds the officer's genuine export
// approval of key "ext" under the custodians' wrapping KEK "backup-kek", and
// every other signature the officer makes in the ordinary course: the
// duplication part itself, another key's export, a derivation recipe, a
// duplication to a peer, an export under the custodians' unwrapping twin
// (the same components, usage unwrap, as a restore needs), and (had the
// officer's tooling been misused) the same digests under the other
// policyRef, another PK policy, or the key and KEK names swapped. Stitched
// into an export of "ext" under "backup-kek" (or under the twin), each is
// refused as not permitted before any KEK is loaded. The genuine approval
// still works (control) and opens only with the custodians' key.
func TestReview52ExportApprovalConfusion(t *testing.T) {
	t.Parallel()
	env := swtpmtest.Start(t)
	ctx := context.Background()
	ag := signingAgent(t, env)
	c1, _ := review45Component(t, 32)
	c2, _ := review45Component(t, 32)
	custodians := review52Ceremony(t, ag, "backup-kek", "wrap", c1, c2)
	review52Ceremony(t, ag, "restore-kek", "unwrap", c1, c2)
	for _, n := range []string{"ext", "other"} {
		if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: n, Type: "ecc-p256", Extractable: true}); err != nil {
			t.Fatal(err)
		}
	}
	names, pk := review52Names(t, ag)
	ext, bk, twin := names["ext"], names["backup-kek"], names["restore-kek"]
	ap := officertest.ApproveExport(t, ctx, ag, "ext", "backup-kek")
	if wrapped, err := ag.ExportKey(ctx, api.KeyExportRequest{Name: "ext", KEK: "backup-kek", Approval: ap}); err != nil {
		t.Fatalf("control, the approved backup: %v", err)
	} else if _, err := keywrap.Unwrap(custodians, wrapped); err != nil {
		t.Fatalf("control: the custodians' key does not open the approved backup: %v", err)
	}

	off := officertest.Key()
	sign := func(digest, ref []byte) *policy.Approval {
		t.Helper()
		a, err := policy.ApproveDigest(off, digest, ref)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	otherPK := sha256.Sum256([]byte("another fleet's PK policy"))
	peerDigest := sha256.Sum256([]byte("a peer's transfer key"))
	peer := append([]byte{0, 0x0b}, peerDigest[:]...)
	derive, err := officer.ApproveDerive(off, pk, officer.Recipe{Type: "ecc-p256", Usage: "sign", Label: "review52"})
	if err != nil {
		t.Fatal(err)
	}
	toPeer, err := officer.ApproveDuplication(off, pk, ext, peer)
	if err != nil {
		t.Fatal(err)
	}
	otherAp := officertest.ApproveExport(t, ctx, ag, "other", "backup-kek")
	twinDup, twinKEK, err := officer.ApproveExport(off, pk, ext, twin)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		what string
		kek  *policy.Approval
	}{
		{"the duplication's digest signed with the export-kek policyRef", sign(officer.DupApproved(pk, ext, officer.ExportParent), officer.ExportKEKRef)},
		{"the export-kek digest signed with the duplication's policyRef", sign(officer.ExportKEKApproved(pk, ext, bk), officer.DupRef)},
		{"the export-kek digest with no policyRef", sign(officer.ExportKEKApproved(pk, ext, bk), nil)},
		{"the export-kek digest for another PK policy", sign(officer.ExportKEKApproved(otherPK[:], ext, bk), officer.ExportKEKRef)},
		{"the export-kek digest with the key's and the KEK's names swapped", sign(officer.ExportKEKApproved(pk, bk, ext), officer.ExportKEKRef)},
		{"the export-kek digest naming the KEK as the key too", sign(officer.ExportKEKApproved(pk, bk, bk), officer.ExportKEKRef)},
		{"the KEK part of the export under the custodians' unwrapping twin", twinKEK},
		{"the KEK part of another key's export", otherAp.KEK},
		{"the duplication part of another key's export", otherAp.Duplication},
		{"a derivation recipe's approval", derive},
		{"the approval of a duplication to a peer", toPeer},
	} {
		exportRefused(t, ag, c.what, "ext", "backup-kek", &api.ExportApproval{Duplication: ap.Duplication, KEK: c.kek}, custodians)
	}
	// A genuine KEK part with a duplication part of another key, or of a
	// duplication to a peer: checkExportKEK passes, the duplication's check
	// refuses it before the TPM duplicates (and before the KEK loads).
	exportRefused(t, ag, "this export's KEK part with another key's duplication part", "ext", "backup-kek", &api.ExportApproval{Duplication: otherAp.Duplication, KEK: ap.KEK}, custodians)
	exportRefused(t, ag, "this export's KEK part with a duplication to a peer", "ext", "backup-kek", &api.ExportApproval{Duplication: toPeer, KEK: ap.KEK}, custodians)
	exportRefused(t, ag, "this export's two parts swapped", "ext", "backup-kek", &api.ExportApproval{Duplication: ap.KEK, KEK: ap.Duplication}, custodians)
	// The genuine export approval under the unwrapping twin: a KEK that
	// unwraps makes no backups (and its approval serves no other KEK).
	exportRefused(t, ag, "the officer's approval under the unwrapping twin, used there", "ext", "restore-kek", &api.ExportApproval{Duplication: twinDup, KEK: twinKEK}, custodians)
	exportRefused(t, ag, "the officer's approval under the custodians' KEK, used under the unwrapping twin", "ext", "restore-kek", ap, custodians)
}

// Held: the custodians' KEK replaced under its name by another process on
// the same state (a one-shot CLI run by A3 beside the daemon, or the daemon
// beside a one-shot process): the daemon agent, which exported under the
// KEK before (its key states and object cache warm), reads the new record
// and refuses the old approval, whether A3 entered components of its own or
// the custodians' very components again (the TPM chose another seed: the
// same key is another TPM object, another name). A new approval of the
// re-entered KEK's name works (control: the refusal is the name's).
func TestReview52KEKReplacedByAnotherProcessIsRefused(t *testing.T) {
	t.Parallel()
	env := swtpmtest.Start(t)
	ctx := context.Background()
	ag, dir := signingState(t, env)
	c1, _ := review45Component(t, 32)
	c2, _ := review45Component(t, 32)
	custodians := review52Ceremony(t, ag, "backup-kek", "wrap", c1, c2)
	if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: "ext", Type: "ecc-p256", Extractable: true}); err != nil {
		t.Fatal(err)
	}
	ap := officertest.ApproveExport(t, ctx, ag, "ext", "backup-kek")
	if _, err := ag.ExportKey(ctx, api.KeyExportRequest{Name: "ext", KEK: "backup-kek", Approval: ap}); err != nil {
		t.Fatalf("control, the approved backup: %v", err)
	}
	before, _ := review52Names(t, ag)

	oneShot := newAgent(t, env, dir)
	if err := oneShot.DeleteKey(ctx, "backup-kek"); err != nil {
		t.Fatal(err)
	}
	m1, _ := review45Component(t, 32)
	m2, _ := review45Component(t, 32)
	mine := review52Ceremony(t, oneShot, "backup-kek", "wrap", m1, m2)
	exportRefused(t, ag, "the daemon, after another process entered A3's KEK under the custodians' KEK's name", "ext", "backup-kek", ap, mine)

	if err := oneShot.DeleteKey(ctx, "backup-kek"); err != nil {
		t.Fatal(err)
	}
	again := review52Ceremony(t, oneShot, "backup-kek", "wrap", c1, c2)
	after, _ := review52Names(t, ag)
	if hex.EncodeToString(after["backup-kek"]) == hex.EncodeToString(before["backup-kek"]) {
		t.Fatalf("the custodians' components entered again gave the same TPM name %x: the name does not bind the TPM's seed", after["backup-kek"])
	}
	exportRefused(t, ag, "the daemon, after the custodians' components were entered again", "ext", "backup-kek", ap, again)
	if err := oneShot.Close(); err != nil {
		t.Fatal(err)
	}
	ap2 := officertest.ApproveExport(t, ctx, ag, "ext", "backup-kek")
	wrapped, err := ag.ExportKey(ctx, api.KeyExportRequest{Name: "ext", KEK: "backup-kek", Approval: ap2})
	if err != nil {
		t.Fatalf("control, the officer's approval of the re-entered KEK: %v", err)
	}
	if _, err := keywrap.Unwrap(custodians, wrapped); err != nil {
		t.Fatalf("control: the custodians' key does not open the backup: %v", err)
	}
}
