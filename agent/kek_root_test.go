package agent

// Attacks on the key ceremony by root on a good boot (A4), who holds the
// state directory (every blob and authValue) and satisfies the PK's policy,
// but holds neither the crypto officer's private key nor the custodians'
// components. Found by the review of issue 11; each is a regression test.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/keywrap"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// kekRequest is the import request of KEK name of usage from two random
// components of size bytes, with their KCVs and the combined key's; key is
// the combined key (what the custodians know, not A4).
func kekRequest(t *testing.T, name, usage string, size int) (req api.KEKImportRequest, key []byte) {
	t.Helper()
	req = api.KEKImportRequest{Name: name, Usage: usage}
	for range 2 {
		c := make([]byte, size)
		rand.Read(c)
		k, _ := keywrap.KCV(c)
		req.Components = append(req.Components, c)
		req.KCVs = append(req.KCVs, hex.EncodeToString(k[:]))
	}
	key, err := keywrap.Combine(req.Components)
	if err != nil {
		t.Fatal(err)
	}
	kcv, _ := keywrap.KCV(key)
	req.KCV = hex.EncodeToString(kcv[:])
	return req, key
}

// kekCeremony imports KEK name of usage from two random components of size
// bytes and returns the combined key.
func kekCeremony(t *testing.T, a *Agent, name, usage string, size int) []byte {
	t.Helper()
	req, key := kekRequest(t, name, usage, size)
	if _, err := a.ImportKEK(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	return key
}

// rootKEK is A4 loading KEK name with the TPM commands provd sends, as an
// AES block cipher.
func rootKEK(t *testing.T, a *Agent, name string) (*tpm.KEKBlock, func()) {
	t.Helper()
	ks, err := a.readKeyState(context.Background(), name, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.keys.EvictResident(); err != nil {
		t.Fatal(err)
	}
	obj, err := a.loadCreated(ks)
	if err != nil {
		t.Fatal(err)
	}
	b, err := a.t.KEKBlock(obj, ks.pk.auth)
	if err != nil {
		t.Fatal(err)
	}
	return b, func() { b.Close(); a.t.Flush(obj.Handle) }
}

// TestWrappingKEKOpensNoBackup: on a device that makes backups, A4 loads
// the KEK and asks the TPM to decrypt with it, to unwrap a backup made
// under the same custodians' KEK (by this device or any other): the TPM
// refuses (TPM_RC_ATTRIBUTES), so the RFC 5649 unwrap cannot run; a KEK
// entered for unwrapping cannot make a backup either. (Found by review:
// one KEK that did both let A4 on any device decrypt every backup.)
func TestWrappingKEKOpensNoBackup(t *testing.T) {
	env := swtpmtest.Start(t)
	a := testAgent(t, env, &api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
	key := kekCeremony(t, a, "kek", "wrap", 32)
	backup, err := keywrap.Wrap(key, bytes.Repeat([]byte("a PKCS#8 key "), 10))
	if err != nil {
		t.Fatal(err)
	}
	b, done := rootKEK(t, a, "kek")
	_, err = keywrap.UnwrapBlock(b, backup)
	done()
	if !errors.Is(err, tpm2.TPMRCAttributes) {
		t.Fatalf("unwrapping a backup with the wrapping KEK: %v, want the TPM to refuse (TPM_RC_ATTRIBUTES)", err)
	}
	kekCeremony(t, a, "kek-u", "unwrap", 32)
	b, done = rootKEK(t, a, "kek-u")
	_, err = keywrap.WrapBlock(b, []byte("a key of A4's own"))
	done()
	if !errors.Is(err, tpm2.TPMRCAttributes) {
		t.Fatalf("wrapping with the unwrapping KEK: %v, want the TPM to refuse (TPM_RC_ATTRIBUTES)", err)
	}
}

// TestSwappedKEKIsRefused: A4 creates under the PK an AES key of its own
// with the exact KEK template, and writes it into the KEK's record and
// blob, keeping the custodians' KCV and check value there: the next export
// makes the TPM encrypt the zero block with the KEK it holds, which is not
// the recorded check value, and the export is refused as tampered instead
// of going under A4's key. The audit record names the KEK object it used.
func TestSwappedKEKIsRefused(t *testing.T) {
	ctx := context.Background()
	a, dir := stateAgent(t, swtpmtest.Start(t))
	kekCeremony(t, a, "kek", "wrap", 32)
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "ext", Type: "ecc-p256", Extractable: true}); err != nil {
		t.Fatal(err)
	}
	ap := officertest.ApproveExport(t, ctx, a, "ext", "kek")
	if _, err := a.ExportKey(ctx, api.KeyExportRequest{Name: "ext", KEK: "kek", Approval: ap}); err != nil {
		t.Fatalf("control: %v", err)
	}
	ks, err := a.readKeyState(ctx, "kek", true)
	if err != nil {
		t.Fatal(err)
	}
	mine := make([]byte, 32)
	rand.Read(mine)
	if err := a.keys.EvictResident(); err != nil {
		t.Fatal(err)
	}
	var blob tpm.Blob
	if err := a.withLoadedPK(ks.pk, func(l *loadedPK) (err error) {
		blob, err = a.createUnderPK(l, catalog.KEKTemplate(256, catalog.UsageWrap), mine)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	name, _ := blob.Name()
	rec := ks.rec
	rec.Object, rec.Public = hex.EncodeToString(name.Buffer), tpm2.Marshal(blob.Public)
	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Update(ctx, func(tx *store.Tx) error {
		if err := tx.WriteBlob(keyRecName("kek"), blob.Marshal()); err != nil {
			return err
		}
		return tx.Put(keyRecName("kek"), rec)
	}); err != nil {
		t.Fatal(err)
	}
	// The officer's approval names the custodians' KEK by its TPM name:
	// the swapped one is another object.
	if _, err := a.ExportKey(ctx, api.KeyExportRequest{Name: "ext", KEK: "kek", Approval: ap}); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("export under a swapped KEK with the approval of the custodians': %v, want it refused as not approved", err)
	}
	// An officer who took the KEK's name from the device's key list, which
	// reads the state A4 wrote, approves the swapped one: the TPM's check
	// value still refuses it.
	ap = officertest.ApproveExport(t, ctx, a, "ext", "kek")
	if _, err := a.ExportKey(ctx, api.KeyExportRequest{Name: "ext", KEK: "kek", Approval: ap}); !errors.Is(err, api.ErrTampered) {
		t.Fatalf("export under a swapped KEK: %v, want it refused as tampered", err)
	}
	// One more edit (found by the second review): the check value made
	// A4's too, the KCV shown left the custodians'. The KCV is the check
	// value's head, so one does not change without the other showing.
	check, _ := keywrap.CheckValue(mine)
	rec.Check = hex.EncodeToString(check[:])
	if err := st.Update(ctx, func(tx *store.Tx) error { return tx.Put(keyRecName("kek"), rec) }); err != nil {
		t.Fatal(err)
	}
	if _, err := a.ExportKey(ctx, api.KeyExportRequest{Name: "ext", KEK: "kek", Approval: ap}); !errors.Is(err, api.ErrTampered) {
		t.Fatalf("export under a swapped KEK with its check value: %v, want it refused as tampered", err)
	}
	recs, err := a.AuditRecords(ctx)
	if err != nil {
		t.Fatal(err)
	}
	last := recs[len(recs)-1]
	if last.Op != "key-export" || last.Objects["kek_object"] != rec.Object {
		t.Fatalf("the refused export's audit record %+v does not name the KEK object it used", last)
	}
}

// TestRelabelledKeyKeepsItsKEKRule: A4 relabels a P-384 key "ecc-p256" in
// its record to back it up under an AES-128 KEK: the loaded key's public
// area says P-384, and the export is refused as tampered.
func TestRelabelledKeyKeepsItsKEKRule(t *testing.T) {
	ctx := context.Background()
	a, dir := stateAgent(t, swtpmtest.Start(t))
	kekCeremony(t, a, "kek128", "wrap", 16)
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "p384", Type: "ecc-p384", Extractable: true}); err != nil {
		t.Fatal(err)
	}
	ap := officertest.ApproveExport(t, ctx, a, "p384", "kek128")
	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Update(ctx, func(tx *store.Tx) error {
		var rec keyRecord
		if err := tx.Get(keyRecName("p384"), &rec); err != nil {
			return err
		}
		rec.Type = "ecc-p256"
		return tx.Put(keyRecName("p384"), rec)
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.ExportKey(ctx, api.KeyExportRequest{Name: "p384", KEK: "kek128", Approval: ap}); !errors.Is(err, api.ErrTampered) {
		t.Fatalf("a relabelled P-384 key under an AES-128 KEK: %v, want it refused as tampered", err)
	}
}

// TestKEKImportNeverOnTheBus: during kek import, neither a component, nor
// the combined key, nor the objects' authValue crosses the bus in the
// clear (TestExportImportBetweenTwoTPMs looks after the import).
func TestKEKImportNeverOnTheBus(t *testing.T) {
	rec := new(swtpmtest.Recorder)
	env := swtpmtest.Start(t, swtpmtest.WithRecorder(rec))
	ctx := context.Background()
	a := testAgent(t, env, &api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
	rec.Reset()
	req := api.KEKImportRequest{Name: "kek"}
	var comps [][]byte
	for range 3 {
		c := make([]byte, 32)
		rand.Read(c)
		k, _ := keywrap.KCV(c)
		comps = append(comps, bytes.Clone(c))
		req.Components = append(req.Components, c)
		req.KCVs = append(req.KCVs, hex.EncodeToString(k[:]))
	}
	key, _ := keywrap.Combine(comps)
	kcv, _ := keywrap.KCV(key)
	req.KCV = hex.EncodeToString(kcv[:])
	if _, err := a.ImportKEK(ctx, req); err != nil {
		t.Fatal(err)
	}
	ks, _ := a.readKeyState(ctx, "kek", true)
	for i, s := range append(comps, key, ks.pk.auth) {
		if off := rec.Leak(s); off >= 0 {
			t.Errorf("secret %d (the components, then the key, then the objects' authValue) on the bus at %d", i, off)
		}
	}
}

// stateAgent is a provisioned agent (the test officer, PCR 7) on env and
// its state directory, for tests that edit the state as A4 would.
func stateAgent(t *testing.T, env *swtpmtest.Env) (*Agent, string) {
	t.Helper()
	dir := t.TempDir() + "/state"
	a, err := New(Config{TPM: env.TPM, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	if _, err := a.Provision(context.Background(), api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	return a, dir
}

// TestKEKNeverLeaves: A4 loads the KEK and asks the TPM to duplicate it, to
// TPM_RH_NULL (its bits in the clear) and to the SRK, with a policy session
// that holds PolicyCommandCode(Duplicate) and with the KEK's authValue: the
// TPM refuses every time (fixedParent, and no policy to satisfy).
func TestKEKNeverLeaves(t *testing.T) {
	env := swtpmtest.Start(t)
	a := testAgent(t, env, &api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
	kekCeremony(t, a, "kek", "wrap", 32)
	ks, err := a.readKeyState(context.Background(), "kek", true)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.keys.EvictResident(); err != nil {
		t.Fatal(err)
	}
	obj, err := a.loadCreated(ks)
	if err != nil {
		t.Fatal(err)
	}
	defer a.t.Flush(obj.Handle)
	srk, err := a.t.SRK()
	if err != nil {
		t.Fatal(err)
	}
	null := tpm2.NamedHandle{Handle: tpm2.TPMRHNull, Name: tpm2.TPM2BName{Buffer: officer.ExportParent}}
	for _, parent := range []tpm2.NamedHandle{null, srk.Named()} {
		ps, err := a.t.StartPolicySession(false)
		if err != nil {
			t.Fatal(err)
		}
		if err := ps.PolicyCommandCode(tpm2.TPMCCDuplicate); err != nil {
			t.Fatal(err)
		}
		for i, s := range []tpm2.Session{ps.Session(), tpm2.PasswordAuth(ks.pk.auth)} {
			d, err := a.t.Duplicate(obj, s, parent)
			if err == nil {
				t.Fatalf("the TPM duplicated the KEK to 0x%08x (%d bytes)", uint32(parent.Handle), len(d.Duplicate))
			}
			t.Logf("to 0x%08x, %s: %v", uint32(parent.Handle), []string{"policy session", "authValue"}[i], err)
		}
		ps.Close()
	}
}
