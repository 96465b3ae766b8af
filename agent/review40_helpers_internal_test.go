package agent

// Review 40: helpers shared by the review40_* tests (another process's
// zeroize, seen from the bus).
import (
	"context"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/store"
	"github.com/provd/provd/tpm"
)

// review40Wipe does what another program's zeroize --srk does to what
// an operation relies on: the state in dir wiped (its own store) and the
// SRK evicted from 0x81000001 when it is there (its own connection: next).
func review40Wipe(t *testing.T, dir string, next transport.TPM, evict bool) {
	t.Helper()
	st, err := store.Open(dir)
	if err != nil {
		t.Errorf("the other program's store: %v", err)
		return
	}
	if err := st.Wipe(context.Background(), store.WipeOptions{}); err != nil {
		t.Errorf("the other program's wipe: %v", err)
	}
	if evict {
		review40EvictSRK(t, next)
	}
}

// review40EvictSRK evicts the SRK through next, as another program does;
// an SRK evicted already is left so.
func review40EvictSRK(t *testing.T, next transport.TPM) {
	t.Helper()
	rp, err := (tpm2.ReadPublic{ObjectHandle: tpm.SRKHandle}).Execute(next)
	if err != nil {
		return // evicted already
	}
	if _, err := (tpm2.EvictControl{Auth: tpm2.TPMRHOwner, ObjectHandle: tpm2.NamedHandle{Handle: tpm.SRKHandle, Name: rp.Name}, PersistentHandle: tpm.SRKHandle}).Execute(next); err != nil {
		t.Errorf("the other program's SRK eviction: %v", err)
	}
}

// review40State is what the state in dir holds: its records and blobs.
func review40State(t *testing.T, dir string) (objects, blobs []string) {
	t.Helper()
	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.View(context.Background(), func(tx *store.Tx) error {
		objects, blobs = tx.Objects(), tx.Blobs()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return objects, blobs
}

// review40Empty fails t when the state in dir holds anything.
func review40Empty(t *testing.T, dir, after string) {
	t.Helper()
	o, b := review40State(t, dir)
	if len(o) > 0 || len(b) > 0 {
		t.Errorf("after %s the zeroized state holds records %q and blobs %q, want none", after, o, b)
	}
}

// review40Provisioned reports whether the state in dir has a PK record.
func review40Provisioned(t *testing.T, dir string) bool {
	o, _ := review40State(t, dir)
	return slices.Contains(o, recPK)
}
