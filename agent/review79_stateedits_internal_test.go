package agent

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/store"
)

// review79Edit applies fn to b's state, as A4 or A6 edits the directory.
func review79Edit(t *testing.T, b *Agent, fn func(tx *store.Tx) error) {
	t.Helper()
	if err := b.st.Update(context.Background(), fn); err != nil {
		t.Fatal(err)
	}
}

// review79NoSecret fails t if err's text holds an authValue of the
// transfer keys' records or of key name's record.
func review79NoSecret(t *testing.T, b *Agent, err error, keys ...string) {
	t.Helper()
	if err == nil {
		return
	}
	var secrets []string
	_ = b.st.View(context.Background(), func(tx *store.Tx) error {
		for _, rec := range []string{transferRec, legacyTransferRec} {
			var tr transferRecord
			if tx.Get(rec, &tr) == nil && tr.Auth != "" {
				secrets = append(secrets, tr.Auth)
			}
		}
		for _, k := range keys {
			var r keyRecord
			if tx.Get(keyPrefix+k, &r) == nil && r.Auth != "" {
				secrets = append(secrets, r.Auth)
			}
		}
		return nil
	})
	for _, s := range secrets {
		if strings.Contains(strings.ToLower(err.Error()), strings.ToLower(s)) {
			t.Errorf("the error names an authValue: %v", err)
		}
	}
}

// Held: A4/A6 edits of the transfer records for a downgrade or a
// confusion, each refused as tampered (exit 14), nothing loaded or left,
// no authValue in an error. On a receiver with a key under the new T: the
// "transfer" record's parent made "" (T loaded under the PK: the TPM's
// integrity check, exit 14). On a receiver whose legacy T1 holds "old"
// and whose new T2 peer identity made: "old"'s record made to name T2
// (loaded under T2: exit 14); the "transfer" blob swapped for T1's, the
// record T2's (a legacy T posing as the current one: peer identity, which
// would keep it as legacy, refuses a second legacy T with keys under it,
// and publishes nothing; the sign of "old" still goes through the kept
// T1); the whole "transfer" record and blob made T1's (peer identity:
// exit 14, no legacy T published). A new T is never authorized by value in
// an HMAC session: transferAuth decides by the loaded blob's public area,
// which the TPM checks against T's private part, and a name that is not
// the record's is tampered. Restored, everything works.
func TestReview79TransferRecordEditsAreTampered(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	t.Run("T's parent made the PK", func(t *testing.T) {
		t.Parallel()
		_, b, _, _, dup := movedKey(t)
		if _, err := b.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup}); err != nil {
			t.Fatal(err)
		}
		review79Edit(t, b, func(tx *store.Tx) error {
			var tr transferRecord
			if err := tx.Get(transferRec, &tr); err != nil {
				return err
			}
			tr.Parent = ""
			return tx.Put(transferRec, tr)
		})
		err := review79Sign(t, b, "k")
		t.Logf("T under the PK: %v (exit %d)", err, api.ExitCode(err))
		if api.ExitCode(err) != api.ExitTampered {
			t.Errorf("exit %d, want %d", api.ExitCode(err), api.ExitTampered)
		}
		review79NoSecret(t, b, err, "k")
		if left := unheldLeft(t, b); len(left) != 0 {
			t.Errorf("left in the TPM: %v", left)
		}
	})
	t.Run("legacy and new T", func(t *testing.T) {
		t.Parallel()
		_, _, b, t1, _ := review77LegacyReceiver(t)
		peer, err := b.PeerIdentity(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t2 := peer.ParentName
		if t2 == t1 {
			t.Fatal("peer identity kept the legacy T as current")
		}
		setParent := func(p string) {
			review79Edit(t, b, func(tx *store.Tx) error {
				var k keyRecord
				if err := tx.Get(keyPrefix+"old", &k); err != nil {
					return err
				}
				k.Parent = p
				return tx.Put(keyPrefix+"old", k)
			})
		}
		setParent(t2)
		err = review79Sign(t, b, "old")
		t.Logf("\"old\" made to name T2: %v (exit %d)", err, api.ExitCode(err))
		if api.ExitCode(err) != api.ExitTampered {
			t.Errorf("a key of T1 loaded under T2: exit %d, want %d", api.ExitCode(err), api.ExitTampered)
		}
		review79NoSecret(t, b, err, "old")
		setParent(t1)
		if err := review79Sign(t, b, "old"); err != nil {
			t.Fatalf("restored: %v", err)
		}

		// Keep what is there, to put it back.
		var cur, lt transferRecord
		var curRaw, ltRaw []byte
		review79Edit(t, b, func(tx *store.Tx) (err error) {
			if err = tx.Get(transferRec, &cur); err != nil {
				return err
			}
			if err = tx.Get(legacyTransferRec, &lt); err != nil {
				return err
			}
			if curRaw, err = tx.ReadBlob(transferRec); err != nil {
				return err
			}
			ltRaw, err = tx.ReadBlob(legacyTransferRec)
			return err
		})
		restore := func() {
			review79Edit(t, b, func(tx *store.Tx) error {
				if err := tx.WriteBlob(transferRec, curRaw); err != nil {
					return err
				}
				return tx.Put(transferRec, cur)
			})
		}

		// T1's blob under T2's record.
		review79Edit(t, b, func(tx *store.Tx) error { return tx.WriteBlob(transferRec, ltRaw) })
		p, err := b.PeerIdentity(ctx)
		t.Logf("T1's blob as the current T: peer identity %.16s: %v (exit %d)", p.ParentName, err, api.ExitCode(err))
		if err == nil {
			t.Errorf("peer identity published %.16s… over a legacy blob posing as the current T", p.ParentName)
		} else if api.ExitCode(err) != api.ExitTampered {
			t.Errorf("exit %d, want %d", api.ExitCode(err), api.ExitTampered)
		}
		review79NoSecret(t, b, err, "old")
		if err := review79Sign(t, b, "old"); err != nil {
			t.Errorf("\"old\" through the kept T1 meanwhile: %v", err)
		}
		restore()

		// T1 entirely as the current T.
		review79Edit(t, b, func(tx *store.Tx) error {
			if err := tx.WriteBlob(transferRec, ltRaw); err != nil {
				return err
			}
			return tx.Put(transferRec, lt)
		})
		p, err = b.PeerIdentity(ctx)
		t.Logf("T1 recorded as the current T: peer identity %.16s: %v (exit %d)", p.ParentName, err, api.ExitCode(err))
		if err == nil && p.ParentName == t1 {
			t.Error("peer identity published the legacy T")
		}
		if err != nil && !errors.Is(err, api.ErrTampered) {
			t.Errorf("exit %d, want %d", api.ExitCode(err), api.ExitTampered)
		}
		review79NoSecret(t, b, err, "old")
		restore()

		p, err = b.PeerIdentity(ctx)
		if err != nil || p.ParentName != t2 {
			t.Fatalf("restored: peer identity %.16s: %v", p.ParentName, err)
		}
		if err := review79Sign(t, b, "old"); err != nil {
			t.Fatalf("restored: %v", err)
		}
		if err := b.keys.EvictResident(); err != nil {
			t.Fatal(err)
		}
		if left := unheldLeft(t, b); len(left) != 0 {
			t.Errorf("left in the TPM: %v", left)
		}
	})
}
