package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/keywrap"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// Held: A4 relabels the custodians' AES-128 wrapping KEK as aes-256 in
// its record (type only; blob, name, KCV and check value untouched), so
// that a P-384 key, which needs AES-256, is backed up under AES-128 with
// the officer's genuine approval of that export (the officer approves by
// TPM names, which the edit leaves alone). Before the edit the export is
// refused as not permitted; after it, the loaded KEK's public area is held
// to an AES-256 KEK's template and the export is refused as tampered:
// nothing is returned.
func TestReview70RelabelledKEKKeepsItsStrength(t *testing.T) {
	t.Parallel()
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a := testAgent(t, env, &api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "p384", Type: "ecc-p384", Extractable: true}); err != nil {
		t.Fatal(err)
	}
	var comps [][]byte
	var kcvs []string
	for range 2 {
		c := make([]byte, 16)
		rand.Read(c)
		k, err := keywrap.KCV(c)
		if err != nil {
			t.Fatal(err)
		}
		comps, kcvs = append(comps, c), append(kcvs, hex.EncodeToString(k[:]))
	}
	key, err := keywrap.Combine(comps)
	if err != nil {
		t.Fatal(err)
	}
	kcv, _ := keywrap.KCV(key)
	if _, err := a.ImportKEK(ctx, api.KEKImportRequest{Name: "kek128", Usage: "wrap", Components: comps, KCVs: kcvs, KCV: hex.EncodeToString(kcv[:])}); err != nil {
		t.Fatal(err)
	}
	ap := officertest.ApproveExport(t, ctx, a, "p384", "kek128")
	req := api.KeyExportRequest{Name: "p384", KEK: "kek128", Approval: ap}
	if out, err := a.ExportKey(ctx, req); !errors.Is(err, api.ErrNotPermitted) || out != nil {
		t.Fatalf("control: a P-384 key under an AES-128 KEK: %v (%d bytes), want not permitted", err, len(out))
	}
	if err := a.st.Update(ctx, func(tx *store.Tx) error {
		var r keyRecord
		if err := tx.Get(keyRecName("kek128"), &r); err != nil {
			return err
		}
		r.Type = "aes-256"
		return tx.Put(keyRecName("kek128"), r)
	}); err != nil {
		t.Fatal(err)
	}
	out, err := a.ExportKey(ctx, req)
	if err == nil || out != nil {
		t.Fatalf("the relabelled AES-128 KEK took the P-384 key: %d bytes", len(out))
	}
	if _, uerr := keywrap.Unwrap(key, out); uerr == nil {
		t.Fatal("the AES-128 key opens what came back")
	}
	if !errors.Is(err, api.ErrTampered) {
		t.Errorf("export under the relabelled KEK: %v, want tampered", err)
	}
}
