package tpm_test

import (
	"errors"
	"slices"
	"testing"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// The witness is salted to the pinned SRK once, at StartAuthSession: it
// evicts that SRK and goes on authenticating the read-back after it. With
// no SRK pinned it authenticates nothing, and says so.
func TestWitnessOutlivesTheSRK(t *testing.T) {
	env := swtpmtest.Start(t)
	tp := env.TPM
	w, err := tp.OpenWitness()
	if err != nil {
		t.Fatal(err)
	}
	if w.Authenticated() || w.Handle() != 0 {
		t.Fatalf("a witness with no SRK pinned: authenticated %v, handle 0x%08x", w.Authenticated(), uint32(w.Handle()))
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	if err := tp.PinSRK(srk.Public); err != nil {
		t.Fatal(err)
	}
	w, err = tp.OpenWitness()
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := w.Close(); err != nil {
			t.Error(err)
		}
	}()
	if !w.Authenticated() {
		t.Fatal("a witness with the SRK pinned authenticates nothing")
	}
	left, err := w.Leftovers()
	if err != nil || slices.Contains(left, w.Handle()) {
		t.Fatalf("leftovers through the witness: %x, %v (its own session must not be listed)", left, err)
	}
	if err := w.EvictSRK(); err != nil {
		t.Fatalf("evict the SRK the witness is salted to: %v", err)
	}
	persistent, err := w.Handles(tpm.PersistentHandles)
	if err != nil {
		t.Fatalf("read-back after the eviction: %v", err)
	}
	if slices.Contains(persistent, tpm.SRKHandle) {
		t.Fatalf("the SRK is still listed: %x", persistent)
	}
	if _, err := tp.ReadPublic(tpm.SRKHandle); !errors.Is(err, tpm.ErrNotFound) {
		t.Fatalf("ReadPublic of the evicted SRK: %v", err)
	}
	if err := w.EvictSRK(); !errors.Is(err, tpm.ErrNotFound) {
		t.Fatalf("a second eviction: %v, want ErrNotFound", err)
	}
	if _, err := w.Handles(tpm.NVIndices); err != nil {
		t.Fatalf("the witness after both evictions: %v", err)
	}
}
