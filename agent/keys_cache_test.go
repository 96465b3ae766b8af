package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"slices"
	"testing"

	"github.com/provd/provd/agent/store"
	"github.com/provd/provd/test/swtpmtest"
)

// checkCache fails t unless the cache's LRU order names exactly its entries.
func checkCache(t *testing.T, a *Agent) {
	t.Helper()
	a.keys.mu.Lock()
	defer a.keys.mu.Unlock()
	var names []string
	for n := range a.keys.entries {
		names = append(names, n)
	}
	order := slices.Clone(a.keys.order)
	slices.Sort(names)
	slices.Sort(order)
	if !slices.Equal(names, order) {
		t.Errorf("key cache: entries %v, LRU order %v", names, order)
	}
}

// TestCacheReplacedRecordFlushes: when a key's record is replaced behind the
// cache's back (another process deleted the key and made another of the same
// name) while the old key is resident, the next use flushes the old handle
// instead of leaking it, and uses the new key. Without the flush the
// derivation that follows needs a fourth object slot: TPM_RC_OBJECT_MEMORY.
func TestCacheReplacedRecordFlushes(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a, err := New(Config{TPM: env.TPM, StateDir: t.TempDir() + "/state"})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if _, err := a.Provision(ctx, ProvisionRequest{PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"k1", "k2"} {
		if _, err := a.DeriveKey(ctx, DeriveRequest{Name: n, Label: n, Type: "ecc-p256"}); err != nil {
			t.Fatal(err)
		}
	}
	d := sha256.Sum256([]byte("m"))
	if _, err := a.Sign(ctx, "k1", d[:], SignOptions{}); err != nil { // k1 resident
		t.Fatal(err)
	}
	// Another process replaces k1 by another key (here: k2's recipe).
	if err := a.st.Update(ctx, func(tx *store.Tx) error {
		var r keyRecord
		if err := tx.Get(keyRecName("k2"), &r); err != nil {
			return err
		}
		r.Name = "k1"
		return tx.Put(keyRecName("k1"), r)
	}); err != nil {
		t.Fatal(err)
	}
	sig, err := a.Sign(ctx, "k1", d[:], SignOptions{})
	if err != nil {
		t.Fatalf("sign with the replaced key: %v", err)
	}
	pub, _, err := a.KeyPublic(ctx, "k2")
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), d[:], sig) {
		t.Error("the signature is not by the key the record now names")
	}
	checkCache(t, a)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if left, err := env.TPM.Leftovers(); err != nil || len(left) > 0 {
		t.Errorf("after Close: handles %x left in the TPM (%v)", left, err)
	}
}
