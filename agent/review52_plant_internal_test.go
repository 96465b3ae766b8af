package agent

import (
	"context"
	"errors"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// Held: no API path plants a KEK record or a KEK object of a chosen name.
// The export approval's KEK part names the KEK by its TPM name, which holds
// only if nothing but a ceremony (ImportKEK, whose TPM2_Create picks the
// seed, so the name is unpredictable) writes a record of kind kek. The only
// paths that write key records are ImportKEK, CreateKey, DeriveKey,
// ImportKey (PKCS#8: RSA and ECC only, KindImported), ImportKeyBlob
// (KindCreated) and DupImport (KindTransferred), and the adoption of a
// moved PK (records carried from the origin, under a movable PK, where a
// KEK is never entered and no backup is made). A3 tries the one that takes
// a caller's TPM blob: the custodians' KEK's own blob (as a copy of the
// state would give it; the API gives no KEK's blob: ExportKeyBlob refuses)
// as a TSS2 PRIVATE KEY file, under another name and under the KEK's own
// name after deleting it. Both are refused (not a key type provd takes) and
// record nothing; every KEK the device lists has its kek-import record with
// its TPM name in the audit trail.
func TestReview52NoPathPlantsAKEK(t *testing.T) {
	t.Parallel()
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a := testAgent(t, env, &api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
	kekCeremony(t, a, "backup-kek", "wrap", 32)
	kekCeremony(t, a, "restore-kek", "unwrap", 32)
	if _, err := a.ExportKeyBlob(ctx, "backup-kek"); !errors.Is(err, api.ErrNotPermitted) {
		t.Errorf("ExportKeyBlob of a KEK: %v, want not permitted", err)
	}
	var raw []byte
	if err := a.st.View(ctx, func(tx *store.Tx) (err error) {
		raw, err = tx.ReadBlob(keyRecName("backup-kek"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	file, err := blobKeyFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.ImportKeyBlob(ctx, "planted", file); !errors.Is(err, api.ErrNotPermitted) {
		t.Errorf("ImportKeyBlob of the custodians' KEK's blob: %v, want not permitted", err)
	} else {
		t.Logf("ImportKeyBlob of the custodians' KEK's blob: %v", err)
	}
	if err := a.DeleteKey(ctx, "backup-kek"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.ImportKeyBlob(ctx, "backup-kek", file); !errors.Is(err, api.ErrNotPermitted) {
		t.Errorf("ImportKeyBlob of the deleted KEK's blob under its name: %v, want not permitted", err)
	}
	keys, err := a.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := a.AuditRecords(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ceremonies := map[string]bool{}
	for _, r := range recs {
		if r.Op == "kek-import" && r.Objects["object_name"] != "" {
			ceremonies[r.Objects["key"]+"/"+r.Objects["object_name"]] = true
		}
	}
	for _, k := range keys {
		switch {
		case k.Name == "planted" || k.Name == "backup-kek":
			t.Errorf("a key file recorded %+v", k)
		case k.Kind == api.KindKEK && !ceremonies[k.Name+"/"+k.ObjectName]:
			t.Errorf("KEK %s (TPM name %s) has no kek-import record", k.Name, k.ObjectName)
		}
	}
}
